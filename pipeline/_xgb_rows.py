"""XGBoost's ``QuantileDMatrix`` filled block by block from a :class:`~pipeline.rows.RowSource`.

XGBoost's ``hist`` trees never look at the float features once they are binned: a
``QuantileDMatrix`` keeps only each value's bin (one byte per feature when ``max_bin <= 256``).
:func:`quantile_matrix` builds one through an ``xgboost.DataIter`` that hands XGBoost one block
of rows at a time (:func:`pipeline.rows.iter_blocks`), so the float matrix is never whole in
memory. XGBoost walks the iterator more than once (four passes with xgboost 3.2: shapes,
quantile sketch, binning), so a store is read a few times; each block is checked to be finite
on the first pass.

Imported lazily by :mod:`pipeline.estimators` (``import xgboost`` takes seconds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xgboost

from .rows import RowSource, iter_blocks

__all__ = ["BLOCK_ROWS", "RowSourceIter", "quantile_matrix"]

#: Rows per batch handed to XGBoost (40 MiB of 1280 float32 features). Smaller than
#: :data:`pipeline.rows.BLOCK_ROWS`: building a QuantileDMatrix of 160,000 x 1280 rows from a
#: store peaked 340 MiB lower with 8192-row batches than with 32768 (1072 vs 1411 MiB) in
#: about the same time (43 vs 46 s).
BLOCK_ROWS = 8192


class RowSourceIter(xgboost.DataIter):
    """The blocks of ``source`` with their ``labels``, one batch per block, as XGBoost reads
    them; ``passes`` counts the walks over the source."""

    def __init__(self, source: RowSource, labels: np.ndarray, block_rows: int, owner: str) -> None:
        super().__init__(release_data=True)
        self.source, self.labels, self.block_rows, self.owner = source, labels, block_rows, owner
        self.passes = 0
        self._blocks: Any = None

    def reset(self) -> None:
        self._blocks = None

    def next(self, input_data: Any) -> bool:
        if self._blocks is None:
            self._blocks = iter_blocks(self.source, self.block_rows)
            self.passes += 1
        item = next(self._blocks, None)
        if item is None:
            return False
        start, block = item
        if self.passes == 1 and not np.isfinite(block).all():
            raise ValueError(
                f"{self.owner}: X contains NaN or infinity (in rows {start}..{start + len(block)})"
            )
        input_data(data=block, label=self.labels[start : start + len(block)])
        return True


def quantile_matrix(
    source: RowSource,
    labels: np.ndarray,
    *,
    owner: str,
    block_rows: int | None = None,
    **kwargs: Any,
) -> xgboost.QuantileDMatrix:
    """A ``QuantileDMatrix`` of ``source``'s rows and ``labels``, read ``block_rows`` rows
    (default :data:`BLOCK_ROWS`) at a time; ``kwargs`` go to ``QuantileDMatrix``
    (``max_bin``, ``nthread``, ``missing``, ``ref``). ``owner`` names the estimator in errors."""
    if len(labels) != len(source):
        raise ValueError(f"{owner}: {len(source)} rows but {len(labels)} labels")
    rows = BLOCK_ROWS if block_rows is None else int(block_rows)
    return xgboost.QuantileDMatrix(RowSourceIter(source, labels, rows, owner), **kwargs)
