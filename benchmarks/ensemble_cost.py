"""Cost and combination rule of ``--clf ensemble``.

Usage::

    python benchmarks/ensemble_cost.py cost [--rows 5000] [--dim 1280]
    python benchmarks/ensemble_cost.py combine --features STORE.h5

``cost``: on synthetic 5,000 x 1,280 embeddings (benchmarks/search_budget.py's generator, 10
classes), the time of fitting each default candidate alone (what ``fit`` already pays) and of
fitting the ensemble of them (out-of-fold member choice on at most ``max_rows`` rows, then the
members on every row): the ensemble's extra cost in ``fit --clf all``. Wall and process CPU
seconds, with the load average (the machine is shared).

``combine``: soft vote against stacking on a store's own split (its plain embeddings). One
``combine="stack"`` fit gives both: the same members, their mean probabilities (the vote) and
the stacker's. Prints each accuracy, the best single member's, and the paired differences
(bootstrap interval, exact McNemar).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _candidates(seed: int) -> list:
    from pipeline.classifiers import ENSEMBLE_CANDIDATES, _toml_params, make_classifier

    out = []
    for name in ENSEMBLE_CANDIDATES:
        params = {**_toml_params(name), "random_state": seed}
        if name in ("nn", "xgboost"):
            params["device"] = "cpu"
        out.append((name, make_classifier(name, **params)))
    return out


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)


def cost(args: argparse.Namespace) -> None:
    from search_budget import synthetic_embeddings
    from sklearn.base import clone

    from pipeline.ensemble import TiedEnsembleClassifier

    X, y = synthetic_embeddings(args.rows, args.dim, sep=0.3)
    print(json.dumps({"load_average": os.getloadavg(), "rows": args.rows}), flush=True)
    singles_wall = singles_cpu = 0.0
    for name, est in _candidates(0):
        _, wall, cpu = _timed(lambda est=est: clone(est).fit(X, y))
        singles_wall, singles_cpu = singles_wall + wall, singles_cpu + cpu
        print(json.dumps({"single": name, "seconds": wall, "cpu_seconds": cpu}), flush=True)
    ens = TiedEnsembleClassifier(_candidates(0), max_rows=args.max_rows, random_state=0)
    _, wall, cpu = _timed(lambda: ens.fit(X, y))
    print(
        json.dumps(
            {
                "ensemble_seconds": wall,
                "ensemble_cpu_seconds": cpu,
                "singles_seconds": round(singles_wall, 1),
                "singles_cpu_seconds": round(singles_cpu, 1),
                "members": ens.names_,
                "load_average": os.getloadavg(),
            }
        ),
        flush=True,
    )


def combine(args: argparse.Namespace) -> None:
    from pipeline.ensemble import TiedEnsembleClassifier
    from pipeline.fit.evidence import mcnemar_exact, paired_difference_interval
    from pipeline.store import read_store, split_rows

    table = read_store(args.features)
    train, test, _ = split_rows(table, args.features, test_size=0.2, random_state=0)
    names = np.asarray(table.class_names)
    X_train, y_train = table.features[train], names[table.labels[train]]
    X_test, y_test = table.features[test], names[table.labels[test]]
    ens = TiedEnsembleClassifier(
        _candidates(0), combine="stack", max_rows=args.max_rows, random_state=0
    )
    _, wall, cpu = _timed(lambda: ens.fit(X_train, y_train))
    probas = [m.predict_proba(X_test) for m in ens.estimators_]
    vote = ens.classes_[np.mean(probas, axis=0).argmax(axis=1)]
    stack = ens.predict(X_test)
    singles = {n: ens.classes_[p.argmax(axis=1)] for n, p in zip(ens.names_, probas, strict=True)}
    best = max(singles, key=lambda n: (singles[n] == y_test).mean())
    right = {"vote": vote == y_test, "stack": stack == y_test, best: singles[best] == y_test}

    def versus(a: str, b: str) -> dict:
        lo, hi = paired_difference_interval(right[a], right[b])
        diff = float(right[a].mean() - right[b].mean())
        return {"difference": round(diff, 4), "interval": [round(lo, 4), round(hi, 4)],
                "p_mcnemar": round(mcnemar_exact(right[a], right[b]), 4)}  # fmt: skip

    print(
        json.dumps(
            {
                "store": str(args.features),
                "n_train": len(train),
                "n_test": len(test),
                "members": ens.names_,
                "selection": ens.selection_,
                "accuracy": {k: round(float(v.mean()), 4) for k, v in right.items()},
                "vote_minus_best_member": versus("vote", best),
                "stack_minus_vote": versus("stack", "vote"),
                "fit_seconds": wall,
                "fit_cpu_seconds": cpu,
                "load_average": os.getloadavg(),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["cost", "combine"])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--max-rows", type=int, default=2000)
    parser.add_argument("--features", type=Path)
    args = parser.parse_args()
    (cost if args.mode == "cost" else combine)(args)


if __name__ == "__main__":
    main()
