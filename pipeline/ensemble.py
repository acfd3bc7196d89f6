"""``--clf ensemble``: the classifiers the evidence cannot separate from the best, averaged.

:class:`TiedEnsembleClassifier` is given candidate estimators. Its ``fit`` sees the training
rows only, and chooses among the candidates there:

1. out-of-fold probabilities of every candidate by stratified K-fold on the training rows
   (``cv`` folds, seeded);
2. the best candidate by out-of-fold accuracy, and an exact McNemar test of each other
   candidate against it on those rows, Holm-adjusted (as the report compares classifiers);
   the members are the best and every candidate not worse at ``alpha``;
3. the members refitted on all training rows; ``predict_proba`` is their weighted mean
   (``combine="vote"``, equal weights), or a multinomial logistic regression on their
   concatenated out-of-fold probabilities (``combine="stack"``).

The default is the soft vote: measured on cifar10-mini and digits (docs/benchmarks.md) the
stacked model was no better, and the vote needs no extra fitted parameters, so a member's graph
averaged with ``weights_`` is the whole model (what ONNX export does). The fitted ensemble
exposes ``estimators_`` (the fitted members, in candidate order), ``names_``, ``weights_``
and ``selection_`` (each candidate's out-of-fold accuracy and p-value against the best).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .fit.evidence import ALPHA, compare_to_best

__all__ = ["TiedEnsembleClassifier"]


def _aligned(estimator: Any, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``estimator.predict_proba(X)`` with one column per class of ``classes`` (zeros for a
    class the estimator never saw)."""
    proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    own = np.asarray(estimator.classes_)
    if own.shape == classes.shape and np.array_equal(own, classes):
        return proba
    out = np.zeros((len(X), len(classes)))
    out[:, np.searchsorted(classes, own)] = proba
    return out


class TiedEnsembleClassifier(ClassifierMixin, BaseEstimator):
    """Soft vote (or stack) of the candidates tied with the best on the training folds.

    Parameters
    ----------
    estimators : list of (str, estimator)
        The candidates, by name (as scikit-learn's ``VotingClassifier``); each needs
        ``predict_proba``.
    cv : int, default=3
        Folds of the out-of-fold predictions that choose the members (fewer when a class has
        fewer training rows; with a class of one row every candidate is a member).
    alpha : float, default=0.05
        A candidate whose Holm-adjusted McNemar p-value against the best is below ``alpha``
        is left out.
    combine : {"vote", "stack"}, default="vote"
        Equal-weight mean of the members' probabilities, or a logistic regression on their
        out-of-fold probabilities.
    max_rows : int or None, default=None
        Choose the members on a stratified, seeded subsample of at most this many training
        rows (the out-of-fold fits cost ``cv`` fits of every candidate on ``(cv - 1) / cv`` of
        them); the members are still fitted on every row. None: all rows.
    random_state : int or None, default=None
        Seeds the folds, the subsample (and the stacker).

    Attributes
    ----------
    estimators_ : list
        The fitted members (fitted on all training rows), in candidate order.
    names_ : list of str
        Their names.
    weights_ : ndarray
        The weight of each member in the vote (sums to 1); None with ``combine="stack"``.
    stacker_ : LogisticRegression or None
        The stacking model (``combine="stack"``).
    selection_ : dict
        ``cv`` (folds used; 0: too few rows, every candidate a member), ``rows`` (rows they
        cut) and ``candidates``: per candidate ``oof_accuracy``, ``p_value_vs_best``
        (Holm-adjusted, None for the best) and ``member`` (bool).
    classes_ : ndarray
    """

    #: ``predict`` is ``classes_[argmax(predict_proba)]``.
    predict_is_argmax_proba = True

    def __init__(
        self,
        estimators: Sequence[tuple[str, Any]] = (),
        cv: int = 3,
        alpha: float = ALPHA,
        combine: str = "vote",
        max_rows: int | None = None,
        random_state: int | None = None,
    ) -> None:
        self.estimators = estimators
        self.cv = cv
        self.alpha = alpha
        self.combine = combine
        self.max_rows = max_rows
        self.random_state = random_state

    def _check_params(self) -> list[tuple[str, Any]]:
        candidates = list(self.estimators)
        if not candidates:
            raise ValueError("estimators must name at least one (name, estimator) candidate")
        names = [name for name, _ in candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"estimators' names must be unique, got {names}")
        if self.combine not in ("vote", "stack"):
            raise ValueError(f"combine must be 'vote' or 'stack', got {self.combine!r}")
        if isinstance(self.cv, bool) or not isinstance(self.cv, int) or self.cv < 2:
            raise ValueError(f"cv must be an int >= 2, got {self.cv!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        rows = self.max_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 2):
            raise ValueError(f"max_rows must be None or an int >= 2, got {rows!r}")
        return candidates

    def _out_of_fold(
        self, candidates: list[tuple[str, Any]], X: np.ndarray, y: np.ndarray
    ) -> tuple[dict[str, np.ndarray], int, np.ndarray]:
        """Out-of-fold probabilities per candidate (training rows only), the folds, and the
        labels of the rows they are of (a subsample with ``max_rows``)."""
        _, counts = np.unique(y, return_counts=True)
        folds = min(self.cv, int(counts.min()))
        if folds < 2:
            return {}, 0, y
        if self.max_rows is not None and self.max_rows < len(y):
            from sklearn.model_selection import train_test_split

            keep = max(self.max_rows, folds * len(counts))  # every class in every fold
            X, _, y, _ = train_test_split(
                X, y, train_size=keep, stratify=y, random_state=self.random_state
            )
            _, counts = np.unique(y, return_counts=True)
            folds = min(folds, int(counts.min()))
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
        splits = list(splitter.split(X, y))
        oof = {}
        for name, estimator in candidates:
            proba = np.zeros((len(y), len(self.classes_)))
            for train, test in splits:
                fold = clone(estimator).fit(X[train], y[train])
                proba[test] = _aligned(fold, X[test], self.classes_)
            oof[name] = proba
        return oof, folds, y

    def _select(
        self, names: list[str], oof: dict[str, np.ndarray], folds: int, y: np.ndarray
    ) -> list[str]:
        """The members: the best by out-of-fold accuracy and every candidate tied with it."""
        if not oof:  # too few rows per class for folds: no evidence to leave any out
            every = {
                n: {"oof_accuracy": None, "p_value_vs_best": None, "member": True} for n in names
            }
            self.selection_ = {"cv": 0, "rows": 0, "candidates": every}
            return names
        correct = {n: self.classes_[oof[n].argmax(axis=1)] == y for n in names}
        verdict = compare_to_best(correct=correct, alpha=self.alpha)
        self.selection_ = {"cv": folds, "rows": len(y), "candidates": {}}
        for name in names:
            self.selection_["candidates"][name] = {
                "oof_accuracy": verdict[name]["score"],
                "p_value_vs_best": verdict[name]["p_value_vs_best"],
                "member": verdict[name]["tied_with_best"],
            }
        return [n for n in names if verdict[n]["tied_with_best"]]

    def fit(self, X: Any, y: Any) -> TiedEnsembleClassifier:
        """Choose the members on out-of-fold predictions of ``(X, y)``, then fit them on all
        of ``(X, y)``."""
        candidates = self._check_params()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                "TiedEnsembleClassifier needs samples of at least 2 classes, but the data "
                "contains only one class"
            )
        oof, folds, y_oof = self._out_of_fold(candidates, X, y)
        names = [name for name, _ in candidates]
        members = self._select(names, oof, folds, y_oof)
        by_name = dict(candidates)
        self.names_ = members
        self.estimators_ = [clone(by_name[name]).fit(X, y) for name in members]
        self.stacker_ = None
        if self.combine == "stack" and oof:
            from sklearn.linear_model import LogisticRegression

            stacked = np.hstack([oof[name] for name in members])
            self.stacker_ = LogisticRegression(max_iter=1000, random_state=self.random_state)
            self.stacker_.fit(stacked, y_oof)
            self.weights_ = None
        else:
            self.weights_ = np.full(len(members), 1.0 / len(members))
        return self

    def _member_probas(self, X: np.ndarray) -> list[np.ndarray]:
        return [_aligned(est, X, self.classes_) for est in self.estimators_]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Members' mean probabilities (weights ``weights_``), or the stacker's."""
        check_is_fitted(self, "estimators_")
        X = validate_data(self, X, reset=False)
        probas = self._member_probas(X)
        if self.stacker_ is not None:
            return _aligned(self.stacker_, np.hstack(probas), self.classes_)
        return np.tensordot(self.weights_, np.stack(probas), axes=1)

    def predict(self, X: Any) -> np.ndarray:
        """The class of highest probability (ties to the first class)."""
        check_is_fitted(self, "estimators_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
