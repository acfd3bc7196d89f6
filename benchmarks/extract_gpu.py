"""Extraction on a GPU: ours end to end vs the forward pass alone, on the same device.

For sessions that have a GPU (the issue asks for images/s vs forward-only there)::

    python benchmarks/extract_gpu.py --images 5000 --repeats 3

Rows (images/s, medians of ``--repeats``):

- ``ours``: ``python -m pipeline.extract --device cuda`` as a fresh process (start-up included)
  and its embedding loop alone (from the run's own summary line);
- ``ours, --gpu-decode``: the same with JPEG batches decoded by nvJPEG on the GPU;
- ``forward-only torch``: the backbone on ready GPU tensors, bf16 autocast, channels-last,
  batch 256 (the inference settings ours uses).

``--device cpu`` runs the same script on a CPU (without the ``--gpu-decode`` row), to check it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from extract_throughput import REPO, _backbone, make_photos


def run_ours(data: Path, out: Path, flags: list[str]) -> tuple[float, float]:
    """(images/s end to end, images/s in the embedding loop) of one fresh process."""
    cmd = [sys.executable, "-m", "pipeline.extract", "--data", str(data), "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--no-progress", *flags], check=True, cwd=REPO, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    n, loop = re.search(
        r"embedded (\d+) new in [\d.]+ s \(([\d.]+) images/s\)", done.stdout
    ).groups()
    return int(n) / seconds, float(loop)


def forward_only(device: str, n: int, batch_size: int) -> float:
    import torch

    module = _backbone().module.to(device, memory_format=torch.channels_last)
    batch = torch.randn(batch_size, 3, 224, 224, device=device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        module(batch[:8])  # warm-up
        if cuda:
            torch.cuda.synchronize()
        started, done = time.perf_counter(), 0
        while done < n:
            module(batch)
            done += batch_size
        if cuda:
            torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    variants = {"ours": ["--device", args.device]}
    if cuda:
        variants["ours, --gpu-decode"] = ["--device", args.device, "--gpu-decode"]
    print(
        f"machine: {len(os.sched_getaffinity(0))} cores, device {args.device}; "
        f"{args.images} JPEGs 500x375; mobilenet_v2 IMAGENET1K_V1; medians of {args.repeats}"
    )
    total: dict[str, list[float]] = {k: [] for k in variants}
    loop: dict[str, list[float]] = {k: [] for k in variants}
    forward: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        make_photos(data, args.images)
        for r in range(args.repeats):
            for name, flags in variants.items():
                out = Path(tmp) / f"{len(total[name])}-{name[-3:]}.h5"
                end_to_end, in_loop = run_ours(data, out, flags)
                total[name].append(end_to_end)
                loop[name].append(in_loop)
            forward.append(forward_only(args.device, args.images, 256 if cuda else 64))
            print(
                f"run {r + 1}: "
                + ", ".join(f"{k} {total[k][-1]:.4g} (loop {loop[k][-1]:.4g})" for k in variants)
                + f", forward-only {forward[-1]:.4g}",
                flush=True,
            )
    fwd = statistics.median(forward)
    print("\n| measurement | images/s end to end | images/s in the loop | loop / forward-only |")
    print("|---|---|---|---|")
    for name in variants:
        t, lp = statistics.median(total[name]), statistics.median(loop[name])
        print(f"| {name} | {t:.1f} | {lp:.1f} | {lp / fwd:.2f} |")
    print(f"| forward-only torch ({'bf16, ' if cuda else ''}channels-last) | | {fwd:.1f} | 1.00 |")


if __name__ == "__main__":
    main()
