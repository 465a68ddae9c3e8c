"""Pass tests run with our passes installed, torch's built-in quantization fusions OFF, freezing on."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helper modules (variants, qdq_models, ...)


@pytest.fixture(scope="session", autouse=True)
def _our_passes_only(our_passes_only):
    """Every test here: our passes only, freezing on (tests/conftest.py)."""


@pytest.fixture
def own():
    """Our own kernel calls on (kernels/native.py): the library must build on every CI machine."""
    import inductor_quant.passes as iq_passes

    with iq_passes.own_kernels(True) as on:
        assert on, "the own kernel library must build here (kernels/native.py)"
        yield
