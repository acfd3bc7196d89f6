"""Data quality on a feature store: likely label errors and duplicates across splits.

Stage-two code: it works on the stored embeddings, and reads image files only to hash their
bytes (exact duplicates). Two checks:

**Likely label errors** (:func:`find_label_issues`), confident learning: every labelled row
(train *and* test/val) gets an out-of-fold predicted probability of its *given* label (its
"self-confidence") from ``cross_val_predict(method="predict_proba")`` of a cheap linear probe
(StandardScaler + multinomial LogisticRegression with strong L2 regularisation, ``C = 1 /
(alpha * n_rows)`` with ``alpha = 0.15``, so that its probabilities are not overconfident;
stratified K folds). ``cleanlab``'s
``find_label_issues`` (``filter_by="prune_by_noise_rate"``) then flags the rows whose given
label is unlikely under the per-class thresholds of the estimated confident joint, ranked by
self-confidence (lowest first). Cost: K fits on (K-1)/K of the rows; above ``max_fit_rows``
each fold's model trains on a stratified sample of that many rows (every row is still scored
out of fold), and embeddings wider than ``max_dims`` are first reduced with PCA, so the time
stays bounded at 100k rows.

**Duplicates across splits** (:func:`find_duplicates`): *exact* duplicates share a content hash
(:func:`content_hashes`: SHA-256 of the file's bytes; for built-in ``sklearn:digits/NNNN`` rows,
of the rendered pixels); *near* duplicates have a cosine similarity of their centred embeddings
(the mean train embedding subtracted, so that the component all embeddings share does not
make every pair look alike) of at least ``threshold`` (default
:data:`NEAR_DUPLICATE_THRESHOLD`) to their nearest training row.
The nearest neighbour of every test/val row among the train rows is found with
``sklearn.neighbors.NearestNeighbors`` (brute force on L2-normalised vectors) in batches of
queries: memory is ``batch x n_train``, never ``n x n``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._progress import slow_step

if TYPE_CHECKING:
    import pandas as pd

    from ..store import FeatureTable

__all__ = [
    "DIGITS_PREFIX",
    "LABEL_ISSUE_COLUMNS",
    "DUPLICATE_COLUMNS",
    "NEAR_DUPLICATE_THRESHOLD",
    "audit_table",
    "content_hashes",
    "digits_image",
    "find_duplicates",
    "find_label_issues",
    "leakage_warning",
    "out_of_fold_proba",
]

logger = logging.getLogger(__name__)

#: Beyond this many labelled rows ``fit`` skips the audit, with a warning and a report note:
#: the near-duplicate search compares every test row with every train row (194-330 s at 101k
#: rows on this project's 2-core machine, docs/benchmarks.md; hours at 1M).
AUDIT_MAX_ROWS = 150_000

#: Cosine similarity of *centred* embeddings (the mean train embedding subtracted) at or above
#: which a test/val row counts as a near duplicate of a train row. Chosen on MobileNetV2
#: (IMAGENET1K_V1) embeddings of cifar10-mini, where the most similar distinct test/train pair
#: scores 0.842; see the README ("HTML report") for what edits it catches.
NEAR_DUPLICATE_THRESHOLD = 0.88
DIGITS_PREFIX = "sklearn:digits/"
LABEL_ISSUE_COLUMNS = (
    "rank",
    "path",
    "split",
    "label",
    "predicted",
    "p_label",
    "p_predicted",
)
DUPLICATE_COLUMNS = ("path", "split", "label", "train_path", "train_label", "kind", "similarity")
_CHUNK = 1 << 20


# -- content hashes -----------------------------------------------------------------------------


def digits_image(path: str) -> np.ndarray:
    """The 8x8 uint8 image of a built-in ``sklearn:digits/NNNN`` row, as stage one renders it."""
    from sklearn.datasets import load_digits

    index = int(path[len(DIGITS_PREFIX) :])
    images = load_digits().images
    if not 0 <= index < len(images):
        raise ValueError(f"{path}: no such sklearn:digits image (0..{len(images) - 1})")
    return np.rint(images[index] * (255.0 / 16.0)).astype(np.uint8)


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def content_hashes(paths: Sequence[str]) -> tuple[list[str | None], dict[str, str]]:
    """SHA-256 of every input's content, streaming files in 1 MiB blocks.

    Built-in ``sklearn:digits/NNNN`` paths hash their rendered pixels. A file that cannot be
    read gets ``None`` and is recorded with the reason instead of failing the run.

    Returns
    -------
    hashes : list of str or None
        One per path, aligned.
    unreadable : dict
        ``{path: reason}`` of the inputs that could not be hashed.
    """
    hashes: list[str | None] = []
    unreadable: dict[str, str] = {}
    digits = None
    for path in paths:
        path = str(path)
        try:
            if path.startswith(DIGITS_PREFIX):
                if digits is None:
                    from sklearn.datasets import load_digits

                    digits = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
                pixels = digits[int(path[len(DIGITS_PREFIX) :])]
                hashes.append(hashlib.sha256(pixels.tobytes()).hexdigest())
            else:
                hashes.append(_hash_file(path))
        except (OSError, ValueError, IndexError) as exc:
            hashes.append(None)
            unreadable[path] = " ".join(f"{type(exc).__name__}: {exc}".split())
    if unreadable:
        logger.warning(
            "%d image file(s) could not be read to look for identical copies (moved or deleted "
            "since extract?)",
            len(unreadable),
        )
    return hashes, unreadable


# -- label issues -------------------------------------------------------------------------------


def _probe(n_rows: int, n_features: int, max_dims: int, seed: int, alpha: float):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[Any] = [StandardScaler()]
    dims = min(max_dims, n_rows)
    if n_features > dims:
        steps.append(PCA(n_components=dims, random_state=seed))
    # alpha is the L2 penalty relative to the mean log loss (as in MLPClassifier), so the
    # regularisation does not fade as rows are added: C = 1 / (alpha * n_rows).
    C = 1.0 / (alpha * max(n_rows, 1))
    steps.append(LogisticRegression(C=C, max_iter=300, random_state=seed))
    return make_pipeline(*steps)


def out_of_fold_proba(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    n_folds: int = 5,
    max_fit_rows: int = 20_000,
    max_dims: int = 256,
    alpha: float = 0.15,
) -> np.ndarray:
    """Out-of-fold ``predict_proba`` of a linear probe; columns are ``0..n_classes-1``.

    ``labels`` must be integers ``0..n_classes-1`` with at least 2 rows per class. Each fold
    trains on at most ``max_fit_rows`` rows (a stratified sample of the other folds).
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    n_classes = int(labels.max()) + 1
    proba = np.zeros((len(labels), n_classes), dtype=np.float64)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train, test in folds.split(features, labels):
        if len(train) > max_fit_rows:
            counts = np.bincount(labels[train], minlength=n_classes)
            stratify = labels[train] if counts[counts > 0].min() >= 2 else None
            train, _ = train_test_split(
                train, train_size=max_fit_rows, random_state=seed, stratify=stratify
            )
        model = _probe(len(train), features.shape[1], max_dims, seed, alpha).fit(
            features[train], labels[train]
        )
        proba[np.ix_(test, model.classes_)] = model.predict_proba(features[test])
    return proba


def find_label_issues(
    features: np.ndarray,
    labels: Sequence[Any],
    *,
    paths: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    seed: int = 0,
    n_folds: int = 5,
    max_fit_rows: int = 20_000,
    max_dims: int = 256,
    alpha: float = 0.15,
) -> pd.DataFrame:
    """Rows whose given label is likely wrong, most suspicious first (confident learning).

    Parameters
    ----------
    features : ndarray of shape (n_rows, n_features)
        Embeddings of labelled rows (train and test/val together).
    labels : array-like of shape (n_rows,)
        The given labels (class names or ints).
    paths, splits : sequence of str, optional
        Carried into the table (default: row indices, ``""``).
    seed, n_folds, max_fit_rows, max_dims, alpha
        Folds and probe (see the module docstring; ``alpha`` is the L2 penalty of the
        logistic regression relative to its mean log loss, ``C = 1 / (alpha * n_rows)``). Classes with fewer than 2 rows cannot be
        judged out of fold and are skipped; ``n_folds`` shrinks to the smallest class size.

    Returns
    -------
    DataFrame
        Columns ``rank, path, split, label, predicted, p_label, p_predicted`` (plus ``row``,
        the input row index), one row per flagged issue, ranked by ``p_label`` ascending
        (the out-of-fold probability of the given label).
    """
    import pandas as pd
    from cleanlab.filter import find_label_issues as cleanlab_issues

    features = np.asarray(features)
    labels = np.asarray(labels)
    n = len(labels)
    if features.ndim != 2 or len(features) != n:
        raise ValueError(
            f"features: expected shape (n_rows, n_features) with n_rows = {n}, got {features.shape}"
        )
    paths = [str(p) for p in (paths if paths is not None else range(n))]
    splits = [str(s) for s in (splits if splits is not None else [""] * n)]
    judged = _judged_rows(labels)
    if judged is None:
        logger.warning("label issues: fewer than 2 classes with 2+ rows; nothing to judge")
        return pd.DataFrame({c: [] for c in ("row", *LABEL_ISSUE_COLUMNS)})
    rows, y, names, folds = judged
    folds = int(min(n_folds, folds))
    proba = out_of_fold_proba(
        _rows_of(features, rows),
        y,
        seed=seed,
        n_folds=max(2, folds),
        max_fit_rows=max_fit_rows,
        max_dims=max_dims,
        alpha=alpha,
    )
    flagged = cleanlab_issues(
        y,
        proba,
        filter_by="prune_by_noise_rate",
        return_indices_ranked_by="self_confidence",
        n_jobs=1,
    )
    table = _issue_table(rows[flagged], y[flagged], proba[flagged], names, paths, splits)
    logger.debug(
        "label issues: %d of %d rows flagged (%d-fold out-of-fold probe)", len(table), n, folds
    )
    return table


def _judged_rows(
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """The rows of classes with 2+ rows, their labels coded ``0..k-1``, the ``k`` class names
    and the smallest kept class size; ``None`` when fewer than 2 classes can be judged."""
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    kept_classes = np.flatnonzero(counts >= 2)
    if len(kept_classes) < 2:
        return None
    rows = np.flatnonzero(counts[codes] >= 2)
    remap = np.full(len(classes), -1)
    remap[kept_classes] = np.arange(len(kept_classes))
    return rows, remap[codes[rows]], classes[kept_classes], int(counts[kept_classes].min())


def _issue_table(
    rows: np.ndarray,
    y: np.ndarray,
    proba: np.ndarray,
    names: np.ndarray,
    paths: list[str],
    splits: list[str],
) -> pd.DataFrame:
    """The ranked table of flagged rows (``rows`` input indices, ``y`` coded given labels,
    ``proba`` their out-of-fold probabilities), lowest ``p_label`` first."""
    import pandas as pd

    pred = proba.argmax(axis=1)
    picked = np.arange(len(rows))
    table = pd.DataFrame(
        {
            "row": rows,
            "path": [paths[i] for i in rows],
            "split": [splits[i] for i in rows],
            "label": names[y],
            "predicted": names[pred],
            "p_label": proba[picked, y],
            "p_predicted": proba[picked, pred],
        }
    )
    table = table.sort_values(["p_label", "row"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


# -- duplicates ---------------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _rows_of(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]``, without a copy when ``rows`` are all rows in order (the audit's
    matrix is the one O(rows) allocation of ``fit`` it must not double)."""
    if len(rows) == len(features) and np.array_equal(rows, np.arange(len(features))):
        return features
    return features[rows]


def find_duplicates(
    features: np.ndarray,
    paths: Sequence[str],
    splits: Sequence[str],
    content_hashes: Sequence[str | None],
    *,
    labels: Sequence[Any] | None = None,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    center: bool = True,
    batch_size: int = 1024,
) -> pd.DataFrame:
    """Test/val rows that duplicate a train row: exact (same content) or near (embeddings).

    Parameters
    ----------
    features : ndarray of shape (n_rows, n_features)
    paths, splits : sequence of str, length n_rows
        ``splits``: ``"train"`` rows are the reference; ``"test"`` and ``"val"`` rows are
        checked against them; others are ignored.
    content_hashes : sequence of str or None, length n_rows
        From :func:`content_hashes`; ``None`` (unreadable) never matches exactly.
    labels : sequence, optional
        Carried into the table.
    threshold : float
        Cosine similarity at or above which a pair is a near duplicate.
    center : bool
        Subtract the mean train embedding before the cosine (the default threshold assumes
        it).
    batch_size : int
        Queries per nearest-neighbour batch (memory ``batch_size x n_train`` floats).

    Returns
    -------
    DataFrame
        Columns ``path, split, label, train_path, train_label, kind, similarity``: one row per
        test/val row with a duplicate (``kind`` ``exact`` when a train row has the same
        content, else ``near``), sorted exact first, then by similarity descending.
    """
    import pandas as pd

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: a cosine similarity in (0, 1], got {threshold!r}")
    n = len(paths)
    if not len(splits) == len(content_hashes) == n or len(features) != n:
        raise ValueError(
            "features, paths, splits and content_hashes must have one entry per row "
            f"({len(features)}, {n}, {len(splits)}, {len(content_hashes)})"
        )
    splits = np.asarray([str(s) for s in splits])
    labels = np.asarray(labels if labels is not None else [""] * n, dtype=object)
    train = np.flatnonzero(splits == "train")
    query = np.flatnonzero(np.isin(splits, ["test", "val"]))
    if len(train) == 0 or len(query) == 0:
        return pd.DataFrame({c: [] for c in DUPLICATE_COLUMNS})

    records = [
        {
            "path": str(paths[i]),
            "split": str(splits[i]),
            "label": labels[i],
            "train_path": str(paths[match]),
            "train_label": labels[match],
            "kind": kind,
            "similarity": similarity,
        }
        for i, match, kind, similarity in _duplicate_pairs(
            np.asarray(features), train, query, content_hashes, threshold, center, batch_size
        )
    ]
    table = pd.DataFrame(records, columns=list(DUPLICATE_COLUMNS))
    if len(table):
        table["_exact"] = table["kind"] == "exact"
        table = table.sort_values(["_exact", "similarity", "path"], ascending=[False, False, True])
        table = table.drop(columns="_exact").reset_index(drop=True)
    logger.debug(
        "duplicates: %d exact and %d near (cosine >= %.3f) of %d test/val rows",
        int((table["kind"] == "exact").sum()),
        int((table["kind"] == "near").sum()),
        threshold,
        len(query),
    )
    return table


def _unit_train_rows(
    features: np.ndarray, train: np.ndarray, center: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``_normalise(features[train] - shift)`` and ``shift`` (the train rows' mean, or 0),
    with float32 rows computed in place in the one copy ``features[train]`` makes."""
    vectors = features[train]
    shift = vectors.mean(axis=0) if center else np.zeros(features.shape[1], vectors.dtype)
    if vectors.dtype != np.float32:
        return _normalise(vectors - shift), shift
    vectors -= shift
    for start in range(0, len(vectors), 8192):  # the squares norm makes: one slice at a time
        part = vectors[start : start + 8192]
        part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
    return vectors, shift


def _duplicate_pairs(
    features: np.ndarray,
    train: np.ndarray,
    query: np.ndarray,
    content_hashes: Sequence[str | None],
    threshold: float,
    center: bool,
    batch_size: int,
) -> Iterator[tuple[int, int, str, float]]:
    """Yield ``(query_row, train_row, kind, similarity)`` for every query row with an exact
    (same content hash) or near (cosine >= ``threshold``) duplicate among the ``train`` rows."""
    from sklearn.neighbors import NearestNeighbors

    first_train: dict[str, int] = {}
    for i in train:
        h = content_hashes[i]
        if h is not None:
            first_train.setdefault(h, int(i))
    train_vectors, shift = _unit_train_rows(features, train, center)
    index = NearestNeighbors(n_neighbors=1, algorithm="brute", metric="euclidean")
    index.fit(train_vectors)
    for start in range(0, len(query), batch_size):
        batch = query[start : start + batch_size]
        query_vectors = _normalise(features[batch] - shift)
        distance, nearest = index.kneighbors(query_vectors)
        # For unit vectors, |a - b|^2 = 2 - 2 cos(a, b).
        similarity = 1.0 - distance[:, 0] ** 2 / 2.0
        for q, (i, sim, j) in enumerate(zip(batch, similarity, nearest[:, 0], strict=True)):
            h = content_hashes[i]
            if h is not None and h in first_train:
                match, kind = first_train[h], "exact"
                sim = float(query_vectors[q] @ _normalise(features[[match]] - shift)[0])
            elif sim >= threshold:
                match, kind = int(train[j]), "near"
            else:
                continue
            yield int(i), match, kind, float(min(1.0, sim))


def leakage_warning(duplicates: pd.DataFrame) -> str | None:
    """One line in plain words when test/val rows duplicate train rows (leakage), else None."""
    if duplicates is None or len(duplicates) == 0:
        return None
    exact = int((duplicates["kind"] == "exact").sum())
    near = len(duplicates) - exact
    return (
        f"{len(duplicates)} test image(s) are copies of training images ({exact} identical, "
        f"{near} near-identical; listed in duplicates.csv), so the scores are a little too "
        "optimistic"
    )


def audit_table(
    table: FeatureTable,
    *,
    seed: int = 0,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    n_folds: int = 5,
    hashes: Sequence[str | None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Both checks on a whole store: ``(label_issues, duplicates, unreadable)``.

    Label issues are judged on every labelled row; duplicates compare the store's test/val
    rows with its train rows (a store without a split has none). ``unreadable`` maps paths
    whose bytes could not be hashed to the reason. ``hashes`` (one per table row, from
    :func:`content_hashes`) saves hashing the files again when the caller has them.
    """
    names = np.asarray([str(c) for c in table.class_names], dtype=object)
    labelled = np.flatnonzero(table.labels >= 0)
    label_names = np.full(len(table.labels), "", dtype=object)
    label_names[labelled] = names[table.labels[labelled]]
    with slow_step(
        logger,
        "audit: looking for wrong labels among %d images (a %d-fold check; --no-audit skips "
        "the audit) ...",
        len(labelled),
        n_folds,
    ):
        issues = find_label_issues(
            _rows_of(table.features, labelled),
            label_names[labelled],
            paths=table.paths[labelled].tolist(),
            splits=table.split[labelled].tolist(),
            seed=seed,
            n_folds=n_folds,
        )
    if len(issues):
        issues["row"] = labelled[issues["row"].to_numpy(dtype=int)]
    has_split = np.isin(table.split, ["train", "test", "val"])
    rows = np.flatnonzero(has_split)
    paths = table.paths[rows].tolist()
    with slow_step(logger, "audit: looking for test images that copy training images ..."):
        if hashes is not None:
            hashes, unreadable = [hashes[i] for i in rows], {}
        else:
            hashes, unreadable = content_hashes(paths) if len(rows) else ([], {})
        duplicates = find_duplicates(
            _rows_of(table.features, rows),
            paths,
            table.split[rows].tolist(),
            hashes,
            labels=label_names[rows].tolist(),
            threshold=threshold,
        )
    return issues, duplicates, unreadable
