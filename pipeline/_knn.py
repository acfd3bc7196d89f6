"""Cosine k-nearest-neighbours on embeddings, with k chosen by leave-one-out on the train rows.

The standard few-shot baseline for frozen features. The neighbour search is scikit-learn's
(:class:`~sklearn.neighbors.KNeighborsClassifier`, brute-force cosine distance); choosing k costs
one extra ``kneighbors`` query of the training rows against themselves.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, normalize
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["DEFAULT_K_CANDIDATES", "CosineKNNClassifier", "make_knn"]

DEFAULT_K_CANDIDATES = (1, 3, 5, 7, 9, 15, 21, 31, 51)
_LOO_BLOCK = 4_000_000  # rows x k x classes held at once while scoring candidates


class CosineKNNClassifier(ClassifierMixin, BaseEstimator):
    """k-nearest-neighbours by cosine similarity, k chosen by leave-one-out.

    Rows are L2-normalised and neighbours found by scikit-learn's brute-force cosine search.
    With ``n_neighbors=None`` (default) k is picked from ``k_candidates`` by leave-one-out
    accuracy on the training rows: one ``kneighbors`` query of the training rows (each row's
    own entry excluded) scores every candidate at once. Equal accuracies go to the smaller k.

    Parameters
    ----------
    n_neighbors : int or None, default=None
        A fixed k, or None to choose it by leave-one-out.
    k_candidates : sequence of int, default=(1, 3, 5, 7, 9, 15, 21, 31, 51)
        Values of k tried when ``n_neighbors`` is None; those above ``n_samples - 1`` are
        skipped.
    weights : {"uniform", "distance"}, default="uniform"
        Vote weighting, as :class:`~sklearn.neighbors.KNeighborsClassifier`.
    n_jobs : int or None, default=None
        Parallel jobs of the neighbour search.

    Attributes
    ----------
    k_ : int
        The k used for prediction.
    loo_scores_ : dict of int to float or None
        Leave-one-out accuracy of each candidate k (None with a fixed ``n_neighbors``).
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    knn_ : KNeighborsClassifier
        The fitted neighbour classifier (on normalised rows, encoded labels).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.1], [2.0, 0.3], [0.1, 1.0], [0.2, 3.0]])
    >>> clf = CosineKNNClassifier(k_candidates=(1,)).fit(X, ["a", "a", "b", "b"])
    >>> clf.predict([[5.0, 0.2]]).tolist()
    ['a']
    """

    #: ``predict`` is ``classes_[argmax(predict_proba)]``, whatever ``weights`` (see
    #: :func:`pipeline.fit.streaming.predicts_argmax_proba`).
    predict_is_argmax_proba = True

    def __init__(
        self,
        n_neighbors: int | None = None,
        *,
        k_candidates: Sequence[int] = DEFAULT_K_CANDIDATES,
        weights: str = "uniform",
        n_jobs: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.k_candidates = k_candidates
        self.weights = weights
        self.n_jobs = n_jobs

    def _check_params(self) -> list[int]:
        name = type(self).__name__

        def is_k(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1

        if self.n_neighbors is not None and not is_k(self.n_neighbors):
            raise ValueError(
                f"{name}: n_neighbors must be None or an int >= 1, got {self.n_neighbors!r}"
            )
        try:
            candidates = sorted({int(k) for k in self.k_candidates if is_k(k)})
            ok = len(candidates) == len(set(self.k_candidates)) and candidates
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{name}: k_candidates must be a non-empty sequence of ints >= 1, got "
                f"{self.k_candidates!r}"
            )
        if self.weights not in ("uniform", "distance"):
            raise ValueError(
                f"{name}: weights must be 'uniform' or 'distance', got {self.weights!r}"
            )
        return candidates

    def fit(self, X: ArrayLike, y: ArrayLike) -> CosineKNNClassifier:
        """Store the normalised training rows and choose k.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), labels of any type

        Returns
        -------
        self : CosineKNNClassifier
        """
        candidates = self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        y_enc = encoder.transform(y)
        n = X.shape[0]
        if self.n_neighbors is not None and self.n_neighbors > n:
            raise ValueError(
                f"{type(self).__name__}: n_neighbors={self.n_neighbors} but only {n} training "
                "rows; lower n_neighbors"
            )
        Xn = normalize(X)
        usable = [k for k in candidates if k <= n - 1]
        if self.n_neighbors is not None:
            k_max = int(self.n_neighbors)
        elif usable:
            k_max = usable[-1]
        else:
            k_max = 1
        knn = KNeighborsClassifier(
            n_neighbors=k_max,
            weights=self.weights,
            algorithm="brute",
            metric="cosine",
            n_jobs=self.n_jobs,
        ).fit(Xn, y_enc)
        self.loo_scores_ = None
        if self.n_neighbors is not None:
            self.k_ = int(self.n_neighbors)
        elif usable:
            self.loo_scores_ = self._loo_scores(knn, y_enc, usable)
            best = max(self.loo_scores_.values())
            self.k_ = min(k for k, s in self.loo_scores_.items() if s == best)
        else:  # a single training row: nothing to leave out
            self.k_ = 1
        self.knn_ = knn.set_params(n_neighbors=self.k_)
        return self

    def _loo_scores(
        self, knn: KNeighborsClassifier, y_enc: np.ndarray, candidates: list[int]
    ) -> dict[int, float]:
        """Leave-one-out accuracy of each k from one query (own row excluded by sklearn)."""
        dist, idx = knn.kneighbors(n_neighbors=candidates[-1])  # X=None: self excluded
        n_classes = len(self.classes_)
        n, k_max = idx.shape
        hits = np.zeros(len(candidates))
        block = max(1, _LOO_BLOCK // max(1, k_max * n_classes))
        ks = np.asarray(candidates) - 1
        for start in range(0, n, block):
            stop = min(n, start + block)
            onehot = np.zeros((stop - start, k_max, n_classes))
            rows = np.arange(stop - start)[:, None]
            onehot[rows, np.arange(k_max)[None, :], y_enc[idx[start:stop]]] = 1.0
            if self.weights == "distance":
                d = dist[start:stop]
                # sklearn's rule: rows at distance 0 outvote all others.
                zero = (d <= 0)[..., None] * onehot
                onehot = np.where(d[..., None] > 0, onehot / np.maximum(d, 1e-300)[..., None], 0)
                zero_votes = np.cumsum(zero, axis=1)[:, ks]
                votes = np.cumsum(onehot, axis=1)[:, ks]
                votes = np.where(zero_votes.sum(axis=2, keepdims=True) > 0, zero_votes, votes)
            else:
                votes = np.cumsum(onehot, axis=1)[:, ks]  # (rows, candidates, classes)
            hits += (votes.argmax(axis=2) == y_enc[start:stop, None]).sum(axis=0)
        return {k: float(h / n) for k, h in zip(candidates, hits, strict=True)}

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Share of (weighted) votes per class among the ``k_`` nearest rows; ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return np.asarray(self.knn_.predict_proba(normalize(X)), dtype=np.float64)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted labels, ``classes_[argmax(predict_proba(X))]``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


def make_knn(**params: Any) -> Pipeline:
    """``knn`` for the classifier registry: ``Pipeline([("clf", CosineKNNClassifier(**params))])``.

    No scaler: cosine similarity of the raw (post-ReLU) embeddings is the usual few-shot
    baseline, and standardising would change which rows are near. ``random_state`` is accepted
    and ignored (the classifier is deterministic), so the factory takes fit's common params.
    """
    params.pop("random_state", None)
    return Pipeline([("clf", CosineKNNClassifier(**params))])
