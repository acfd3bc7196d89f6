"""Crop modes and views (issue 17): accuracy with 95 % intervals, paired against a baseline.

Usage::

    python -m pipeline.extract --data ../shared/data/cifar10-mini --out /tmp/v/default.h5
    python -m pipeline.extract --data ... --out /tmp/v/flip.h5 --views flip   # etc.
    python -m pipeline.fit --features /tmp/v/default.h5 --clf logreg,svc --out /tmp/v/run_default
    python benchmarks/views_accuracy.py /tmp/v/run_default /tmp/v/run_flip ...
    python benchmarks/views_accuracy.py --make-wide ../shared/data/cifar10-mini /tmp/v/wide

Each RUN is a ``pipeline.fit --out`` folder over a store with a test split. The script
recomputes every test row's prediction from the saved model (averaging over the model's views,
as ``pipeline.predict`` does), checks it reproduces the reported accuracy, and prints a
Wilson 95 % interval per run and a paired bootstrap 95 % interval (5,000 resamples of the test
rows) of its accuracy difference to the first RUN. ``--make-wide SRC DST`` writes the
non-square set: each image pasted at a random horizontal offset on a 2:1 canvas filled with its
mean border colour plus noise (a subject off centre in a wide photo), same classes and splits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.fit import load_model_file
from pipeline.fit.views import predict_proba_views
from pipeline.store import read_store


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def correct(run: Path, clf: str) -> np.ndarray:
    """Per test row: is the saved model's (view-averaged) prediction right?"""
    report = json.loads((run / "report.json").read_text())
    payload = load_model_file(run / "models" / f"{clf}.joblib")
    table = read_store(report["features"])
    test = table.split == "test"
    stack = [table.features[test], *(table.views[v][test] for v in payload["views"])]
    proba = predict_proba_views(payload["estimator"], np.stack(stack))
    pred = np.asarray(payload["estimator"].classes_)[proba.argmax(1)]
    ok = pred == np.asarray(table.class_names)[table.labels[test]]
    accuracy = next(r["accuracy"] for r in report["results"] if r["clf"] == clf)
    if abs(accuracy - ok.mean()) > 1e-9:
        raise SystemExit(f"{run}: {clf} predictions do not reproduce the reported accuracy")
    return ok


def make_wide(src: Path, dst: Path) -> None:
    rng = np.random.default_rng(0)
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        img = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
        h, w, _ = img.shape
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).mean(axis=0)
        canvas = border + rng.normal(0, 8, (h, 2 * w, 3))
        left = int(rng.integers(0, w + 1))
        canvas[:, left : left + w] = img
        out = dst / path.relative_to(src).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--clf", default="logreg,svc")
    parser.add_argument("--make-wide", nargs=2, type=Path, metavar=("SRC", "DST"))
    args = parser.parse_args()
    if args.make_wide:
        make_wide(*args.make_wide)
        return
    base, rng = args.runs[0], np.random.default_rng(0)
    print(f"| run | clf | accuracy [95 % Wilson] | vs {base.name} [95 % paired bootstrap] |")
    print("|---|---|---|---|")
    for clf in args.clf.split(","):
        ref = correct(base, clf)
        resample = rng.integers(0, len(ref), (5000, len(ref)))
        for run in args.runs:
            ok = correct(run, clf)
            low, high = wilson(int(ok.sum()), len(ok))
            diff = ok.astype(float) - ref
            d_low, d_high = np.percentile(diff[resample].mean(axis=1), [2.5, 97.5])
            print(
                f"| {run.name} | {clf} | {ok.mean():.3f} [{low:.3f}, {high:.3f}] | "
                f"{diff.mean():+.3f} [{d_low:+.3f}, {d_high:+.3f}] |"
            )


if __name__ == "__main__":
    main()
