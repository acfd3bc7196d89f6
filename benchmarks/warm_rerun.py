"""The warm re-run (``extract`` over an unchanged folder) of two versions of pipeline, interleaved.

Usage::

    git archive <commit> pipeline | tar -x -C /tmp/before     # the version to compare with
    python benchmarks/warm_rerun.py --before /tmp/before       # 100k files in /tmp/pipeline-warm
    python benchmarks/warm_rerun.py --before /tmp/before --rows 1000000 --repeat 5 --keep

One folder of ``--rows`` tiny JPEG copies (10 classes; made as ``benchmarks/scale.py`` makes
them) is shared by both versions; each version gets its own store of that folder, fabricated by
its own code (:func:`scale.fabricate`: its own planning, part writer and ``finish_store``, so
each store holds that version's content keys and inputs digest). Then ``python -m
pipeline.extract`` over the unchanged folder runs in a fresh process, the two versions
alternating (before, after, before, after, ...), ``--repeat`` times each. Printed: the median
wall and CPU (user + system) seconds of each, and the after/before ratios of the medians and
of each interleaved pair, with the load average before and after. The folder and stores are
removed at the end unless ``--keep``.

The process's start (interpreter, imports: about half of a warm run's CPU time at 100k files)
is the same code in both versions; the ``in-process`` rows time what the versions differ in,
the folder walk and the warm check (:func:`~pipeline.extract.plan.warm_check`), three times
in one process per version, the processes alternating as above.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

_FABRICATE = """
import sys
from pathlib import Path
sys.path.insert(0, {bench!r})
import scale
images, store, rows, work = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
print(f"{{scale.fabricate(images, store, rows, work):.1f}}")
"""


_IN_PROCESS = """
import gc, json, sys, time
from pipeline.config import ExtractConfig
from pipeline.engine.sources import open_source
from pipeline.extract.plan import warm_check
config = ExtractConfig.from_file(None, data=sys.argv[1], out=sys.argv[2], progress=False)
gc.disable()  # as run_extraction does while listing and planning
times = []
for _ in range(3):
    wall, cpu = time.perf_counter(), time.process_time()
    summary, _ = warm_check(config, open_source(sys.argv[1]))
    assert summary is not None, "not a warm run"
    times.append((time.perf_counter() - wall, time.process_time() - cpu))
print(json.dumps(times))
"""


def in_process(code: Path, images: Path, store: Path) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of three folder walks + warm checks in one process of ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS, str(images), str(store)],
        cwd=REPO, env=_env(code), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [tuple(t) for t in json.loads(done.stdout.strip().splitlines()[-1])]


def _env(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code)}


def fabricate(code: Path, images: Path, store: Path, rows: int, work: Path) -> float:
    """The store of ``images`` as version ``code`` writes it (in a process importing it)."""
    script = _FABRICATE.format(bench=str(REPO / "benchmarks"))
    done = subprocess.run(
        [sys.executable, "-c", script, str(images), str(store), str(rows), str(work)],
        cwd=REPO, env=_env(code), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def warm_run(code: Path, images: Path, store: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``python -m pipeline.extract`` of version ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.extract", "--data", str(images), "--out", str(store),
         "--no-progress"],
        cwd=REPO, env=_env(code), check=True, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if "embedded 0 new" not in done.stdout or "up to date" not in done.stderr:
        raise RuntimeError(f"{code}: not a warm run: {done.stdout} {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="folder holding the other pipeline/")
    parser.add_argument("--after", default=str(REPO), help="folder holding pipeline/ (this one)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "pipeline-warm"))
    parser.add_argument("--keep", action="store_true", help="keep the folder and the stores")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    images = root / f"images-{args.rows}"
    versions = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    stores = {name: root / f"store-{name}-{args.rows}.h5" for name in versions}
    try:
        for name, code in versions.items():
            seconds = fabricate(code, images, stores[name], args.rows, root / name)
            print(f"{name}: store of {args.rows} rows ready in {seconds:.0f} s", flush=True)
        os.sync()
        load_before = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in versions}
        inner: dict[str, list[tuple[float, float]]] = {name: [] for name in versions}
        for _ in range(args.repeat):
            for name, code in versions.items():
                times[name].append(warm_run(code, images, stores[name]))
                inner[name] += in_process(code, images, stores[name])
        load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.rows} files, {args.repeat} interleaved runs each; load average "
          f"{load_before} before, {load_after} after\n")  # fmt: skip
    for title, table in (("whole run", times), ("in-process walk + warm check", inner)):
        _report(title, table)


def _report(title: str, times: dict[str, list[tuple[float, float]]]) -> None:
    print(f"\n{title}:\n")
    print("| version | n | wall s (median, min-max) | CPU s (median, min-max) |")
    print("|---|---|---|---|")
    for name, runs in times.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"| {name} | {len(runs)} | {statistics.median(walls):.3f} "
              f"({min(walls):.3f}-{max(walls):.3f}) | {statistics.median(cpus):.3f} "
              f"({min(cpus):.3f}-{max(cpus):.3f}) |")  # fmt: skip
    for i, what in enumerate(("wall", "CPU")):
        medians = [statistics.median(r[i] for r in times[n]) for n in ("after", "before")]
        pairs = sorted(a[i] / b[i] for a, b in zip(times["after"], times["before"], strict=True))
        print(f"\nafter/before {what}: ratio of medians {medians[0] / medians[1]:.3f}; "
              f"per interleaved pair median {statistics.median(pairs):.3f} "
              f"(range {pairs[0]:.3f}-{pairs[-1]:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
