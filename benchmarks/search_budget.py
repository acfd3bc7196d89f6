"""Budget of ``fit --search``: time :func:`pipeline.search.run_search` per classifier.

Usage::

    python benchmarks/search_budget.py [--rows 5000] [--dim 1280] [--clf logreg,svc,...]

The issue's budget is ``fit --clf all --search`` on 5,000 x 1,280 embeddings (10 classes) in
under 10 minutes on the 2-core machine. Without 5,000 real embeddings at hand this uses
synthetic ones shaped like pooled post-ReLU CNN features: 10 classes, each a mixture of two
modes in a 48-d latent space, mapped to 1,280 dims by a random linear layer, ReLU and per-feature
scales; ``--sep 0.3`` gives a default logistic regression about 0.67 accuracy and a tuned one
about 0.71, like MobileNetV2 on CIFAR-10. Each classifier is searched over its default space
(``SEARCH_SPACES``) with 3-fold inner CV on the ``--rows`` training rows and refitted; a held-out
``--test-rows`` set gives the tuned accuracy (for orientation only). Prints one JSON line per
classifier and a total; the machine's load average is printed too, since it is shared, and the process's CPU
seconds (all threads): on an otherwise idle 2-core machine the wall time lies between half
of them and all of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np


def synthetic_embeddings(
    n: int, dim: int, n_classes: int = 10, latent: int = 48, sep: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative features of ``n_classes`` overlapping two-mode classes (see module doc)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    means = rng.normal(0, sep, (n_classes, latent))
    modes = means[:, None, :] + rng.normal(0, sep * 0.8, (n_classes, 2, latent))
    z = modes[y, rng.integers(0, 2, n)] + rng.normal(0, 1.0, (n, latent))
    weights = rng.normal(0, 1 / np.sqrt(latent), (latent, dim))
    bias = rng.normal(-0.3, 0.3, dim)
    X = np.maximum(z @ weights + bias, 0) * rng.gamma(2.0, 0.5, dim)
    X += rng.exponential(0.02, X.shape)
    return X.astype(np.float32), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--sep", type=float, default=0.3)
    parser.add_argument("--clf", default="knn,logreg,svc,nn,xgboost,svc_approx")
    parser.add_argument("--cv", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from pipeline._knn import make_knn
    from pipeline.classifiers import make_classifier
    from pipeline.fit.search import SEARCH_OPTIONS, SEARCH_SPACES, run_search

    X, y = synthetic_embeddings(args.rows + args.test_rows, args.dim, sep=args.sep)
    X_train, y_train = X[: args.rows], y[: args.rows]
    X_test, y_test = X[args.rows :], y[args.rows :]
    print(json.dumps({"load_average": os.getloadavg(), "cpus": os.cpu_count()}), flush=True)
    total = total_cpu = 0.0
    for name in args.clf.split(","):
        est = make_knn() if name == "knn" else make_classifier(name, random_state=0)
        if name in ("nn", "xgboost"):
            est.set_params(clf__device="cpu")
        started, cpu_started = time.perf_counter(), time.process_time()
        fitted, info = run_search(
            name,
            est,
            SEARCH_SPACES[name],
            X_train,
            y_train,
            cv=args.cv,
            seed=0,
            **SEARCH_OPTIONS.get(name, {}),
        )
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        total += seconds
        total_cpu += cpu_seconds
        accuracy = float((fitted.predict(X_test) == y_test).mean())
        row = {
            "clf": name,
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "best_params": info["best_params"],
            "cv_score": round(info["cv_score"], 4),
            "test_accuracy": round(accuracy, 4),
            "search_class": info["search_class"],
            "n_candidates": info["n_candidates"],
            "load_average": os.getloadavg()[0],
        }
        print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {
                "total_seconds": round(total, 1),
                "total_cpu_seconds": round(total_cpu, 1),
                "load_average": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
