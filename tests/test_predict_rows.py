"""``predict_rows`` takes the labels from the probabilities (one pass) only for classifiers
whose ``predict`` is exactly ``classes_[argmax(predict_proba)]``, ties included; every other
classifier keeps its own ``predict``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from pipeline.classifiers import REGISTRY, make_classifier
from pipeline.fit.streaming import predict_rows, predicts_argmax_proba
from pipeline.fit.views import ViewsClassifier

from ._fit_helpers import CLASS_NAMES, blobs
from .test_subset_invariance import BOUNDS

#: Per registry classifier: is its ``predict`` the arg-max of its ``predict_proba``?
#: (logreg: no, it predicts from the decision function; see the counterexamples below.)
ONE_PASS = {
    "nn": True,
    "svc": True,  # CalibratedClassifierCV
    "xgboost": True,
    "logreg": False,
    "knn": True,
    "svc_approx": True,  # CalibratedClassifierCV after a Nystroem map
    "ensemble": True,  # the arg-max of its mean probabilities
}
SMALL = {
    "nn": {"max_iter": 5, "random_state": 0},
    "ensemble": {"candidates": ["logreg", "knn"], "cv": 2, "random_state": 0},
    "svc": {"calibration_cv": 2},
    "xgboost": {"n_estimators": 5, "device": "cpu", "random_state": 0},
    "svc_approx": {"n_components": 20, "calibration_cv": 2, "random_state": 0},
    "knn": {"n_neighbors": 2},  # an even k: votes tie
    "knn_distance": {"n_neighbors": 2, "weights": "distance"},
}
CASES = [*ONE_PASS, "knn_distance"]
N_TWINS = 6  # rows 0, 10, ..., 50 of the 60 blobs
#: Probabilities with ties at every position: the first maximum is 0, 0, 1, 0, 2, 0, 0.
TIED = np.array(
    [
        [1 / 3, 1 / 3, 1 / 3],
        [0.375, 0.375, 0.25],
        [0.25, 0.375, 0.375],
        [0.375, 0.25, 0.375],
        [0.25, 0.25, 0.5],
        [0.5, 0.25, 0.25],
        [0.5, 0.5, 0.0],
    ]
)


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping blobs plus every tenth row again under the next class: duplicate rows with
    different labels, so votes and probabilities tie where a classifier can tie. Test rows:
    the duplicated ones and a few others."""
    X, labels = blobs(n_per_class=20, n_classes=3, dim=6, seed=3, spread=0.8)
    twins = np.arange(0, len(X), 10)
    assert len(twins) == N_TWINS
    X = np.concatenate([X, X[twins]])
    labels = np.concatenate([labels, (labels[twins] + 1) % 3])
    y = np.asarray(CLASS_NAMES)[labels]
    return X, y, np.concatenate([X[twins], X[5:60:7]])


@pytest.fixture(scope="module")
def fitted():
    X, y, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the tiny fits
        return {
            case: make_classifier(case.split("_distance")[0], **SMALL.get(case, {})).fit(X, y)
            for case in CASES
        }


def test_every_registry_classifier_is_decided():
    assert set(ONE_PASS) == set(REGISTRY)


@pytest.mark.parametrize("case", CASES)
def test_the_tag_says_what_each_classifier_does(fitted, case):
    final = fitted[case].steps[-1][1]
    assert predicts_argmax_proba(final) == ONE_PASS[case.split("_distance")[0]]


@pytest.mark.parametrize("case", CASES)
def test_labels_and_probabilities_equal_predict_and_predict_proba(fitted, case):
    """On rows with tied votes (knn, k = 2: 0.5 / 0.5 on every duplicated row), in blocks of
    3 rows and in one block: the labels are predict's, the probabilities predict_proba's."""
    _, _, X_test = _data()
    pipe = fitted[case]
    expected = pipe.predict(X_test)
    if case.startswith("knn"):  # the data does tie: half the votes each on a twin
        assert (pipe.predict_proba(X_test[:N_TWINS]) == 0.5).sum() == 2 * N_TWINS
    for block_rows in (3, len(X_test)):
        labels, proba = predict_rows(pipe, X_test, block_rows=block_rows)
        np.testing.assert_array_equal(labels, expected)
        assert labels.dtype == expected.dtype
        # Each block's probabilities are predict_proba's for those rows, which may differ
        # from the whole set's by what the classifier's arithmetic allows (logreg: a float32
        # product; see test_subset_invariance).
        bound = BOUNDS[case.split("_distance")[0]](pipe, X_test)[0]
        difference = np.abs(proba - pipe.predict_proba(X_test))
        assert np.all(difference <= 2 * bound), (block_rows, difference.max())


@pytest.mark.parametrize("case", [c for c in CASES if ONE_PASS[c.split("_distance")[0]]])
def test_predict_is_the_first_argmax_of_predict_proba_ties_included(fitted, case, monkeypatch):
    """The property itself: with ``predict_proba`` returning tied rows, ``predict`` returns
    the first most probable class, and ``predict_rows`` never calls ``predict``."""
    pipe = fitted[case]
    final = pipe.steps[-1][1]
    X = _data()[2][: len(TIED)]
    monkeypatch.setattr(final, "predict_proba", lambda Xt: TIED.copy())
    first = np.asarray(final.classes_)[[0, 0, 1, 0, 2, 0, 0]]
    np.testing.assert_array_equal(pipe.predict(X), first)

    def no_predict(Xt):
        raise AssertionError("predict called")

    monkeypatch.setattr(final, "predict", no_predict)
    labels, proba = predict_rows(pipe, X)
    np.testing.assert_array_equal(labels, first)
    np.testing.assert_array_equal(proba, TIED)


def test_the_views_wrapper_predicts_the_argmax_of_its_mean_probabilities(fitted):
    X, y, X_test = _data()
    views = ViewsClassifier(make_classifier("logreg"), views=("flip",)).fit(np.hstack([X, X]), y)
    wide = np.hstack([X_test, X_test[::-1]])
    assert predicts_argmax_proba(views)
    labels, proba = predict_rows(views, wide, block_rows=4)
    np.testing.assert_array_equal(labels, views.predict(wide))
    np.testing.assert_array_equal(labels, views.classes_[views.predict_proba(wide).argmax(axis=1)])


def _logreg_with(coef: list[list[float]]) -> LogisticRegression:
    """A LogisticRegression on one feature whose weights are set by hand (no intercept)."""
    n = max(2, len(coef))
    clf = LogisticRegression().fit(np.arange(2.0 * n)[:, None], np.repeat(list("abc"[:n]), 2))
    clf.coef_, clf.intercept_ = np.asarray(coef), np.zeros(len(coef))
    return clf


@pytest.mark.parametrize(
    ("coef", "x"),
    [
        ([[1.0]], 1e-20),  # binary: score 1e-20 > 0 predicts "b"; expit gives 0.5 / 0.5
        ([[0.0], [1.0], [-1.0]], 1e-17),  # scores 0, 1e-17, -1e-17: softmax rounds to 1/3 each
    ],
)
def test_logreg_predict_differs_from_the_argmax_so_it_keeps_calling_predict(coef, x):
    clf = _logreg_with(coef)
    X = np.array([[x]])
    assert clf.predict(X).tolist() == ["b"]
    assert clf.classes_[clf.predict_proba(X).argmax(axis=1)].tolist() == ["a"]  # the finding
    assert not predicts_argmax_proba(clf)
    for fitted in (clf, Pipeline([("clf", clf)])):
        labels, proba = predict_rows(fitted, X)
        assert labels.tolist() == ["b"]  # predict's label, not the arg-max
        np.testing.assert_array_equal(proba, clf.predict_proba(X))


def test_registry_logreg_calls_predict_once_per_block_and_transforms_once(fitted, monkeypatch):
    pipe = fitted["logreg"]
    scaler, final = pipe.steps[0][1], pipe.steps[-1][1]
    calls = {"predict": 0, "transform": 0}

    def counted(obj, method):
        original = getattr(obj, method)

        def wrapper(Xt):
            calls[method] += 1
            return original(Xt)

        monkeypatch.setattr(obj, method, wrapper)

    counted(final, "predict")
    counted(scaler, "transform")
    X_test = _data()[2]
    labels, _ = predict_rows(pipe, X_test, block_rows=5)
    blocks = -(-len(X_test) // 5)
    assert calls == {"predict": blocks, "transform": blocks}
    np.testing.assert_array_equal(labels, pipe.predict(X_test))


def test_svc_with_platt_scaling_is_not_trusted():
    """SVC(probability=True) predicts from its decision function, not from its Platt-scaled
    probabilities: they disagree on some rows, and predict_rows keeps predict's labels."""
    X, y = blobs(n_per_class=30, n_classes=3, dim=6, seed=1, spread=0.7)  # 5 rows disagree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # probability=True is deprecated in scikit-learn 1.9
        svc = SVC(probability=True, random_state=0).fit(X, y)
        assert not predicts_argmax_proba(svc)
        assert predicts_argmax_proba(CalibratedClassifierCV(SVC()))
        argmax = svc.classes_[svc.predict_proba(X).argmax(axis=1)]
        assert (argmax != svc.predict(X)).any()
        np.testing.assert_array_equal(predict_rows(svc, X, block_rows=7)[0], svc.predict(X))
