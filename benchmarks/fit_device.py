"""Stage two on the GPU vs the CPU (issue 16): ``nn`` and ``xgboost``, time and accuracy.

    python benchmarks/fit_device.py                       # 50,000 x 1,280 train rows, CUDA and CPU
    python benchmarks/fit_device.py --rows 2000 --test-rows 500 --devices cpu --repeats 1   # check

Synthetic, learnable rows: 10 classes, each a Gaussian cluster in a 16-dimensional subspace
(class means drawn at ``--separation``, unit spread) embedded in 1,280 dimensions by a random
orthonormal map, plus isotropic noise in every dimension; so the classes overlap and accuracy
is well below 1. ``--test-rows`` more rows from the same distribution are the test set.

Each classifier is the one ``python -m pipeline.fit`` builds from the shipped defaults
(``[fit.nn]``, ``[fit.xgboost]``: early stopping on), with ``device`` set per run; fit and
predict seconds are wall time of ``fit`` and ``predict`` on in-memory float32 arrays, medians
of ``--repeats`` (seed 0 each time). A device whose first fit takes longer than
``--max-seconds`` is not repeated (said in the table). xgboost is skipped with a line saying so
when it is not installed (the GPU machine lacks it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

import machine
import numpy as np


def synthetic(
    n: int, dim: int, classes: int, separation: float, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class clusters in a 16-d subspace of ``dim`` dimensions, plus noise everywhere."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, separation, (classes, 16))
    basis = np.linalg.qr(rng.normal(size=(dim, 16)))[0].T  # (16, dim), orthonormal rows
    y = rng.integers(0, classes, n)
    latent = means[y] + rng.normal(0, 1, (n, 16))
    X = latent @ basis * np.sqrt(dim / 16) + rng.normal(0, noise, (n, dim))
    return X.astype(np.float32), np.asarray([f"class{k}" for k in y])


def build(name: str, device: str) -> Any:
    """The CLI's estimator for ``name`` (shipped defaults, seed 0) on ``device``."""
    from pipeline.config import FitConfig
    from pipeline.fit.evaluation import _build

    model = _build(name, FitConfig.from_file())[0]
    return model.set_params(clf__device=device)


def one_fit(name: str, device: str, data: tuple[np.ndarray, ...]) -> dict[str, Any]:
    X, y, X_test, y_test = data
    model = build(name, device)
    machine.sync(device)
    started = time.perf_counter()
    model.fit(X, y)
    machine.sync(device)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    pred = model.predict(X_test)
    predict_s = time.perf_counter() - started
    clf = model.named_steps["clf"]
    rounds = getattr(clf, "n_iter_", None) or getattr(clf, "best_iteration_", None)
    return {
        "fit_s": fit_s,
        "predict_s": predict_s,
        "accuracy": float((pred == y_test).mean()),
        "rounds": int(rounds) if rounds is not None else None,
        "device_used": str(getattr(clf, "device_", device)),
    }


def measure(name: str, device: str, args: argparse.Namespace, data: tuple, result: dict) -> None:
    """Fill ``result`` ("runs", "note") one fit at a time."""
    result.update(runs=[], note="")
    for r in range(args.repeats):
        result["runs"].append(one_fit(name, device, data))
        print(f"{name} on {device}, run {r + 1}: {result['runs'][-1]}", flush=True)
        if result["runs"][-1]["fit_s"] > args.max_seconds and r + 1 < args.repeats:
            result["note"] = f"1 run: the first took > {args.max_seconds:.0f} s"
            break


def available(name: str) -> bool:
    if name == "xgboost" and importlib.util.find_spec("xgboost") is None:
        print("xgboost: not installed on this machine, skipped (no rows below)", flush=True)
        return False
    return True


def print_table(args: argparse.Namespace, facts: dict[str, Any]) -> None:
    print(f"\nMachine: {facts['machine']}")
    print(
        f"{args.rows:,} train x {args.dim:,} rows, {args.test_rows:,} test rows, 10 classes "
        f"(separation {args.separation}, noise {args.noise}); shipped defaults; medians of "
        f"{args.repeats}.\n"
    )
    print(
        "| clf | device | fit s | predict s | epochs / rounds | test accuracy | runs (fit s) | note |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (name, _device), result in facts["results"].items():
        runs = result["runs"]
        if not runs:
            continue
        fit_s, predict_s, accuracy = (
            statistics.median(r[key] for r in runs) for key in ("fit_s", "predict_s", "accuracy")
        )
        rounds = [r["rounds"] for r in runs if r["rounds"] is not None]
        print(
            f"| {name} | {runs[0]['device_used']} | {fit_s:.2f} | {predict_s:.3f} | "
            f"{statistics.median(rounds) if rounds else ''} | {accuracy:.4f} | "
            + " / ".join(f"{r['fit_s']:.2f}" for r in runs)
            + f" | {result['note']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--test-rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--separation", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--clf", default="nn,xgboost")
    parser.add_argument("--devices", default="", help="default: cuda,cpu (cpu without a GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    devices = (
        args.devices.split(",")
        if args.devices
        else (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    )
    facts: dict[str, Any] = {"machine": machine.describe(devices[0]), "results": {}}
    print(f"machine: {facts['machine']}", flush=True)
    X, y = synthetic(args.rows + args.test_rows, args.dim, 10, args.separation, args.noise, 0)
    data = (X[: args.rows], y[: args.rows], X[args.rows :], y[args.rows :])
    try:
        for name in args.clf.split(","):
            if available(name):
                for device in devices:
                    measure(
                        name, device, args, data, facts["results"].setdefault((name, device), {})
                    )
    except KeyboardInterrupt:
        print("\nINTERRUPTED: the table holds what was measured before", flush=True)
    print_table(args, facts)
    if args.json:
        results = {f"{k[0]} {k[1]}": v for k, v in facts["results"].items()}
        args.json.write_text(json.dumps(facts | {"results": results}, indent=1))


if __name__ == "__main__":
    main()
