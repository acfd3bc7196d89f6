"""Extraction on a GPU (issue 16): ours vs the forward pass alone, and decoding per core.

For sessions that have a GPU (``benchmarks/gpu_session.sh`` runs both)::

    python benchmarks/extract_gpu.py --images 2000 --repeats 3 --workers-sweep 1,2,4,8,15
    python benchmarks/extract_gpu.py --model convnext_base --weights none --images 2000

All on the same generated photo-like 500x375 JPEGs (``--distinct`` different images, copied to
``--images`` files so that making them takes seconds); medians of ``--repeats``:

- ``ours``: ``python -m pipeline.extract`` as a fresh process, start-up included ("end to
  end"), and its embedding loop alone (the images/s of the run's own summary line);
- ``ours, --gpu-decode``: the same with JPEG batches decoded by nvJPEG (CUDA only);
- ``forward-only``: the module ours runs (the weights' normalisation + backbone, channels-last)
  on a uint8 batch already on the device, at the batch size and precision ours resolves
  (``resolve_runtime``: batch 256 and bf16 autocast on a bf16 GPU). Warmed up at that batch
  size, then timed for at least ``--forward-seconds`` per repeat, synchronized before the clock
  stops. ``--cudnn-benchmark`` adds the same with ``torch.backends.cudnn.benchmark = True``
  (ours leaves it off);
- decoding: PIL decode + resize + crop in this process on one core (what one decoding worker
  does per image); with ``--workers-sweep 1,2,...``, per worker count, ours' decoding engine
  alone (DataLoader processes, pinned memory on CUDA, nothing sent to the device; batches of
  ``--sweep-batch`` so that every worker gets several, timed from the first batch); with
  ``--ours-sweep``, ours' loop and end to end with ``--workers N`` (one run each, on the first
  ``--sweep-images`` JPEGs). A DataLoader worker makes whole batches, so ours at batch 256 keeps
  at most images / 256 workers busy: a short run cannot show what many workers do.

Prints markdown tables ready to paste, headed by the machine (GPU, cores, torch), and writes
every number to ``--json``. ``--device cpu`` runs the same on a CPU (no ``--gpu-decode``
row), to check the script; its ratios mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import machine
from extract_throughput import REPO, make_photos


def make_images(root: Path, n: int, distinct: int, size: tuple[int, int]) -> list[str]:
    """``n`` JPEGs in 4 class folders: ``distinct`` generated ones, then copies of them."""
    source = root.parent / "distinct"
    make_photos(source, min(n, distinct), size=size)
    originals = sorted(source.rglob("*.jpg"))
    paths = []
    for i in range(n):
        target = root / f"class{i % 4}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(originals[i % len(originals)], target)
        paths.append(str(target))
    return paths


def run_ours(data: Path, out: Path, flags: list[str]) -> tuple[float, float]:
    """(images/s end to end, images/s in the embedding loop) of one fresh process."""
    cmd = [sys.executable, "-m", "pipeline.extract", "--data", str(data), "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--no-progress", *flags], cwd=REPO, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd + flags)} failed:\n{done.stderr[-3000:]}")
    out.unlink(missing_ok=True)
    shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)
    n, loop = re.search(
        r"embedded (\d+) new in [\d.]+ s \(([\d.]+) images/s\)", done.stdout
    ).groups()
    return int(n) / seconds, float(loop)


class ForwardOnly:
    """The module ours runs, on a resident uint8 batch, timed after a warm-up at full size."""

    def __init__(self, model: str, weights: str, device: str, precision: str, batch: int):
        import torch

        from pipeline._runtime import resolve_runtime
        from pipeline.engine.backbones import build_backbone, resolve_backbone
        from pipeline.engine.runners import TorchRunner

        self.runtime = resolve_runtime(device=device, precision=precision, batch_size=batch)
        spec = resolve_backbone(model, weights)
        runner = TorchRunner(build_backbone(spec), self.runtime.device, self.runtime.precision)
        self.module, self.device = runner.module, str(self.runtime.device)
        size = spec.input_size
        self.batch = torch.randint(
            0, 256, (self.runtime.batch_size, size, size, 3), dtype=torch.uint8
        ).to(self.runtime.device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.runtime.precision)

    def _precision(self) -> Any:
        """What ours' runner does around the network: autocast, or fp32 without TF32."""
        import torch

        from pipeline.engine.runners import full_fp32

        if self.dtype is None:
            return full_fp32()
        return torch.autocast(self.runtime.device.type, dtype=self.dtype)

    def _run(self, min_seconds: float, min_batches: int) -> float:
        import torch

        done, started = 0, time.perf_counter()
        with torch.inference_mode(), self._precision():
            while True:
                for _ in range(min(5, min_batches)):
                    self.module(self.batch)
                    done += len(self.batch)
                machine.sync(self.device)
                elapsed = time.perf_counter() - started
                if elapsed >= min_seconds and done >= min_batches * len(self.batch):
                    return done / elapsed

    def measure(
        self, repeats: int, min_seconds: float, min_batches: int, cudnn_benchmark: bool = False
    ) -> list[float]:
        """images/s of each repeat (>= min_seconds and min_batches full batches), after a
        warm-up of >= 3 full batches and min_seconds / 2."""
        import torch

        torch.backends.cudnn.benchmark = cudnn_benchmark
        self._run(min_seconds / 2, min(3, min_batches))
        return [self._run(min_seconds, min_batches) for _ in range(repeats)]


class _Load:
    """``i -> RGB image``: picklable, for the DataLoader workers."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __call__(self, i: int) -> Any:
        from pipeline.engine.sources import decode_image

        return decode_image(self.paths[i])


def decode_only(
    paths: list[str], model: str, weights: str, device: str, workers: int, batch_size: int
) -> float:
    """images/s of ours' decoding engine alone: ``workers`` processes (0: this thread), pinned
    memory on CUDA. Timed from the first batch on (worker start-up left out), unless there is
    only one batch."""
    from pipeline.engine.backbones import resolve_backbone
    from pipeline.engine.decoding import iter_batches

    pre = resolve_backbone(model, weights).preprocessing
    batches = iter_batches(
        _Load(paths),
        len(paths),
        pre,
        batch_size=batch_size,
        workers=workers,
        processes=True,
        pin_memory=device.startswith("cuda"),
    )
    started = time.perf_counter()
    first = len(next(batches).indices)
    after_first, n = time.perf_counter(), 0
    for batch in batches:
        n += len(batch.indices)
    if n == 0:
        return first / (after_first - started)
    return n / (time.perf_counter() - after_first)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", default="auto", help="auto | DEFAULT | none | a name")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=256)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=0, help="0: as ours (256 on GPU)")
    parser.add_argument("--no-gpu-decode", action="store_true", help="skip that variant")
    parser.add_argument("--forward-seconds", type=float, default=2.0)
    parser.add_argument("--forward-min-batches", type=int, default=20)
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--decode-images", type=int, default=300, help="one-core decode; 0: skip")
    parser.add_argument(
        "--workers-sweep", default="", help="decode-only with these workers, e.g. 1,2,4,8,15"
    )
    parser.add_argument("--sweep-batch", type=int, default=32, help="batch of that decode-only")
    parser.add_argument("--ours-sweep", default="", help="ours with these --workers, e.g. 1,4,8")
    parser.add_argument("--sweep-images", type=int, default=1000, help="images of --ours-sweep")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    args.sweep = [int(w) for w in args.workers_sweep.split(",") if w.strip()]
    args.ours_sweep = [int(w) for w in args.ours_sweep.split(",") if w.strip()]
    return args


def ours_flags(args: argparse.Namespace) -> dict[str, list[str]]:
    common = ["--device", args.device, "--model", args.model, "--weights", args.weights]
    common += ["--precision", args.precision, "--batch-size", str(args.batch_size)]
    variants = {"ours": common}
    if args.device.startswith("cuda") and not args.no_gpu_decode:
        variants["ours, --gpu-decode"] = [*common, "--gpu-decode"]
    return variants


def measure_ours(args, data: Path, tmp: Path, runs: dict[str, dict[str, list[float]]]) -> None:
    """Fill ``runs[variant]["total" | "loop"]``, one repeat at a time."""
    variants = ours_flags(args)
    runs.update({k: {"total": [], "loop": []} for k in variants})
    for r in range(args.repeats):
        for name, flags in variants.items():
            total, loop = run_ours(data, tmp / f"ours-{r}.h5", flags)
            runs[name]["total"].append(total)
            runs[name]["loop"].append(loop)
        line = ", ".join(
            f"{k} {v['total'][-1]:.1f} (loop {v['loop'][-1]:.1f})" for k, v in runs.items()
        )
        print(f"run {r + 1}: {line} images/s", flush=True)


def measure_decoding(args, paths: list[str], data_sweep: Path, tmp: Path, found: dict) -> None:
    """Fill ``found``: decode-only per worker count, then ours per worker count."""
    model, weights = args.model, args.weights
    for w in args.sweep:
        dec = decode_only(paths, model, weights, args.device, w, args.sweep_batch)
        found["sweep"].setdefault(w, {})["decode_only"] = dec
        print(f"decode-only, {w} workers: {dec:.1f} images/s", flush=True)
    common = ours_flags(args)["ours"]
    for w in args.ours_sweep:
        total, loop = run_ours(data_sweep, tmp / f"sweep-{w}.h5", [*common, "--workers", str(w)])
        found["sweep"].setdefault(w, {}).update(ours_loop=loop, ours_total=total)
        print(f"ours, --workers {w}: loop {loop:.1f}, end to end {total:.1f} images/s", flush=True)


def link_subset(paths: list[str], root: Path) -> Path:
    """A folder holding the first ``len(paths)`` images (hard links: no copy of the bytes)."""
    for p in paths:
        target = root / Path(p).parent.name / Path(p).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.hardlink_to(p)
    return root


def print_tables(args, facts: dict[str, Any]) -> None:
    if not facts.get("forward_only"):
        print("no forward-only measurement: no tables")
        return
    fwd = statistics.median(facts["forward_only"])
    rt = facts["runtime"]
    print(f"\nMachine: {facts['machine']}")
    print(
        f"Model {args.model} (weights {facts['weights']}), {rt['precision']}, batch "
        f"{rt['batch_size']}, channels-last, {rt['workers']} decoding workers (ours' default "
        f"here); {args.images} JPEGs {args.size[0]}x{args.size[1]} "
        f"({min(args.images, args.distinct)} distinct); medians of {args.repeats}.\n"
    )
    print(
        "| measurement | images/s end to end | images/s in the loop | end to end / forward-only | loop / forward-only |"
    )
    print("|---|---|---|---|---|")
    for name, v in facts["ours"].items():
        if not v["total"]:
            continue
        t, lp = statistics.median(v["total"]), statistics.median(v["loop"])
        print(f"| {name} | {t:.1f} | {lp:.1f} | {t / fwd:.3f} | {lp / fwd:.3f} |")
    label = f"forward-only ({rt['precision']}, channels-last, batch {rt['batch_size']})"
    print(f"| {label} | | {fwd:.1f} | 1.000 | 1.000 |")
    if facts.get("forward_only_cudnn_benchmark"):
        fb = statistics.median(facts["forward_only_cudnn_benchmark"])
        print(f"| {label}, cudnn.benchmark | | {fb:.1f} | | {fb / fwd:.3f} |")
    runs = "; ".join(
        f"{k} " + " / ".join(f"{x:.1f}" for x in v["total"]) for k, v in facts["ours"].items()
    )
    print(
        f"\nRuns (end to end): {runs}; forward-only "
        + " / ".join(f"{x:.1f}" for x in facts["forward_only"])
    )
    print_decoding(args, facts, fwd)


def print_decoding(args, facts: dict[str, Any], fwd: float) -> None:
    dec = facts["decoding"]
    if not dec["one_core"] and not dec["sweep"]:
        return
    print(
        f"\n| decoding workers | decode-only images/s (batch {args.sweep_batch}, from the first "
        f"batch) | per worker | ours: loop images/s ({min(args.images, args.sweep_images)} "
        "JPEGs) | ours: end to end |"
    )
    print("|---|---|---|---|---|")
    if dec["one_core"]:
        one = statistics.median(dec["one_core"])
        print(f"| 0 (one core, this process) | {one:.1f} | {one:.1f} | | |")
    for w, row in sorted(dec["sweep"].items()):
        d = row.get("decode_only")
        cells = [f"{d:.1f}", f"{d / w:.1f}"] if d else ["", ""]
        cells += [f"{row[k]:.1f}" if k in row else "" for k in ("ours_loop", "ours_total")]
        print(f"| {w} | " + " | ".join(cells) + " |")
    if dec["one_core"]:
        print(
            f"\nOne core decodes {one:.1f} images/s; forward-only runs {fwd:.1f} images/s: "
            f"feeding it takes about {math.ceil(fwd / one)} cores at that rate (this machine "
            f"has {machine.cores()}; ours decodes with {facts['runtime']['workers']} workers "
            "by default)."
        )
    measured = {w: r["decode_only"] for w, r in dec["sweep"].items() if "decode_only" in r}
    if measured:
        w, best = max(measured.items(), key=lambda kv: kv[1])
        verdict = "reaches" if best >= fwd else "stays below"
        print(
            f"Decoding alone peaks at {best:.1f} images/s ({w} workers): it {verdict} forward-only."
        )


def measure(args, facts: dict[str, Any], forward: ForwardOnly) -> None:
    """Forward-only first, then ours, then decoding: a run stopped early (Ctrl-C, a time
    limit's SIGINT) keeps what it measured, most important first."""
    facts["forward_only"] = forward.measure(
        args.repeats, args.forward_seconds, args.forward_min_batches
    )
    print(f"forward-only: {[round(x, 1) for x in facts['forward_only']]} images/s", flush=True)
    if args.cudnn_benchmark:
        facts["forward_only_cudnn_benchmark"] = forward.measure(
            args.repeats, args.forward_seconds, args.forward_min_batches, True
        )
        print(f"forward-only, cudnn.benchmark: {facts['forward_only_cudnn_benchmark']}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        paths = make_images(tmp / "photos", args.images, args.distinct, args.size)
        sweep_data = (
            link_subset(paths[: args.sweep_images], tmp / "sweep") if args.ours_sweep else None
        )
        print(f"{len(paths)} images made in {time.perf_counter() - started:.1f} s", flush=True)
        one_core = facts["decoding"]["one_core"]
        for _ in range(args.repeats if args.decode_images else 0):
            subset = paths[: args.decode_images]
            one_core.append(decode_only(subset, args.model, args.weights, "cpu", 0, 32))
        print(f"decode-only, one core: {one_core} images/s", flush=True)
        measure_ours(args, tmp / "photos", tmp, facts["ours"])
        measure_decoding(args, paths, sweep_data, tmp, facts["decoding"])


def main() -> None:
    args = parse_args()
    print(f"machine: {machine.describe(args.device)}", flush=True)
    forward = ForwardOnly(args.model, args.weights, args.device, args.precision, args.batch_size)
    rt = forward.runtime
    from pipeline.engine.backbones import resolve_backbone

    facts: dict[str, Any] = {
        "machine": machine.describe(args.device),
        "args": vars(args) | {"json": str(args.json)},
        "runtime": {
            "device": str(rt.device),
            "precision": rt.precision,
            "batch_size": rt.batch_size,
            "workers": rt.workers,
        },
        "weights": resolve_backbone(args.model, args.weights).weights or "random init",
        "ours": {},
        "decoding": {"one_core": [], "sweep": {}},
    }
    try:
        measure(args, facts, forward)
    except KeyboardInterrupt:
        print("\nINTERRUPTED: the tables hold what was measured before", flush=True)
    print_tables(args, facts)
    if args.json:
        args.json.write_text(json.dumps(facts, indent=1, default=str))


if __name__ == "__main__":
    main()
