"""Will ``fit`` fit in memory? A check from the store's attributes, before any row is read.

``fit`` reads the store's rows in blocks (:mod:`pipeline.rows`) and hands each classifier the
rows the way it can take them (:func:`pipeline.fit.streaming.fit_plan`), so its peak is

    base + per-block working memory + the largest of (each classifier's own memory, the audit's)

where, with M the bytes of the N x W float32 matrix (W: the embedding, times 1 + the views in
use):

- a classifier that streams (``"stream"``: the final step reads row sources) holds no matrix;
  only its own state (the nn head: its weights; xgboost: its quantised matrix, 1 byte a value);
- ``"scaled"`` (``logreg``): one float32 matrix of the scaled rows, M;
- ``"matrix"`` (``svc``, ``knn``, ``svc_approx``, views, ``--search``): the rows read into one
  matrix, plus the copies the classifier's own pipeline makes (the scaler's, at least);
- the data-quality audit: the labelled rows' plain embeddings in one matrix plus its probes'
  and nearest-neighbour index's copies (``--no-audit`` skips it);
- ``knn`` keeps its normalised training rows after fitting (added to everything after it).

The multiples were measured with ``benchmarks/scale.py`` on a 100k x 1280 store (README,
"Memory"); a classifier not measured there gets the default of its plan, a lower bound: the
check only refuses runs that cannot fit even so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .. import rows
from ..exceptions import StoreError
from ..store import read_attrs

__all__ = ["available_bytes", "check_fit_memory", "estimate_fit_bytes", "fit_memory_parts"]

_GIB = 1 << 30
# Resident memory before any row is read (interpreter, numpy, sklearn, h5py, torch): measured
# as the peak of `fit --clf nn` on a tiny store.
_BASE_BYTES = _GIB // 2
# Bytes per byte of M, by plan (see the module docstring); a name in _OWN overrides its plan's.
_PLAN_MULTIPLE = {"stream": 0.0, "scaled": 1.0, "matrix": 2.0}
_OWN = {("stream", "xgboost"): 0.3, ("scaled", "logreg"): 1.2, ("matrix", "logreg"): 2.2}
# The audit's peak per byte of the labelled rows' plain embeddings (N x D float32).
_AUDIT_MULTIPLE = 3.0
# Kept after fitting, per byte of M, for the rest of the run.
_RETAINED = {"knn": 1.0}


def _block_bytes(n_rows: int, dim: int, width: int) -> int:
    """Working memory of reading blocks: a block, its transformed copy and the estimator's
    temporaries (3 blocks of ``width``), and one covering read of scattered rows (``dim``)."""
    block = min(n_rows, rows.BLOCK_ROWS) * width * 4
    span = min(n_rows, 4 * rows.BLOCK_ROWS) * dim * 4
    return 3 * block + span


def fit_memory_parts(
    n_rows: int, dim: int, plans: Mapping[str, str], *, n_views: int = 0, audit: bool = True
) -> dict[str, int]:
    """Estimated peak bytes of each part of ``fit`` (``base``, ``blocks``, one per classifier
    of ``plans`` (name -> :func:`~pipeline.fit.streaming.fit_plan`), ``audit``, ``retained``)
    on an ``n_rows`` x ``dim`` store using ``n_views`` views."""
    width = dim * (1 + n_views)
    matrix = n_rows * width * 4
    parts = {"base": _BASE_BYTES, "blocks": _block_bytes(n_rows, dim, width)}
    for name, plan in plans.items():
        parts[name] = int(matrix * _OWN.get((plan, name), _PLAN_MULTIPLE[plan]))
    if audit:
        parts["audit"] = int(n_rows * dim * 4 * _AUDIT_MULTIPLE)
    parts["retained"] = int(sum(matrix * _RETAINED.get(name, 0.0) for name in plans))
    return parts


def estimate_fit_bytes(
    n_rows: int, dim: int, plans: Mapping[str, str], *, n_views: int = 0, audit: bool = True
) -> int:
    """Peak resident bytes of ``fit``: base + blocks + retained models + the largest of the
    classifiers' and the audit's own memory (they run one after another)."""
    parts = fit_memory_parts(n_rows, dim, plans, n_views=n_views, audit=audit)
    fixed = parts.pop("base") + parts.pop("blocks") + parts.pop("retained")
    return fixed + max(parts.values(), default=0)


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
    own = {k: v for k, v in parts.items() if k not in ("base", "blocks", "retained")}
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
) -> None:
    """Refuse, with what to do, a fit whose estimated peak exceeds the available memory.

    ``plans``: each classifier to fit -> its :func:`~pipeline.fit.streaming.fit_plan`;
    ``streaming``: the classifiers that would stream (named in the advice)."""
    attrs = read_attrs(path)
    n_rows, dim = int(attrs.get("n_rows", 0)), int(attrs.get("feature_dim", 0))
    parts = fit_memory_parts(n_rows, dim, plans, n_views=n_views, audit=audit)
    needed = estimate_fit_bytes(n_rows, dim, plans, n_views=n_views, audit=audit)
    free = available_bytes()
    if free is None or needed <= free:
        return
    raise StoreError(
        f"{path}: fitting {', '.join(plans)} on {n_rows} rows x {dim * (1 + n_views)} features "
        f"(views included) needs about {needed / _GIB:.1f} GiB of memory, "
        f"{free / _GIB:.1f} GiB is available; " + _advice(parts, plans, streaming or []),
        param="features",
    )
