"""Pass tests run with our passes installed, torch's built-in quantization fusions OFF, freezing on."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helper modules (variants, qdq_models, ...)


@pytest.fixture(scope="session", autouse=True)
def _our_passes_only(our_passes_only):
    """Every test here: our passes only, freezing on (tests/conftest.py)."""
