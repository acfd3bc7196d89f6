"""XGBoostClassifier fitted from an in-memory array vs from the store's rows (StoreRows, read in
blocks into a QuantileDMatrix): fit seconds, peak RSS, holdout accuracy; each fit in a fresh
process.

python benchmarks/xgboost_rows.py --store /tmp/xgb_rows.h5 --rows 200000 --dim 1280
(writes the synthetic store first when it is missing; delete it afterwards). Modes: ``array``
(the training rows read into memory, then fitted), ``rows`` (a StoreRows), ``one-batch`` (the
array binned in one batch, as ``XGBClassifier.fit`` bins it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import _xgb_rows  # noqa: E402
from pipeline.estimators import XGBoostClassifier  # noqa: E402
from pipeline.rows import BLOCK_ROWS, StoreRows, iter_blocks  # noqa: E402

MODES = ("array", "rows", "one-batch")


def make_store(path: Path, rows: int, dim: int, classes: int) -> None:
    """Gaussian classes in ``dim`` dimensions, chunked like a real store (about 1 MiB, with
    fletcher32), written ``BLOCK_ROWS`` rows at a time."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.08, (classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset(
            "features",
            (rows, dim),
            np.float32,
            chunks=(max(1, (1 << 20) // (4 * dim)), dim),
            fletcher32=True,
        )
        for start in range(0, rows, BLOCK_ROWS):
            stop = min(rows, start + BLOCK_ROWS)
            noise = rng.normal(0, 1, (stop - start, dim)).astype(np.float32)
            ds[start:stop] = centres[labels[start:stop]] + noise
        fh.create_dataset("labels", data=labels)


def fit_once(path: Path, mode: str, n_estimators: int, test_share: float) -> dict:
    """One fit in this process: ``mode`` ``array`` reads the training rows into memory first,
    ``rows`` hands XGBoost a StoreRows, ``one-batch`` is ``array`` binned in one batch (what
    ``XGBClassifier.fit`` on the array does, as the fit did before it read in blocks)."""
    with h5py.File(path, "r") as fh:
        labels = fh["labels"][:]
    n_train = int(len(labels) * (1 - test_share))
    train = StoreRows(path, np.arange(n_train))
    started = time.perf_counter()
    X = train if mode == "rows" else np.asarray(train)
    if mode == "one-batch":
        _xgb_rows.BLOCK_ROWS = n_train
    read_seconds = time.perf_counter() - started
    clf = XGBoostClassifier(
        n_estimators=n_estimators, random_state=0, device="cpu", xgb_params={"max_bin": 64}
    )
    started = time.perf_counter()
    clf.fit(X, labels[:n_train])
    seconds = time.perf_counter() - started
    fit_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del X
    test = StoreRows(path, np.arange(n_train, len(labels)))
    correct = sum(
        int((clf.predict(block) == labels[n_train + start : n_train + start + len(block)]).sum())
        for start, block in iter_blocks(test)
    )
    return {
        "mode": mode,
        "read_seconds": round(read_seconds, 1),
        "fit_seconds": round(seconds, 1),
        "peak_rss_mib_after_fit": round(fit_peak),
        "peak_rss_mib_after_predict": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ),
        "accuracy": round(correct / len(test), 4),
        "best_iteration": clf.best_iteration_,
        "train_rows": n_train,
        "test_rows": len(test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=Path("/tmp/xgb_rows.h5"))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--n-estimators", type=int, default=20)
    parser.add_argument("--test-share", type=float, default=0.2)
    parser.add_argument("--only", choices=MODES, help="one fit in this process")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(fit_once(args.store, args.only, args.n_estimators, args.test_share)))
        return
    if not args.store.exists():
        make_store(args.store, args.rows, args.dim, args.classes)
    for mode in MODES:
        cmd = [sys.executable, __file__, "--store", str(args.store), "--only", mode]
        cmd += ["--n-estimators", str(args.n_estimators), "--test-share", str(args.test_share)]
        print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
