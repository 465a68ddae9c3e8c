"""End-to-end tests: the real flow (quantize -> convert -> torch.compile with freezing),
with torch's built-in quantization fusions OFF."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _our_passes_only(our_passes_only):
    """Every test here: our passes only, freezing on (tests/conftest.py)."""
