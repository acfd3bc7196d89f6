"""A survey of the whole data set: outliers, near-duplicates inside a split, class balance.

Stage-two code on the stored embeddings (issue 27), beside :mod:`.data_quality` (label errors,
duplicates *across* splits). One k-nearest-neighbour search over every audited row feeds two
checks:

**Outliers** (:func:`survey`): the score of a row is the mean cosine distance of its embedding
to its ``k`` (default 10) nearest neighbours among the other rows, all splits together. A
placeholder, a blank frame, a scanned page or a noise image sits far from every real photo, so
its neighbours are far. We compute the score ourselves rather than through cleanlab's
``Datalab(issue_types={"outlier": ...})``: Datalab's outlier score is the same k-NN distance
(passed through ``exp(-d / t)``), but it builds its own neighbour graph over the full
dimensions and mixes in an out-of-distribution check on probabilities we do not need, so it
cannot reuse the one search that also finds near-duplicates, nor bound its cost at 100k rows.
Rows are flagged when their score is above Tukey's fence, ``Q3 + 1.5 IQR`` of all scores
(:data:`OUTLIER_IQR`; on cifar10-mini's MobileNetV2 embeddings it flags none of the 1500 real
photos, and a planted text page and noise image among generated pictures); ``outliers.csv``
ranks every row, most unusual first.

**Near-duplicates inside a split**: exact (same content hash, the ones
:func:`.data_quality.content_hashes` computes) and near (cosine similarity of the centred
embeddings at or above :data:`.data_quality.NEAR_DUPLICATE_THRESHOLD`, recomputed on the full
embeddings for each candidate pair) among each row's ``k`` nearest neighbours of the same split.

**Class balance**: rows per class and split; a class is *tiny* when it has fewer than
:data:`TINY_CLASS_ROWS` rows or fewer than :data:`TINY_CLASS_SHARE` of the median class.

Search and cost. Embeddings are centred (the mean row subtracted), L2-normalised and, when
wider than ``max_dims`` (128), reduced with PCA (fitted on at most 20 000 rows) and normalised
again; ``sklearn.neighbors.NearestNeighbors`` (brute force, exact) then answers batches of 1024
queries, so memory is ``batch x n_reference``, never ``n x n``. Time grows with
``n_rows x n_reference x max_dims``: up to ``max_reference`` (50 000) rows every row is a
reference; above, a seeded random sample of ``max_reference`` rows is, every row is still
scored against it, and a report note says so (near-duplicate pairs with neither side in the
sample are then missed). docs/benchmarks.md has the measured cost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .data_quality import NEAR_DUPLICATE_THRESHOLD

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "OUTLIER_COLUMNS",
    "SPLIT_DUPLICATE_COLUMNS",
    "DataSurvey",
    "class_balance",
    "neighbours",
    "survey",
]

logger = logging.getLogger(__name__)

OUTLIER_COLUMNS = ("rank", "path", "split", "label", "score", "flagged")
SPLIT_DUPLICATE_COLUMNS = (
    "path",
    "split",
    "label",
    "other_path",
    "other_label",
    "kind",
    "similarity",
)
#: Flag rows whose outlier score is above ``Q3 + OUTLIER_IQR * IQR`` (Tukey's fence).
OUTLIER_IQR = 1.5
#: A class with fewer rows than this, or than TINY_CLASS_SHARE of the median class, is tiny.
TINY_CLASS_ROWS = 10
TINY_CLASS_SHARE = 0.2
_PCA_FIT_ROWS = 20_000


@dataclass
class DataSurvey:
    """What :func:`survey` found; row ``i`` of the inputs is row ``i`` of ``scores``."""

    outliers: pd.DataFrame  # OUTLIER_COLUMNS (+ "row"), every row, most unusual first
    split_duplicates: pd.DataFrame  # SPLIT_DUPLICATE_COLUMNS, exact first
    balance: pd.DataFrame  # index class, one column per split, and "total"
    tiny_classes: list[str]
    scores: np.ndarray  # (n_rows,) outlier score per input row
    threshold: float  # the outlier fence
    k: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_flagged(self) -> int:
        return int(self.outliers["flagged"].sum()) if len(self.outliers) else 0


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _search_space(
    features: np.ndarray, max_dims: int, seed: int, *, renormalise: bool = True
) -> np.ndarray:
    """Centred, L2-normalised rows, PCA-reduced to ``max_dims`` (and, with ``renormalise``,
    normalised again) when wider; float32, computed a block at a time."""
    mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
    n, d = features.shape
    pca = None
    if d > max_dims and n > max_dims:
        from sklearn.decomposition import PCA

        rng = np.random.default_rng(seed)
        fit_rows = np.sort(rng.choice(n, size=min(n, _PCA_FIT_ROWS), replace=False))
        sample = _unit(np.asarray(features[fit_rows], dtype=np.float32) - mean)
        pca = PCA(n_components=max_dims, svd_solver="randomized", random_state=seed).fit(sample)
    out = np.empty((n, pca.n_components_ if pca is not None else d), dtype=np.float32)
    for start in range(0, n, 8192):
        block = _unit(np.asarray(features[start : start + 8192], dtype=np.float32) - mean)
        if pca is not None:
            block = pca.transform(block).astype(np.float32)
            block = _unit(block) if renormalise else block
        out[start : start + 8192] = block
    return out


def neighbours(
    features: np.ndarray,
    *,
    k: int = 10,
    max_dims: int = 128,
    max_reference: int = 50_000,
    batch_size: int = 1024,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The ``k`` nearest other rows of every row (cosine, centred embeddings).

    Returns
    -------
    distance : ndarray of shape (n_rows, k)
        Cosine distances (``1 - cos``) in the search space, ascending.
    index : ndarray of shape (n_rows, k)
        Row indices of the neighbours.
    sampled : bool
        True when the reference was a sample of ``max_reference`` rows.
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    k = int(min(k, n - 1))
    space = _search_space(features, max_dims, seed)
    sampled = n > max_reference
    reference = np.arange(n)
    if sampled:
        rng = np.random.default_rng(seed)
        reference = np.sort(rng.choice(n, size=max_reference, replace=False))
    index = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="euclidean")
    index.fit(space[reference] if sampled else space)
    distance = np.empty((n, k), dtype=np.float32)
    nearest = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        d, j = index.kneighbors(space[start:stop])
        j = reference[j]
        # drop the row itself (wherever ties put it), else the farthest of the k + 1
        self_hit = j == np.arange(start, stop)[:, None]
        keep = np.argsort(self_hit, axis=1, kind="stable")[:, :k]
        distance[start:stop] = np.take_along_axis(d, keep, axis=1) ** 2 / 2.0
        nearest[start:stop] = np.take_along_axis(j, keep, axis=1)
    return distance, nearest, sampled


def class_balance(labels: Sequence[str], splits: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Rows per class (index) and split (columns, plus ``total``), and the tiny classes."""
    import pandas as pd

    frame = pd.DataFrame({"label": [str(x) for x in labels], "split": [s or "all" for s in splits]})
    table = pd.crosstab(frame["label"], frame["split"])
    table.columns = [str(c) for c in table.columns]
    table["total"] = table.sum(axis=1)
    median = float(table["total"].median()) if len(table) else 0.0
    tiny = table.index[
        (table["total"] < TINY_CLASS_ROWS) | (table["total"] < TINY_CLASS_SHARE * median)
    ]
    return table, [str(c) for c in tiny]


def _split_duplicates(
    features: np.ndarray,
    nearest: np.ndarray,
    paths: list[str],
    splits: np.ndarray,
    labels: list[str],
    hashes: Sequence[str | None] | None,
    threshold: float,
) -> pd.DataFrame:
    """Exact (same hash) and near (full-dimension centred cosine >= threshold) pairs of rows of
    one split; each pair once, its first row the earlier one."""
    import pandas as pd

    records: dict[tuple[int, int], tuple[str, float]] = {}
    if hashes is not None:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, h in enumerate(hashes):
            if h is not None:
                groups.setdefault((splits[i], h), []).append(i)
        for rows in groups.values():
            for other in rows[1:]:
                records[(rows[0], other)] = ("exact", 1.0)
    mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
    n, k = nearest.shape
    first = np.repeat(np.arange(n), k)
    second = nearest.ravel()
    same = (splits[first] == splits[second]) & (first != second)
    pairs = np.unique(np.sort(np.stack([first[same], second[same]], axis=1), axis=1), axis=0)
    for start in range(0, len(pairs), 8192):
        block = pairs[start : start + 8192]
        a = _unit(np.asarray(features[block[:, 0]], dtype=np.float32) - mean)
        b = _unit(np.asarray(features[block[:, 1]], dtype=np.float32) - mean)
        cos = np.einsum("ij,ij->i", a, b)
        for (i, j), c in zip(block[cos >= threshold], cos[cos >= threshold], strict=True):
            records.setdefault((int(i), int(j)), ("near", float(min(1.0, c))))
    table = pd.DataFrame(
        [
            {
                "path": paths[i],
                "split": splits[i],
                "label": labels[i],
                "other_path": paths[j],
                "other_label": labels[j],
                "kind": kind,
                "similarity": sim,
            }
            for (i, j), (kind, sim) in records.items()
        ],
        columns=list(SPLIT_DUPLICATE_COLUMNS),
    )
    if len(table):
        table["_exact"] = table["kind"] == "exact"
        table = table.sort_values(["_exact", "similarity", "path"], ascending=[False, False, True])
        table = table.drop(columns="_exact").reset_index(drop=True)
    return table


def _ranked_outliers(
    scores: np.ndarray, paths: Sequence[str], labels: Sequence[str], splits: np.ndarray
) -> tuple[Any, float]:
    """outliers.csv's table (most unusual first; ``flagged`` above Tukey's fence) and the fence."""
    import pandas as pd

    n = len(scores)
    q1, q3 = np.percentile(scores, [25, 75])
    fence = float(q3 + OUTLIER_IQR * (q3 - q1))
    order = np.lexsort((np.arange(n), -scores))
    table = pd.DataFrame(
        {
            "row": order,
            "rank": np.arange(1, n + 1),
            "path": [paths[i] for i in order],
            "split": splits[order],
            "label": [labels[i] for i in order],
            "score": scores[order],
            "flagged": scores[order] > fence,
        }
    )
    return table, fence


def survey(
    features: np.ndarray,
    paths: Sequence[str],
    labels: Sequence[Any],
    splits: Sequence[str],
    *,
    hashes: Sequence[str | None] | None = None,
    k: int = 10,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    max_dims: int = 128,
    max_reference: int = 50_000,
    seed: int = 0,
) -> DataSurvey:
    """Outlier scores, near-duplicates inside each split and class balance of all rows.

    Parameters
    ----------
    features : ndarray of shape (n_rows, n_features)
    paths, labels, splits : sequence, length n_rows
        ``splits`` may be ``""`` (no split: the whole set is one group).
    hashes : sequence of str or None, optional
        Content hashes (:func:`.data_quality.content_hashes`); without them only near
        duplicates are found.
    k, threshold, max_dims, max_reference, seed
        Neighbours per row, near-duplicate cosine, search dimensions, reference rows (see the
        module docstring).
    """
    import pandas as pd

    features = np.asarray(features)
    n = len(features)
    paths = [str(p) for p in paths]
    labels = [str(x) for x in labels]
    split_array = np.asarray([str(s) for s in splits], dtype=object)
    if not len(paths) == len(labels) == len(split_array) == n:
        raise ValueError(
            f"features, paths, labels and splits must have one entry per row ({n}, "
            f"{len(paths)}, {len(labels)}, {len(split_array)})"
        )
    balance, tiny = class_balance(labels, split_array)
    notes = []
    if n < 3:
        empty = pd.DataFrame({c: [] for c in ("row", *OUTLIER_COLUMNS)})
        return DataSurvey(
            empty, pd.DataFrame({c: [] for c in SPLIT_DUPLICATE_COLUMNS}), balance, tiny,
            np.zeros(n), float("inf"), 0, ["outliers: fewer than 3 rows, not scored"],
        )  # fmt: skip
    distance, nearest, sampled = neighbours(
        features, k=k, max_dims=max_dims, max_reference=max_reference, seed=seed
    )
    if sampled:
        notes.append(
            f"outliers and near-duplicates inside a split: {n} rows searched against a "
            f"random sample of {max_reference} (seed {seed}); near-duplicate pairs with "
            "neither image in the sample are missed"
        )
    scores = distance.mean(axis=1).astype(np.float64)
    outliers, fence = _ranked_outliers(scores, paths, labels, split_array)
    duplicates = _split_duplicates(features, nearest, paths, split_array, labels, hashes, threshold)
    result = DataSurvey(outliers, duplicates, balance, tiny, scores, fence, nearest.shape[1], notes)
    logger.info(
        "survey: %d outlier(s) (score > %.3f, mean cosine distance to %d neighbours), "
        "%d duplicate pair(s) inside a split, %d tiny class(es)",
        result.n_flagged, fence, result.k, len(duplicates), len(tiny),
    )  # fmt: skip
    return result
