"""Stage one and two at scale: warm re-run, +1 % update, ``load_features`` and ``fit`` on N rows.

Usage::

    python benchmarks/scale.py                       # 100k rows in /tmp/pipeline-scale
    python benchmarks/scale.py --rows 1000000 --clf logreg nn xgboost --root /big/disk
    python benchmarks/scale.py --fit-only --no-load --clf nn --fit-args "--no-audit --set nn.max_iter=3"

A store of N rows is fabricated cheaply but exactly as extraction writes it (or reused, when
an earlier run with the same ``--root`` left it: its +1 % step is undone first): a folder of N
copies of tiny JPEGs (a few distinct images, 10 classes) is planned with the project's own
:func:`~pipeline.extract.plan.plan_extraction`; the real embeddings of the distinct images
(from a real ``python -m pipeline.extract`` run over them) are written, repeated, through the
project's :class:`~pipeline.extract.parts.PartWriter` and
:func:`~pipeline.extract.parts.finish_store`. Runs of ``python -m pipeline.extract`` over that
folder are then real: the warm re-run, and an update after adding 1 % new images (which are
really embedded). Every step runs in a fresh process; its wall time, CPU time (user + system),
peak RSS and bytes written (``/proc/<pid>/io``) are measured.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLASSES = 10
DISTINCT = 32
_CHILD_IO = "PIPELINE_SCALE_IO"


def _distinct_jpegs(folder: Path) -> list[Path]:
    """``DISTINCT`` different 64x48 JPEGs (seeded noise over a flat colour)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(DISTINCT):
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
        path = folder / f"c{k % CLASSES}" / f"img{k:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def _link_images(images: Path, distinct: list[Path], start: int, stop: int) -> None:
    """Copies ``images/c<k>/i<n>.jpg`` for n in [start, stop), image n is distinct[n % K].
    (Not hard links: sources take a file seen under two names once.)"""
    for n in range(start, stop):
        target = images / f"c{n % CLASSES}" / f"i{n:08d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(distinct[n % DISTINCT], target)


def _seed_features(distinct_dir: Path, work: Path) -> tuple[dict[str, np.ndarray], str]:
    """Real embeddings of the distinct images (a real extract run), by file name; and the
    backend that run used."""
    from pipeline.store import read_store

    seed = work / "seed.h5"
    if not seed.exists():
        _extract(distinct_dir, seed)
    table = read_store(seed)
    by_name = {Path(p).name: f for p, f in zip(table.paths, table.features, strict=True)}
    return by_name, str(table.attrs["backend"])


def _extract(data: Path, out: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pipeline.extract", "--data", str(data), "--out", str(out),
            "--no-progress"]  # fmt: skip
    return subprocess.run(argv, cwd=REPO, check=True, capture_output=True, text=True)


def restore(images: Path, store: Path, rows: int) -> None:
    """Undo the +1 % step of an earlier run: remove its new images and move the store it
    appended to (renamed, untouched, to ``<store>.parts/base.h5``) back. Cheap, and exact: the
    result is the fabricated store itself, so :func:`fabricate` can reuse it."""
    from pipeline.store import is_appended, parts_dir, read_attrs

    base = parts_dir(store) / "base.h5"
    if not (store.is_file() and base.is_file() and is_appended(read_attrs(store))):
        return
    for n in range(rows, rows + max(1, rows // 100)):
        (images / f"c{n % CLASSES}" / f"i{n:08d}.jpg").unlink(missing_ok=True)
    os.replace(base, store)
    shutil.rmtree(parts_dir(store))


def _reusable(images: Path, store: Path, rows: int) -> bool:
    """``store`` is a complete store of ``rows`` rows, up to date with ``images`` (what a
    warm re-run would find; one walk of the folder)."""
    from pipeline.config import ExtractConfig
    from pipeline.engine.sources import open_source
    from pipeline.extract.plan import unchanged_store
    from pipeline.store import read_attrs

    if not (store.is_file() and images.is_dir()) or read_attrs(store).get("n_rows") != rows:
        return False
    config = ExtractConfig.from_file(None, data=str(images), out=str(store), progress=False)
    return unchanged_store(config, open_source(images)) is not None


def _has_images(images: Path, rows: int) -> bool:
    """``images`` holds exactly the files :func:`_link_images` makes for ``rows`` rows."""
    for k in range(CLASSES):
        folder = images / f"c{k}"
        expected = {f"i{n:08d}.jpg" for n in range(k, rows, CLASSES)}
        if not folder.is_dir() or set(os.listdir(folder)) != expected:
            return False
    return True


def fabricate(images: Path, store: Path, rows: int, work: Path) -> float:
    """Make ``images`` (``rows`` JPEG copies) and ``store``, or reuse those an earlier run
    made (see :func:`restore`); returns the seconds it took."""
    from pipeline.config import ExtractConfig
    from pipeline.extract.parts import PartWriter, begin_parts, finish_store
    from pipeline.extract.plan import plan_extraction, verified_cpu_graph
    from pipeline.store import parts_dir

    started = time.perf_counter()
    distinct = _distinct_jpegs(work / "distinct")
    by_name, backend = _seed_features(work / "distinct", work)
    restore(images, store, rows)
    if _reusable(images, store, rows):
        print(f"reusing {store} and {images}", flush=True)
        return time.perf_counter() - started
    shutil.rmtree(parts_dir(store), ignore_errors=True)
    store.unlink(missing_ok=True)  # planning against an old store would make an update of it
    if not _has_images(images, rows):
        shutil.rmtree(images, ignore_errors=True)
        _link_images(images, distinct, 0, rows)
    config = ExtractConfig.from_file(None, data=str(images), out=str(store), progress=False)
    plan = plan_extraction(config, verified=verified_cpu_graph(config))
    dim = len(next(iter(by_name.values())))
    plan = begin_parts(plan, dim, backend)
    writer = PartWriter(plan, dim, "part-", update_index=False)
    block = (16 << 20) // (dim * 4)  # what PartWriter's memory bound flushes
    for start in range(0, len(plan.todo), block):
        idx = plan.todo[start : start + block]
        n_of = [int(Path(plan.records[i].path).stem[1:]) for i in idx]
        feats = np.stack([by_name[distinct[n % DISTINCT].name] for n in n_of])
        writer.add(feats, idx)
        writer.flush()
    finish_store(plan)
    return time.perf_counter() - started


def measure(argv: list[str]) -> dict[str, float]:
    """Run ``argv`` (a python module command) in a fresh process: seconds, peak RSS, bytes
    written, and its standard error."""
    with tempfile.NamedTemporaryFile("r", suffix=".io") as io_file:
        env = {**os.environ, _CHILD_IO: io_file.name, "PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate()
        seconds = time.perf_counter() - started
        if proc.returncode:
            raise RuntimeError(f"{argv} failed ({proc.returncode}): {err[-2000:]}")
        written = int(io_file.read() or 0)
    return {"seconds": seconds, "written_mib": written / 2**20, "log": err + out}


def _child(argv: list[str]) -> int:
    """Run ``python -m argv[0] argv[1:]`` here, then record write_bytes and peak RSS."""
    import resource
    import runpy

    sys.argv = [argv[0], *argv[1:]]
    code = 0
    try:
        if argv[0] == "load_features":
            from pipeline.store import load_features

            X_train, *_ = load_features(argv[1])
            print(f"X_train {X_train.shape} {X_train.dtype}")
        else:
            runpy.run_module(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        io = Path(f"/proc/{os.getpid()}/io").read_text()
        written = re.search(r"^write_bytes: (\d+)", io, re.M)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        Path(os.environ[_CHILD_IO]).write_text(written.group(1) if written else "0")
        print(f"PEAK_RSS_KIB {usage.ru_maxrss}", file=sys.stderr)
        print(f"CPU_SECONDS {usage.ru_utime + usage.ru_stime:.3f}", file=sys.stderr)
    return code


def _cpu_of(result: dict) -> float:
    """The step's CPU seconds (user + system, all its threads): unlike wall time, what other
    processes on a shared machine do changes it little."""
    found = re.findall(r"CPU_SECONDS ([\d.]+)", result["log"])
    return float(found[-1]) if found else float("nan")


def _rss_of(result: dict) -> float:
    found = re.findall(r"PEAK_RSS_KIB (\d+)", result["log"])
    return int(found[-1]) / 2**20 if found else float("nan")


def _split_update(log: str) -> tuple[float, float]:
    """(embedding seconds, total seconds) from the extract summary line."""
    embed = re.search(r"embedded \d+ new in ([\d.]+) s", log)
    total = re.search(r"\(([\d.]+) s in all\)", log)
    return (float(embed.group(1)) if embed else 0.0, float(total.group(1)) if total else 0.0)


def run(args: argparse.Namespace) -> list[tuple[str, ...]]:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    images, store = root / f"images-{args.rows}", root / f"store-{args.rows}.h5"
    if not (args.fit_only and store.exists()):
        fab = fabricate(images, store, args.rows, root)
        os.sync()  # the store's gigabytes on disk now, not written back during the timed steps
        print(f"store of {args.rows} rows ready in {fab:.0f} s -> {store} "
              f"({store.stat().st_size / 2**30:.2f} GiB)", flush=True)  # fmt: skip
    table = [] if args.fit_only else _extract_steps(args, root, images, store)
    if args.load:
        loads = [measure(["load_features", str(store)]) for _ in range(args.repeat)]
        table.append(_row("load_features", loads))
    fit_args = shlex.split(args.fit_args)
    for clf in args.clf:
        fit = measure(["pipeline.fit", "--features", str(store), "--clf", clf,
                       "--out", str(root / f"fit-{clf}"), *fit_args])  # fmt: skip
        table.append(_row(f"fit --clf {clf} {args.fit_args}".rstrip(), [fit]))
    return table


def _extract_steps(
    args: argparse.Namespace, root: Path, images: Path, store: Path
) -> list[tuple[str, ...]]:
    """The warm re-run and the +1 % update of ``store`` (which appends to it)."""
    extract = ["pipeline.extract", "--data", str(images), "--out", str(store), "--no-progress"]
    table = []
    warm = [measure(extract) for _ in range(args.repeat)]
    table.append(_row("warm re-run", warm))
    distinct = sorted((root / "distinct").glob("*/*.jpg"), key=lambda p: p.name)
    new = max(1, args.rows // 100)
    _link_images(images, distinct, args.rows, args.rows + new)
    size = _store_bytes(store)
    update = measure(extract)
    embed, _ = _split_update(update["log"])
    table.append(_row(f"+1 % ({new} new)", [update],
                      f"embedding {embed:.1f} s, rest {update['seconds'] - embed:.1f} s; "
                      f"store {size / 2**30:.2f} -> {_store_bytes(store) / 2**30:.2f} GiB"))  # fmt: skip
    return table


def _store_bytes(store: Path) -> int:
    """The store file plus its part files (an appended store's rows live there)."""
    parts = store.with_name(store.name + ".parts")
    return store.stat().st_size + sum(p.stat().st_size for p in parts.glob("*.h5"))


def _row(step: str, results: list[dict], note: str = "") -> tuple[str, ...]:
    seconds = statistics.median(r["seconds"] for r in results)
    rss = max(_rss_of(r) for r in results)
    written = statistics.median(r["written_mib"] for r in results)
    spread = f" (n={len(results)}, {min(r['seconds'] for r in results):.2f}-" \
             f"{max(r['seconds'] for r in results):.2f})" if len(results) > 1 else ""  # fmt: skip
    cpu = statistics.median(_cpu_of(r) for r in results)
    return step, f"{seconds:.2f}{spread}", f"{cpu:.2f}", f"{rss:.2f}", f"{written:.0f}", note


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "pipeline-scale"))
    parser.add_argument("--clf", nargs="*", default=["logreg"])
    parser.add_argument("--repeat", type=int, default=3, help="runs of the cheap steps")
    parser.add_argument(
        "--no-load",
        dest="load",
        action="store_false",
        help="skip load_features (it holds the train and test rows in memory)",
    )
    parser.add_argument(
        "--fit-args",
        default="",
        help='extra flags for every fit, one string (e.g. "--no-audit --set nn.max_iter=3")',
    )
    parser.add_argument(
        "--fit-only",
        action="store_true",
        help="only the load_features and fit steps (on the store under --root if it exists)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    table = run(args)
    print(f"\n{args.rows} rows; load average {os.getloadavg()}; "
          f"{time.perf_counter() - started:.0f} s in all\n")  # fmt: skip
    print("| step | seconds (median) | CPU s (median) | peak RSS GiB | written MiB | notes |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
