"""The ``nn`` head trained from an in-memory array vs from the store (``StoreRows``): seconds per
epoch and peak RSS, each in a fresh process, on a synthetic store of N x D float32 features.

Usage::

    python benchmarks/nn_stream.py --rows 200000 --dim 1280 --max-iter 2 --file /tmp/nn_stream.h5
    python benchmarks/nn_stream.py --modes array --early-stopping --repo /path/to/older/checkout

The file is written once (chunks of ~1 MiB with fletcher32, as the store writes ``features``)
and deleted at the end unless ``--keep``. ``array`` reads the whole matrix with h5py and fits
on it (the read is timed apart); ``store`` fits on ``StoreRows(file)``. Peak RSS is the child's
``ru_maxrss``; ``baseline`` is a child that only imports torch and the estimator. Besides
wall time, the fit's CPU time (all threads) and, for ``store``, the seconds spent reading the
store, per epoch: on a shared machine wall time drifts with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLASSES = 10


def write_file(path: Path, rows: int, dim: int) -> None:
    import h5py

    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 0.5, (CLASSES, dim)).astype(np.float32)
    labels = rng.integers(0, CLASSES, rows)
    chunk_rows = max(1, (1 << 20) // (dim * 4))
    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset(
            "features", (rows, dim), np.float32, chunks=(chunk_rows, dim), fletcher32=True
        )
        for start in range(0, rows, 16384):
            stop = min(rows, start + 16384)
            noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
            ds[start:stop] = centres[labels[start:stop]] + noise
        fh.create_dataset("labels", data=labels)


def child(mode: str, path: str, max_iter: int, early_stopping: bool) -> dict:
    import h5py

    from pipeline.estimators import TorchMLPClassifier
    from pipeline.rows import StoreRows

    out: dict = {"mode": mode}
    read_s = [0.0]
    take = StoreRows.take

    def timed_take(self: StoreRows, positions: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return take(self, positions)
        finally:
            read_s[0] += time.perf_counter() - started

    StoreRows.take = timed_take  # every read of the store goes through take
    if mode == "baseline":
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        return out
    with h5py.File(path, "r") as fh:
        y = fh["labels"][:]
    started = time.perf_counter()
    if mode == "array":
        with h5py.File(path, "r") as fh:
            X = fh["features"][:]
        out["read_s"] = round(time.perf_counter() - started, 2)
    else:
        X = StoreRows(path)
    clf = TorchMLPClassifier(
        max_iter=max_iter, early_stopping=early_stopping, random_state=0, device="cpu"
    )
    started, cpu = time.perf_counter(), time.process_time()
    clf.fit(X, y)
    out["fit_s"] = round(time.perf_counter() - started, 2)
    out["s_per_epoch"] = round(out["fit_s"] / clf.n_iter_, 2)
    out["cpu_s_per_epoch"] = round((time.process_time() - cpu) / clf.n_iter_, 2)
    if mode == "store":
        out["store_read_s_per_epoch"] = round(read_s[0] / clf.n_iter_, 2)
    out["loss_curve"] = [round(v, 6) for v in clf.loss_curve_]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--max-iter", type=int, default=2)
    parser.add_argument("--early-stopping", action="store_true")
    parser.add_argument("--file", default="/tmp/nn_stream.h5")
    parser.add_argument("--modes", nargs="+", default=["baseline", "array", "store"])
    parser.add_argument("--keep", action="store_true", help="keep the file afterwards")
    parser.add_argument(
        "--repo", default=str(REPO), help="checkout whose pipeline the children import"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.file, args.max_iter, args.early_stopping)))
        return
    path = Path(args.file)
    if not path.exists():
        started = time.perf_counter()
        write_file(path, args.rows, args.dim)
        print(json.dumps({"wrote": str(path), "s": round(time.perf_counter() - started, 1)}))
    env = {**os.environ, "PYTHONPATH": args.repo}
    try:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", mode, "--file", str(path)]
            cmd += ["--max-iter", str(args.max_iter)]
            cmd += ["--early-stopping"] if args.early_stopping else []
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            print(result.stdout.strip().splitlines()[-1], flush=True)
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
