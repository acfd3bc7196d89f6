"""What counts as a changed input: the stat fields git compares (size, mtime, ctime, inode) say
a file may have changed; the content hash says whether its bytes did. An edit that keeps size
and mtime gets a new row; a chmod, a touch or a move of identical bytes keeps its embedding."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from pipeline.extract import main
from pipeline.store import read_store

from .conftest import TINY_MODEL, write_images


def _extract(data, out, capsys, *extra) -> str:
    """Run extract; return its summary line."""
    capsys.readouterr()
    code = main(["--data", str(data), "--out", str(out), *TINY_MODEL, "--no-progress", "-q",
                 *extra])  # fmt: skip
    assert code == 0
    return capsys.readouterr().out.strip()


def _rows(out) -> dict[str, tuple[np.ndarray, str]]:
    table = read_store(out)
    return {p: (f, k) for p, f, k in zip(table.paths, table.features, table.keys, strict=True)}


@pytest.fixture
def bmps(tmp_path):
    """BMPs: their size in bytes depends only on their dimensions, so an edit can keep it."""
    root = tmp_path / "photos"
    write_images(root, {"cat": 3, "dog": 3}, ext=".bmp")
    return root


def _rewrite_in_place(target, data: bytes) -> None:
    """Overwrite ``target`` in place (same inode) with bytes of its size, then restore its
    mtime, as ``cp -p``, ``rsync -t`` or a tar extraction do."""
    info = target.stat()
    assert len(data) == info.st_size
    with open(target, "r+b") as fh:
        fh.write(data)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    now = target.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (
        info.st_size,
        info.st_mtime_ns,
        info.st_ino,
    )


def test_an_edit_that_keeps_size_and_mtime_gets_a_new_row(bmps, tmp_path, capsys):
    out = tmp_path / "s.h5"
    _extract(bmps, out, capsys)
    before = _rows(out)
    target = bmps / "cat" / "cat_000.bmp"
    (other,) = write_images(tmp_path / "other", {"cat": 1}, ext=".bmp", seed=9)
    _rewrite_in_place(target, other.read_bytes())  # bytes no row holds
    assert "embedded 1 new" in _extract(bmps, out, capsys)
    after = _rows(out)
    assert not np.array_equal(after[str(target)][0], before[str(target)][0])
    assert after[str(target)][1] != before[str(target)][1]
    for path in before:  # every other row untouched
        if path != str(target):
            np.testing.assert_array_equal(after[path][0], before[path][0])
    # Rewritten with the bytes of another stored image: that row's embedding is copied.
    donor = bmps / "dog" / "dog_000.bmp"
    _rewrite_in_place(target, donor.read_bytes())
    assert "embedded 0 new" in _extract(bmps, out, capsys)
    again = _rows(out)
    np.testing.assert_array_equal(again[str(target)][0], again[str(donor)][0])
    assert not np.array_equal(again[str(target)][0], after[str(target)][0])


def test_chmod_and_touch_keep_the_embedding_and_the_next_run_is_warm(bmps, tmp_path, capsys):
    out = tmp_path / "s.h5"
    _extract(bmps, out, capsys)
    before = _rows(out)
    touched, chmodded = bmps / "cat" / "cat_001.bmp", bmps / "dog" / "dog_002.bmp"
    os.utime(touched)  # touch: a new mtime
    chmodded.chmod(0o600)  # a new ctime
    line = _extract(bmps, out, capsys)
    assert "embedded 0 new" in line and "6 rows" in line
    after = _rows(out)
    for path in (touched, chmodded):
        np.testing.assert_array_equal(after[str(path)][0], before[str(path)][0])
        assert after[str(path)][1] != before[str(path)][1]  # the row's key follows the file
        assert after[str(path)][1].split("#")[1] == before[str(path)][1].split("#")[1]
    mtime = out.stat().st_mtime_ns
    assert "embedded 0 new" in _extract(bmps, out, capsys)
    assert out.stat().st_mtime_ns == mtime  # up to date: not even rewritten


def test_a_moved_identical_file_reuses_its_embedding_without_prune(bmps, tmp_path, capsys):
    out = tmp_path / "s.h5"
    _extract(bmps, out, capsys)
    before = _rows(out)
    old = bmps / "cat" / "cat_002.bmp"
    new = bmps / "cat" / "older" / "renamed.bmp"
    new.parent.mkdir()
    os.rename(old, new)
    line = _extract(bmps, out, capsys)  # nothing is lost: no --prune needed
    assert "embedded 0 new" in line and "pruned" not in line
    after = _rows(out)
    assert str(old) not in after
    np.testing.assert_array_equal(after[str(new)][0], before[str(old)][0])


def test_a_store_with_the_old_size_mtime_keys_is_migrated_without_embedding(bmps, tmp_path, capsys):
    out = tmp_path / "s.h5"
    _extract(bmps, out, capsys)
    before = _rows(out)
    with h5py.File(out, "r+") as fh:  # as written before ctime, inode and hash were recorded
        old = [":".join(k.split("#")[0].split(":")[:2]) for k in fh["keys"].asstr()[...]]
        fh["keys"][...] = np.array(old, dtype=object)
        fh.attrs["inputs_digest"] = "from before"
    assert "embedded 0 new" in _extract(bmps, out, capsys)
    after = _rows(out)
    for path, (features, key) in after.items():
        np.testing.assert_array_equal(features, before[path][0])
        assert key == before[path][1]  # the new keys, hash included
    # From now on the new rule holds: an edit keeping size and mtime is seen.
    (other,) = write_images(tmp_path / "other", {"cat": 1}, ext=".bmp", seed=9)
    _rewrite_in_place(bmps / "dog" / "dog_001.bmp", other.read_bytes())
    assert "embedded 1 new" in _extract(bmps, out, capsys)
