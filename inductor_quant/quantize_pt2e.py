"""Public PT2E entry points: prepare_pt2e, prepare_qat_pt2e, convert_pt2e.

Same names and behaviour as the removed `torch.ao.quantization.quantize_pt2e`; the model is
`torch.export.export(model, example_inputs).module()` (or the ExportedProgram itself).
The flow stage lives in `model.meta["inductor_quant_stage"]`, so misuse (convert twice,
convert before prepare) fails with a clear message instead of a silently wrong model.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.fx import GraphModule

from .bn_folding import fold_bn_into_conv
from .convert import convert_observed
from .errors import QuantizationFlowError, UnsupportedModelError, not_exported
from .export_utils import InputCheck, PreparedCompileWarning, allow_train_eval
from .prepare import insert_observers
from .qat import simulate_conv_bn_fold
from .quantizer.quantizer import Quantizer

__all__ = ["prepare_pt2e", "prepare_qat_pt2e", "convert_pt2e"]

STAGE = "inductor_quant_stage"


def _graph_module(model: Union[GraphModule, ExportedProgram, nn.Module], fn: str) -> GraphModule:
    if isinstance(model, ExportedProgram):
        model = model.module()
    if not isinstance(model, GraphModule):
        raise not_exported(fn, model)
    return model


def _has_quantized_weights(gm: GraphModule) -> bool:
    """A converted model that lost its stage marker (e.g. through torch.export.save/load): a weight
    (a get_attr) is stored quantized and dequantized, or quantized in the graph. A float model may
    carry quantize -> dequantize pairs of its own on activations; that does not make it converted."""
    qd = torch.ops.quantized_decomposed
    qdq = {qd.quantize_per_tensor, qd.dequantize_per_tensor, qd.quantize_per_channel, qd.dequantize_per_channel}
    return any(n.op == "call_function" and getattr(n.target, "overloadpacket", None) in qdq and n.args
               and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "get_attr" for n in gm.graph.nodes)


def _check_weights(gm: GraphModule, fn: str) -> None:
    """Weights must be real tensors on one device: `meta` parameters (a model built under
    torch.device("meta") whose weights were never loaded) or a model split across devices would
    calibrate garbage or fail deep inside an observer."""
    tensors = list(gm.named_parameters()) + list(gm.named_buffers())
    meta = [name for name, t in tensors if t.device.type == "meta"]
    if meta:
        raise UnsupportedModelError(
            f"{fn}: {len(meta)} parameter(s)/buffer(s) are on the meta device (they hold no data), e.g. "
            f"{', '.join(repr(m) for m in meta[:3])}. Fix: materialize and load the weights before "
            "export, e.g. model.to_empty(device='cpu'); model.load_state_dict(state_dict)."
        )
    devices = sorted({str(t.device) for _, t in tensors})
    if len(devices) > 1:
        first = {d: next(n for n, t in tensors if str(t.device) == d) for d in devices}
        raise UnsupportedModelError(
            f"{fn}: the model's weights are on several devices ({', '.join(f'{n!r} on {d}' for d, n in first.items())}). "
            "Fix: move the whole model to one device before export (model.to('cpu')); the int8 "
            "oneDNN kernels run on CPU."
        )


def _prepare(model, quantizer: Quantizer, is_qat: bool, fn: str) -> GraphModule:
    gm = _graph_module(model, fn)
    if not isinstance(quantizer, Quantizer):
        raise TypeError(
            f"{fn}: quantizer must subclass inductor_quant.quantizer.Quantizer, got "
            f"{type(quantizer).__module__}.{type(quantizer).__name__}. Fix: import quantizers and specs "
            "from inductor_quant.quantizer (not torch.ao / torchao), e.g. "
            "`from inductor_quant.quantizer import X86InductorQuantizer`."
        )
    stage = gm.meta.get(STAGE)
    if stage is not None:
        raise QuantizationFlowError(
            f"{fn}: this model was already {stage}. Fix: prepare a freshly exported model "
            "(torch.export.export(float_model, example_inputs).module())."
        )
    if _has_quantized_weights(gm):
        raise QuantizationFlowError(
            f"{fn}: this model already contains quantize/dequantize ops on its weights (it is a converted model, "
            "e.g. loaded with torch.export.load); quantizing it again would quantize twice. Fix: "
            "compile/run it as it is, or prepare the float model: "
            "torch.export.export(float_model, example_inputs).module()."
        )
    _check_weights(gm, fn)
    user_ranges = getattr(gm, "range_constraints", None)  # a transform may return a new module without them
    gm = quantizer.transform_for_annotation(gm)
    if not is_qat:
        fold_bn_into_conv(gm)
    gm = quantizer.annotate(gm) or gm
    quantizer.validate(gm)
    if is_qat:
        simulate_conv_bn_fold(gm)
    edge_or_node_to_obs = insert_observers(gm, is_qat)
    quantizer.prepare_obs_or_fq_callback(gm, edge_or_node_to_obs)
    gm.meta[STAGE] = "prepared for QAT" if is_qat else "prepared"
    InputCheck.attach(gm, user_ranges if isinstance(user_ranges, dict) else None)
    PreparedCompileWarning.attach(gm)
    return allow_train_eval(gm)


def prepare_pt2e(model: Union[GraphModule, ExportedProgram], quantizer: Quantizer) -> GraphModule:
    """Fold conv+bn, annotate with `quantizer`, insert observers. Calibrate, then convert_pt2e."""
    return _prepare(model, quantizer, is_qat=False, fn="prepare_pt2e")


def prepare_qat_pt2e(model: Union[GraphModule, ExportedProgram], quantizer: Quantizer) -> GraphModule:
    """Annotate, insert fake-quant, simulate conv+bn folding (BN stays trainable). Train, then convert."""
    return _prepare(model, quantizer, is_qat=True, fn="prepare_qat_pt2e")


def convert_pt2e(
    model: GraphModule,
    use_reference_representation: bool = False,
    fold_quantize: bool = True,
) -> GraphModule:
    """Observers -> quantized_decomposed Q/DQ ops (weights folded to int8 when fold_quantize).

    Also installs our Inductor passes, so a plain torch.compile(model) uses them.
    """
    if use_reference_representation:
        raise NotImplementedError(
            "use_reference_representation=True is not supported; the Q/DQ representation "
            "(the default) is what the Inductor passes consume. Call convert_pt2e(model)."
        )
    gm = _graph_module(model, "convert_pt2e")
    stage = gm.meta.get(STAGE)
    if stage == "converted":
        raise QuantizationFlowError(
            "convert_pt2e: this model is already converted (convert_pt2e was called twice). "
            "Fix: use the first result, or convert a copy: convert_pt2e(copy.deepcopy(prepared))."
        )
    if stage is None and _has_quantized_weights(gm):
        raise QuantizationFlowError(
            "convert_pt2e: this model already contains quantized weights and no observers: it "
            "is already converted (e.g. loaded with torch.export.load). Fix: use it as it is "
            "(inductor_quant.passes.install() before torch.compile of a loaded model)."
        )
    if stage is None:
        raise QuantizationFlowError(
            "convert_pt2e: this model has no observers (it was not prepared). Fix: "
            "prepared = prepare_pt2e(exported_model, quantizer); calibrate; convert_pt2e(prepared)."
        )
    convert_observed(gm, fold_quantize)
    PreparedCompileWarning.detach(gm)
    gm.meta[STAGE] = "converted"
    allow_train_eval(gm)
    from . import passes

    passes.install()
    return gm
