"""Row sources read exactly the rows (and columns) an in-memory array would hold."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from pipeline import rows as rows_mod
from pipeline.rows import (
    ArrayRows,
    StoreRows,
    TransformedRows,
    accepts_row_source,
    iter_blocks,
    materialize,
)


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 6)).astype(np.float32)
    flip = rng.normal(size=(500, 6)).astype(np.float32)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=features, chunks=(64, 6), fletcher32=True)
        fh.create_dataset("views/flip/features", data=flip, chunks=(64, 6))
    return path, features, flip


def test_store_rows_match_the_array_in_any_order(store, monkeypatch):
    path, features, flip = store
    monkeypatch.setattr(rows_mod, "_SPAN_ROWS", 50)  # several covering reads per take
    rows = np.array([499, 3, 3, 250, 0, 17, 498])
    source = StoreRows(path, rows, ("features", "views/flip/features"))
    assert source.shape == (7, 12)
    expected = np.concatenate([features[rows], flip[rows]], axis=1)
    np.testing.assert_array_equal(source.take(np.arange(7)), expected)
    np.testing.assert_array_equal(source.read(2, 5), expected[2:5])
    np.testing.assert_array_equal(source.subset([6, 0]).take([0, 1]), expected[[6, 0]])
    np.testing.assert_array_equal(np.asarray(source), expected)


def test_blocks_cover_every_row_once(store):
    path, features, _ = store
    source = StoreRows(path, np.arange(0, 500, 3))
    starts = [start for start, _ in iter_blocks(source, 40)]
    assert starts == list(range(0, 167, 40))
    np.testing.assert_array_equal(materialize(source, 40), features[::3])
    np.testing.assert_array_equal(materialize(ArrayRows(features[::3]), 7), features[::3])


def test_transformed_rows_apply_per_block_and_pickle(store):
    path, features, _ = store
    source = TransformedRows(StoreRows(path), np.negative)
    np.testing.assert_array_equal(materialize(source, 64), -features)
    again = pickle.loads(pickle.dumps(StoreRows(path, [5, 1])))
    np.testing.assert_array_equal(again.take([0, 1]), features[[5, 1]])


def test_out_of_range_rows_are_refused(store):
    path, _, _ = store
    with pytest.raises(ValueError, match="rows must lie in"):
        StoreRows(path, [500])


def test_accepts_row_source_reads_the_class_attribute():
    class Streams:
        accepts_row_source = True

    assert accepts_row_source(Streams()) and not accepts_row_source(object())


def test_consecutive_rows_read_straight_into_the_block(store):
    path, features, _ = store
    source = StoreRows(path, np.arange(100, 400))
    np.testing.assert_array_equal(source.read(10, 200), features[110:300])
    np.testing.assert_array_equal(materialize(source, 64), features[100:400])


def test_a_store_replaced_while_being_read_is_an_error_not_other_rows(store):
    """An extract that replaces the store mid-fit (rows renumbered) must not feed the reader
    other images' rows: every read checks the file is the one the source was made from."""
    from pipeline.exceptions import StoreError

    path, features, _ = store
    source = StoreRows(path, np.arange(10))
    np.testing.assert_array_equal(source.read(0, 10), features[:10])
    replacement = path.with_name("new.h5")
    with h5py.File(replacement, "w") as fh:
        fh.create_dataset("features", data=features[::-1])
    replacement.replace(path)
    for read in (
        lambda s: s.read(0, 10),
        lambda s: s.take([3, 1]),
        lambda s: s.subset([0]).take([0]),
    ):
        with pytest.raises(StoreError, match="the store changed while it was being read"):
            read(source)
    np.testing.assert_array_equal(StoreRows(path, [0]).take([0]), features[-1:])  # a new source


class _CountingTransform:
    """A scaler-like transform (float64 out, as a StandardScaler on float64 would give) that
    records the size of each block it is given."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, block: np.ndarray) -> np.ndarray:
        self.sizes.append(len(block))
        return (block.astype(np.float64) - 0.5) * 3.0


def test_transformed_take_fills_block_by_block_as_the_whole_array_transform(store):
    path, features, _ = store
    rng = np.random.default_rng(1)
    positions = rng.integers(0, 500, size=230)  # unsorted, with repeats
    assert len(np.unique(positions)) < len(positions)
    counting = _CountingTransform()
    source = TransformedRows(StoreRows(path), counting, block_rows=32)
    got = source.take(positions)
    whole = np.ascontiguousarray(_CountingTransform()(features[positions]), dtype=np.float32)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, whole)
    assert max(counting.sizes) <= 32 and sum(counting.sizes) == 230 and len(counting.sizes) == 8
    # few rows: one block, as before; none: an empty matrix of the source's width
    few = np.ascontiguousarray(_CountingTransform()(features[[7, 2]]), dtype=np.float32)
    np.testing.assert_array_equal(source.take([7, 2]), few)
    assert source.take([]).shape == (0, 6)
    assert TransformedRows(StoreRows(path), np.negative).block_rows == rows_mod.BLOCK_ROWS


def test_transformed_take_holds_the_result_and_one_block(tmp_path):
    import tracemalloc

    data = np.random.default_rng(2).normal(size=(40_000, 64)).astype(np.float32)
    source = TransformedRows(ArrayRows(data), lambda block: block * 2.0, block_rows=2048)
    positions = np.random.default_rng(3).permutation(40_000)
    tracemalloc.start()
    try:
        got = source.take(positions)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, data[positions] * 2.0)
    # the result (10.2 MB) plus a block's copies, not the rows read whole beside their copy
    assert peak < 1.2 * data.nbytes, peak


def test_finite_check_takes_blocks_and_finds_a_bad_row_anywhere():
    import tracemalloc

    from pipeline.estimators import BLOCK_ROWS, _check_finite

    rows = np.zeros((3 * BLOCK_ROWS, 16), dtype=np.float32)
    tracemalloc.start()
    try:
        _check_finite(rows, "Owner", "the validation rows")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * BLOCK_ROWS * 16, peak  # one block's mask (the whole: 3 blocks)
    rows[-1, 3] = np.inf
    with pytest.raises(ValueError, match=r"Owner: Input X contains NaN .*validation rows"):
        _check_finite(rows, "Owner", "the validation rows")
