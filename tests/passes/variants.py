"""The variant table every layer of the pass tests is parametrized from."""

from __future__ import annotations

import torch

from qdq_models import Variant

QCONV, QLINEAR, QCONV_BINARY = "qconv_pointwise", "qlinear_pointwise", "qconv2d_pointwise"
X2D, X1D, X3D = (2, 8, 7, 7), (2, 8, 9), (1, 4, 5, 5, 5)


def conv(id, x_shape=X2D, layer="conv2d", fusions=("qconv.prepack",), ops=((QCONV, 1),), **kw):
    return Variant(id, layer, x_shape, fusions=fusions, ops=ops, **kw)


def linear(id, x_shape=(4, 16), fusions=("qlinear.prepack.2d",), ops=((QLINEAR, 1),), **kw):
    return Variant(id, "linear", x_shape, fusions=fusions, ops=ops, **kw)


CONV_UNARY = ["relu", "relu6", "hardtanh", "hardswish", "silu"]
LINEAR_UNARY = CONV_UNARY + ["gelu", "gelu_tanh", "leaky_relu", "tanh"]
_attr = {"relu6": "hardtanh"}

VARIANTS = [
    conv("qconv2d"),
    conv("qconv2d.nobias", bias=False),
    conv("qconv2d.stride2.dilation2", stride=2, padding=2, dilation=2),
    conv("qconv2d.groups", groups=2, padding=0),
    conv("qconv2d.depthwise", groups=8, out_features=8),
    conv("qconv1d", X1D, "conv1d", stride=2),
    conv("qconv3d", X3D, "conv3d"),
    # oneDNN takes no post-op on conv3d and only relu on conv1d: those stay separate, correct ops
    conv("qconv3d.relu", X3D, "conv3d", post="relu"),
    conv("qconv1d.relu", X1D, "conv1d", post="relu", fusions=("qconv.prepack", "post.relu")),
    conv("qconv1d.silu", X1D, "conv1d", post="silu"),
    conv("qconv2d.s8.relu.q", act_dtype=torch.int8, post="relu", out_q=True,
         fusions=("qconv.prepack", "qconv.s8_to_u8", "post.relu", "post.output.quant")),
    conv("qconv2d.s8", act_dtype=torch.int8, fusions=("qconv.prepack", "qconv.s8_to_u8")),
    conv("qconv2d.wpt", per_channel=False, fusions=("qconv.prepack.wpt",)),
    *[conv(f"qconv2d.{p}", post=p, fusions=("qconv.prepack", f"post.{_attr.get(p, p)}")) for p in CONV_UNARY],
    conv("qconv2d.q", out_q=True, fusions=("qconv.prepack", "post.output.quant")),
    conv("qconv2d.relu.q", post="relu", out_q=True, fusions=("qconv.prepack", "post.relu", "post.output.quant")),
    # conv adds its residual in place only (oneDNN `sum`): into one computed in the graph (here
    # residual * 2), never into a graph input, which stays a separate add
    conv("qconv2d.add", binary="add", computed_residual=True, fusions=("qconv.prepack", "post.binary.add"),
         ops=((QCONV_BINARY, 1),)),
    conv("qconv2d.add.swapped", binary="add_swapped", computed_residual=True,
         fusions=("qconv.prepack", "post.binary.add.swapped"), ops=((QCONV_BINARY, 1),)),
    conv("qconv2d.add.relu", binary="add_relu", computed_residual=True,
         fusions=("qconv.prepack", "post.binary.add", "post.binary.relu"), ops=((QCONV_BINARY, 1),)),
    conv("qconv2d.add.input", binary="add"),
    # bf16: the dq residual is fp32, bf16 + fp32 promotes to fp32: fused with an fp32 output
    conv("qconv2d.add.dq", binary="add_dq", fusions=("qconv.prepack", "post.binary.add"), ops=((QCONV_BINARY, 1),)),
    linear("qlinear.2d"),
    # a linear on a permuted (non-contiguous) 3-D int8 input: traced as expand + bmm + bias add
    linear("qlinear.bmm", x_shape=(2, 16, 3), permuted=True, fusions=("qlinear.prepack.bmm",)),
    linear("qlinear.bmm.nobias", x_shape=(2, 16, 3), permuted=True, bias=False,
           fusions=("qlinear.prepack.bmm.nobias",)),
    linear("qlinear.bmm.wpt.relu.q", x_shape=(2, 16, 3), permuted=True, per_channel=False, post="relu", out_q=True,
           fusions=("qlinear.prepack.bmm.wpt", "post.relu", "post.output.quant")),
    linear("qlinear.dynamic.bmm", x_shape=(2, 16, 3), permuted=True, dynamic=True, fusions=("qlinear.dynamic.bmm",)),
    linear("qlinear.bmm.wpt.nobias", x_shape=(2, 16, 3), permuted=True, per_channel=False, bias=False,
           fusions=("qlinear.prepack.bmm.wpt.nobias",)),
    linear("qlinear.dynamic.bmm.nobias", x_shape=(2, 16, 3), permuted=True, dynamic=True, bias=False,
           fusions=("qlinear.dynamic.bmm.nobias",)),
    linear("qlinear.2d.nobias", bias=False, fusions=("qlinear.prepack.2d.nobias",)),
    linear("qlinear.3d", x_shape=(2, 3, 16), fusions=("qlinear.prepack.nd",)),
    linear("qlinear.3d.nobias", x_shape=(2, 3, 16), bias=False, fusions=("qlinear.prepack.nd.nobias",)),
    linear("qlinear.wpt", per_channel=False, fusions=("qlinear.prepack.2d.wpt",)),
    # one row: Inductor decomposes addmm into mul + sum before our stage
    linear("qlinear.m1", x_shape=(1, 16), fusions=("qlinear.prepack.m1",)),
    linear("qlinear.m1.wpt.relu", x_shape=(1, 16), per_channel=False, post="relu",
           fusions=("qlinear.prepack.m1.wpt", "post.relu")),
    linear("qlinear.s8", act_dtype=torch.int8),
    conv("qconv2d.wpt.nobias", per_channel=False, bias=False, fusions=("qconv.prepack.wpt",)),
    linear("qlinear.wpt.nobias", per_channel=False, bias=False, fusions=("qlinear.prepack.2d.wpt.nobias",)),
    linear("qlinear.3d.wpt", x_shape=(2, 3, 16), per_channel=False, fusions=("qlinear.prepack.nd.wpt",)),
    linear("qlinear.3d.wpt.nobias", x_shape=(2, 3, 16), per_channel=False, bias=False,
           fusions=("qlinear.prepack.nd.wpt.nobias",)),
    *[linear(f"qlinear.{p}", post=p, fusions=("qlinear.prepack.2d", f"post.{_attr.get(p, p)}")) for p in LINEAR_UNARY],
    linear("qlinear.dynamic", dynamic=True, fusions=("qlinear.dynamic.2d",)),
    linear("qlinear.dynamic.3d.relu", x_shape=(2, 3, 16), dynamic=True, post="relu",
           fusions=("qlinear.dynamic.nd", "post.relu")),
    linear("qlinear.dynamic.nobias", dynamic=True, bias=False, fusions=("qlinear.dynamic.2d.nobias",)),
    linear("qlinear.dynamic.3d.nobias", x_shape=(2, 3, 16), dynamic=True, bias=False,
           fusions=("qlinear.dynamic.nd.nobias",)),
    linear("qlinear.dynamic.m1", x_shape=(1, 16), dynamic=True, fusions=("qlinear.dynamic.m1",)),
    # residual from dq(uint8) and a requantized output: the extra input stays uint8 (sum); under
    # bf16 the fp32 residual promotes the add, so what follows it computes (and counts) in fp32
    conv("qconv2d.add.dq.relu.q", binary="add_dq_relu", out_q=True,
         fusions=("qconv.prepack", "post.binary.add", "post.binary.relu", "post.output.quant"),
         bf16_fusions=("qconv.prepack.bf16", "post.binary.add.bf16", "post.binary.relu", "post.output.quant"),
         ops=((QCONV_BINARY, 1),)),
    linear("qlinear.add.dq.q", binary="add_dq", out_q=True,
           fusions=("qlinear.prepack.2d", "post.binary.add", "post.output.quant"),
           bf16_fusions=("qlinear.prepack.2d.bf16", "post.binary.add.bf16", "post.output.quant")),
    linear("qlinear.q", out_q=True, fusions=("qlinear.prepack.2d", "post.output.quant")),
    linear("qlinear.gelu.q", post="gelu", out_q=True, fusions=("qlinear.prepack.2d", "post.gelu", "post.output.quant")),
    linear("qlinear.3d.add", x_shape=(2, 3, 16), binary="add", fusions=("qlinear.prepack.nd", "post.binary.add")),
    # BERT's residual: linear -> dropout (a copy once exported) -> add
    linear("qlinear.3d.dropout.add", x_shape=(2, 3, 16), post="dropout", binary="add",
           fusions=("qlinear.prepack.nd", "post.noop.clone", "post.binary.add")),
    linear("qlinear.add.swapped", binary="add_swapped", fusions=("qlinear.prepack.2d", "post.binary.add.swapped")),
    linear("qlinear.add.relu", binary="add_relu",
           fusions=("qlinear.prepack.2d", "post.binary.add", "post.binary.relu")),
    # a reduce_range=True model (activations [0, 127]): fuses on every CPU, the requantized
    # output is clamped to the narrower range
    conv("qconv2d.relu.q.act7", post="relu", out_q=True, act_max=127,
         fusions=("qconv.prepack", "post.relu", "post.output.quant")),
    linear("qlinear.q.act7", out_q=True, act_max=127, fusions=("qlinear.prepack.2d", "post.output.quant")),
    # 8-bit weights whatever the CPU: fused with VNNI, else exact fp32 with the saturation reason
    conv("qconv2d.w8", full_weights=True),
    linear("qlinear.w8", full_weights=True),
]
BY_ID = {v.id: v for v in VARIANTS}
def left_fp32_for_saturation(stats) -> bool:
    """Every quantized layer stayed fp32 for the saturation reason (a variant not `fuses_here`)."""
    return stats["fused"] == {} and bool(stats["unfused"]) and all(u.code == "saturation" for u in stats["unfused"])
