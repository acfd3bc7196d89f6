"""Extraction throughput: ours end to end vs forward-only (torch, ONNX Runtime) vs the tutorial loop.

Everything is measured in one run on the same generated photo-sized JPEGs, so the ratios are
comparable. Usage::

    python benchmarks/extract_throughput.py --images 800 --repeats 3

Rows printed (images/s, median of ``--repeats`` runs):

- ``ours``: ``python -m pipeline.extract`` as a fresh process, process start included, on a
  fresh ``--out`` each time, after one earlier run has exported and verified the ONNX graph
  (what every run after a user's first one does).
- ``ours, first use``: the very first run, with an empty graph cache: it imports torch,
  builds the network, exports the graph and verifies it against torch (one run).
- ``ours, warm re-run``: the same command again over the unchanged folder (its share of the
  first run's time).
- ``forward-only onnxruntime``: the plain features graph (float NCHW input, normalisation not
  included), exported here, on pre-decoded, pre-normalised tensors (batch 64), ONNX Runtime's
  default session options (all cores, spinning threads).
- ``forward-only torch``: the backbone, fp32, channels-last, batch 64.
- ``tutorial loop``: torchvision ``ImageFolder`` + ``DataLoader(batch_size=8, num_workers=1)``,
  ``no_grad``, fp32, the model's own ``features`` + pooling, contiguous layout; timed from its
  first batch (imports and model load excluded), and again as a fresh process like ours.
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


def run_ours(data: Path, out: Path, extra: list[str], env: dict[str, str]) -> float:
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
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return time.perf_counter() - started


def _backbone():
    from pipeline.engine.backbones import build_backbone, resolve_backbone

    return build_backbone(resolve_backbone("mobilenet_v2", "IMAGENET1K_V1"))


def _timed(run, batch, n: int) -> float:
    run(batch[:8])  # warm-up
    started, done = time.perf_counter(), 0
    while done < n:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def forward_only_torch(n: int) -> float:
    import torch

    module = _backbone().module.to(memory_format=torch.channels_last)
    batch = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _timed(module, batch, n)


def export_plain_graph(path: Path) -> None:
    """The features module alone, float NCHW in: the reference the issue names."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            _backbone().module,
            (torch.zeros(2, 3, 224, 224),),
            str(path),
            input_names=["images"],
            dynamic_axes={"images": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )


def forward_only_onnxruntime(graph: Path, n: int) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((64, 3, 224, 224), dtype=np.float32)
    return _timed(lambda x: session.run(None, {"images": x}), batch, n)


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


TUTORIAL_SCRIPT = """
import sys, torch
from torchvision.datasets import ImageFolder
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
weights = MobileNet_V2_Weights.IMAGENET1K_V1
model = mobilenet_v2(weights=weights).eval()
loader = torch.utils.data.DataLoader(
    ImageFolder(sys.argv[1], transform=weights.transforms()), batch_size=8, num_workers=1
)
with torch.no_grad():
    for images, _ in loader:
        torch.nn.functional.adaptive_avg_pool2d(model.features(images), 1).flatten(1)
"""


def tutorial_process(data: Path, n: int) -> float:
    """The same loop as a fresh ``python`` process: process start included, like ours."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", TUTORIAL_SCRIPT, str(data)], check=True)
    return n / (time.perf_counter() - started)


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
        graph = Path(tmp) / "plain.onnx"
        export_plain_graph(graph)
        env = {**os.environ, "PIPELINE_CACHE_DIR": str(Path(tmp) / "cache")}
        first_use = args.images / run_ours(data, Path(tmp) / "first.h5", args.extra, env)
        print(f"first use (empty graph cache): {first_use:.3g} images/s", flush=True)
        results: dict[str, list[float]] = {
            k: [] for k in ("ours", "warm", "torch", "onnxruntime", "tutorial", "tutorial_process")
        }
        for r in range(args.repeats):
            out = Path(tmp) / f"f{r}.h5"
            first = run_ours(data, out, args.extra, env)
            results["ours"].append(args.images / first)
            results["warm"].append(run_ours(data, out, args.extra, env) / first)
            results["torch"].append(forward_only_torch(args.images // 2))
            results["onnxruntime"].append(forward_only_onnxruntime(graph, args.images))
            results["tutorial"].append(tutorial_loop(data))
            results["tutorial_process"].append(tutorial_process(data, args.images))
            print(
                f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in results.items()),
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print("| measurement | images/s (median) | ours / it |")
    print("|---|---|---|")
    print(f"| ours end to end (process start included) | {med['ours']:.1f} | 1.00 |")
    print(
        f"| ours, first use (graph exported and verified; 1 run) | {first_use:.1f} | "
        f"{med['ours'] / first_use:.2f} |"
    )
    for key, label in [
        ("onnxruntime", "forward-only ONNX Runtime"),
        ("torch", "forward-only torch channels-last"),
        ("tutorial", "tutorial loop (batch 8, 1 worker), timed from its first batch"),
        ("tutorial_process", "tutorial loop as a fresh process (process start included)"),
    ]:
        print(f"| {label} | {med[key]:.1f} | {med['ours'] / med[key]:.2f} |")
    print(
        f"\nwarm re-run over the unchanged folder: {100 * med['warm']:.1f} % of the first run's time"
    )


if __name__ == "__main__":
    main()
