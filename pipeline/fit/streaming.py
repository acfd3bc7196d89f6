"""Fit and predict a scikit-learn estimator on a :class:`~pipeline.rows.RowSource`.

Stage two hands the classifiers the store's rows as a row source, never as a whole matrix read
up front. :func:`fit_rows` trains each estimator the cheapest way it allows (:func:`fit_plan`):

- ``"stream"``: a ``Pipeline`` whose leading steps all learn incrementally (``partial_fit``:
  the ``StandardScaler``) and whose final step reads a row source itself
  (``accepts_row_source = True``: the ``nn`` head, ``xgboost``): the leading steps are fitted
  over blocks, and the final step gets the rows transformed block by block as it reads them
  (:class:`~pipeline.rows.TransformedRows`); no matrix is ever held. A bare estimator with the
  tag gets the rows as they are.
- ``"scaled"``: the same leading steps, a final step without the tag (``logreg``): the leading
  steps are fitted over blocks, then the final step gets ONE float32 matrix of the transformed
  rows (for ``logreg``, the scaled matrix is the only copy of the data: scikit-learn's
  ``LogisticRegression`` keeps float32 C-ordered input as it is).
- ``"matrix"``: anything else (``svc``, ``knn``, ``svc_approx``, views, search): the rows read
  into one float32 matrix (:func:`~pipeline.rows.materialize`), then ``estimator.fit``.

Whatever the plan, the result is ``estimator`` fitted in place: an ordinary fitted
``Pipeline``, saved and used by ``pipeline.predict`` as before. :func:`predict_rows` predicts
block by block, in one pass where the labels are the probabilities' arg-max
(:func:`predicts_argmax_proba`). Plain arrays work everywhere (they are read as row sources
of themselves).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .. import rows
from ..store import read_block_rows

__all__ = ["Plan", "fit_plan", "fit_rows", "predict_rows", "predicts_argmax_proba"]

Plan = Literal["stream", "scaled", "matrix"]


def _steps(estimator: Any) -> tuple[list[Any], Any] | None:
    """``(leading steps, final step)`` of a ``Pipeline``; None for anything else."""
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline):
        return None
    steps = [step for _, step in estimator.steps]
    return steps[:-1], steps[-1]


def _incremental(step: Any) -> bool:
    return hasattr(step, "partial_fit") and hasattr(step, "transform")


def fit_plan(estimator: Any) -> Plan:
    """How :func:`fit_rows` trains ``estimator`` (see the module docstring)."""
    parts = _steps(estimator)
    if parts is None:
        return "stream" if rows.accepts_row_source(estimator) else "matrix"
    leading, final = parts
    if not all(_incremental(step) for step in leading):
        return "matrix"
    if rows.accepts_row_source(final):
        return "stream"
    return "scaled" if leading else "matrix"


def _partial_fit_leading(pipeline: Any, X: rows.RowSource, block_rows: int) -> None:
    """Fit every step but the last by ``partial_fit`` over blocks, in order (step ``i`` sees
    the blocks transformed by the steps before it); each step starts afresh (a clone)."""
    from sklearn.base import clone

    for i in range(len(pipeline.steps) - 1):
        name, step = pipeline.steps[i]
        step = clone(step)
        source = rows.TransformedRows(X, pipeline[:i].transform) if i else X
        for _, block in rows.iter_blocks(source, block_rows):
            step.partial_fit(block)
        pipeline.steps[i] = (name, step)


def fit_rows(estimator: Any, X: Any, y: Any, block_rows: int | None = None) -> Any:
    """Fit ``estimator`` on the rows of ``X`` (a row source or an array) and labels ``y``.

    Returns ``estimator``, fitted in place, as ``estimator.fit(np.asarray(X), y)`` would; only
    the memory differs (see :func:`fit_plan`). ``block_rows`` (what this function reads at once;
    a streaming final step reads its own) defaults to :func:`pipeline.store.read_block_rows`.
    """
    block_rows = block_rows or read_block_rows()
    plan = fit_plan(estimator)
    if plan == "matrix":
        return estimator.fit(rows.materialize(X, block_rows), y)
    source = X if isinstance(X, rows.RowSource) else rows.ArrayRows(X)
    if _steps(estimator) is None:  # a bare estimator that reads row sources
        return estimator.fit(source, y)
    _partial_fit_leading(estimator, source, block_rows)
    final = estimator.steps[-1][1]
    if len(estimator.steps) > 1:
        source = rows.TransformedRows(source, estimator[:-1].transform)
    final.fit(source if plan == "stream" else rows.materialize(source, block_rows), y)
    return estimator


def predicts_argmax_proba(estimator: Any) -> bool:
    """Is ``estimator.predict(X)`` exactly ``classes_[argmax(estimator.predict_proba(X))]``,
    ties going to the first class, whatever ``X``? Then :func:`predict_rows` derives the
    labels from the probabilities instead of predicting twice.

    True for an estimator whose class declares ``predict_is_argmax_proba = True`` (ours: the
    ``nn`` head, ``xgboost``, ``knn``, the views wrapper) and for scikit-learn's
    ``CalibratedClassifierCV`` (``svc``, ``svc_approx``: its ``predict`` is that arg-max),
    matched by exact type, since a subclass may predict otherwise. False for anything else:
    ``LogisticRegression`` predicts from its decision function (``> 0`` in the binary case),
    which differs from the arg-max of the rounded probabilities when the scores nearly tie
    (a binary score of 1e-20 gives probabilities 0.5 / 0.5, class 0, but predicts class 1)."""
    if getattr(type(estimator), "predict_is_argmax_proba", False):
        return True
    from sklearn.calibration import CalibratedClassifierCV

    return type(estimator) is CalibratedClassifierCV


def _prediction_steps(fitted: Any) -> tuple[Any, Any]:
    """``(transform or None, final estimator)``: a ``Pipeline``'s leading steps as one
    transform (what its ``predict`` and ``predict_proba`` both apply first) and its last step;
    anything else is its own final estimator."""
    parts = _steps(fitted)
    if parts is None:
        return None, fitted
    leading, final = parts
    return (fitted[:-1].transform if leading else None), final


def predict_rows(
    fitted: Any, X: Any, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(predict, predict_proba)`` of ``fitted`` on the rows of ``X``, computed block by
    block (``predict_proba`` None when ``fitted`` has none); rows in ``X``'s order.

    A ``Pipeline``'s leading steps transform each block once for both. The labels are the
    arg-max of the probabilities when that is exactly what ``predict`` returns
    (:func:`predicts_argmax_proba`: one pass), else ``predict``'s own."""
    block_rows = block_rows or read_block_rows()
    has_proba = hasattr(fitted, "predict_proba")
    transform, final = _prediction_steps(fitted)
    one_pass = has_proba and predicts_argmax_proba(final)
    preds, probas = [], []
    for _, block in rows.iter_blocks(X, block_rows):
        Xt = block if transform is None else transform(block)
        if has_proba:
            proba = np.asarray(final.predict_proba(Xt))
            probas.append(proba.astype(np.float64, copy=False))
        if one_pass:
            preds.append(np.asarray(final.classes_)[proba.argmax(axis=1)])
        else:
            preds.append(np.asarray(final.predict(Xt)))
    if not preds:  # no rows: let the estimator say what an empty prediction is
        empty = np.empty((0, X.shape[1]), dtype=np.float32)
        return np.asarray(fitted.predict(empty)), (
            np.asarray(fitted.predict_proba(empty)) if has_proba else None
        )
    return np.concatenate(preds), (np.concatenate(probas) if has_proba else None)
