"""Differential check of one spec: eager converted model vs compiled, in every configuration the
README recommends.

Configs: the grid {freezing on/off} x {Python/C++ wrapper} x {fp32, bf16 autocast} x {static,
dynamic batch} (`GRID_CONFIGS`, 16; `CONFIGS` takes the half fraction in which the four switches
xor to zero: 8 compiles that still meet every pair of settings), plus the product's own
configurations (`PRODUCT_CONFIGS`): `torch.compile(options=template_options())` (freezing, the C++
wrapper and, on AMX / AVX-512 VNNI, Inductor's C++ GEMM template with autotuning: `fast_options()`
on AMX; elsewhere fast_options() is the grid's freezing + C++ wrapper) with fast_options()'s guard
filter (no guards on the module: a dynamic batch must still recompile for batch 1) at a static
batch with and without bf16 autocast (bf16 where native) and at a dynamic batch; and
AOTInductor (`aoti_compile_and_package` of the re-exported converted model), static and dynamic
batch (the fourth combination, bf16 with a dynamic batch, is left out: the template autotunes
every GEMM, seconds per linear, and the other three meet every setting). Every config runs our
own kernel calls (kernels/native.py, the default); the `torchops` configs run torch's oneDNN ops in
their place (`iq_passes.set_own_kernels(False)`, the fallback where our library cannot load) with
the Python wrapper at a static batch, the C++ wrapper at a dynamic batch, and under bf16 autocast. A
dynamic batch runs batch 3, then 1 (the commonest serving batch: a recompile under torch's 0/1
rule, or the same AOTI package), then 5 through one compile.

Verdict per config: "ok", "crash" (an exception in quantize, compile or run) or "mismatch": an
output farther from the eager converted model than one quantization step (the largest activation
scale of the graph; for dynamic quantization the runtime step of the widest tensor). Under bf16
autocast add torch.testing's bf16 tolerance (rtol 1.6e-2) of the reference magnitude and twice
the largest change bf16 autocast makes to that output in eager mode: float islands after a bf16
op (layer_norm over a few values) amplify bf16 rounding far beyond 1.6 %, in eager as well.

`check` judges one graph per compile (the sweep, the minimizer, replays); `check_many` compiles the
graphs that share a quantizer together (`graphs.Bundle`) and judges each on its own outputs and
its own quantization step (the CI slice: fewer compiles).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import traceback
import warnings
from dataclasses import asdict, dataclass, field

import torch

import inductor_quant.passes as iq_passes
from inductor_quant import quantize
from inductor_quant.compile_options import skip_module_guards, template_options
from inductor_quant.kernels.cpu import cpu_info
from inductor_quant.quantizer import (X86InductorQuantizer, get_default_x86_inductor_quantization_config,
                                      get_x86_inductor_linear_dynamic_fp16_config,
                                      get_x86_inductor_linear_dynamic_per_token_config,
                                      get_x86_inductor_linear_weight_only_int4_config,
                                      get_x86_inductor_linear_weight_only_int8_config)
from inductor_quant.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

from graphs import Bundle, SpecModel, inputs, value_shapes

qd = torch.ops.quantized_decomposed
BF16_RTOL = 1.6e-2
# plain torch.compile with the switches, template_options() ("fast"), AOTInductor (all with our own kernel
# calls, the default), and torch's ops in their place (iq_passes.set_own_kernels(False): the
# fallback where our kernel library cannot load)
MODES = ("jit", "fast", "aoti", "torchops")


@dataclass(frozen=True)
class Config:
    freezing: bool
    cpp_wrapper: bool
    bf16: bool
    dynamic_batch: bool
    mode: str = "jit"

    @property
    def name(self) -> str:
        dtype, batch = ("bf16" if self.bf16 else "fp32"), ("dynbatch" if self.dynamic_batch else "static")
        if self.mode != "jit":
            return f"{self.mode}-{dtype}-{batch}"
        return "-".join((("freeze" if self.freezing else "nofreeze"), ("cpp" if self.cpp_wrapper else "py"),
                         dtype, batch))

    @classmethod
    def parse(cls, name: str) -> "Config":
        for c in GRID_CONFIGS + ALL_PRODUCT_CONFIGS:
            if c.name == name:
                return c
        raise ValueError(f"unknown config {name!r}; one of {[c.name for c in GRID_CONFIGS + ALL_PRODUCT_CONFIGS]}")


GRID_CONFIGS = [Config(*bits) for bits in itertools.product((True, False), repeat=4)]
FULL_CONFIGS = GRID_CONFIGS  # the grid's full factorial (--full-matrix)
HALF_FRACTION = [c for c in GRID_CONFIGS if (c.freezing ^ c.cpp_wrapper ^ c.bf16 ^ c.dynamic_batch) == 0]
# template_options() freezes and uses the C++ wrapper; AOTInductor compiles without autocast (it
# disables it while compiling), so it has no bf16 config
ALL_PRODUCT_CONFIGS = ([Config(True, True, bf16, dyn, "fast") for bf16, dyn in ((False, False), (True, False), (False, True))]
                       + [Config(True, True, False, dyn, "aoti") for dyn in (False, True)]
                       # torch's ops instead of ours: Python wrapper static, C++ wrapper dynamic batch, bf16
                       + [Config(True, False, False, False, "torchops"), Config(True, True, False, True, "torchops"),
                          Config(True, True, True, False, "torchops")])


def product_configs(bf16_native: bool) -> list:
    """The recommended configurations on a CPU: bf16 ones only where bf16 is native."""
    return [c for c in ALL_PRODUCT_CONFIGS if bf16_native or not c.bf16]


PRODUCT_CONFIGS = product_configs(cpu_info().bf16_native)
CONFIGS = HALF_FRACTION + PRODUCT_CONFIGS


@dataclass
class Outcome:
    config: str
    status: str                 # ok | crash | mismatch | upstream (the float model fails as well)
    stage: str = ""             # quantize | compile (incl. first run) | run
    error: str = ""             # exception line, or the mismatch figures
    err_steps: float = 0.0      # worst |compiled - eager| in units of the allowed error
    fused: dict = field(default_factory=dict)
    trace: str = ""
    bundle: list = field(default_factory=list)  # seeds compiled together, when only together they fail

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in ("", {}, [], 0.0) or k == "status"}


def install_our_passes():
    """The product's state: our passes installed, torch's built-in quantization fusions off."""
    iq_passes.set_builtin_fusions(False)
    iq_passes.install()


def quantizer_key(spec: dict) -> tuple:
    """What `_quantizer` builds its quantizer from: specs with one key can share a bundle."""
    return (spec["quant"], spec.get("recipe", "ours"), spec.get("smooth"), spec.get("int4_zero_points", False),
            spec.get("int4_zero_point_domain", "int"), spec.get("woq_group", False))


INT4_GROUP = 32  # the fuzzer's group size: the smallest torch's int4 GEMM takes, so more drawn linears qualify


def int4_linears(spec: dict) -> list[int]:
    """Indices of the linears a woq_int4 spec quantizes weight-only int4: in_features divisible by
    the group (the others stay int8 static: a group-wise weight needs whole groups)."""
    shapes = value_shapes(spec)
    return [i for i, op in enumerate(spec["ops"])
            if op["op"] == "linear" and "shares" not in op["kw"] and shapes[op["in"][0]][-1] % INT4_GROUP == 0]


def _quantizer(specs: list[dict]):
    """static / dynamic int8 everywhere; xnnpack: XNNPACKQuantizer's symmetric config (int8
    activations); woq_int8: int8 static, linears weight-only int8 (with `woq_group`, those
    `int4_linears` names in groups of 32); dyn_token: int8 static, linears
    dynamic int8 per token; woq_int4: int8 static, the
    linears `int4_linears` names weight-only int4 in groups of 32 (with zero points when the spec
    says `int4_zero_points`, float ones fitted by least squares when `int4_zero_point_domain` is
    "float"); fp16_weight: int8 static,
    linears with fp16 weights
    (upstream's use of get_x86_inductor_linear_dynamic_fp16_config). recipe "upstream": chains
    that only float ops read end in q/dq too (`keep_float_outputs=True`, README "Migrating")."""
    spec = specs[0]
    if spec["quant"] == "xnnpack":  # int8 (not uint8) activations with zero points, per-tensor int8 weights
        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    config = get_default_x86_inductor_quantization_config(is_dynamic=spec["quant"] == "dynamic")
    quantizer = X86InductorQuantizer(keep_float_outputs=spec.get("recipe") == "upstream").set_global(config)
    if spec["quant"] == "fp16_weight":
        quantizer.set_module_type_qconfig(torch.nn.Linear, get_x86_inductor_linear_dynamic_fp16_config())
    if spec["quant"] == "woq_int8":
        quantizer.set_module_type_qconfig(torch.nn.Linear, get_x86_inductor_linear_weight_only_int8_config())
        if spec.get("woq_group"):  # the linears `int4_linears` names group-wise, the others per channel
            grouped = get_x86_inductor_linear_weight_only_int8_config(group_size=INT4_GROUP)
            for k, one in enumerate(specs):
                for i in int4_linears(one):
                    quantizer.set_module_name_qconfig(f"{'graphs.%d.' % k if len(specs) > 1 else ''}layers.{i}", grouped)
    if spec["quant"] == "dyn_token":
        quantizer.set_module_type_qconfig(torch.nn.Linear, get_x86_inductor_linear_dynamic_per_token_config())
    if spec["quant"] == "woq_int4":
        int4 = get_x86_inductor_linear_weight_only_int4_config(INT4_GROUP, symmetric=not spec.get("int4_zero_points"),
                                                               zero_point_domain=spec.get("int4_zero_point_domain", "int"))
        for k, one in enumerate(specs):
            prefix = f"graphs.{k}." if len(specs) > 1 else ""
            for i in int4_linears(one):
                quantizer.set_module_name_qconfig(f"{prefix}layers.{i}", int4)
    return quantizer


def _model(specs: list[dict]) -> torch.nn.Module:
    return SpecModel(specs[0]) if len(specs) == 1 else Bundle(specs)


def _batch_dims(n: int) -> list:
    """One batch dimension per input (a bundle's graphs keep their own, as each alone would)."""
    return [torch.export.Dim(f"batch{k}" if n > 1 else "batch", min=1, max=64) for k in range(n)]


def _example(specs: list[dict], dynamic_batch: bool, salt: int = 0) -> tuple:
    return tuple(inputs(s, batch=max(2, s["input"][0]) if dynamic_batch else None, salt=salt) for s in specs)


def quantized(spec: dict | list[dict], dynamic_batch: bool) -> torch.fx.GraphModule:
    """export -> prepare -> calibrate on two draws -> convert (batch dynamic if asked). A list of
    specs (one quantizer: same quant kind and recipe) becomes one `Bundle`."""
    specs = spec if isinstance(spec, list) else [spec]
    example = _example(specs, dynamic_batch)
    calibration = [_example(specs, dynamic_batch, salt=s) for s in (1, 2)]
    shapes = None
    if dynamic_batch:
        dims = [{0: d} for d in _batch_dims(len(specs))]
        shapes = {"x": dims[0]} if len(specs) == 1 else {"xs": tuple(dims)}
    return quantize(_model(specs).eval(), example, calibration, quantizer=_quantizer(specs), dynamic_shapes=shapes,
                    smooth=specs[0].get("smooth"))


def run_batches(spec: dict, config: Config) -> list[int]:
    """Batch sizes to run: the spec's; with a dynamic batch, three through one compile, batch 1 included."""
    return [3, 1, 5] if config.dynamic_batch else [spec["input"][0]]


@contextlib.contextmanager
def compiled_for(config: Config, model: torch.nn.Module, example, compile_fn=torch.compile):
    """The callable `config` makes of `model` (compiled on first call, except AOTI: ahead).
    `example`: a tensor, or a tuple of them (a bundle)."""
    if config.mode == "aoti":
        examples = example if isinstance(example, tuple) else (example,)
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), torch._inductor.config.patch(freezing=True):
            shapes = tuple({0: d} for d in _batch_dims(len(examples))) if config.dynamic_batch else None
            program = torch.export.export(model, examples, dynamic_shapes=shapes)
            path = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(tmp, "model.pt2"))
            yield torch._inductor.aoti_load_package(path)
        return
    if config.mode == "fast" and compile_fn is torch.compile:
        yield torch.compile(model, options={**template_options(), "guard_filter_fn": skip_module_guards})
        return
    yield compile_fn(model)


@contextlib.contextmanager
def _call_patch(config: Config):
    """The Inductor switches a call runs under (the compile happens at the first call)."""
    if config.mode == "aoti":
        yield
        return
    # no autotune tables on stdout (template_options() autotunes the int8 GEMMs)
    with torch._inductor.config.patch(freezing=config.freezing, cpp_wrapper=config.cpp_wrapper,
                                      autotune_num_choices_displayed=0, max_autotune_report_choices_stats=False), \
            iq_passes.own_kernels(config.mode != "torchops"):
        yield


def allowed_error(converted: torch.fx.GraphModule, ref: torch.Tensor, x: torch.Tensor, within=None) -> float:
    """One quantization step: the largest static activation scale; with dynamic quantization the
    step of the widest runtime range (input or output), (max - min) / 255; with no activation
    quantized, 1e-4 of the output's magnitude. `within`: the nodes of one graph of a bundle."""
    nodes = [n for n in converted.graph.nodes if within is None or n in within]
    scales = [float(n.args[1]) for n in nodes if n.target is qd.quantize_per_tensor.default]
    if scales:
        return max(scales)
    if any(n.target is qd.choose_qparams.tensor for n in nodes):
        widest = max(float(t.max() - t.min()) for t in (x, ref))
        return max(widest / 255, 1e-6)
    # no activation quantized (fp16-rounded weights only): both sides do fp32 math on the same weights
    return 1e-4 * float(ref.abs().max()) + 1e-5


def _graph_nodes(converted: torch.fx.GraphModule, specs: list[dict]) -> list:
    """Per spec of a bundle, the nodes its outputs depend on (None for a lone spec: all)."""
    if len(specs) == 1:
        return [None]
    outputs = list(next(n for n in converted.graph.nodes if n.op == "output").args[0])
    per_spec, start = [], 0
    for spec in specs:
        todo, seen = outputs[start:start + len(spec["outputs"])], set()
        start += len(spec["outputs"])
        while todo:
            node = todo.pop()
            if isinstance(node, torch.fx.Node) and node not in seen:
                seen.add(node)
                todo.extend(node.all_input_nodes)
        per_spec.append(seen)
    return per_spec


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def check(spec: dict, config: Config, compile_fn=torch.compile) -> Outcome:
    """Quantize, compile under `config` (`compile_fn`, replaceable in tests), run, compare with
    the eager converted model. A failure the *float* model shows as well under the same compile
    config is torch's, not ours: status "upstream" (counted apart, with its evidence)."""
    outcome = _check_quantized([spec], config, compile_fn)[0]
    if outcome.status != "ok" and compile_fn is torch.compile:
        known = known_upstream(spec, config)
        float_failure = known or float_model_fails(spec, config)
        if float_failure:
            outcome.status, outcome.error = "upstream", f"{outcome.error} | upstream: {float_failure}"
    return outcome


def known_upstream(spec: dict, config: Config) -> str:
    """torch bugs that reproduce without quantization but only now and then (a read of stale
    memory), so the float re-check alone would miss them. Each has a float-only repro in the
    docs/RELIABILITY.md (fuzzing)."""
    if not config.bf16:
        return ""
    shapes = value_shapes(spec)
    for i, op in enumerate(spec["ops"]):
        if op["op"] == "conv" and shapes[i + 1][-1] == 1 and op["kw"]["stride"] > 1:
            return "torch 2.13 bf16 conv with a stride and output width 1 reads garbage (float models too)"
    return ""


def float_model_fails(spec: dict, config: Config) -> str:
    """Why Inductor gets the unquantized graph wrong under `config` ('' if it does not)."""
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            model = SpecModel(spec).eval()
            torch._dynamo.reset()
            batches = run_batches(spec, config)
            compile_fn = lambda m: torch.compile(m, dynamic=True if config.dynamic_batch else None)  # noqa: E731
            compiled = stack.enter_context(compiled_for(config, model, inputs(spec, batch=batches[0]), compile_fn))
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if config.bf16 else contextlib.nullcontext()
            for i, batch in enumerate(batches):
                x = inputs(spec, batch=batch, salt=3 + i)
                with torch.no_grad(), autocast:
                    refs = _as_tuple(model(x))
                    with _call_patch(config):  # a few calls: a wrong read of stale memory shows only sometimes
                        outs = [o for _ in range(4) for o in _as_tuple(compiled(x))]
                for ref, out in zip(refs * 4, outs):
                    ref, out = ref.float(), out.float()
                    if not torch.isfinite(out).all() and torch.isfinite(ref).all():
                        return "the float model fails too: non-finite values"
                    if float((out - ref).abs().max()) > 0.05 * float(ref.abs().max()) + 1e-3:
                        return f"the float model fails too: max |compiled - eager| {float((out - ref).abs().max()):.4g}"
    except Exception as exc:  # noqa: BLE001
        return f"the float model fails too: {_error_line(exc)}"
    return ""


def _check_quantized(specs: list[dict], config: Config, compile_fn) -> list[Outcome]:
    """One verdict per spec; the specs (one quantizer) are compiled together when there are several."""
    stage = "quantize"
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            converted = quantized(specs if len(specs) > 1 else specs[0], config.dynamic_batch)
            stage = "compile"
            torch._dynamo.reset()
            iq_passes.reset_stats()
            rounds = run_batches(specs[0], config) if config.dynamic_batch else [None]  # None: each its own batch
            example = tuple(inputs(s, batch=rounds[0]) for s in specs)
            compiled = stack.enter_context(compiled_for(config, converted, example if len(specs) > 1 else example[0],
                                                        compile_fn))
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if config.bf16 else contextlib.nullcontext()
            within = _graph_nodes(converted, specs)
            worst, detail, broken = [0.0] * len(specs), [""] * len(specs), [None] * len(specs)
            for i, batch in enumerate(rounds):
                xs = tuple(inputs(s, batch=batch, salt=3 + i) for s in specs)
                if config.dynamic_batch and i == 0 and config.mode != "aoti":
                    for x in xs:
                        torch._dynamo.mark_dynamic(x, 0)
                with torch.no_grad():
                    refs = _as_tuple(converted(*xs))
                    with autocast:
                        eager_autocast = _as_tuple(converted(*xs)) if config.bf16 else refs
                    with _call_patch(config), autocast:
                        outs = _as_tuple(compiled(*xs))
                stage = "run"
                first = 0
                for g, spec in enumerate(specs):
                    span = range(first, first + len(spec["outputs"]))
                    first += len(spec["outputs"])
                    for k, (ref, out, ref_autocast) in enumerate(zip(*(t[span.start:span.stop] for t in (refs, outs, eager_autocast)))):
                        if broken[g]:
                            break
                        if out.shape != ref.shape:
                            broken[g] = f"output {k}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
                            break
                        step = allowed_error(converted, ref, xs[g], within[g])
                        err = (out.float() - ref).abs()
                        allowed = step
                        if config.bf16:
                            allowed = allowed + BF16_RTOL * ref.abs() + 2 * float((ref_autocast.float() - ref).abs().max())
                        if not torch.isfinite(out.float()).all() and torch.isfinite(ref).all():
                            broken[g] = f"output {k}: non-finite values"
                            break
                        ratio = float((err / allowed).max()) if err.numel() else 0.0
                        if ratio > worst[g]:
                            worst[g] = ratio
                            detail[g] = (f"output {k} batch {xs[g].shape[0]}: max |compiled - eager| {float(err.max()):.4g}, "
                                         f"allowed {step:.4g}{' + bf16 rtol' if config.bf16 else ''}")
    except Exception as exc:  # noqa: BLE001 - every failure is a finding
        line = _error_line(exc)
        return [Outcome(config.name, "crash", stage, line[:500], trace=traceback.format_exc()[-4000:]) for _ in specs]
    stats = iq_passes.stats()
    fused = {**stats.get("fused", {}), **{f"kernel.{k}": v for k, v in stats.get("kernels", {}).items()}}
    outcomes = []
    for g in range(len(specs)):
        if broken[g]:
            outcomes.append(Outcome(config.name, "mismatch", "run", broken[g]))
            continue
        status = "mismatch" if worst[g] > 1.0 else "ok"
        # a bundle's fusion counters are the compile's: kept once (on its first graph), so tallies add up
        outcomes.append(Outcome(config.name, status, "run", detail[g] if status == "mismatch" else "",
                                round(worst[g], 4), fused if g == 0 else {}))
    return outcomes


def check_many(specs: list[dict], config: Config, compile_fn=torch.compile) -> list[Outcome]:
    """`check` for many specs at a fraction of the compiles: the specs that share a quantizer
    (quant kind and recipe) are compiled as one `Bundle`. A graph that fails in its bundle is
    checked again alone, and that verdict stands (its own repro, the float re-check); if it
    passes alone, the bundle's failure is kept, marked with the bundle's seeds (`Outcome.bundle`:
    replay them together)."""
    groups: dict = {}
    for i, spec in enumerate(specs):
        groups.setdefault(quantizer_key(spec), []).append(i)
    outcomes: list = [None] * len(specs)
    for members in groups.values():
        group = [specs[i] for i in members]
        together = _check_quantized(group, config, compile_fn) if len(group) > 1 else [None]
        for i, outcome in zip(members, together):
            if outcome is not None and outcome.status == "ok":
                outcomes[i] = outcome
                continue
            alone = check(specs[i], config, compile_fn)
            if outcome is not None and alone.status == "ok":
                outcome.bundle = [s["seed"] for s in group]
                outcome.error += " (in its bundle only; alone it passes)"
                alone = outcome
            outcomes[i] = alone
    return outcomes


def _error_line(exc: BaseException) -> str:
    """`Type: first line`, of the inner error when Dynamo wraps it (BackendCompilerFailed)."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__
    if type(exc).__name__ == "BackendCompilerFailed" and inner is not None:
        exc = inner
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def same_failure(a: Outcome, b: Outcome) -> bool:
    """Minimization keeps a smaller graph only if it fails the same way."""
    if a.status != b.status:
        return False
    return a.status == "mismatch" or a.error.split(":")[0] == b.error.split(":")[0]
