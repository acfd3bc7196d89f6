"""Peak memory of an extraction at growing image counts: it must not grow with N (streamed).

Usage::

    python benchmarks/extract_memory.py --sizes 1000 10000

Each size runs ``pipeline.extract`` (mobilenet_v2 IMAGENET1K_V1, defaults otherwise) in a fresh
process over generated 64x64 JPEGs and reports that process's peak RSS and the largest peak RSS
of its child processes (decoding processes exist only on GPU runs; on CPU, decoding threads
live in the main process). A first run over 16 images, not reported, exports and verifies the
ONNX graph into a fresh cache, so the sizes measure the path every later CPU run takes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PROBE = """
import resource, sys
from pipeline.extract import main
code = main(sys.argv[1:])
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"RSS {me} {kids}", flush=True)
sys.exit(code)
"""


def make_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    print("| images | peak RSS main process (MiB) | peak RSS largest child (MiB) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PIPELINE_CACHE_DIR": f"{tmp}/cache"}
        for n in [16, *args.sizes]:
            data = Path(tmp) / f"d{n}"
            make_images(data, n)
            cmd = [
                sys.executable,
                "-c",
                PROBE,
                "--data",
                str(data),
                "--out",
                f"{tmp}/f{n}.h5",
                "--no-progress",
                "-q",
            ]
            out = subprocess.run(
                cmd, check=True, cwd=REPO, capture_output=True, text=True, env=env
            ).stdout
            me, kids = (int(v) for v in out.split("RSS ")[1].split())
            if n == 16:
                continue  # the warm-up that fills the graph cache
            print(f"| {n} | {me / 1024:.0f} | {kids / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
