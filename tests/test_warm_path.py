"""Re-runs at scale: a warm run over unchanged inputs reads none of the store's rows (the inputs'
digest decides), an update reads the previous store's rows once, and the array matching behind
both agrees with the plain definition."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline import store
from pipeline.engine.sources import Record
from pipeline.extract.plan import inputs_digest
from pipeline.store import PathIndex, parts_dir, read_attrs, read_store

from .conftest import TINY_MODEL, write_images

FAST = ["--batch-size", "2", "--workers", "0", "--checkpoint-seconds", "0"]


def extract(data: Path, out: Path, *extra: str) -> int:
    from pipeline.extract import main

    return main(["--data", str(data), "--out", str(out), *TINY_MODEL, "--no-progress", "-q",
                 *extra])  # fmt: skip


@pytest.fixture
def row_reads(monkeypatch) -> list[tuple[int, bool]]:
    """Every read of a file's row columns (paths, keys, labels, split): (inode, whole rows)."""
    reads: list[tuple[int, bool]] = []
    real = store._read_row_columns

    def recording(fh, with_rows):
        reads.append((os.stat(fh.filename).st_ino, with_rows))
        return real(fh, with_rows)

    monkeypatch.setattr(store, "_read_row_columns", recording)
    return reads


def test_a_warm_run_reads_no_stored_rows_and_still_sees_a_change(image_dir, tmp_path, row_reads):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    assert read_attrs(out)["inputs_digest"]
    row_reads.clear()
    assert extract(image_dir, out) == 0
    assert [r for r in row_reads if r[1]] == []  # up to date from the digest alone
    # A changed file (new modification time, same name) changes the digest: it is looked at
    # (hashed; same bytes, so its row is kept under the new key).
    changed = image_dir / "dog" / "dog_001.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert extract(image_dir, out, *FAST) == 0
    assert any(with_rows for _, with_rows in row_reads)
    table = read_store(out)
    key = table.keys[list(table.paths).index(str(changed))]
    info = changed.stat()
    assert key.split("#")[0] == f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"


def test_an_update_reads_the_previous_stores_rows_once(image_dir, tmp_path, row_reads):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    original = out.stat().st_ino
    write_images(image_dir, {"eel": 2}, seed=5)
    row_reads.clear()
    assert extract(image_dir, out, *FAST) == 0
    assert (parts_dir(out) / "base.h5").stat().st_ino == original  # an appended update
    # Once, when the warm check found work; planning and the final view reuse those columns.
    assert [r for r in row_reads if r == (original, True)] == [(original, True)]
    assert len(read_store(out).paths) == 10


def test_path_index_finds_first_positions_with_or_without_a_dictionary():
    reference = np.array(["a", "b", "c"], dtype=object)
    index = PathIndex(reference)
    assert index.find(reference.copy()).tolist() == [0, 1, 2]  # same list: no dictionary
    assert index._where is None
    assert index.find(np.array(["c", "x", "a"], dtype=object)).tolist() == [2, -1, 0]
    assert index.find(np.array([], dtype=object)).tolist() == []


def test_inputs_digest_changes_with_every_field_of_every_input():
    records = [Record("/d/a.png", 0, "train"), Record("/d/b.png", 1, "")]
    keys = ["1:2", "3:4"]
    digest = inputs_digest(records, keys, ["cat", "dog"])
    assert digest == inputs_digest(list(records), list(keys), ["cat", "dog"])
    changed = [
        inputs_digest([Record("/d/a2.png", 0, "train"), records[1]], keys, ["cat", "dog"]),
        inputs_digest([Record("/d/a.png", 1, "train"), records[1]], keys, ["cat", "dog"]),
        inputs_digest([Record("/d/a.png", 0, "test"), records[1]], keys, ["cat", "dog"]),
        inputs_digest(records, ["1:2", "3:5"], ["cat", "dog"]),
        inputs_digest(records, keys, ["cat", "eel"]),
        inputs_digest(records[::-1], keys[::-1], ["cat", "dog"]),
        inputs_digest(records[:1], keys[:1], ["cat", "dog"]),
    ]
    assert digest not in changed and len(set(changed)) == len(changed)
