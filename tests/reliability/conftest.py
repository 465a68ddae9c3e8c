"""Reliability tests: bad inputs, deployment, concurrency. Compiled tests run with our passes
installed and torch's built-in quantization fusions off, so our passes do all the work."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import inductor_quant.passes as iq_passes  # noqa: E402


@pytest.fixture(scope="module")
def our_passes_only():
    before_builtins, before_installed = iq_passes.builtin_fusions_enabled(), iq_passes.is_installed()
    iq_passes.set_builtin_fusions(False)
    iq_passes.install()
    yield
    if not before_installed:
        iq_passes.uninstall()
    iq_passes.set_builtin_fusions(before_builtins)
