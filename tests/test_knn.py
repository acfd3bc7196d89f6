"""CosineKNNClassifier: a scikit-learn estimator whose k is chosen by leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import LeaveOneOut, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline._knn import CosineKNNClassifier, make_knn
from tests._fit_helpers import blobs


def _expected_failures(estimator) -> dict[str, str]:
    return {}  # every applicable check passes


@parametrize_with_checks(
    [CosineKNNClassifier(), CosineKNNClassifier(weights="distance", k_candidates=(1, 5))],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def data():
    X, y = blobs(n_per_class=25, n_classes=3, dim=12, seed=4)
    X = np.abs(X)  # non-negative, like post-ReLU embeddings
    return X, np.array(["cat", "dog", "owl"])[y]


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_loo_scores_equal_sklearn_leave_one_out(data, weights):
    """The one-query leave-one-out scores equal sklearn's LeaveOneOut CV of a cosine kNN."""
    X, y = data
    clf = CosineKNNClassifier(k_candidates=(1, 3, 7), weights=weights).fit(X, y)
    for k, score in clf.loo_scores_.items():
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights=weights)
        expected = cross_val_score(ref, normalize(X), y, cv=LeaveOneOut()).mean()
        assert score == pytest.approx(expected), k
    best = max(clf.loo_scores_.values())
    assert clf.k_ == min(k for k, s in clf.loo_scores_.items() if s == best)


def test_cosine_scale_invariance_labels_and_proba(data):
    X, y = data
    clf = make_knn(random_state=0).fit(X, y)
    pred = clf.predict(X * 7.5)  # cosine: scaling rows changes nothing
    np.testing.assert_array_equal(pred, clf.predict(X))
    assert clf.classes_.tolist() == ["cat", "dog", "owl"]
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (pred == y).mean() > 0.9
    y_int = np.where(y == "cat", 10, np.where(y == "dog", -1, 3))
    assert set(clone(clf).fit(X, y_int).predict(X)) <= {10, -1, 3}


def test_fixed_k_and_errors(data):
    X, y = data
    clf = CosineKNNClassifier(n_neighbors=4).fit(X, y)
    assert clf.k_ == 4 and clf.loo_scores_ is None
    with pytest.raises(ValueError, match="n_neighbors=500 but only 75 training rows"):
        CosineKNNClassifier(n_neighbors=500).fit(X, y)
    with pytest.raises(ValueError, match="weights must be"):
        CosineKNNClassifier(weights="cosine").fit(X, y)
    with pytest.raises(ValueError, match="k_candidates"):
        CosineKNNClassifier(k_candidates=()).fit(X, y)
    big = CosineKNNClassifier(k_candidates=(1, 3, 500)).fit(X, y)
    assert set(big.loo_scores_) == {1, 3}
