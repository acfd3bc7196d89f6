"""Stage two scaling: fit seconds of each classifier at growing row counts of 1280-d embeddings.

Usage::

    python benchmarks/fit_scaling.py --rows 1000 10000 50000
    python benchmarks/fit_scaling.py --store artifacts/features.h5 --clf svc svc_approx

Synthetic embeddings shaped like pooled ReLU features (10 classes, non-negative, sparse) stand
in for real ones at sizes no real store here has; every classifier uses the CLI's defaults
(``configs/default.toml``). A fit whose predicted time (from the previous size: quadratic for
svc, linear for the rest) exceeds ``--max-seconds`` is skipped and says so. With ``--store``,
accuracy on that real store's split is compared instead.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def synthetic(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.maximum(rng.normal(0, 1, (classes, dim)), 0) * (rng.random((classes, dim)) < 0.3)
    y = rng.integers(0, classes, n)
    X = np.maximum(centres[y] + rng.normal(0, 1.2, (n, dim)), 0).astype(np.float32)
    return X, np.asarray([f"class{k}" for k in y])


def build(name: str):
    from pipeline.config import FitConfig
    from pipeline.fit.evaluation import _build

    return _build(name, FitConfig.from_file())[0]


def timed_fit(name: str, X, y, X_test, y_test) -> tuple[float, float]:
    model = build(name)
    started = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - started
    return seconds, float((model.predict(X_test) == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument(
        "--clf", nargs="+", default=["logreg", "svc_approx", "nn", "xgboost", "svc"]
    )
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--store", help="compare accuracy on this real store instead")
    args = parser.parse_args()
    print(f"machine: {len(os.sched_getaffinity(0))} cores; CLI default hyperparameters")
    if args.store:
        from pipeline.store import load_features

        X_train, y_train, X_test, y_test, _ = load_features(args.store)
        print(f"{args.store}: {len(y_train)} train / {len(y_test)} test rows")
        print("| clf | accuracy | fit s |\n|---|---|---|")
        for name in args.clf:
            seconds, acc = timed_fit(name, X_train, y_train, X_test, y_test)
            print(f"| {name} | {acc:.4f} | {seconds:.1f} |", flush=True)
        return
    X_all, y_all = synthetic(max(args.rows) + 2000, args.dim, 10, seed=0)
    X_test, y_test = X_all[-2000:], y_all[-2000:]
    print("| clf | rows | fit s | accuracy |\n|---|---|---|---|")
    for name in args.clf:
        previous: tuple[int, float] | None = None
        for n in args.rows:
            if previous is not None:
                power = 2 if name == "svc" else 1
                predicted = previous[1] * (n / previous[0]) ** power
                if predicted > args.max_seconds:
                    print(
                        f"| {name} | {n} | skipped (predicted > {predicted:.0f} s) | |", flush=True
                    )
                    continue
            seconds, acc = timed_fit(name, X_all[:n], y_all[:n], X_test, y_test)
            previous = (n, seconds)
            print(f"| {name} | {n} | {seconds:.1f} | {acc:.4f} |", flush=True)


if __name__ == "__main__":
    main()
