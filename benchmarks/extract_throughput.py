"""Extraction throughput: ours end to end vs forward-only (torch, ONNX Runtime) vs the tutorial loop.

Everything is measured in one run on the same generated photo-sized JPEGs, so the ratios are
comparable. Usage::

    python benchmarks/extract_throughput.py --images 800 --repeats 3

Rows printed (images/s, median of ``--repeats`` runs):

- ``ours``: ``python -m pipeline.extract`` as a fresh process, process start and model load
  included, on a fresh ``--out`` each time.
- ``ours, warm re-run``: the same command again over the unchanged folder (seconds, and its
  share of the first run's time).
- ``forward-only torch`` / ``forward-only onnxruntime``: the backbone alone on pre-decoded,
  preprocessed tensors (batch 64), fp32, all cores; torch with channels-last.
- ``tutorial loop``: torchvision ``ImageFolder`` + ``DataLoader(batch_size=8, num_workers=1)``,
  ``no_grad``, fp32, the model's own ``features`` + pooling, contiguous layout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def make_photos(root: Path, n: int, size=(500, 375), classes: int = 4, seed: int = 0) -> None:
    """Photo-like JPEGs: smooth colour fields plus texture, so they decode like real photos."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0.005, 0.03, 3)
        base = np.stack(
            [np.sin(xx * a + i), np.cos(yy * b + 2 * i), np.sin((xx + yy) * c)], axis=-1
        )
        noise = rng.normal(0, 0.15, (h, w, 3))
        pixels = np.clip((base * 0.4 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def run_ours(data: Path, out: Path, extra: list[str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.extract",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        "-q",
        *extra,
    ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - started


def forward_only(n: int, backend: str) -> float:
    import torch

    from pipeline.backbones import resolve_backbone
    from pipeline.embedding import make_runner

    spec = resolve_backbone("mobilenet_v2", "IMAGENET1K_V1")
    runner = make_runner(spec, torch.device("cpu"), "fp32", backend)
    assert runner.backend == backend, runner.backend
    batch = torch.randn(64, 3, spec.input_size, spec.input_size)
    runner(batch[:8])  # warm-up
    started, done = time.perf_counter(), 0
    while done < n:
        runner(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def tutorial_loop(data: Path) -> float:
    """The loop most transfer-learning tutorials teach, timed from the first batch request."""
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    model = mobilenet_v2(weights=weights).eval()
    dataset = ImageFolder(str(data), transform=weights.transforms())
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=1)
    started = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            torch.nn.functional.adaptive_avg_pool2d(model.features(images), 1).flatten(1)
    return len(dataset) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="more flags for pipeline.extract (e.g. --workers 2)",
    )
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {cores} cores, {os.uname().machine}; {args.images} JPEGs 500x375; "
        f"mobilenet_v2 IMAGENET1K_V1; medians of {args.repeats}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        make_photos(data, args.images)
        results: dict[str, list[float]] = {
            k: [] for k in ("ours", "warm", "torch", "onnxruntime", "tutorial")
        }
        for r in range(args.repeats):
            out = Path(tmp) / f"f{r}.h5"
            first = run_ours(data, out, args.extra)
            results["ours"].append(args.images / first)
            results["warm"].append(run_ours(data, out, args.extra) / first)
            results["torch"].append(forward_only(args.images // 2, "torch"))
            results["onnxruntime"].append(forward_only(args.images, "onnxruntime"))
            results["tutorial"].append(tutorial_loop(data))
            print(
                f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in results.items()),
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print("| measurement | images/s (median) | ours / it |")
    print("|---|---|---|")
    print(f"| ours end to end (process start included) | {med['ours']:.1f} | 1.00 |")
    for key, label in [
        ("onnxruntime", "forward-only ONNX Runtime"),
        ("torch", "forward-only torch channels-last"),
        ("tutorial", "tutorial loop (batch 8, 1 worker)"),
    ]:
        print(f"| {label} | {med[key]:.1f} | {med['ours'] / med[key]:.2f} |")
    print(
        f"\nwarm re-run over the unchanged folder: {100 * med['warm']:.1f} % of the first run's time"
    )


if __name__ == "__main__":
    main()
