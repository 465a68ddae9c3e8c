"""Peer int8 runtimes in the benchmark: OpenVINO with NNCF post-training quantization, and ONNX
Runtime with static QDQ quantization.

Each peer is built from the same torch model (same weights), calibrated on the same batches as
our int8 modes, and returned as a callable that takes and returns torch tensors, so the runner
times it in the same interleaved rounds and scores it against the same eager fp32 output.
Neither peer depends on torch; they come with the optional `peers` extra
(`pip install -e ".[peers]"`). Every setting is the peer's own default unless said here:

- OpenVINO: `openvino.convert_model` from the torch module, `nncf.quantize` with its default
  preset (and `ModelType.TRANSFORMER` for transformer models, NNCF's preset for them), compiled
  for "CPU" with the latency hint and the benchmark's thread count. On a CPU with native bf16
  OpenVINO runs the layers left in float in bf16 by default; the note on the result says so.
- ONNX Runtime: `torch.onnx.export` (TorchScript exporter, opset 17), ORT's recommended
  pre-processing, `quantize_static` in QDQ format, per-channel int8 weights and uint8
  activations (ORT's x86 recommendation), `reduce_range` on CPUs without VNNI as ORT advises;
  its workers do not spin between calls (they would take the CPU from the other modes).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from inductor_quant import cpu_info


@dataclass(frozen=True)
class Peer:
    name: str                  # `--peers` name
    mode: str                  # its column in the benchmark table
    packages: tuple[str, ...]  # importable modules it needs

    def missing(self) -> list[str]:
        return [p for p in self.packages if importlib.util.find_spec(p) is None]


PEERS = {p.name: p for p in (Peer("openvino", "openvino_int8", ("openvino", "nncf")),
                             Peer("onnxruntime", "onnxruntime_int8", ("onnxruntime", "onnx")))}
INSTALL_HINT = 'pip install -e ".[peers]"'


@dataclass
class Built:
    """A peer ready to time: `run(*torch_inputs) -> torch.Tensor`, seconds spent converting and
    quantizing (apart from the runtime's compile), and a note on what the runtime chose."""

    run: Callable[..., torch.Tensor]
    quantize_s: float
    note: str | None = None


def _arrays(inputs: Sequence[torch.Tensor]) -> list:
    return [t.detach().contiguous().numpy() for t in inputs]


def openvino_int8(model: torch.nn.Module, inputs: tuple, calibration: list[tuple], transformer: bool) -> Built:
    import nncf
    import openvino as ov

    start = time.perf_counter()
    with torch.no_grad():
        float_model = ov.convert_model(model, example_input=inputs)
    dataset = nncf.Dataset([_arrays(batch) for batch in calibration])
    quantized = nncf.quantize(float_model, dataset, subset_size=len(calibration),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    quantize_s = time.perf_counter() - start
    compiled = ov.Core().compile_model(quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    note = "float parts in bf16 (OpenVINO's default on this CPU)" if "bf16" in precision or "bfloat16" in precision \
        else None

    def run(*args: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer(_arrays(args))[0].copy())

    return Built(run, quantize_s, note)


def onnxruntime_int8(model: torch.nn.Module, inputs: tuple, calibration: list[tuple], transformer: bool) -> Built:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [f"input{i}" for i in range(len(inputs))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([dict(zip(names, _arrays(batch))) for batch in calibration])

        def get_next(self):
            return next(self.batches, None)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        exported, prepared, quantized = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with torch.no_grad():
            torch.onnx.export(model, inputs, exported, dynamo=False, input_names=names, opset_version=17)
        quant_pre_process(exported, prepared)
        quantize_static(prepared, quantized, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=not cpu_info().vnni)
        quantize_s = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        # ORT's workers spin after each call by default and slowed whatever ran next in the
        # process 2-3x (MobileNetV2 bs1), beyond one untimed call; ORT's own setting for
        # sharing the CPU turns that off
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(quantized, options, providers=["CPUExecutionProvider"])

    def run(*args: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, dict(zip(names, _arrays(args))))[0])

    return Built(run, quantize_s, "7-bit weights (reduce_range), as ORT advises without VNNI"
                 if not cpu_info().vnni else None)


BUILDERS: dict[str, Callable[..., Built]] = {"openvino_int8": openvino_int8, "onnxruntime_int8": onnxruntime_int8}
