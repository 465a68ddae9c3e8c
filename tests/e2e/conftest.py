"""End-to-end tests: the real flow (quantize -> convert -> torch.compile with freezing),
with torch's built-in quantization fusions OFF."""

import pytest
import torch

import inductor_quant.passes as iq_passes


@pytest.fixture(scope="session", autouse=True)
def our_passes_only():
    iq_passes.set_builtin_fusions(False)
    iq_passes.install()
    with torch._inductor.config.patch(freezing=True):
        yield
    iq_passes.uninstall()
    iq_passes.set_builtin_fusions(True)
