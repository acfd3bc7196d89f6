"""``predict_rows`` (one pass where ``predict`` is the arg-max of ``predict_proba``, the
leading steps applied once per block) against what it did before (``predict`` and
``predict_proba`` of the whole Pipeline per block), on a store's rows.

python benchmarks/predict_rows.py --store /tmp/predict_rows.h5 --rows 100000 --dim 1280
(writes the synthetic store of benchmarks/xgboost_rows.py first when it is missing; delete it
afterwards). Each classifier (CLI defaults, seed 0) is fitted once on the first ``--train``
rows (and saved next to the store, for the next run); then every round times both ways over
all rows, in alternating order, and checks that they give the same labels and probabilities.
Prints medians, the per-round ratio and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xgboost_rows import make_store  # noqa: E402  (benchmarks/ is sys.path[0])

from pipeline import rows  # noqa: E402
from pipeline.classifiers import default_params, make_classifier  # noqa: E402
from pipeline.fit.streaming import fit_rows, predict_rows  # noqa: E402
from pipeline.store import read_block_rows  # noqa: E402


def predict_rows_before(fitted, X):
    """``predict_rows`` as it was: both methods of the whole estimator on every block."""
    preds, probas = [], []
    for _, block in rows.iter_blocks(X, read_block_rows()):
        preds.append(np.asarray(fitted.predict(block)))
        probas.append(np.asarray(fitted.predict_proba(block), dtype=np.float64))
    return np.concatenate(preds), np.concatenate(probas)


def fit(name: str, path: Path, n_train: int, labels: np.ndarray):
    """``name`` fitted on the first ``n_train`` rows, or the model an earlier run saved next to
    the store (``<store>.<name>.joblib``: an xgboost fit takes minutes here)."""
    import joblib

    saved = path.with_name(f"{path.name}.{name}.joblib")
    if saved.exists():
        return joblib.load(saved)
    params = {**default_params(name), "random_state": 0}
    if name == "xgboost":
        params["device"] = "cpu"
    started = time.perf_counter()
    fitted = fit_rows(make_classifier(name, **params), rows.StoreRows(path, np.arange(n_train)),
                      labels[:n_train])  # fmt: skip
    print(f"{name}: fitted on {n_train} rows in {time.perf_counter() - started:.1f} s", flush=True)
    joblib.dump(fitted, saved)
    return fitted


def timed(function, fitted, X) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    started = time.perf_counter()
    out = function(fitted, X)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("/tmp/predict_rows.h5"))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clf", nargs="*", default=["xgboost", "logreg"])
    args = parser.parse_args()
    if not args.store.exists():
        make_store(args.store, args.rows, args.dim, classes=10)
    with h5py.File(args.store, "r") as fh:
        labels = fh["labels"][:].astype(str)
    print(f"load average at start: {_fmt(os.getloadavg())}", flush=True)
    X = rows.StoreRows(args.store)
    ways = {"before": predict_rows_before, "after": predict_rows}
    for name in args.clf:
        fitted = fit(name, args.store, args.train, labels)
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        for r in range(args.repeat):
            order = list(ways) if r % 2 == 0 else list(ways)[::-1]
            results = {}
            for way in order:
                took, results[way] = timed(ways[way], fitted, X)
                seconds[way].append(took)
            assert (results["before"][0] == results["after"][0]).all()
            assert np.array_equal(results["before"][1], results["after"][1])
        before, after = (statistics.median(seconds[w]) for w in ways)
        ratios = [a / b for a, b in zip(seconds["after"], seconds["before"], strict=True)]
        print(f"{name}: {len(X)} rows x {X.shape[1]}: before {before:.2f} s, after {after:.2f} s "
              f"(medians of {args.repeat}); after / before per round: median "
              f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}..{max(ratios):.2f}; "
              f"before {_fmt(seconds['before'])}, after {_fmt(seconds['after'])}; "
              f"load average now {_fmt(os.getloadavg())}", flush=True)  # fmt: skip


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    main()
