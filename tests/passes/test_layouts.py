"""A fused int8 conv writes its output channels-last where the float conv it replaced was traced
contiguous. When Inductor re-derives every value's strides from ours (it does when the graph
still holds a float conv: layout optimization), a `view` downstream that needs the traced
strides failed the compile (fuzz sweep, seeds 13024-13027 compiled together). Such views
read the value as `reshape` (a copy only where a view cannot be taken). Builtins off
(tests/passes/conftest.py)."""

import pytest
import torch
from torch import nn

from compile_utils import compile_and_run

from inductor_quant import quantize
from inductor_quant.quantizer.x86_inductor_quantizer import (X86InductorQuantizer,
                                                             get_default_x86_inductor_quantization_config)


class FloatStemInt8Head(nn.Module):
    """The stem conv stays float (per-module config), so Inductor optimizes layouts; the int8
    conv's [2, 4, 4, 4] output is flattened for the classifier."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.conv(torch.relu(self.stem(x))).flatten(1))


@pytest.mark.parametrize("cpp_wrapper", [False, True], ids=["python", "cpp"])
def test_a_view_of_a_fused_conv_output_compiles_beside_a_float_conv(cpp_wrapper):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    quantizer = (X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
                 .set_module_name_qconfig("stem", None))
    converted = quantize(FloatStemInt8Head().eval(), (x,), [(torch.randn(2, 3, 8, 8),) for _ in range(4)],
                         quantizer=quantizer)
    ref, out, code, stats = compile_and_run(converted, (x,), cpp_wrapper=cpp_wrapper)
    assert stats["fused"].get("qconv.prepack") == 1, stats  # the int8 conv is fused, the stem is not
    assert stats["fused"].get("layout.view_as_reshape") == 1, stats
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
