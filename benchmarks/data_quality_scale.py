"""Time the data-quality checks on synthetic embeddings (no images needed).

python benchmarks/data_quality_scale.py --rows 20000 --test 5000 --classes 100 --dim 1280
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.fit.data_quality import find_duplicates, find_label_issues  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="train rows")
    parser.add_argument("--test", type=int, default=5_000, help="test rows")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--skip-labels", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.rows + args.test
    centres = rng.normal(0, 1.0, (args.classes, args.dim)).astype(np.float32)
    labels = rng.integers(0, args.classes, n)
    X = centres[labels] + rng.normal(0, 1.0, (n, args.dim)).astype(np.float32)
    splits = np.array(["train"] * args.rows + ["test"] * args.test)
    paths = [f"img/{i}.jpg" for i in range(n)]
    out = {"train": args.rows, "test": args.test, "classes": args.classes, "dim": args.dim}
    started = time.perf_counter()
    dups = find_duplicates(X, paths, splits, [str(i) for i in range(n)])
    out["duplicates_seconds"] = round(time.perf_counter() - started, 1)
    out["duplicates_found"] = len(dups)
    if not args.skip_labels:
        started = time.perf_counter()
        issues = find_label_issues(X, labels, paths=paths, splits=splits, seed=0)
        out["label_issues_seconds"] = round(time.perf_counter() - started, 1)
        out["label_issues_found"] = len(issues)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
