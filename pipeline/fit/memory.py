"""Will ``fit`` fit in memory? A check from the store's attributes, before any row is read.

``fit`` reads the store's rows in blocks (:mod:`pipeline.rows`) and hands each classifier the
rows the way it can take them (:func:`pipeline.fit.streaming.fit_plan`). Its phases run one
after another, so its peak is

    base + the row columns + the largest phase (each classifier's fit, the audit)
         + models kept (knn's rows)

where, with M the bytes of the N x W float32 matrix (W: the embedding, times 1 + the views in
use; N: every row of the store, an upper bound of the training rows):

- the store's row columns (paths, content keys, labels, splits) and the splits' row indices
  are held for the whole run: about 256 bytes a row;
- reading costs a few blocks of working memory (a block, its covering read from the store,
  the fancy-indexed and the transformed copies: about 4.5 blocks of W): blocks of
  :data:`~pipeline.store.READ_BLOCK_ROWS` (8192) where fit reads rows into a matrix, of the
  estimator's own size (up to :data:`~pipeline.rows.BLOCK_ROWS`, 32768) where it streams;
- a classifier that streams (``"stream"``: its final step reads row sources) holds no
  training matrix: it reads blocks while it trains, so its peak is the blocks plus its own state (the nn head:
  its torch runtime and weights, 0.25 GiB; xgboost: its binned copy and training state,
  0.95 M), plus the rows it holds out whole (the nn head's early-stopping validation rows,
  ``validation_fraction`` of M: read and scaled a block at a time into one matrix, then held
  while it trains);
- ``"scaled"`` (``logreg``, ``svc``): the blocks, then one float32 matrix of the scaled rows, M,
  which the classifier trains on (logreg: in place);
- ``"matrix"`` (``knn``, ``svc_approx``, views, ``--search``; ``xgboost`` without streaming):
  the blocks while the rows fill one matrix, then the classifier's copies of it;
- the data-quality audit: the labelled rows' plain embeddings in one matrix, plus its probe's
  and nearest-neighbour index's copies (``--no-audit`` skips it);
- ``knn`` keeps its normalised training rows after fitting (added to everything after it).

Measured with ``benchmarks/scale.py`` and :mod:`tracemalloc` on a 101k x 1280 store, streaming
``nn`` and ``xgboost`` with their branches merged (docs/benchmarks.md, "fit reading the store
in blocks"): the estimates were within 10 % of the measured peaks. The row columns and the nn
head's validation rows, small there, were found by measuring ``nn`` at 200k and 600k rows
(``fit --clf nn --no-audit``, peak RSS by phase; docs/benchmarks.md, "fit at 1M rows"): its
peak grew 0.61 GiB per million rows, which they account for. A classifier not measured gets
its plan's default, a lower bound (the check only refuses runs that cannot fit even so).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import rows
from ..exceptions import StoreError
from ..store import read_attrs, read_block_rows
from .data_quality import AUDIT_MAX_ROWS

__all__ = [
    "available_bytes",
    "check_fit_memory",
    "estimate_fit_bytes",
    "fit_memory_parts",
    "held_out_share",
    "peak_bytes",
]

_GIB = 1 << 30
# Resident memory besides the rows (interpreter, numpy, scikit-learn, torch, h5py): the peak
# RSS of fit on 101k rows less the peak of its numpy arrays (tracemalloc) was 0.52 GiB.
_BASE_BYTES = _GIB // 2
# The store's row columns, read once and held for the whole run (paths, content keys and splits
# as Python strings, labels, the splits' row indices), per row: the peak RSS before the first
# classifier grew 257 bytes a row from 200k to 600k rows (48-character paths; a longer path
# costs a byte more a character); tracemalloc of read_store(with_features=False): 200.
_ROW_COLUMN_BYTES = 256
# Working memory of reading, in blocks of the matrix's width (tracemalloc: 4.0 to 4.3).
_READ_BLOCKS = 4.5
# A classifier's own peak while it fits, per byte of M, by plan; (plan, name) overrides.
_PLAN_MULTIPLE = {"stream": 0.0, "scaled": 1.0, "matrix": 2.0}
# Measured at 101k x 1280 (peak RSS less base): xgboost read whole 2.65 M; the nn head given its
# scaled matrix (without streaming) copies its training and validation rows: 2 M.
_OWN = {("stream", "xgboost"): 0.95, ("matrix", "xgboost"): 2.65, ("scaled", "nn"): 2.0}
# A streaming classifier's own blocks (rows; default rows.BLOCK_ROWS) and what it holds
# besides them whatever the rows (the nn head's torch runtime). Peak RSS less base and reading:
# nn 1.46 GiB at 101k rows; xgboost (binned copy, training state: 0.95 M) 1.12 GiB at 101k
# rows, 1.59 GiB at 200k x 1280 (xgbstream branch, benchmarks/xgboost_rows.py).
_STREAM_BLOCK_ROWS = {"xgboost": 8192}
_STREAM_FIXED = {"nn": _GIB // 4}
# The audit's peak per byte of the labelled rows' plain embeddings (N x D float32): its label
# check peaked at 1.78x, its duplicate check at 1.88x (tracemalloc, 101k rows), 2.1x in RSS
# above its imports; plus what a fit run holds by then besides the base (the report's
# libraries and tables): fit --clf logreg peaked at 1.81 GiB at 101k rows.
_AUDIT_MULTIPLE = 2.1
_AUDIT_FIXED = 0.3 * _GIB
# Kept after fitting, per byte of M, for the rest of the run.
_RETAINED = {"knn": 1.0}
# Parts held for the whole run (the others are phases, one after another).
_THROUGHOUT = ("base", "row_columns", "retained")


def held_out_share(estimator: object) -> float:
    """The share of its training rows that ``estimator`` (or a ``Pipeline``'s final step)
    holds in memory whole while it trains from blocks: the nn head's early-stopping
    validation rows (``validation_fraction``); 0 for anything else."""
    steps = getattr(estimator, "steps", None)
    final = steps[-1][1] if steps else estimator
    if getattr(final, "early_stopping", False) is True:
        return float(getattr(final, "validation_fraction", 0.0))
    return 0.0


def _read_bytes(n_rows: int, width: int, block_rows: int) -> int:
    """Working memory of reading ``width``-wide blocks of ``block_rows`` (at most ``n_rows``)."""
    return int(_READ_BLOCKS * min(n_rows, block_rows) * width * 4)


def fit_memory_parts(
    n_rows: int,
    dim: int,
    plans: Mapping[str, str],
    *,
    n_views: int = 0,
    audit: bool = True,
    held_out: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Estimated peak bytes of each part of ``fit`` on an ``n_rows`` x ``dim`` store using
    ``n_views`` views: ``base``, ``row_columns``, one per classifier of ``plans`` (name ->
    :func:`~pipeline.fit.streaming.fit_plan`; reading and fitting), ``audit`` and
    ``retained`` (models that keep rows). ``held_out``: name -> :func:`held_out_share` of
    the classifiers that stream."""
    width = dim * (1 + n_views)
    matrix = n_rows * width * 4
    parts = {"base": _BASE_BYTES, "row_columns": n_rows * _ROW_COLUMN_BYTES}
    fill = _read_bytes(n_rows, width, read_block_rows())  # fit's own reads into a matrix
    for name, plan in plans.items():
        own = matrix * _OWN.get((plan, name), _PLAN_MULTIPLE[plan])
        if plan == "stream":  # reads its own blocks while it trains
            block_rows = _STREAM_BLOCK_ROWS.get(name, rows.BLOCK_ROWS)
            stream = _read_bytes(n_rows, width, block_rows)
            # rows held out whole: read (and scaled) a block at a time into one matrix, then
            # kept while it trains (the nn head: blocks of rows.BLOCK_ROWS, as it trains)
            held = matrix * (held_out or {}).get(name, 0.0)
            parts[name] = int(stream + held + own + _STREAM_FIXED.get(name, 0))
        else:  # the blocks while the matrix fills, then the classifier's copies
            parts[name] = int(max(fill + matrix, own))
    if audit:
        plain = n_rows * dim * 4
        fill = _read_bytes(n_rows, dim, read_block_rows())
        parts["audit"] = int(_AUDIT_FIXED + max(fill + plain, plain * _AUDIT_MULTIPLE))
    parts["retained"] = int(sum(matrix * _RETAINED.get(name, 0.0) for name in plans))
    return parts


def estimate_fit_bytes(n_rows: int, dim: int, plans: Mapping[str, str], **options: Any) -> int:
    """Peak resident bytes of ``fit`` (``options``: those of :func:`fit_memory_parts`)."""
    return peak_bytes(fit_memory_parts(n_rows, dim, plans, **options))


def peak_bytes(parts: Mapping[str, int]) -> int:
    """The peak of :func:`fit_memory_parts`: base + row columns + retained models + the
    largest of the other parts (the classifiers and the audit run one after another)."""
    phases = [size for name, size in parts.items() if name not in _THROUGHOUT]
    return sum(parts[name] for name in _THROUGHOUT) + max(phases, default=0)


def available_bytes() -> int | None:
    """Memory available to a new process (Linux ``MemAvailable``); None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _advice(parts: Mapping[str, int], plans: Mapping[str, str], streaming: list[str]) -> str:
    """What to do, starting with the part that needs the most."""
    own = {k: v for k, v in parts.items() if k not in _THROUGHOUT}
    largest = max(own, key=own.__getitem__) if own else None
    tips = []
    if largest == "audit":
        tips.append("pass --no-audit (the data-quality audit holds the labelled rows in memory)")
    elif largest is not None and plans.get(largest) != "stream":
        better = [n for n in streaming if n != largest]
        tips.append(
            f"{largest} holds its training rows in memory: fit fewer classifiers at once"
            + (
                f", or use --clf {'/'.join(better)}, which read the store in blocks"
                if better
                else ""
            )
        )
    tips.append("free memory or use a machine with more, or extract a subset of the images "
                "into another --out")  # fmt: skip
    return "; ".join(tips)


def check_fit_memory(
    path: Path,
    plans: Mapping[str, str],
    *,
    n_views: int = 0,
    audit: bool = True,
    streaming: list[str] | None = None,
    held_out: Mapping[str, float] | None = None,
) -> None:
    """Refuse, with what to do, a fit whose estimated peak exceeds the available memory.

    ``plans``: each classifier to fit -> its :func:`~pipeline.fit.streaming.fit_plan`;
    ``streaming``: the classifiers that would stream (named in the advice); ``held_out``:
    each classifier's :func:`held_out_share`."""
    attrs = read_attrs(path)
    n_rows, dim = int(attrs.get("n_rows", 0)), int(attrs.get("feature_dim", 0))
    # fit skips the audit beyond AUDIT_MAX_ROWS labelled rows (n_rows bounds them from above)
    audit = audit and n_rows <= AUDIT_MAX_ROWS
    parts = fit_memory_parts(n_rows, dim, plans, n_views=n_views, audit=audit, held_out=held_out)
    needed = peak_bytes(parts)
    free = available_bytes()
    if free is None or needed <= free:
        return
    raise StoreError(
        f"{path}: fitting {', '.join(plans)} on {n_rows} rows x {dim * (1 + n_views)} features "
        f"(views included) needs about {needed / _GIB:.1f} GiB of memory, "
        f"{free / _GIB:.1f} GiB is available; " + _advice(parts, plans, streaming or []),
        param="features",
    )
