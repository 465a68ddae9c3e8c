"""Pass tests run with our passes installed, torch's built-in quantization fusions OFF, freezing on."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import inductor_quant.passes as iq_passes  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def our_passes_only():
    iq_passes.set_builtin_fusions(False)
    iq_passes.install()
    with torch._inductor.config.patch(freezing=True):
        yield
    iq_passes.uninstall()
    iq_passes.set_builtin_fusions(True)
