"""JPEG draft decoding (``--jpeg-draft``): speed and accuracy, with and without, in one run.

Usage::

    python benchmarks/draft_accuracy.py [--data ../shared/data/cifar10-mini] [--size 1024]

Upscales the real cifar10-mini JPEGs (train/test ImageFolder layout; the folder is only read,
never copied into the project) to photo size, extracts them with MobileNetV2 with and without
draft decoding, and fits ``logreg`` and ``svc`` on each store (the store's own test split).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-mini"))
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    src = Path(args.data)
    if not src.is_dir():
        sys.exit(f"error: --data: {src} not found (cifar10-mini lives in ../shared/data)")
    print(f"data: {src}, upscaled to {args.size}x{args.size} JPEGs")
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big"
        images = sorted(src.rglob("*.jpg"))
        for path in images:
            target = big / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                resized = image.convert("RGB").resize((args.size, args.size), Image.BICUBIC)
            resized.save(target, quality=90)
        print("| decoding | whole run s | images/s | svc accuracy | logreg accuracy |")
        print("|---|---|---|---|---|")
        for flags in ([], ["--jpeg-draft"]):
            store = Path(tmp) / f"f{len(flags)}.h5"
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pipeline.extract",
                    "--data",
                    str(big),
                    "--out",
                    str(store),
                    "--no-progress",
                    "-q",
                    *flags,
                ],
                check=True,
                cwd=REPO,
                capture_output=True,
            )
            wall = time.perf_counter() - started
            out = Path(tmp) / f"fit{len(flags)}"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pipeline.fit",
                    "--features",
                    str(store),
                    "--clf",
                    "svc,logreg",
                    "--out",
                    str(out),
                    "-q",
                ],
                check=True,
                cwd=REPO,
                capture_output=True,
            )
            results = {
                r["clf"]: r["accuracy"]
                for r in json.loads((out / "report.json").read_text())["results"]
            }
            name = "--jpeg-draft" if flags else "full resolution"
            print(
                f"| {name} | {wall:.1f} | {len(images) / wall:.1f} | {results['svc']:.4f} | "
                f"{results['logreg']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
