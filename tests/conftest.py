"""Shared fixtures. Compiled tests use `our_passes_only`: our passes installed (which switches
torch's built-in quantization fusions off, so a green test proves *our* passes did the fusing)
and freezing on; the previous state comes back at the end of the session."""

import pytest
import torch

import inductor_quant.passes as iq_passes


@pytest.fixture(scope="session")
def our_passes_only():
    was_installed, builtins_were_on = iq_passes.is_installed(), iq_passes.builtin_fusions_enabled()
    iq_passes.set_builtin_fusions(False)  # before install: uninstall() restores what install() saw
    iq_passes.install()
    with torch._inductor.config.patch(freezing=True):
        yield
    if not was_installed:
        iq_passes.uninstall()
    iq_passes.set_builtin_fusions(builtins_were_on)


@pytest.fixture
def torch_default_state():
    """torch's default state (a fresh process): built-ins on, our passes not installed.
    Afterwards the suite's state (our passes only) comes back."""
    iq_passes.uninstall()
    iq_passes.set_builtin_fusions(True)
    try:
        yield
    finally:
        iq_passes.uninstall()
        iq_passes.set_builtin_fusions(False)
        iq_passes.install()
