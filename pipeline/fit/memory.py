"""Will ``fit`` fit in memory? A check from the store's attributes, before any row is read.

``fit`` reads the whole feature matrix (N x D float32) into memory and copies parts of it
(the labelled rows, the train/test split, a classifier's own float64 or scaled copy), so its
peak grows with N x D. The multiples below were measured with ``benchmarks/scale.py`` on 100k x
1280 stores (docs/benchmarks.md, "Scale"): reading and splitting peaked at 1.71 GiB for a
0.49 GiB matrix, ``fit --clf logreg`` at 2.74 GiB. Classifiers not measured there get the
reading multiple, so for them the estimate is a lower bound; the check only refuses runs that
cannot fit even so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..exceptions import StoreError
from ..store import read_attrs

__all__ = ["available_bytes", "check_fit_memory", "estimate_fit_bytes"]

_GIB = 1 << 30
# Resident memory before any row is read (interpreter, numpy, sklearn, h5py): an assumed
# 0.25 GiB, the order of what a warm extract re-run peaks at (0.22 GiB).
_BASE_BYTES = _GIB // 4
# Peak bytes per byte of the N x D float32 matrix (see the module docstring).
_READ_MULTIPLE = 3.0
_MULTIPLES = {"logreg": 5.2}


def estimate_fit_bytes(n_rows: int, dim: int, names: Sequence[str]) -> int:
    """Peak resident bytes ``fit --clf names`` needs for an ``n_rows`` x ``dim`` store."""
    matrix = n_rows * dim * 4
    multiple = max((_MULTIPLES.get(name, _READ_MULTIPLE) for name in names), default=0.0)
    return int(_BASE_BYTES + matrix * max(multiple, _READ_MULTIPLE))


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


def check_fit_memory(path: Path, names: Sequence[str]) -> None:
    """Refuse, with what to do, a fit whose estimated peak exceeds the available memory."""
    attrs = read_attrs(path)
    n_rows, dim = int(attrs.get("n_rows", 0)), int(attrs.get("feature_dim", 0))
    # The store is read with every view (``/views/<name>/features``): each one more matrix.
    width = dim * (1 + len(attrs.get("views") or []))
    needed, free = estimate_fit_bytes(n_rows, width, names), available_bytes()
    if free is None or needed <= free:
        return
    raise StoreError(
        f"{path}: fitting {', '.join(names)} on {n_rows} rows x {width} features (views "
        f"included) needs about "
        f"{needed / _GIB:.1f} GiB of memory, {free / _GIB:.1f} GiB is available; free memory "
        "or use a machine with more, fit fewer classifiers at once, or extract a subset of "
        "the images into another --out",
        param="features",
    )
