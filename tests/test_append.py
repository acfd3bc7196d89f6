"""Updates append: only new rows are written, the store stays readable by plain h5py, a kill -9
at any commit point resumes to the same store, and ``--compact`` makes it one file again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.exceptions import StoreError
from pipeline.store import parts_dir, read_store

from ._precision import assert_embeddings_match
from .conftest import TINY_MODEL, write_images

REPO = Path(__file__).resolve().parent.parent
FAST = ["--batch-size", "2", "--workers", "0", "--checkpoint-seconds", "0"]


def extract(data, out, *extra) -> int:
    from pipeline.extract import main

    return main(["--data", str(data), "--out", str(out), *TINY_MODEL, "--no-progress", "-q",
                 *extra])  # fmt: skip


def stats(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file in ``folder``."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.is_file()
    }


def plain_h5py(path: Path) -> dict[str, np.ndarray]:
    """What a reader with nothing but h5py sees."""
    with h5py.File(path, "r") as fh:
        assert fh.attrs["complete"]
        return {
            "features": fh["features"][...],
            "labels": fh["labels"][...],
            "paths": fh["paths"].asstr()[...],
            "split": fh["split"].asstr()[...],
            "keys": fh["keys"].asstr()[...],
            "failed": fh["failed/paths"].asstr()[...],
            "precision": fh.attrs["precision"],
        }


def assert_same_store(a: Path, b: Path, ordered: bool = True) -> None:
    x, y = plain_h5py(a), plain_h5py(b)
    order_x = np.arange(len(x["paths"])) if ordered else np.argsort(x["paths"])
    order_y = np.arange(len(y["paths"])) if ordered else np.argsort(y["paths"])
    for name in ("labels", "paths", "split", "keys"):
        assert list(x[name][order_x]) == list(y[name][order_y]), name
    assert sorted(x["failed"]) == sorted(y["failed"])
    assert x["precision"] == y["precision"]
    assert_embeddings_match(x["features"][order_x], y["features"][order_y], y["precision"])


def test_update_writes_only_new_rows_and_plain_h5py_sees_the_current_images(image_dir, tmp_path):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    original = out.stat()
    before = plain_h5py(out)
    write_images(image_dir, {"eel": 3}, seed=3)
    os.remove(image_dir / "cat" / "cat_001.png")
    assert extract(image_dir, out, *FAST, "--prune") == 0
    # The old store was renamed into base.h5, never rewritten; the update wrote 3 rows.
    base = parts_dir(out) / "base.h5"
    assert (base.stat().st_ino, base.stat().st_mtime_ns) == (original.st_ino, original.st_mtime_ns)
    first = stats(parts_dir(out))
    new_parts = [parts_dir(out) / n for n in first if n != "base.h5"]
    with h5py.File(new_parts[0], "r") as fh:
        dim = fh["features"].shape[1]
    rows = [h5py.File(p, "r")["paths"].shape[0] for p in new_parts]
    assert sum(rows) == 3
    row_bytes = dim * 4
    assert sum(p.stat().st_size for p in new_parts) < 3 * row_bytes + len(new_parts) * (64 << 10)
    assert out.stat().st_size < 64 << 10  # the index holds no rows
    after = plain_h5py(out)
    removed = str(image_dir / "cat" / "cat_001.png")
    assert removed in before["paths"] and removed not in after["paths"]
    assert len(after["paths"]) == len(set(after["paths"])) == 8 - 1 + 3
    kept = dict(zip(before["paths"], before["features"], strict=True))
    for path, row in zip(after["paths"], after["features"], strict=True):
        if path in kept:
            assert np.array_equal(row, kept[path])
    # Equal, up to row order, to extracting the current folder from scratch.
    assert extract(image_dir, tmp_path / "fresh.h5") == 0
    assert_same_store(out, tmp_path / "fresh.h5", ordered=False)
    # A second update leaves every existing file alone and appends its 2 rows.
    write_images(image_dir / "eel", {"more": 2}, seed=4)
    mtime = out.stat().st_mtime_ns
    assert extract(image_dir, out, *FAST) == 0
    second = stats(parts_dir(out))
    assert {n: second[n] for n in first} == first and out.stat().st_mtime_ns != mtime
    added = [parts_dir(out) / n for n in second if n not in first]
    assert sum(h5py.File(p, "r")["paths"].shape[0] for p in added) == 2
    # Unchanged folder: the warm path, nothing written.
    mtime = out.stat().st_mtime_ns
    assert extract(image_dir, out) == 0 and out.stat().st_mtime_ns == mtime


_KILL_AT_REPLACE = """
import os, runpy, signal, sys
limit, calls, replace = int(sys.argv[1]), [0], os.replace
def killing_replace(src, dst, **kw):
    replace(src, dst, **kw)
    calls[0] += 1
    if calls[0] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = killing_replace
sys.argv = ["pipeline.extract", *sys.argv[2:]]
runpy.run_module("pipeline.extract", run_name="__main__")
"""


def test_kill_9_at_every_commit_of_an_update_resumes_to_the_same_store(image_dir, tmp_path):
    """Every durable step of an update is an ``os.replace``; the run is SIGKILLed right after
    the 1st, 2nd, ... of them, then rerun, until a run finishes without reaching the limit."""
    out, reference = tmp_path / "f.h5", tmp_path / "reference.h5"
    assert extract(image_dir, out) == 0
    initial = tmp_path / "initial.h5"
    shutil.copy2(out, initial)
    write_images(image_dir, {"eel": 3}, seed=3)
    os.remove(image_dir / "dog" / "dog_002.png")
    shutil.copy2(initial, reference)
    assert extract(image_dir, reference, *FAST, "--prune") == 0
    argv = ["--data", str(image_dir), "--out", str(out), *TINY_MODEL, *FAST, "--no-progress",
            "-q", "--prune"]  # fmt: skip
    killed = 0
    for limit in range(1, 40):
        shutil.rmtree(parts_dir(out), ignore_errors=True)
        shutil.copy2(initial, out)
        proc = subprocess.run([sys.executable, "-c", _KILL_AT_REPLACE, str(limit), *argv],
                              cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr
        killed += 1
        assert extract(image_dir, out, *FAST, "--prune") == 0, f"resume after kill at {limit}"
        assert_same_store(out, reference)
        assert not list(tmp_path.glob("*.tmp*")) and not list(parts_dir(out).glob("*.tmp*"))
    assert killed >= 5  # rename to base, index, part, index, ..., the appended index


def test_changed_labels_rewrite_and_compact_makes_one_file(image_dir, tmp_path):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    write_images(image_dir, {"eel": 2}, seed=3)
    assert extract(image_dir, out) == 0
    assert parts_dir(out).is_dir()
    # The store's index alone, without its parts, is refused rather than read as zeros.
    alone = tmp_path / "elsewhere" / "f.h5"
    alone.parent.mkdir()
    shutil.copy2(out, alone)
    with pytest.raises(StoreError, match=r"f\.h5\.parts/.*--compact"):
        read_store(alone)
    # --compact: one self-contained file in source order, equal to a fresh extraction.
    assert extract(image_dir, out, "--compact") == 0
    assert not parts_dir(out).exists()
    assert extract(image_dir, tmp_path / "fresh.h5") == 0
    assert_same_store(out, tmp_path / "fresh.h5")
    # A new class sorting first renumbers every label: the update rewrites the store.
    write_images(image_dir, {"ant": 2}, seed=5)
    assert extract(image_dir, out) == 0
    assert not parts_dir(out).exists()
    assert extract(image_dir, tmp_path / "fresh2.h5") == 0
    assert_same_store(out, tmp_path / "fresh2.h5")


def test_an_update_scattering_rows_over_too_many_runs_rewrites_the_store(
    image_dir, tmp_path, monkeypatch
):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    os.remove(image_dir / "cat" / "cat_001.png")  # base rows now map as 2 runs per dataset
    monkeypatch.setattr("pipeline.store.MAX_VIEW_RUNS", 1)
    assert extract(image_dir, out, "--prune") == 0
    assert not parts_dir(out).exists()
    assert extract(image_dir, tmp_path / "fresh.h5") == 0
    assert_same_store(out, tmp_path / "fresh.h5")
