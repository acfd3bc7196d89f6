"""Per-image predictions of every evaluated classifier: ``predictions.csv`` and ``.npz``.

``predictions.csv`` has one row per evaluated image per classifier, columns
``path, split, label, clf, pred, confidence, correct`` (``label`` and ``pred`` are class
names, ``confidence`` the predicted probability of ``pred``, ``correct`` 1 or 0), so that
``mean(correct)`` per ``clf`` is the reported accuracy. ``predictions.npz`` holds the full class
probabilities for users' own analysis (loads with ``np.load``, no pickle). Both are written
atomically with the user's umask.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .._io import atomic_path

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CSV_COLUMNS",
    "PREDICTIONS_CSV",
    "PREDICTIONS_NPZ",
    "accuracy_from_csv",
    "align_proba",
    "load_probabilities",
    "read_predictions",
    "write_predictions",
]

logger = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_NPZ = "predictions.npz"
CSV_COLUMNS = ("path", "split", "label", "clf", "pred", "confidence", "correct")


def align_proba(
    proba: ArrayLike, proba_classes: Sequence[Any], class_names: Sequence[Any]
) -> np.ndarray:
    """Reorder a classifier's ``predict_proba`` columns (``classes_`` order) to ``class_names``.

    Classes the classifier never saw get probability 0.

    Returns
    -------
    ndarray of shape (n_samples, len(class_names)), float64
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(proba_classes):
        raise ValueError(
            f"proba has shape {proba.shape}, expected (n_samples, {len(proba_classes)}) "
            "columns in proba_classes order"
        )
    position = {str(name): i for i, name in enumerate(class_names)}
    unknown = [c for c in proba_classes if str(c) not in position]
    if unknown:
        raise ValueError(f"classifier classes {unknown} are not among class_names")
    out = np.zeros((proba.shape[0], len(class_names)))
    out[:, [position[str(c)] for c in proba_classes]] = proba
    return out


def write_predictions(
    out_dir: str | Path,
    *,
    paths: Sequence[str],
    split: Sequence[str] | str,
    labels: Sequence[str],
    class_names: Sequence[str],
    proba: Mapping[str, ArrayLike],
    preds: Mapping[str, Sequence[str]] | None = None,
    rows: ArrayLike | None = None,
) -> pd.DataFrame:
    """Write ``<out_dir>/predictions.csv`` and ``<out_dir>/predictions.npz``; return the CSV's
    rows.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created if needed).
    paths : sequence of str, length n
        Image path of each evaluated row.
    split : str or sequence of str
        Where each row was evaluated: the store's split name (``"test"``, ``"val"``),
        ``"holdout"``, or with CV the fold (``"fold1"``...). One string applies to all rows.
    labels : sequence of str, length n
        True class name of each row.
    class_names : sequence of str
        Every class, in the column order of ``proba``.
    proba : mapping clf name -> array of shape (n, len(class_names))
        Class probabilities per classifier, columns in ``class_names`` order (see
        :func:`align_proba`); with CV the out-of-fold probabilities. Order of the mapping is
        the order of the rows in the CSV.
    preds : mapping clf name -> predicted class names, optional
        The classifier's ``predict`` output; default the most probable class. Give it when
        ``predict`` may differ from the arg-max of ``predict_proba``, so the CSV's accuracy
        is the report's.
    rows : array-like of int, optional
        Row index of each evaluated row in the feature store (kept in the ``.npz``).

    Returns
    -------
    DataFrame
        The rows of ``predictions.csv`` (columns :data:`CSV_COLUMNS`) with the values the file
        holds: ``confidence`` as written (6 significant digits), ``correct`` as bool; what
        reading the file back would give, without reading it (``fit``'s HTML report uses it).
    """
    out_dir = Path(out_dir)
    paths = [str(p) for p in paths]
    n = len(paths)
    names = np.asarray([str(c) for c in class_names])
    split_col = [split] * n if isinstance(split, str) else [str(s) for s in split]
    label_col = np.asarray([str(v) for v in labels])
    if len(split_col) != n or len(label_col) != n:
        raise ValueError(
            f"paths, split and labels must have one entry per row: {n}, {len(split_col)}, "
            f"{len(label_col)}"
        )
    if not proba:
        raise ValueError("proba is empty: no classifier predictions to write")
    index_of = {name: i for i, name in enumerate(names.tolist())}
    missing = sorted(set(label_col.tolist()) - set(index_of))
    if missing:
        raise ValueError(f"labels {missing} are not among class_names")
    clfs = list(proba)
    all_proba, all_pred = _stack_predictions(proba, preds, n, names, index_of)
    csv_path = out_dir / PREDICTIONS_CSV
    confidence = _write_csv(csv_path, clfs, paths, split_col, label_col, names, all_proba, all_pred)
    npz_path = out_dir / PREDICTIONS_NPZ
    row_index = np.full(n, -1, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if row_index.shape != (n,):
        raise ValueError(f"rows must hold one store row index per row ({n}), got {row_index.shape}")
    with atomic_path(npz_path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            clf=np.asarray(clfs, dtype=str),
            class_names=names,
            path=np.asarray(paths, dtype=str),
            split=np.asarray(split_col, dtype=str),
            label=label_col.astype(str),
            row=row_index,
            proba=all_proba,
            pred=all_pred,
        )
    logger.debug(
        "predictions of %d classifier(s) on %d rows written (%s)", len(clfs), n, csv_path.name
    )
    return _frame(clfs, paths, split_col, label_col, names[all_pred].reshape(-1), confidence)


def _stack_predictions(
    proba: Mapping[str, ArrayLike],
    preds: Mapping[str, Sequence[str]] | None,
    n: int,
    names: np.ndarray,
    index_of: Mapping[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Check and stack every classifier's probabilities ``(n_clf, n, n_classes)`` and predicted
    class codes ``(n_clf, n)`` (``preds`` when given, else the most probable class)."""
    all_proba = np.empty((len(proba), n, len(names)), dtype=np.float32)
    all_pred = np.empty((len(proba), n), dtype=np.int32)
    for c, clf in enumerate(proba):
        p = np.asarray(proba[clf], dtype=np.float64)
        if p.shape != (n, len(names)):
            raise ValueError(
                f"proba[{clf!r}] has shape {p.shape}, expected ({n}, {len(names)}); align the "
                "columns to class_names with align_proba"
            )
        if preds is not None and clf in preds:
            given = [str(v) for v in preds[clf]]
            bad = sorted(set(given) - set(index_of))
            if len(given) != n or bad:
                raise ValueError(f"preds[{clf!r}]: {n} class names expected; unknown: {bad}")
            all_pred[c] = [index_of[v] for v in given]
        else:
            all_pred[c] = p.argmax(axis=1)
        all_proba[c] = p
    return all_proba, all_pred


def _write_csv(
    csv_path: Path,
    clfs: list[str],
    paths: list[str],
    split_col: list[str],
    label_col: np.ndarray,
    names: np.ndarray,
    all_proba: np.ndarray,
    all_pred: np.ndarray,
) -> np.ndarray:
    """Write ``predictions.csv`` atomically: one row per evaluated image per classifier; return
    the ``confidence`` column as written (the text parsed back, float64)."""
    n = len(paths)
    written = []
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for c, clf in enumerate(clfs):
            pred_codes = all_pred[c]
            confidence = [f"{v:.6g}" for v in all_proba[c][np.arange(n), pred_codes].tolist()]
            written.append(np.asarray(confidence, dtype=np.float64))
            pred_names = names[pred_codes]
            correct = pred_names == label_col
            writer.writerows(
                zip(
                    paths,
                    split_col,
                    label_col.tolist(),
                    [clf] * n,
                    pred_names.tolist(),
                    confidence,
                    correct.astype(int).tolist(),
                    strict=True,
                )
            )
    return np.concatenate(written)


def _frame(
    clfs: list[str],
    paths: list[str],
    split_col: list[str],
    label_col: np.ndarray,
    pred_col: np.ndarray,
    confidence: np.ndarray,
) -> pd.DataFrame:
    """``predictions.csv``'s rows (classifier after classifier) as a DataFrame: text columns
    of pandas' ``str`` dtype, ``confidence`` float64, ``correct`` bool."""
    import pandas as pd

    k = len(clfs)
    label = np.tile(label_col.astype(object), k)
    text = {
        "path": np.tile(np.asarray(paths, dtype=object), k),
        "split": np.tile(np.asarray(split_col, dtype=object), k),
        "label": label,
        "clf": np.repeat(np.asarray(clfs, dtype=object), len(paths)),
        "pred": pred_col.astype(object),
    }
    frame = pd.DataFrame({name: pd.Series(column, dtype=str) for name, column in text.items()})
    frame["confidence"] = confidence
    frame["correct"] = pred_col == label
    return frame


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``predictions.csv`` as dicts of strings (columns :data:`CSV_COLUMNS`)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(
                f"{path}: columns {reader.fieldnames}, expected {list(CSV_COLUMNS)}; not a "
                "predictions.csv written by `python -m pipeline.fit`"
            )
        return list(reader)


def accuracy_from_csv(path: str | Path) -> dict[str, float]:
    """Accuracy per classifier recomputed from ``predictions.csv`` (``label == pred``)."""
    hits: dict[str, list[int]] = {}
    for row in read_predictions(path):
        hits.setdefault(row["clf"], []).append(int(row["label"] == row["pred"]))
    return {clf: float(np.mean(values)) for clf, values in hits.items()}


def load_probabilities(path: str | Path) -> dict[str, Any]:
    """Read ``predictions.npz``: ``clf``, ``class_names``, ``path``, ``split``, ``label``,
    ``row`` (store row, -1 unknown), ``proba`` (n_clf, n, n_classes) and ``pred`` (codes)."""
    with np.load(Path(path), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
