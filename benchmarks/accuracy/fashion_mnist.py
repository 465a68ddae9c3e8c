"""Fashion-MNIST: test top-1 of a small CNN in fp32 and int8 (PTQ, QAT, int8-mixed-bf16).

    python -m inductor_quant.benchmarks.accuracy.fashion_mnist              # all 10,000 test images
    python -m inductor_quant.benchmarks.accuracy.fashion_mnist --limit 1000 # the CI slice
    python -m inductor_quant.benchmarks.accuracy.fashion_mnist --train      # remake fashion_cnn.pt

Data: the Debian package `dataset-fashion-mnist` (IDX .gz files; install.sh installs it),
or $FASHION_MNIST_DIR. The weights (`fashion_cnn.pt`, ~200 KB) were made by `--train`
(seed 0, deterministic on one thread). int8 modes run compiled with our passes (freezing
on); the numeric debugger's table and plot for the PTQ model are written next to the JSON.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
WEIGHTS = Path(__file__).with_name("fashion_cnn.pt")
MEAN, STD = 0.2860, 0.3530  # of the training images
BATCH = {"x": {0: torch.export.Dim("batch", max=1024)}}  # dynamic batch: calibrate 100, evaluate 500
FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}


# ----------------------------------------------------------------------------- data
def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (big-endian header: magic 0x0000 08 <ndim>, then the dims) as a uint8 tensor."""
    with gzip.open(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path}: not a uint8 IDX file")
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = bytearray(f.read())
    return torch.frombuffer(data, dtype=torch.uint8).reshape(dims)


def load(split: str, limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float [N,1,28,28] normalized, labels int64 [N]); the first `limit` examples."""
    pattern = FILES[split]
    images_path, labels_path = DATA_DIR / pattern.format("images", 3), DATA_DIR / pattern.format("labels", 1)
    if not images_path.exists():
        raise FileNotFoundError(f"{images_path} missing: run benchmarks/accuracy/install.sh "
                                "(apt-get install dataset-fashion-mnist) or set FASHION_MNIST_DIR")
    images, labels = read_idx(images_path)[:limit], read_idx(labels_path)[:limit]
    return ((images.float() / 255 - MEAN) / STD).unsqueeze(1), labels.long()


# ----------------------------------------------------------------------------- model
class FashionCNN(nn.Module):
    """conv-bn-relu-pool x2 (BN folds in PTQ, trains in QAT) and one linear: ~90% top-1."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        self.fc = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


def fit(model: nn.Module, images, labels, steps: int, lr: float, batch: int = 64, seed: int = 0) -> nn.Module:
    """Plain SGD with momentum over shuffled batches; `model` may be an exported QAT graph."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.randperm(len(labels), generator=gen)
    for step in range(steps):
        idx = order[(step * batch) % len(labels):][:batch]
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def train(epochs: int = 2) -> FashionCNN:
    torch.manual_seed(0)
    images, labels = load("train")
    model = FashionCNN().train()
    fit(model, images, labels, steps=epochs * len(labels) // 64, lr=0.02)
    torch.save(model.state_dict(), WEIGHTS)
    return model.eval()


def pretrained() -> FashionCNN:
    model = FashionCNN()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval()


# ----------------------------------------------------------------------------- modes
def _quantizer(is_qat: bool = False):
    from inductor_quant.quantizer import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=is_qat))


def ptq(model: nn.Module, calibration: torch.Tensor) -> torch.fx.GraphModule:
    from inductor_quant import quantize

    return quantize(model, (calibration[:100],), list(calibration.split(100)), dynamic_shapes=BATCH)


def qat(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.fx.GraphModule:
    """A short fine-tune of the fp32 weights with fake-quant (observers on, BN updating)."""
    from inductor_quant import convert_pt2e, move_exported_model_to_eval, prepare_qat_pt2e

    exported = torch.export.export(copy.deepcopy(model).train(), (images[:64],), dynamic_shapes=BATCH).module()
    prepared = prepare_qat_pt2e(exported, _quantizer(is_qat=True))
    fit(prepared, images, labels, steps=steps, lr=1e-3)
    return convert_pt2e(move_exported_model_to_eval(prepared))


def top1(fn: Callable, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    with torch.no_grad():
        hits = sum(int((fn(x).argmax(-1) == y).sum()) for x, y in zip(images.split(batch), labels.split(batch)))
    return 100.0 * hits / len(labels)


def _compiled(model, bf16: bool = False) -> Callable:
    torch._dynamo.reset()
    compiled = torch.compile(model)

    def run(x):
        with torch._inductor.config.patch(freezing=True), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return compiled(x).float()

    return run


def evaluate(limit: Optional[int] = None, qat_steps: int = 300, out_dir: Optional[Path] = None) -> dict:
    """Top-1 per mode on the first `limit` test images; debugger report for the PTQ model."""
    import inductor_quant.passes as iq_passes
    from inductor_quant.numerics import compare

    torch.manual_seed(0)
    test_x, test_y = load("test", limit)
    train_x, train_y = load("train")
    model = pretrained()
    int8 = ptq(model, train_x[:1000])
    int8_qat = qat(model, train_x, train_y, qat_steps)
    # QAT trains on: its fair baseline is the fp32 model fine-tuned with the same steps and seed
    tuned = fit(copy.deepcopy(model).train(), train_x, train_y, steps=qat_steps, lr=1e-3).eval()
    modes = {
        "fp32 eager": model,
        "fp32 fine-tuned (QAT baseline)": tuned,
        "fp32 compiled": _compiled(model),
        "int8 PTQ": _compiled(int8),
        "int8 QAT": _compiled(int8_qat),
        "int8-mixed-bf16 PTQ": _compiled(int8, bf16=True),
    }
    results = {"images": len(test_y), "qat_steps": qat_steps, "top1": {}, "seconds": {}, "fused": {}}
    was_on = iq_passes.builtin_fusions_enabled()
    iq_passes.set_builtin_fusions(False)  # only our passes may produce the int8 kernels measured here
    try:
        for name, fn in modes.items():
            iq_passes.reset_stats()
            start = time.perf_counter()
            results["top1"][name] = top1(fn, test_x, test_y)
            results["seconds"][name] = round(time.perf_counter() - start, 2)  # includes compiling
            results["fused"][name] = iq_passes.stats()["fused"]
    finally:
        iq_passes.set_builtin_fusions(was_on)
    report = compare(model, int8, list(test_x[:1000].split(250)))
    results["debugger"] = {"worst_layer": report.worst(1)[0].name, "end_to_end": report.end_to_end}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fashion_mnist.json").write_text(json.dumps(results, indent=2))
        (out_dir / "fashion_mnist_numerics.txt").write_text(report.table() + "\n")
        (out_dir / "fashion_mnist_numerics.json").write_text(report.to_json())
        try:
            report.plot(str(out_dir / "fashion_mnist_numerics.png"), title="Fashion-MNIST CNN, int8 PTQ")
        except ImportError as exc:
            print(f"(no plot: {exc})", file=sys.stderr)
    return results


BASELINE = {"int8 QAT": "fp32 fine-tuned (QAT baseline)"}  # every other mode: "fp32 eager"


def markdown(results: dict) -> str:
    top1 = results["top1"]
    lines = [f"Fashion-MNIST test top-1, {results['images']} images (QAT: {results['qat_steps']} steps)", "",
             "| mode | top-1 % | vs its fp32 baseline (points) |", "|---|---:|---:|"]
    lines += [f"| {m} | {acc:.2f} | {acc - top1[BASELINE.get(m, 'fp32 eager')]:+.2f} |" for m, acc in top1.items()]
    fused = {m: sum(f.values()) for m, f in results["fused"].items() if f}
    lines += ["", "rewrites by our passes: " + ", ".join(f"{m} {n}" for m, n in fused.items())]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--qat-steps", type=int, default=300)
    parser.add_argument("--train", action="store_true", help="retrain fashion_cnn.pt first")
    parser.add_argument("--out", type=Path, default=Path("results/accuracy"))
    args = parser.parse_args(argv)
    if args.train:
        torch.set_num_threads(1)  # deterministic weights
        train()
        torch.set_num_threads(2)
    results = evaluate(args.limit, args.qat_steps, args.out)
    print(markdown(results))
    print(f"debugger: worst layer {results['debugger']['worst_layer']}; tables and plot in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
