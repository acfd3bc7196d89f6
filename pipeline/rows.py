"""Row sources: a feature matrix read a block of rows at a time, from memory or from a store.

Stage two never needs a whole store in memory at once. A :class:`RowSource` is an
``(n_rows, width)`` float32 matrix that hands out contiguous blocks (:meth:`RowSource.read`) or
chosen rows (:meth:`RowSource.take`):

- :class:`ArrayRows` wraps an in-memory array (the small-data case, and tests);
- :class:`StoreRows` reads chosen rows of a feature store's datasets (``features`` and, as
  extra columns, its views) straight from the HDF5 file, opening it per read (so it pickles
  and works in any process);
- :class:`TransformedRows` applies a fitted transformer (a scaler) to each block as it is read.

Estimators that learn from blocks (the ``nn`` head's minibatches, XGBoost's ``QuantileDMatrix``
iterator) say so with the class attribute ``accepts_row_source = True`` and take a
``RowSource`` as ``X``; every other estimator gets :func:`materialize`'s array, read once into
one preallocated float32 matrix (no second copy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import StoreError

__all__ = [
    "BLOCK_ROWS",
    "ArrayRows",
    "RowSource",
    "StoreRows",
    "TransformedRows",
    "accepts_row_source",
    "iter_blocks",
    "materialize",
]

#: Rows per block: 32768 rows of 1280 float32 features are 160 MiB.
BLOCK_ROWS = 32768
# A read of chosen rows fetches the covering range of at most this many store rows at once:
# one HDF5 read instead of one per row, and at most 40 MiB of 1280 float32 features in flight
# however thinly the rows are spread (a 10 % held-out share read in one range was 640 MiB).
_SPAN_ROWS = 8192


class RowSource:
    """An ``(n_rows, width)`` float32 matrix read in blocks; subclasses implement
    :meth:`take` (and may override :meth:`read` with something faster)."""

    shape: tuple[int, int]
    dtype = np.dtype(np.float32)
    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows ``positions`` (any order, repeats allowed) as a C-contiguous float32 array."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a C-contiguous float32 array."""
        return self.take(np.arange(start, min(stop, len(self))))

    def subset(self, positions: Sequence[int] | np.ndarray) -> RowSource:
        """The rows ``positions`` of this source, as a source (nothing is read)."""
        return _SubsetRows(self, np.asarray(positions, dtype=np.int64))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = materialize(self)
        return out if dtype is None else out.astype(dtype, copy=False)


class ArrayRows(RowSource):
    """An in-memory 2-D array as a row source (blocks are float32 copies of its rows)."""

    def __init__(self, array: np.ndarray) -> None:
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {array.shape}")
        self.array = array
        self.shape = (int(array.shape[0]), int(array.shape[1]))

    def take(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[np.asarray(positions, dtype=np.int64)], np.float32)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[start:stop], dtype=np.float32)


class _SubsetRows(RowSource):
    def __init__(self, base: RowSource, positions: np.ndarray) -> None:
        self.base, self.positions = base, positions
        self.shape = (len(positions), base.shape[1])

    def take(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.base.take(self.positions[np.asarray(positions, dtype=np.int64)])

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.base.take(self.positions[start:stop])


class StoreRows(RowSource):
    """Rows ``rows`` of a store's ``datasets``, side by side as columns: ``("features",)`` is
    the embeddings; ``("features", "views/flip/features")`` each row's plain and flipped
    embeddings (:func:`pipeline.fit.views.wide_features`'s layout).

    ``rows`` are store row indices in the order the source presents them; reading is fastest
    when they are sorted (the usual case: a split's rows).
    """

    def __init__(
        self,
        path: str | Path,
        rows: Sequence[int] | np.ndarray | None = None,
        datasets: Sequence[str] = ("features",),
    ) -> None:
        import h5py

        self.path = str(Path(path).resolve())
        self.datasets = tuple(datasets)
        self.stamp = _stamp(self.path)
        with h5py.File(self.path, "r") as fh:
            n_store = int(fh[self.datasets[0]].shape[0])
            widths = [int(fh[name].shape[1]) for name in self.datasets]
        self.rows = (
            np.arange(n_store, dtype=np.int64)
            if rows is None
            else np.asarray(rows, dtype=np.int64).reshape(-1)
        )
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= n_store):
            raise ValueError(f"{self.path}: rows must lie in [0, {n_store})")
        self.dim = widths[0]
        if any(w != self.dim for w in widths):
            raise ValueError(f"{self.path}: datasets {self.datasets} differ in width {widths}")
        self.shape = (len(self.rows), self.dim * len(self.datasets))

    def subset(self, positions: Sequence[int] | np.ndarray) -> StoreRows:
        positions = np.asarray(positions, dtype=np.int64)
        return StoreRows.__new__(StoreRows)._init_from(self, self.rows[positions])

    def _init_from(self, other: StoreRows, rows: np.ndarray) -> StoreRows:
        self.path, self.datasets, self.dim, self.rows = other.path, other.datasets, other.dim, rows
        self.stamp = other.stamp
        self.shape = (len(rows), other.shape[1])
        return self

    def _open(self) -> Any:
        """The store, opened for reading; a store replaced since this source was made (an
        extract ran meanwhile: its rows may now be other images) is a one-line error."""
        import h5py

        fh = h5py.File(self.path, "r")
        if _stamp(self.path) != self.stamp:  # checked after opening: what was opened is new
            fh.close()
            raise StoreError(
                f"{self.path}: the store changed while it was being read (an extract ran "
                "meanwhile); run the command again"
            )
        return fh

    def take(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        wanted = self.rows[np.asarray(positions, dtype=np.int64)]
        order = np.argsort(wanted, kind="stable")
        sorted_rows = wanted[order]
        out = np.empty((len(wanted), self.shape[1]), dtype=np.float32)
        if not len(wanted):
            return out
        with self._open() as fh:
            for k, name in enumerate(self.datasets):
                columns = slice(k * self.dim, (k + 1) * self.dim)
                _read_sorted(fh[name], sorted_rows, out, columns, order)
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = self.rows[start:stop]
        consecutive = len(rows) > 1 and bool((np.diff(rows) == 1).all())
        if len(self.datasets) > 1 or not consecutive:  # (into a column slice it is slower)
            return self.take(np.arange(start, start + len(rows)))
        # consecutive rows of one dataset: HDF5 copies straight into the result (no temporary;
        # 0.10 s instead of 0.16 s per 32768 x 1280 block, measured)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        with self._open() as fh:
            fh[self.datasets[0]].read_direct(out, np.s_[int(rows[0]) : int(rows[-1]) + 1])
        return out


def _stamp(path: str) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten: inode, size, modification time."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_sorted(
    ds: Any, rows: np.ndarray, out: np.ndarray, columns: slice, order: np.ndarray
) -> None:
    """``out[order[i], columns] = ds[rows[i]]`` for sorted ``rows``, one covering-range read
    per run of rows spanning at most ``_SPAN_ROWS`` store rows."""
    i = 0
    while i < len(rows):
        lo = int(rows[i])
        j = int(np.searchsorted(rows, lo + _SPAN_ROWS, side="left"))
        block = ds[lo : int(rows[j - 1]) + 1]
        out[order[i:j], columns] = block[rows[i:j] - lo]
        i = j


class TransformedRows(RowSource):
    """``source`` with ``transform`` (e.g. a fitted scaler's ``transform``) applied to every
    block as it is read; the result is float32.

    :meth:`take` reads and transforms ``block_rows`` positions at a time into one preallocated
    result, so taking many rows (the nn head's early-stopping validation rows) holds the
    result and one block, never the untransformed rows whole beside their transformed copy."""

    def __init__(
        self,
        source: RowSource,
        transform: Callable[[np.ndarray], np.ndarray],
        block_rows: int = BLOCK_ROWS,
    ) -> None:
        self.source, self.transform, self.block_rows = source, transform, int(block_rows)
        self.shape = source.shape

    def _apply(self, block: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.transform(block), dtype=np.float32)

    def take(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(positions) <= self.block_rows:
            return self._apply(self.source.take(positions))
        out: np.ndarray | None = None
        for start in range(0, len(positions), self.block_rows):
            block = self.transform(self.source.take(positions[start : start + self.block_rows]))
            if out is None:  # the transform's width (a scaler keeps the source's)
                out = np.empty((len(positions), block.shape[1]), dtype=np.float32)
            out[start : start + len(block)] = block
        assert out is not None
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._apply(self.source.read(start, stop))


def accepts_row_source(estimator: Any) -> bool:
    """Does ``estimator.fit`` take a :class:`RowSource` as ``X`` (and read it in blocks)?"""
    return bool(getattr(estimator, "accepts_row_source", False))


def iter_blocks(X: Any, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows start:start+len)`` over an array or a :class:`RowSource`, in order."""
    source = X if isinstance(X, RowSource) else ArrayRows(X)
    for start in range(0, len(source), block_rows):
        yield start, source.read(start, start + block_rows)


def materialize(X: Any, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """``X`` as one float32 array, filled block by block (a source is read exactly once; an
    array that already is float32 is returned as it is)."""
    if not isinstance(X, RowSource):
        return np.asarray(X, dtype=np.float32)
    out = np.empty(X.shape, dtype=np.float32)
    for start, block in iter_blocks(X, block_rows):
        out[start : start + len(block)] = block
    return out
