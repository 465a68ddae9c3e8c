#!/usr/bin/env python
"""OpenVINO peer of the LLM recipes: Gemma-3-270M with NNCF weight compression, batch 1, 2 threads.

Same float model as the recipes (inductor_quant/llm/models.py: the Q4_K_M GGUF dequantized to
fp32). Each step is skipped when its directory under --root already exists:

  1. hf/: the GGUF read by the project's Python (--project-python; the transformers 4.57 this venv
     needs cannot read a Gemma-3 GGUF), saved as a plain transformers directory.
  2. ov-<variant>/: optimum-intel export (text-generation-with-past, stateful KV cache, tokenizer
     converted), then NNCF weight compression of that IR, data-free, via OVWeightQuantizationConfig:
       fp32      none: fp32 weights (OVConfig(dtype="fp32"); = optimum-cli --weight-format fp32)
       int8      bits=8, sym=False: INT8_ASYM per output channel, every weight incl. the tied
                 embedding / LM head (= optimum-cli --weight-format int8)
       int4      bits=4, sym=False, group_size=32, ratio=1.0: INT4_ASYM in groups of 32; the
                 embedding / LM head keeps the backup INT8_ASYM per channel (as woq_int4's head is int8)
       int4_all  the same with all_layers=True: the embedding / LM head int4 too (as woq_int4_all)
  3. Timing through openvino_genai.LLMPipeline with ATTENTION_BACKEND=SDPA and
     INFERENCE_NUM_THREADS=2, the CPU plugin's defaults otherwise (each line's "ov_properties"
     reads them back): bf16 inference precision where the CPU has AVX512_BF16, u8 KV cache for the
     compressed models and f16 for the uncompressed export, activations of compressed matmuls
     dynamically quantized in groups of 32. Prompt of 128 ids, 64 greedy new tokens (ignore_eos),
     2 warm-ups then 5 runs, medians: prefill_ms = genai's time to first token,
     decode_ms_per_token = (time of token 64 - time of token 1) / 63. One process per variant.
  4. Optional: --ppl N, teacher-forced perplexity on N passages (every position's logits); with
     --kl also KL(eager fp32 torch || variant) and top-1 agreement.

Prompt and passages are the recipes' own (inductor_quant.llm.text.passages: shuffled WordNet noun
glosses after the calibration ones, passages of exactly 128 ids, BOS first), written by the
project's Python (--project-python) as token ids this script reads. Output: one JSON line per
variant on stdout (and appended to --out).

Setup (own venv: optimum-intel 2.2 exports Gemma only with transformers < 5), from the repo root:

    python -m venv <dir>
    <dir>/bin/pip install torch==2.13.0      # first, so nothing pulls a CUDA build
    <dir>/bin/pip install -r benchmarks/llm_openvino-requirements.txt
    <dir>/bin/pip uninstall -y torchvision   # optimum-intel pulls it in; it breaks optimum.intel.openvino
    <dir>/bin/python benchmarks/llm_openvino.py --export-only
    <dir>/bin/python benchmarks/llm_openvino.py --bench-only --out benchmarks/results/<name>.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The project's cache (inductor_quant/llm/models.py cache_dir): its tokenizer, and our exports beside it.
CACHE = Path(os.environ.get("INDUCTOR_QUANT_CACHE", Path.home() / ".cache" / "inductor-quant"))
DEFAULT_ROOT = Path(os.environ.get("OVPEER_ROOT", CACHE / "openvino-peer"))
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"

VARIANT_DOC = {
    "fp32": "no weight compression (fp32 weights in the IR; OVConfig(dtype='fp32'))",
    "int8": "NNCF INT8_ASYM per channel, all weights incl. tied embedding/LM head "
            "(OVWeightQuantizationConfig(bits=8, sym=False))",
    "int4": "NNCF INT4_{sym} group {g}, ratio 1.0, embedding/LM head INT8_ASYM per channel (backup) "
            "(OVWeightQuantizationConfig(bits=4, sym={symb}, group_size={g}, ratio=1.0))",
    "int4_all": "NNCF INT4_{sym} group {g}, ratio 1.0, all_layers=True (embedding/LM head int4 too) "
                "(OVWeightQuantizationConfig(bits=4, sym={symb}, group_size={g}, ratio=1.0, all_layers=True))",
}
ALL_VARIANTS = list(VARIANT_DOC)
AUX_SKIP = {"openvino_model.xml", "openvino_model.bin"}


def log(msg: str) -> None:
    print(f"[llm_openvino {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def variant_doc(name: str, args) -> str:
    return VARIANT_DOC[name].format(sym="SYM" if args.int4_sym else "ASYM", symb=bool(args.int4_sym),
                                    g=args.int4_group_size)


def quant_config(name: str, args):
    from optimum.intel import OVWeightQuantizationConfig

    if name == "int8":
        return OVWeightQuantizationConfig(bits=8, sym=False)
    if name in ("int4", "int4_all"):
        extra = {"all_layers": True} if name == "int4_all" else {}
        return OVWeightQuantizationConfig(bits=4, sym=bool(args.int4_sym), group_size=args.int4_group_size,
                                          ratio=1.0, **extra)
    return None


# --------------------------------------------------------------------------------------------- export


# Run by the project's Python: the GGUF read as inductor_quant/llm/models.py reads it, saved as
# safetensors + tokenizer files that this venv's transformers and optimum-intel load.
SAVE_HF = """
import os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from inductor_quant.llm.models import MODELS, gguf_path
folder, file = os.path.split(gguf_path(MODELS["gemma3-270m"]))
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
model.save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
"""


def export_hf(args) -> Path:
    hf_dir = Path(args.root) / "hf"
    if (hf_dir / "config.json").exists():
        log(f"{hf_dir} exists: keeping it")
        return hf_dir
    python = Path(args.project_python)
    if not python.exists():
        raise SystemExit(f"{python} missing: pass --project-python (the project's venv, transformers 5)")
    partial = hf_dir.with_name(hf_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"reading and dequantizing the GGUF (fp32) with {python}")
    if subprocess.run([str(python), "-c", SAVE_HF, str(partial)], cwd=REPO).returncode:
        raise SystemExit(f"{python} could not save the model to {partial}")
    os.replace(partial, hf_dir)
    log(f"saved {hf_dir} in {time.perf_counter() - t0:.0f} s")
    return hf_dir


def export_fp32(args, hf_dir: Path) -> Path:
    out = Path(args.root) / "ov-fp32"
    if (out / "openvino_model.xml").exists():
        log(f"{out} exists: keeping it")
        return out
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"exporting {hf_dir} -> {out} (stateful, fp32 weights, tokenizer converted)")
    # = optimum-cli export openvino -m ROOT/hf --task text-generation-with-past --weight-format fp32 ROOT/ov-fp32
    main_export(model_name_or_path=str(hf_dir), output=partial, task="text-generation-with-past",
                ov_config=OVConfig(dtype="fp32"), stateful=True, convert_tokenizer=True, library_name="transformers")
    os.replace(partial, out)
    log(f"exported {out} in {time.perf_counter() - t0:.0f} s")
    gc.collect()
    return out


def export_quantized(args, name: str, fp32_dir: Path) -> Path:
    out = Path(args.root) / f"ov-{name}"
    if (out / "openvino_model.xml").exists():
        log(f"{out} exists: keeping it")
        return out
    from optimum.intel import OVModelForCausalLM

    cfg = quant_config(name, args)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"NNCF weight compression {name}: {cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg}")
    model = OVModelForCausalLM.from_pretrained(str(fp32_dir), quantization_config=cfg, compile=False)
    model.save_pretrained(partial)
    for item in fp32_dir.iterdir():  # tokenizer files, OV tokenizer IRs, ... (config/generation config kept as saved)
        if item.name not in AUX_SKIP and not (partial / item.name).exists() and item.is_file():
            shutil.copy2(item, partial / item.name)
    os.replace(partial, out)
    log(f"compressed {out} in {time.perf_counter() - t0:.0f} s")
    del model
    gc.collect()
    return out


def export_all(args) -> None:
    hf_dir = export_hf(args)
    fp32_dir = export_fp32(args, hf_dir)
    for name in args.variants:
        if name != "fp32":
            export_quantized(args, name, fp32_dir)


# --------------------------------------------------------------------------------------------- inputs


TOKEN_IDS = """
import json, sys
from inductor_quant.llm import models, text
_, tokenizer = models.load("gemma3-270m")
tokens, count = int(sys.argv[1]), int(sys.argv[2])
json.dump(text.passages(tokenizer, tokens, count, skip=text.CALIBRATION), open(sys.argv[3], "w"))
"""


def project_passages(args, tokens: int, count: int) -> list:
    """`count` held-out WordNet passages of `tokens` ids, made by the project's own rule
    (inductor_quant.llm.text.passages, its cached tokenizer) in the project's Python: this venv
    does not install the project, and a copy of the rule here could drift from it."""
    python = Path(args.project_python)
    if not python.exists():
        raise SystemExit(f"{python} missing: pass --project-python (the project's venv), or --prompt-ids FILE")
    out = Path(args.root) / f"token_ids-{tokens}x{count}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if subprocess.run([str(python), "-c", TOKEN_IDS, str(tokens), str(count), str(out)], cwd=REPO).returncode:
        raise SystemExit(f"{python} could not write the passages' token ids to {out}")
    return json.loads(out.read_text())


def token_inputs(args):
    """(prompt ids, list of passages for perplexity, description)."""
    if args.prompt_ids:
        data = json.loads(Path(args.prompt_ids).read_text())
        if isinstance(data, list):
            data = {"prompt": data}
        prompt = list(data["prompt"])[: args.prompt_tokens]
        ppl = [list(p) for p in data.get("ppl", [])][: args.ppl]
        return prompt, ppl, f"file {args.prompt_ids}"
    texts = project_passages(args, args.prompt_tokens, max(1, args.ppl))
    return texts[0], texts[: args.ppl], "WordNet passages (inductor_quant.llm.text, the project's tokenizer)"


# --------------------------------------------------------------------------------------------- runtime


def ov_properties(args) -> dict:
    """User properties for the CPU plugin; strings (parsed by the plugin) to avoid int-type casts."""
    props = {"INFERENCE_NUM_THREADS": str(args.threads)}
    if args.inference_precision:
        props["INFERENCE_PRECISION_HINT"] = args.inference_precision
    if args.kv_cache_precision:
        props["KV_CACHE_PRECISION"] = args.kv_cache_precision
    return props


READ_BACK = ["INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT", "KV_CACHE_PRECISION", "KEY_CACHE_PRECISION",
             "VALUE_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "PERFORMANCE_HINT", "NUM_STREAMS",
             "INFERENCE_NUM_THREADS", "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING"]


def read_back_properties(vdir: Path, props: dict) -> dict:
    """Properties of the IR compiled with `props` (an extra compile, outside any timing)."""
    import openvino as ov

    core = ov.Core()
    out = {}
    try:
        compiled = core.compile_model(core.read_model(str(vdir / "openvino_model.xml")), "CPU", props)
    except Exception as exc:  # pragma: no cover - reported, not fatal
        return {"error": repr(exc)}
    for key in READ_BACK:
        try:
            out[key] = str(compiled.get_property(key))
        except Exception:
            pass
    try:
        out["device"] = core.get_property("CPU", "FULL_DEVICE_NAME")
        out["capabilities"] = " ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:
        pass
    model = core.read_model(str(vdir / "openvino_model.xml"))
    try:
        if model.has_rt_info(["runtime_options"]):
            out["ir_runtime_options"] = {k: str(v) for k, v in model.get_rt_info("runtime_options").value.items()}
    except Exception:
        pass
    del compiled
    return out


def slice_last_token(model) -> bool:
    """Feed only the last position to the LM head MatMul (what openvino_genai does for its stateful
    pipeline: apply_slice_before_matmul_transformation). True if applied."""
    import numpy as np
    import openvino.opset8 as ops

    out = next((o for o in model.outputs if "logits" in o.get_names()), None)
    if out is None:
        return False
    node = out.get_node().input_value(0).get_node()
    while node.get_type_name() in ("Convert", "Add", "Multiply", "Divide", "Tanh", "Transpose"):
        node = node.input_value(0).get_node()
    if node.get_type_name() != "MatMul":
        return False
    hidden = node.input_value(0)
    if hidden.get_partial_shape().rank.get_length() != 3:
        return False
    sliced = ops.slice(hidden, np.array([-1], np.int64), np.array([np.iinfo(np.int64).max], np.int64),
                       np.array([1], np.int64), np.array([1], np.int64))
    node.input(0).replace_source_output(sliced.output(0))
    model.validate_nodes_and_infer_types()
    return True


def median(xs):
    return round(statistics.median(xs), 3)


def bench_genai(vdir: Path, prompt, args, props):
    import numpy as np
    import openvino as ov
    import openvino_genai as og

    t0 = time.perf_counter()
    pipe = og.LLMPipeline(str(vdir), "CPU", **props, ATTENTION_BACKEND=args.attention_backend)
    load_s = time.perf_counter() - t0
    cfg = pipe.get_generation_config()
    cfg.max_new_tokens = args.new_tokens
    cfg.min_new_tokens = args.new_tokens
    cfg.ignore_eos = True
    cfg.do_sample = False
    cfg.num_beams = 1
    ids = ov.Tensor(np.asarray([prompt], dtype=np.int64))
    prefill, decode, tpot, wall, tokens = [], [], [], [], None
    for i in range(args.warmup + args.reps):
        start = time.perf_counter()
        res = pipe.generate(ids, cfg)
        total = (time.perf_counter() - start) * 1e3
        pm = res.perf_metrics
        times = list(pm.raw_metrics.m_new_token_times)  # ms timestamps, one per generated token
        tokens = list(res.tokens[0])
        if len(tokens) != args.new_tokens:
            raise RuntimeError(f"generated {len(tokens)} tokens, expected {args.new_tokens}")
        if len(times) < 2:
            raise RuntimeError(f"genai returned {len(times)} token timestamps")
        if i < args.warmup:
            continue
        prefill.append(pm.get_ttft().mean)
        decode.append((times[-1] - times[0]) / (len(times) - 1))
        tpot.append(pm.get_tpot().mean)
        wall.append(total)
    del pipe
    gc.collect()
    return {"backend": f"openvino_genai.LLMPipeline (ATTENTION_BACKEND={args.attention_backend})",
            "prefill_ms": median(prefill), "decode_ms_per_token": median(decode),
            "prefill_ms_runs": [round(x, 2) for x in prefill], "decode_ms_runs": [round(x, 3) for x in decode],
            "genai_tpot_ms": median(tpot), "generate_wall_ms": median(wall), "pipeline_load_s": round(load_s, 1),
            "generated_ids": tokens}


def bench_optimum(vdir: Path, prompt, args, props):
    import torch
    from optimum.intel import OVModelForCausalLM

    t0 = time.perf_counter()
    model = OVModelForCausalLM.from_pretrained(str(vdir), ov_config=dict(props), compile=False)
    sliced = False if args.full_prefill_logits else slice_last_token(model.model)
    model.compile()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt], dtype=torch.long)
    n = ids.shape[1]

    def run():
        start = time.perf_counter()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        token = out.logits[:, -1].argmax(-1)
        first = time.perf_counter()
        generated = [int(token)]
        for step in range(args.new_tokens - 1):
            out = model(input_ids=token.reshape(1, 1), past_key_values=out.past_key_values,
                        attention_mask=torch.ones(1, n + step + 1, dtype=torch.long))
            token = out.logits[:, -1].argmax(-1)
            generated.append(int(token))
        end = time.perf_counter()
        return (first - start) * 1e3, (end - first) * 1e3 / max(1, args.new_tokens - 1), generated

    prefill, decode, tokens = [], [], None
    with torch.inference_mode():
        for i in range(args.warmup + args.reps):
            p, d, tokens = run()
            if i >= args.warmup:
                prefill.append(p)
                decode.append(d)
    del model
    gc.collect()
    return {"backend": "optimum.intel.OVModelForCausalLM (Python loop)", "lm_head_sliced_to_last_token": sliced,
            "prefill_ms": median(prefill), "decode_ms_per_token": median(decode),
            "prefill_ms_runs": [round(x, 2) for x in prefill], "decode_ms_runs": [round(x, 3) for x in decode],
            "pipeline_load_s": round(load_s, 1), "generated_ids": tokens}


def accuracy(vdir: Path, texts, args, props, reference):
    """Teacher-forced perplexity (and KL / top-1 against `reference` if given) with every position's logits."""
    import math

    import torch
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(str(vdir), ov_config=dict(props))
    nll, kl, agree, count = 0.0, 0.0, 0, 0
    with torch.inference_mode():
        for k, ids in enumerate(texts):
            t = torch.tensor([ids], dtype=torch.long)
            logits = model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0, :-1].float().log_softmax(-1)
            target = t[0, 1:]
            nll += -logits.gather(-1, target[:, None]).sum().item()
            count += target.numel()
            if reference is not None:
                ref = reference[k]
                kl += (ref.exp() * (ref - logits)).sum().item()
                agree += int((logits.argmax(-1) == ref.argmax(-1)).sum())
    del model
    gc.collect()
    out = {"ppl": round(math.exp(nll / count), 3), "ppl_tokens": count}
    if reference is not None:
        out.update({"kl": round(kl / count, 5), "top1": round(100 * agree / count, 2)})
    return out


def fp32_reference(args, texts):
    """The eager fp32 torch model's log-probabilities (the HF dir), like benchmarks/llm.py _float_logits."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(Path(args.root) / "hf"), dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for ids in texts:
            out.append(model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1))
    del model
    gc.collect()
    return out


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for key, dist in (("ov_version", "openvino"), ("openvino_genai_version", "openvino-genai"),
                      ("nncf_version", "nncf"), ("optimum_intel_version", "optimum-intel"),
                      ("optimum_version", "optimum"), ("transformers_version", "transformers"),
                      ("torch_version", "torch")):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = None
    try:
        import openvino as ov

        out["ov_build"] = ov.get_version()
    except Exception:
        pass
    return out


def ir_size_mb(vdir: Path) -> float:
    return round(sum(p.stat().st_size for p in vdir.glob("openvino_model.*")) / 2**20, 1)


def bench_variant(name: str, args, prompt, texts, source, reference) -> dict:
    vdir = Path(args.root) / f"ov-{name}"
    if not (vdir / "openvino_model.xml").exists():
        raise SystemExit(f"{vdir} missing: run the export first (without --bench-only)")
    props = ov_properties(args)
    log(f"{name}: benchmarking ({args.runtime})")
    if args.runtime == "genai":
        try:
            result = bench_genai(vdir, prompt, args, props)
        except Exception as exc:
            if not args.fallback:
                raise
            log(f"{name}: openvino_genai failed ({exc!r}); falling back to --runtime optimum")
            result = bench_optimum(vdir, prompt, args, props)
            result["genai_error"] = repr(exc)
    else:
        result = bench_optimum(vdir, prompt, args, props)
    row = {"runtime": "openvino", "variant": name, "prefill_ms": result.pop("prefill_ms"),
           "decode_ms_per_token": result.pop("decode_ms_per_token"), **versions(),
           "weights": variant_doc(name, args), "ir_mb": ir_size_mb(vdir), "batch": 1, "threads": args.threads,
           "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "warmup": args.warmup, "reps": args.reps,
           "ov_user_properties": props, "inputs": source, **result}
    if not args.no_props:
        row["ov_properties"] = read_back_properties(vdir, props)
    if texts:
        log(f"{name}: perplexity on {len(texts)} passages")
        row.update(accuracy(vdir, texts, args, props, reference))
    return row


def emit(row: dict, args) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


def bench_all(args) -> None:
    if len(args.variants) > 1 and not args.no_isolate:
        # one fresh process per variant (no shared thread pools / allocator state between them)
        rc = 0
        for name in args.variants:
            cmd = [sys.executable, os.path.abspath(__file__), *passthrough_args(args), "--bench-only",
                   "--no-isolate", "--variants", name]
            rc |= subprocess.run(cmd).returncode
        if rc:
            raise SystemExit(rc)
        return
    prompt, texts, source = token_inputs(args)
    if len(prompt) != args.prompt_tokens:
        raise SystemExit(f"prompt has {len(prompt)} ids, expected {args.prompt_tokens}")
    reference = fp32_reference(args, texts) if (texts and args.kl) else None
    for name in args.variants:
        emit(bench_variant(name, args, prompt, texts, source, reference), args)


def passthrough_args(args) -> list:
    out = ["--root", str(args.root), "--threads", str(args.threads),
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
           "--warmup", str(args.warmup), "--reps", str(args.reps), "--runtime", args.runtime,
           "--attention-backend", args.attention_backend, "--int4-group-size", str(args.int4_group_size),
           "--ppl", str(args.ppl)]
    for flag in ("int4_sym", "kl", "no_props", "full_prefill_logits"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    if not args.fallback:
        out.append("--no-fallback")
    for key in ("project_python", "inference_precision", "kv_cache_precision", "prompt_ids", "out"):
        if getattr(args, key):
            out += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="where hf/ and ov-*/ live")
    p.add_argument("--project-python", default=str(PROJECT_PYTHON),
                   help="the project's Python (transformers 5): reads the GGUF for step 1, writes the passages' ids")
    p.add_argument("--variants", nargs="+", default=["fp32", "int8", "int4"], choices=ALL_VARIANTS)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--export-only", action="store_true", help="export what is missing, no benchmark")
    mode.add_argument("--bench-only", action="store_true", help="benchmark existing exports only")
    p.add_argument("--int4-group-size", type=int, default=32, help="int4 group size (NNCF; 32 = project's woq_int4)")
    p.add_argument("--int4-sym", action="store_true", help="INT4_SYM instead of INT4_ASYM")
    p.add_argument("--threads", type=int, default=2, help="INFERENCE_NUM_THREADS")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--runtime", choices=["genai", "optimum"], default="genai")
    p.add_argument("--attention-backend", choices=["SDPA", "PA"], default="SDPA",
                   help="genai: SDPA = stateful model as exported; PA = paged attention (continuous batching)")
    p.add_argument("--no-fallback", dest="fallback", action="store_false",
                   help="fail instead of falling back to --runtime optimum when openvino_genai fails")
    p.add_argument("--full-prefill-logits", action="store_true",
                   help="optimum runtime: keep the LM head over all prompt positions (not sliced)")
    p.add_argument("--inference-precision", help="INFERENCE_PRECISION_HINT (default: plugin default, bf16 "
                   "on AVX512_BF16 CPUs); e.g. f32")
    p.add_argument("--kv-cache-precision", help="KV_CACHE_PRECISION (default: IR rt_info / plugin default)")
    p.add_argument("--ppl", type=int, default=0, help="passages for teacher-forced perplexity (0: none)")
    p.add_argument("--kl", action="store_true", help="with --ppl: also KL and top-1 vs the eager fp32 torch model")
    p.add_argument("--prompt-ids", help="JSON token ids: a list, or {\"prompt\": [...], \"ppl\": [[...], ...]}")
    p.add_argument("--no-props", action="store_true", help="skip the extra compile that reads back CPU properties")
    p.add_argument("--no-isolate", action="store_true", help="benchmark all variants in this process")
    p.add_argument("--out", help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    Path(args.root).mkdir(parents=True, exist_ok=True)
    if not args.bench_only:
        export_all(args)
    if not args.export_only:
        bench_all(args)


if __name__ == "__main__":
    main()
