"""The report's embedding map: every audited row projected to 2-D, and the page's data for it.

Projection (:func:`project_2d`). With ``umap-learn`` installed: UMAP (cosine metric,
``random_state=seed``) on the centred embeddings reduced to 50 dimensions with PCA. Without it
(the default install): PCA to 50 dimensions, then scikit-learn's Barnes-Hut t-SNE
(``init="pca"``, ``random_state=seed``) on at most ``max_tsne_rows`` rows (a seeded random
sample); every other row is placed at the distance-weighted mean of the 2-D positions of its
5 nearest sampled rows in the PCA space (``KNeighborsRegressor``), so the map still has one
point per row and a note says how many were placed that way. Both are deterministic for a seed
on one machine. t-SNE costs O(n log n) per iteration: about a minute for 5 000 rows on two
shared cores (docs/benchmarks.md), hence the cap.

Drawing: plotly.js (the copy inside the ``plotly`` Python package, written once beside the
report as ``plotly.min.js`` and loaded with a relative ``<script src>``, so the page works from
disk with no network) draws one WebGL ``scattergl`` trace, which stays responsive at 100k
points. :func:`map_payload` gives the compact columnar data the page's script reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path

__all__ = ["PLOTLY_JS", "map_payload", "project_2d", "write_plotly_js"]

logger = logging.getLogger(__name__)

#: The file name of plotly.js beside report.html.
PLOTLY_JS = "plotly.min.js"
_PCA_DIMS = 50
_PLACE_NEIGHBOURS = 5


def _pca(features: np.ndarray, seed: int) -> np.ndarray:
    """Centred, L2-normalised rows reduced to 50 dimensions (PCA fitted on at most 20 000 rows,
    applied a block at a time: no full-size copy of the embeddings)."""
    from .data_survey import _search_space

    return _search_space(features, _PCA_DIMS, seed, renormalise=False)


def project_2d(
    features: np.ndarray, *, seed: int = 0, max_tsne_rows: int = 5_000, method: str = "auto"
) -> tuple[np.ndarray, str]:
    """2-D coordinates of every row and a sentence saying how they were made.

    ``method``: ``"auto"`` (UMAP when ``umap-learn`` imports, else t-SNE), ``"umap"``,
    ``"tsne"`` or ``"pca"``.
    """
    n = len(features)
    if n < 5:
        method = "pca"
    if method == "auto":
        try:
            import umap  # noqa: F401

            method = "umap"
        except ImportError:
            method = "tsne"
    reduced = _pca(features, seed)
    if method == "pca" or reduced.shape[1] < 2:
        from sklearn.decomposition import PCA

        xy = np.zeros((n, 2), dtype=np.float32)
        dims = int(min(2, n, reduced.shape[1]))
        if dims and n > 1:
            xy[:, :dims] = PCA(n_components=dims, random_state=seed).fit_transform(reduced)
        return xy, f"PCA of the centred, normalised embeddings ({n} rows)"
    if method == "umap":
        import umap

        xy = umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(reduced)
        return np.asarray(xy, dtype=np.float32), f"UMAP (umap-learn) of {n} rows on PCA-{_PCA_DIMS}"
    from sklearn.manifold import TSNE

    sample = np.arange(n)
    if n > max_tsne_rows:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=max_tsne_rows, replace=False))
    perplexity = float(min(30.0, (len(sample) - 1) / 3.0))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    xy = np.empty((n, 2), dtype=np.float32)
    xy[sample] = tsne.fit_transform(reduced[sample])
    note = f"t-SNE (scikit-learn) of {len(sample)} rows on {reduced.shape[1]} dimensions (PCA above 50)"
    if len(sample) < n:
        from sklearn.neighbors import KNeighborsRegressor

        rest = np.setdiff1d(np.arange(n), sample)
        place = KNeighborsRegressor(n_neighbors=_PLACE_NEIGHBOURS, weights="distance")
        place.fit(reduced[sample], xy[sample])
        for start in range(0, len(rest), 8192):
            part = rest[start : start + 8192]
            xy[part] = place.predict(reduced[part])
        note += (
            f" (a random sample, seed {seed}); the other {len(rest)} rows are placed among "
            f"their {_PLACE_NEIGHBOURS} nearest sampled rows"
        )
    return xy, note


def write_plotly_js(out_dir: str | Path) -> str:
    """Write plotly.js beside the report (unless the same file is there); return its name."""
    from plotly.offline import get_plotlyjs

    data = get_plotlyjs().encode("utf-8")
    target = Path(out_dir) / PLOTLY_JS
    if not (target.exists() and target.stat().st_size == len(data) and target.read_bytes() == data):
        with atomic_path(target) as tmp:  # the user's umask
            tmp.write_bytes(data)
    return PLOTLY_JS


def _codes(values: Sequence[str]) -> tuple[list[str], list[int]]:
    names, codes = np.unique(
        np.asarray([str(v) for v in values], dtype=object), return_inverse=True
    )
    return [str(x) for x in names], codes.astype(int).tolist()


def map_payload(
    xy: np.ndarray,
    paths: Sequence[str],
    labels: Sequence[str],
    splits: Sequence[str],
    scores: np.ndarray,
    thumbs: Mapping[str, str | None],
    *,
    predictions: Mapping[str, tuple[str, bool]] | None = None,
    best_clf: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """The columnar JSON the page's map script reads: one entry per row in every column.

    ``predictions`` maps a path to the best classifier's ``(predicted class, correct)`` (rows
    it did not predict, e.g. training rows, have none).
    """
    predictions = predictions or {}
    label_names, label_codes = _codes(labels)
    split_names, split_codes = _codes([s or "all" for s in splits])
    pred = [predictions.get(str(p)) for p in paths]
    pred_names = sorted({str(p[0]) for p in pred if p is not None} | set(label_names))
    pred_index = {name: i for i, name in enumerate(pred_names)}
    return {
        "x": np.round(xy[:, 0].astype(float), 3).tolist(),
        "y": np.round(xy[:, 1].astype(float), 3).tolist(),
        "path": [str(p) for p in paths],
        "thumb": [thumbs.get(str(p)) or "" for p in paths],
        "labels": label_names,
        "label": label_codes,
        "splits": split_names,
        "split": split_codes,
        "preds": pred_names,
        "pred": [pred_index[str(p[0])] if p is not None else -1 for p in pred],
        "correct": [(1 if p[1] else 0) if p is not None else -1 for p in pred],
        "score": np.round(np.asarray(scores, dtype=float), 4).tolist(),
        "clf": best_clf or "",
        "note": note,
    }
