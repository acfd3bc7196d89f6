"""svc_approx's Nystroem map: scikit-learn's against ours (DistinctNystroem), in one run.

For each map: how far a row's mapped features and probabilities move when it is predicted in
blocks of 1, 3 and 7 rows instead of all at once (under this process's BLAS kernel: run it
again with ``OPENBLAS_CORETYPE=Haswell`` etc.), on scikit-learn's digits with 300 rows
repeated exactly, or with a tiny noise (near-duplicates); the holdout accuracy; and the median
fit and predict times on random rows (interleaved repetitions)::

    OMP_NUM_THREADS=1 python benchmarks/svc_approx_invariance.py [--rows 20000 --dim 512 --reps 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_digits
from sklearn.kernel_approximation import Nystroem
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from pipeline._nystroem import DistinctNystroem

MAPS = {"sklearn": Nystroem, "ours": DistinctNystroem}


def make(kind: str, n_components: int = 1024) -> Pipeline:
    """svc_approx (the registry's steps) with the given map."""
    svm = LinearSVC(C=1.0, class_weight="balanced", random_state=0)
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("map", MAPS[kind](n_components=n_components, random_state=0)),
            ("clf", CalibratedClassifierCV(svm, ensemble=False, cv=5)),
        ]
    )


def digits(noise: float) -> tuple[np.ndarray, ...]:
    """Digits as float32 with 300 rows repeated (times ``noise`` x each column's spread)."""
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    rng = np.random.default_rng(0)
    dup = rng.choice(len(X), 300, replace=False)
    again = X[dup] + noise * X.std(axis=0) * rng.normal(size=X[dup].shape)
    X, y = np.concatenate([X, again.astype(np.float32)]), np.concatenate([y, y[dup]])
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def by_blocks(f, X: np.ndarray, block: int) -> np.ndarray:
    return np.concatenate([f(X[i : i + block]) for i in range(0, len(X), block)])


def invariance() -> None:
    print(
        "data                      map      max|normalization|  mapped moves  proba moves  accuracy"
    )
    for label, noise in (("digits + exact repeats", 0.0), ("digits + repeats, 1e-5 noise", 1e-5)):
        X_train, X_test, y_train, y_test = digits(noise)
        for kind in MAPS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # liblinear convergence
                pipe = make(kind).fit(X_train, y_train)
            mapped, proba = pipe[:-1].transform, pipe.predict_proba
            d_map = max(
                np.abs(by_blocks(mapped, X_test, b) - mapped(X_test)).max() for b in (1, 3, 7)
            )
            d_proba = max(
                np.abs(by_blocks(proba, X_test, b) - proba(X_test)).max() for b in (1, 3, 7)
            )
            norm = np.abs(pipe.named_steps["map"].normalization_).max()
            accuracy = (pipe.predict(X_test) == y_test).mean()
            print(
                f"{label:25s} {kind:8s} {norm:18.3g}  {d_map:12.2g}  {d_proba:11.2g}  {accuracy:.4f}"
            )


def timing(rows: int, dim: int, reps: int) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(rows, dim)).astype(np.float32)
    y = (X[:, :4].sum(axis=1) > 0).astype(int) + (X[:, 4] > 0.5)
    times: dict[str, dict[str, list[float]]] = {k: {"fit": [], "predict": []} for k in MAPS}
    for _ in range(reps):
        for kind in MAPS:  # interleaved
            pipe = make(kind)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe.fit(X, y)
            times[kind]["fit"].append(time.perf_counter() - start)
            start = time.perf_counter()
            pipe.predict_proba(X)
            times[kind]["predict"].append(time.perf_counter() - start)
    print(f"\n{rows} x {dim} random rows, 1,024 components, medians of {reps}:")
    for phase in ("fit", "predict"):
        a, b = (np.median(times[k][phase]) for k in MAPS)
        print(f"  {phase:8s} sklearn {a:7.2f} s  ours {b:7.2f} s  ratio {b / a:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    invariance()
    timing(args.rows, args.dim, args.reps)


if __name__ == "__main__":
    main()
