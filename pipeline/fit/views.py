"""Augmented views in stage two: test-time augmentation and augmented training sets.

A store made with ``--views flip`` holds, besides ``/features``, each view's embeddings under
``/views/<name>/features``, row-aligned. Here the views of a row are *columns of that row*: the
matrix handed to the classifiers is ``[plain | view_1 | ...]`` (:func:`wide_features`), so
every split and CV fold, which cuts rows, keeps an image and its views on the same side (the
row index is the group). Only inside :class:`ViewsClassifier` are the views expanded:

- ``augment``: each training row's views become extra training samples (same label);
- ``tta``: ``predict_proba`` is the mean of the classifier's probabilities over the views.

A model file keeps the fitted inner classifier (an ordinary ``Pipeline``) and the list of views
averaged at test time (``"views"``); ``pipeline.predict`` embeds those views and averages with
:func:`predict_proba_views`, exactly as here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError

__all__ = [
    "ViewsClassifier",
    "expand_views",
    "predict_proba_views",
    "saved_estimator",
    "saved_views",
    "split_views",
    "views_report",
    "views_used",
    "wide_features",
    "with_views",
]


def views_used(attrs: Mapping[str, Any], tta: bool, augment: bool) -> list[str]:
    """The views stage two reads: all the store holds when either use is on, else none."""
    for name, value in (("tta", tta), ("augment", augment)):
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false (on or off), got {value!r}", param=name)
    return list(attrs.get("views") or []) if (tta or augment) else []


def views_report(attrs: Mapping[str, Any], tta: bool, augment: bool) -> dict[str, Any]:
    """report.json's ``views``: what the store holds and what this run used."""
    available = list(attrs.get("views") or [])
    return {
        "available": available,
        "tta": bool(tta and available),
        "augment": bool(augment and available),
    }


def with_views(
    name: str, estimator: Any, views: Sequence[str], tta: bool, augment: bool, dask: str
) -> Any:
    """``estimator`` wrapped in a :class:`ViewsClassifier` when views are used, else itself."""
    if not views:
        return estimator
    if dask and name == "xgboost":
        raise ConfigError(
            "xgboost on Dask does not use views yet; pass --tta off (and no --augment)",
            param="dask",
        )
    return ViewsClassifier(estimator, tuple(views), tta=tta, augment=augment)


def saved_estimator(fitted: Any) -> Any:
    """What a model file keeps: the inner fitted classifier of a :class:`ViewsClassifier`."""
    return fitted.estimator_ if isinstance(fitted, ViewsClassifier) else fitted


def saved_views(fitted: Any) -> list[str]:
    """The views a model file's predictions average (empty: the plain view only)."""
    if isinstance(fitted, ViewsClassifier) and fitted.tta:
        return list(fitted.views)
    return []


def wide_features(table: Any, views: Sequence[str]) -> np.ndarray:
    """``[features | views[0] | ...]`` (N, (1 + len(views)) * D): one row per image."""
    if not views:
        return table.features
    return np.concatenate([table.features, *(table.views[v] for v in views)], axis=1)


def split_views(X: np.ndarray, n_views: int) -> np.ndarray:
    """(N, (1 + n_views) * D) -> (1 + n_views, N, D): the plain view first."""
    n, width = X.shape
    return np.asarray(X).reshape(n, 1 + n_views, width // (1 + n_views)).transpose(1, 0, 2)


def expand_views(
    X: np.ndarray, y: np.ndarray, n_views: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with their views as columns -> one sample per (row, view): ``X``, ``y`` and
    ``groups`` (the row index, so a grouped splitter keeps an image's views together)."""
    stack = split_views(X, n_views)
    n = stack.shape[1]
    groups = np.tile(np.arange(n), 1 + n_views)
    return stack.reshape(-1, stack.shape[2]), np.tile(np.asarray(y), 1 + n_views), groups


def predict_proba_views(estimator: Any, stack: np.ndarray) -> np.ndarray:
    """Mean of ``estimator.predict_proba`` over the views of ``stack`` (V, N, D)."""
    return np.mean([estimator.predict_proba(view) for view in stack], axis=0)


class ViewsClassifier:
    """Fit ``estimator`` on the plain view (plus, with ``augment``, every view as extra
    samples); predict with the mean probabilities over the views (``tta``) or the plain view.

    ``X`` is ``(N, (1 + len(views)) * D)``: each row's plain embedding, then its ``views``.
    A scikit-learn meta-estimator by protocol (``get_params`` / ``set_params``, so ``clone``
    works), written without importing scikit-learn, so ``--help`` stays instant.
    """

    _estimator_type = "classifier"
    #: ``predict`` is ``classes_[argmax(predict_proba)]`` (see
    #: :func:`pipeline.fit.streaming.predicts_argmax_proba`).
    predict_is_argmax_proba = True

    def __init__(
        self, estimator: Any, views: Sequence[str] = ("flip",), tta: bool = True,
        augment: bool = False,
    ) -> None:  # fmt: skip
        self.estimator = estimator
        self.views = views
        self.tta = tta
        self.augment = augment

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("estimator", "views", "tta", "augment")}

    def set_params(self, **params: Any) -> ViewsClassifier:
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def fit(self, X: np.ndarray, y: np.ndarray) -> ViewsClassifier:
        from sklearn.base import clone

        n_views = len(self.views)
        if self.augment:
            X_fit, y_fit, _ = expand_views(X, y, n_views)
        else:
            X_fit, y_fit = split_views(X, n_views)[0], y
        self.estimator_ = clone(self.estimator).fit(X_fit, y_fit)
        self.classes_ = self.estimator_.classes_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        stack = split_views(X, len(self.views))
        return predict_proba_views(self.estimator_, stack if self.tta else stack[:1])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes_)[self.predict_proba(X).argmax(axis=1)]
