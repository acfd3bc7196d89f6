"""timm backbones next to their torchvision counterparts: images/s on the same images, one run.

Pairs: torchvision ``resnet18`` vs ``timm:resnet18``, torchvision ``mobilenet_v2`` vs
``timm:mobilenetv2_100``; weights ``none`` (random init: speed does not depend on the values),
fp32 on the CPU. Each model's runner is built once per backend (ONNX Runtime's graph exported
and verified against torch first, as ``pipeline.extract`` does); then, ``--repeats`` times, every
model embeds the same images, in an order rotated each repeat (interleaved, so drift of the
shared machine hits all alike). Printed per model and backend (median over repeats):

- ``end to end``: :func:`pipeline.engine.runners.embed_images` over the image files: decode,
  the model's own resize and crop (timm's preset for timm models: bicubic, resize 235 for
  resnet18 and 256 for mobilenetv2_100; torchvision's: bilinear, 256), forward;
- ``forward``: the runner alone on the model's uint8 crops, batch 32.

and per pair the ratio timm / torchvision of the medians, with the range of the per-repeat
ratios. Usage::

    python benchmarks/timm_backbones.py --images 128 --repeats 5

Images: ``../shared/data/cifar10-mini`` (32 x 32 JPEGs) when present and ``--photos`` is not
given, else generated photo-sized JPEGs (500 x 375).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_throughput import make_photos  # noqa: E402
from machine import describe  # noqa: E402

PAIRS = [("resnet18", "timm:resnet18"), ("mobilenet_v2", "timm:mobilenetv2_100")]
REPO = Path(__file__).resolve().parent.parent
# ../shared beside the checkout (/work/main), or beside the folder of worktrees (/work/wt/NAME).
CIFAR = next(
    (
        p / "shared/data/cifar10-mini/train"
        for p in (REPO.parent, REPO.parent.parent)
        if (p / "shared/data/cifar10-mini/train").is_dir()
    ),
    REPO.parent / "shared/data/cifar10-mini/train",
)


def image_files(n: int, photos: bool, folder: Path) -> tuple[list[str], str]:
    if not photos and CIFAR.is_dir():
        files = sorted(str(p) for p in CIFAR.rglob("*.jpg") if p.is_file())[:n]
        if len(files) == n:
            return files, f"{n} cifar10-mini JPEGs (32 x 32)"
    make_photos(folder, n)
    return sorted(str(p) for p in folder.rglob("*.jpg")), f"{n} generated JPEGs (500 x 375)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="onnxruntime,torch")
    parser.add_argument("--photos", action="store_true", help="generated photos, not cifar10-mini")
    args = parser.parse_args()

    import torch

    from pipeline.engine.backbones import resolve_backbone
    from pipeline.engine.runners import embed_images, make_runner
    from pipeline.engine.sources import decode_image

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    print(f"machine: {describe('cpu')}")
    print(f"uptime: {os.popen('uptime').read().strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PIPELINE_CACHE_DIR", str(Path(tmp) / "cache"))
        files, what = image_files(args.images, args.photos, Path(tmp) / "photos")
        print(f"images: {what}; repeats {args.repeats}; threads {cores}")
        models = [m for pair in PAIRS for m in pair]
        runs = {}
        for backend in args.backends.split(","):
            for model in models:
                spec = resolve_backbone(model, "none")
                runner = make_runner(spec, "cpu", "fp32", backend, threads=cores)
                crops = np.stack([spec.preprocessing.crop(decode_image(f)) for f in files])
                runs[(model, backend)] = (spec, runner, crops)
                print(
                    f"built {model:22s} {backend:12s} -> {runner.backend} ({runner.feature_dim}-d)",
                    flush=True,
                )
        times: dict[tuple[str, str, str], list[float]] = {
            k + (s,): [] for k in runs for s in ("e2e", "fwd")
        }
        keys = list(runs)
        for r in range(args.repeats):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                spec, runner, crops = runs[key]
                started = time.perf_counter()
                embed_images(
                    lambda i: decode_image(files[i]),
                    len(files),
                    spec.preprocessing,
                    runner,
                    batch_size=32,
                    workers=cores,
                )
                times[key + ("e2e",)].append(len(files) / (time.perf_counter() - started))
                started = time.perf_counter()
                for i in range(0, len(crops), 32):
                    runner(crops[i : i + 32])
                times[key + ("fwd",)].append(len(files) / (time.perf_counter() - started))
            done = ", ".join(f"{m}/{b} {times[(m, b, 'e2e')][-1]:.1f}" for m, b in keys)
            print(f"repeat {r + 1}: end to end images/s: {done}", flush=True)
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print("\n| model | backend | end to end, images/s | forward, images/s |")
    print("|---|---|---|---|")
    for model, backend in keys:
        e2e = statistics.median(times[(model, backend, "e2e")])
        fwd = statistics.median(times[(model, backend, "fwd")])
        print(f"| {model} | {runs[(model, backend)][1].backend} | {e2e:.1f} | {fwd:.1f} |")
    print("\n| pair | backend | timm / torchvision, end to end | forward |")
    print("|---|---|---|---|")
    for tv, tm in PAIRS:
        for backend in args.backends.split(","):
            cells = []
            for stage in ("e2e", "fwd"):
                a, b = times[(tm, backend, stage)], times[(tv, backend, stage)]
                ratios = [x / y for x, y in zip(a, b, strict=True)]
                cells.append(
                    f"{statistics.median(a) / statistics.median(b):.2f} "
                    f"({min(ratios):.2f}-{max(ratios):.2f})"
                )
            print(f"| {tm} / {tv} | {backend} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
