"""The HDF5 store contract, tested directly (not through the extract CLI): rows and part files,
the index over unfinished parts, the merge into source order, atomic writes, and the split."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from pipeline._io import atomic_path
from pipeline.exceptions import StoreError
from pipeline.store import (
    FORMAT_VERSION,
    FailedInputs,
    Rows,
    check_finite,
    decode_attrs,
    encode_attrs,
    list_parts,
    load_features,
    merge_store,
    parts_dir,
    read_attrs,
    read_rows_file,
    read_store,
    split_table,
    write_index,
    write_rows_file,
)

from ._fit_helpers import RECIPE, store_attrs

DIM = 4
ATTRS = {**RECIPE.to_attrs(), "class_names": ["a", "b"], "feature_dim": DIM}


def _rows(paths: list[str], start: float = 0.0) -> Rows:
    n = len(paths)
    features = (np.arange(n * DIM, dtype=np.float32).reshape(n, DIM) + start) / 7
    return Rows(features, np.arange(n) % 2, paths, ["train"] * n, [f"k:{p}" for p in paths])


def test_rows_file_round_trip(tmp_path):
    path = tmp_path / "rows.h5"
    rows = _rows(["x.jpg", "y.jpg", "z.jpg"])
    failed = FailedInputs()
    failed.add("bad.jpg", "cannot identify image file", "k:bad")
    write_rows_file(path, rows, failed, {**ATTRS, "complete": True})
    table = read_rows_file(path)
    np.testing.assert_array_equal(table.features, rows.features)
    assert table.paths.tolist() == rows.paths and table.keys.tolist() == rows.keys
    assert table.labels.tolist() == [0, 1, 0] and table.split.tolist() == ["train"] * 3
    assert (table.failed.paths, table.failed.errors) == (
        ["bad.jpg"],
        ["cannot identify image file"],
    )
    assert table.attrs["n_rows"] == 3 and table.class_names == ["a", "b"]
    assert table.attrs["preprocessing_fields"] == ATTRS["preprocessing_fields"]  # JSON attrs
    assert read_attrs(path)["fingerprint"] == RECIPE.fingerprint()
    assert read_rows_file(path, with_features=False).features.shape == (0, 0)


def test_attrs_encoding_round_trips():
    attrs = {"class_names": ["a"], "versions": {"torch": "2"}, "weights": None, "n": 3}
    assert decode_attrs(encode_attrs(attrs)) == {**attrs, "weights": "none"}


def test_empty_rows_file_is_readable(tmp_path):
    path = tmp_path / "empty.h5"
    write_rows_file(path, _rows([]), FailedInputs(), ATTRS)
    table = read_rows_file(path)
    assert table.features.shape == (0, DIM) and len(table.paths) == 0


def test_unfinished_store_is_an_index_over_its_parts(tmp_path):
    out = tmp_path / "features.h5"
    folder = parts_dir(out)
    folder.mkdir()
    write_rows_file(folder / "part-000001.h5", _rows(["c", "d"], 10), FailedInputs(), ATTRS)
    write_rows_file(folder / "part-000000.h5", _rows(["a", "b"]), FailedInputs(), ATTRS)
    write_rows_file(folder / "base.h5", _rows(["z"], 20), FailedInputs(), ATTRS)
    assert [p.name for p in list_parts(out)] == ["base.h5", "part-000000.h5", "part-000001.h5"]
    write_index(out, {**ATTRS, "complete": False})
    with h5py.File(out, "r") as fh:  # plain h5py reads the virtual datasets
        assert fh["features"].shape == (5, DIM)
        assert fh["paths"].asstr()[...].tolist() == ["z", "a", "b", "c", "d"]
    with pytest.raises(StoreError, match="incomplete"):
        read_store(out)
    assert read_store(out, require_complete=False).paths.tolist() == ["z", "a", "b", "c", "d"]


def test_merge_puts_rows_in_source_order_and_drops_stale_ones(tmp_path):
    out = tmp_path / "features.h5"
    part_a, part_b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_rows_file(part_a, _rows(["p2", "p0", "old"]), FailedInputs(), ATTRS)
    write_rows_file(part_b, _rows(["p1"], 100), FailedInputs(), ATTRS)
    order = {"p0": 0, "p1": 1, "p2": 2}
    keys = {p: f"k:{p}" for p in order}
    failed = FailedInputs()
    failed.add("gone.jpg", "truncated", "k:gone")
    n = merge_store(
        out,
        [part_a, part_b],
        order,
        keys=keys,
        labels={"p0": 1, "p1": 0, "p2": 1},
        splits={"p0": "test", "p1": "train", "p2": "train"},
        failed=failed,
        attrs=ATTRS,
    )
    assert n == 3
    table = read_store(out)
    assert table.paths.tolist() == ["p0", "p1", "p2"]
    assert table.labels.tolist() == [1, 0, 1] and table.split.tolist() == ["test", "train", "train"]
    np.testing.assert_array_equal(table.features[0], _rows(["p2", "p0"]).features[1])
    np.testing.assert_array_equal(table.features[1], _rows(["p1"], 100).features[0])
    assert table.failed.paths == ["gone.jpg"] and table.attrs["complete"]


def test_merge_refuses_rows_computed_from_other_content(tmp_path):
    part = tmp_path / "a.h5"
    write_rows_file(part, _rows(["p0"]), FailedInputs(), ATTRS)
    with pytest.raises(StoreError, match="never computed"):
        merge_store(
            tmp_path / "out.h5",
            [part],
            {"p0": 0},
            keys={"p0": "k:changed"},
            labels={"p0": 0},
            splits={"p0": ""},
            failed=FailedInputs(),
            attrs=ATTRS,
        )
    assert not (tmp_path / "out.h5").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]  # no temporary file left


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["file.bin"]


def test_unreadable_files_are_store_errors(tmp_path):
    with pytest.raises(StoreError, match="no such feature store"):
        read_rows_file(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        read_attrs(junk)
    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh["x"] = 1
    with pytest.raises(StoreError, match="no /features"):
        read_rows_file(tmp_path / "other.h5")


def test_split_uses_the_store_test_rows_else_a_stratified_holdout(tmp_path):
    path = tmp_path / "s.h5"
    n = 40
    rows = Rows(
        np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32),
        np.arange(n) % 2,
        [f"p{i}" for i in range(n)],
        ["test" if i < 10 else "train" for i in range(n)],
        [f"k{i}" for i in range(n)],
    )
    attrs = store_attrs(["a", "b"], DIM)
    write_rows_file(path, rows, FailedInputs(), attrs)
    X_train, y_train, X_test, y_test, evaluation = split_table(read_store(path), path)
    assert (len(X_train), len(X_test)) == (30, 10) and evaluation == "given split"
    unsplit = Rows(rows.features, rows.labels, rows.paths, [""] * n, rows.keys)
    write_rows_file(path, unsplit, FailedInputs(), attrs)
    X_train, y_train, X_test, y_test, names = load_features(path, test_size=0.25)
    assert (len(X_train), len(X_test)) == (30, 10) and names == ["a", "b"]
    assert sorted(np.bincount(y_test).tolist()) == [5, 5]  # stratified


def test_non_finite_features_are_refused(tmp_path):
    path = tmp_path / "nan.h5"
    rows = _rows(["a", "b"])
    rows.features[1, 0] = np.nan
    write_rows_file(path, rows, FailedInputs(), {**ATTRS, "complete": True})
    with pytest.raises(StoreError):
        check_finite(read_store(path), path)


def test_stage_one_writes_the_current_format_version():
    assert store_attrs(["a"], DIM)["format_version"] == FORMAT_VERSION == 1
