"""Time and peak memory of the data survey (outliers, duplicates inside a split, class balance)
and the embedding map's projection on synthetic embeddings, one fresh process per size.

python benchmarks/data_survey_scale.py --rows 1000 10000 100000 --dim 1280 --classes 100

Under a shared CPU the wall times (``*_s``) mostly measure the other load; the CPU seconds
of the process (``*_cpu_s``, all its threads) are the steadier number. Each size runs in its
own subprocess; ``survey_peak_mb`` / ``map_peak_mb`` are tracemalloc's peaks of the new
allocations of each step (numpy reports its buffers), on top of the input matrix
(``input_mb``, rows x dim x 4 bytes); ``peak_rss_mb`` is the process's peak, which the
synthetic data's generation can dominate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _one(rows: int, dim: int, classes: int) -> dict:
    from pipeline.fit.data_survey import survey
    from pipeline.fit.embedding_map import project_2d

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.0, (classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    features = centres[labels] + rng.normal(0, 1.0, (rows, dim)).astype(np.float32)
    splits = np.where(rng.random(rows) < 0.2, "test", "train")
    paths = [f"img/{i}.jpg" for i in range(rows)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the survey's own peak
    cpu0 = time.process_time()
    started = time.perf_counter()
    found = survey(features, paths, [f"c{x}" for x in labels], splits, hashes=None, seed=0)
    surveyed, cpu1 = time.perf_counter(), time.process_time()
    survey_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    _, note = project_2d(features, seed=0)
    done, cpu2 = time.perf_counter(), time.process_time()
    map_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "rows": rows,
        "dim": dim,
        "input_mb": round(features.nbytes / 2**20),
        "survey_s": round(surveyed - started, 1),
        "map_s": round(done - surveyed, 1),
        "survey_cpu_s": round(cpu1 - cpu0, 1),
        "map_cpu_s": round(cpu2 - cpu1, 1),
        "survey_peak_mb": round(survey_peak / 2**20),
        "map_peak_mb": round(map_peak / 2**20),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_mb": round(base),
        "flagged": found.n_flagged,
        "notes": found.notes,
        "map": note,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.rows[0], args.dim, args.classes)))
        return
    for rows in args.rows:
        cmd = [sys.executable, __file__, "--one", "--rows", str(rows), "--dim", str(args.dim)]
        cmd += ["--classes", str(args.classes)]
        load = os.getloadavg()[0]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = json.loads(result.stdout.strip().splitlines()[-1])
        line["load_before"] = round(load, 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
