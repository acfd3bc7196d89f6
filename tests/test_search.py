"""run_search: inner CV on the training rows only, calibration after the search, valid spaces."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pytest
import tomllib
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline

from pipeline._knn import make_knn
from pipeline.classifiers import make_classifier
from pipeline.fit.search import (
    SEARCH_SPACES,
    as_classifier_params,
    check_space,
    format_toml,
    run_search,
    widen_space,
)
from tests._fit_helpers import blobs

#: Row ids each RowRecorder saw, per tag, per method ("fit" / "predict").
SEEN: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))


class RowRecorder(ClassifierMixin, BaseEstimator):
    """Canary: column 0 of X is the row id; every id seen in fit/predict is recorded.

    ``mode="means"`` predicts the nearest class mean of the other columns, ``"constant"``
    always the first class, so the search has a clear best.
    """

    def __init__(self, mode="means", tag="default"):
        self.mode = mode
        self.tag = tag

    def fit(self, X, y):
        X, y = np.asarray(X), np.asarray(y)
        SEEN[self.tag]["fit"].append(X[:, 0].astype(int))
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c, 1:].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, X):
        X = np.asarray(X)
        SEEN[self.tag]["predict"].append(X[:, 0].astype(int))
        if self.mode == "constant":
            proba = np.zeros((len(X), len(self.classes_)))
            proba[:, 0] = 1.0
            return proba
        d = ((X[:, None, 1:] - self.means_[None]) ** 2).sum(axis=2)
        e = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return e / e.sum(axis=1, keepdims=True)

    def decision_function(self, X):
        return np.log(self.predict_proba(X) + 1e-12)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


@pytest.fixture(scope="module")
def data():
    X, y = blobs(n_per_class=40, n_classes=3, dim=5, seed=7)
    ids = np.arange(len(y), dtype=float)[:, None]
    return np.hstack([ids, X]), np.array(["cat", "dog", "owl"])[y]


def test_canary_search_never_sees_test_rows(data):
    """Split rows into train and test; the search, its inner CV and the refit touch only the
    ids of the train rows, and the refit sees every one of them."""
    X, y = data
    rng = np.random.default_rng(0)
    test = rng.permutation(len(y))[:30]
    train = np.setdiff1d(np.arange(len(y)), test)
    X_poisoned = X.copy()
    X_poisoned[test, 1:] = np.nan  # were a test row used anywhere, scores would turn NaN
    pipe = Pipeline([("clf", RowRecorder(tag="canary"))])
    fitted, info = run_search(
        "canary",
        pipe,
        {"clf__mode": ["means", "constant"]},
        X_poisoned[train],
        y[train],
        cv=3,
        seed=0,
    )
    seen = SEEN["canary"]
    every = np.concatenate(seen["fit"] + seen["predict"])
    assert set(every.tolist()) <= set(train.tolist())
    assert not set(every.tolist()) & set(test.tolist())
    assert sorted(seen["fit"][-1].tolist()) == train.tolist()  # the refit: all train rows
    assert len(seen["fit"]) == 2 * 3 + 1  # 2 candidates x 3 folds + refit
    assert info["best_params"] == {"clf__mode": "means"}
    assert np.isfinite(info["cv_score"]) and info["cv_score"] > 0.9
    assert set(info) >= {"space", "best_params", "cv_score", "seconds"}
    assert fitted.named_steps["clf"].mode == "means"


def test_calibration_is_not_multiplied_by_the_search(data, caplog):
    X, y = data
    pipe = Pipeline(
        [("clf", CalibratedClassifierCV(RowRecorder(tag="calib"), cv=3, ensemble=False))]
    )
    with caplog.at_level(logging.INFO, logger="pipeline.fit.search"):
        fitted, info = run_search(
            "calib", pipe, {"clf__mode": ["constant", "means"]}, X, y, cv=3, seed=0
        )
    # plain search: 2 x 3 fits; then one calibrated fit: 3 calibration folds + 1 final fit
    assert len(SEEN["calib"]["fit"]) == 2 * 3 + 3 + 1
    assert info["calibrated_after"] and info["best_params"] == {"clf__mode": "means"}
    assert isinstance(fitted.named_steps["clf"], CalibratedClassifierCV)
    assert fitted.named_steps["clf"].estimator.mode == "means"
    np.testing.assert_allclose(fitted.predict_proba(X).sum(axis=1), 1.0)
    progress = [r.getMessage() for r in caplog.records if "fit " in r.getMessage()]
    assert len(progress) == 6 and "fit 6/6" in progress[-1]  # one line per scored fit


@pytest.mark.parametrize("method", ["grid", "halving"])
def test_real_svc_and_logreg_search(data, method, caplog):
    X, y = data
    X = X[:, 1:]
    svc, info = run_search(
        "svc",
        make_classifier("svc", calibration_cv=3, random_state=0),
        {"clf__C": [0.01, 10.0]},
        X,
        y,
        method=method,
    )
    assert info["best_params"] == {"clf__C": 10.0}
    assert svc.named_steps["clf"].estimator.C == 10.0
    assert (
        info["search_class"] == {"grid": "GridSearchCV", "halving": "HalvingGridSearchCV"}[method]
    )
    assert as_classifier_params(info["best_params"]) == {"C": 10.0}
    logreg, info = run_search(
        "logreg", make_classifier("logreg"), {"clf__C": [1e-5, 1.0]}, X, y, method=method
    )
    assert logreg.named_steps["clf"].C == 1.0 and info["cv_score"] > 0.9
    assert info["at_edge"] == []  # two candidates: no edge to speak of
    with caplog.at_level(logging.WARNING, logger="pipeline.fit.search"):
        _, info = run_search(
            "logreg", make_classifier("logreg"), {"clf__C": [1e-6, 1e-5, 1.0]}, X, y
        )
    assert info["at_edge"] == ["clf__C"]
    assert "edge of the searched values" in caplog.text and "[fit.search.logreg]" in caplog.text


def test_default_spaces_are_valid_and_round_trip_through_toml():
    parsed = tomllib.loads(format_toml(SEARCH_SPACES))["fit"]["search"]
    assert set(parsed) == {"logreg", "svc", "svc_approx", "nn", "xgboost", "knn"}
    for name, space in parsed.items():
        assert space == SEARCH_SPACES[name]
        est = make_knn() if name == "knn" else make_classifier(name)
        if name in ("svc", "svc_approx"):  # searched without calibration
            est = est.set_params(clf=est.named_steps["clf"].estimator)
        check_space(name, space, est)
        defaults = est.get_params()
        for param, values in space.items():  # the default is always a candidate
            assert defaults[param] in values, (name, param)
    nn = check_space("nn", {"clf__hidden_layer_sizes": [[256], [64, 32]]})
    assert nn == {"clf__hidden_layer_sizes": [(256,), (64, 32)]}


def test_bad_spaces_and_tiny_classes(data):
    X, y = data
    with pytest.raises(ValueError, match=r"\[fit.search.logreg\]: unknown parameter 'clf__Cx'"):
        run_search("logreg", make_classifier("logreg"), {"clf__Cx": [1.0]}, X, y)
    with pytest.raises(ValueError, match="non-empty list"):
        check_space("svc", {"clf__C": []})
    with pytest.raises(ValueError, match="method must be"):
        run_search("logreg", make_classifier("logreg"), {"clf__C": [1.0]}, X, y, method="x")
    y_one = y.copy()
    y_one[0] = "bat"
    with pytest.raises(ValueError, match="only 1 training row"):
        run_search("logreg", make_classifier("logreg"), {"clf__C": [1.0]}, X, y_one)


@pytest.mark.parametrize("method", ["grid", "halving"])
def test_max_rows_scores_on_a_subsample_and_refits_on_all(data, method):
    X, y = data
    tag = f"rows-{method}"
    pipe = Pipeline([("clf", RowRecorder(tag=tag))])
    fitted, info = run_search(
        "canary", pipe, {"clf__mode": ["means", "constant"]}, X, y, method=method, max_rows=60
    )
    fits = SEEN[tag]["fit"]
    assert max(len(ids) for ids in fits[:-1]) <= 60 * 2 // 3 + 1  # inner-CV training parts
    assert sorted(fits[-1].tolist()) == list(range(len(y)))  # the refit: every train row
    assert info["max_rows"] == 60 and info["best_params"] == {"clf__mode": "means"}
    assert fitted.named_steps["clf"].mode == "means"


class Knob(ClassifierMixin, BaseEstimator):
    """Accuracy set by a numeric parameter: ``0.3 + slope * log10(level)`` (clipped to
    [0, 1]) of the rows, by their id in column 0, are predicted right, the rest wrong. With
    ``slope > 0`` the largest level always wins, with ``slope < 0`` the smallest."""

    def __init__(self, level=1.0, slope=0.1):
        self.level = level
        self.slope = slope

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.y_ = dict(zip(np.asarray(X)[:, 0].astype(int).tolist(), np.asarray(y), strict=True))
        return self

    def predict(self, X):
        ids = np.asarray(X)[:, 0].astype(int)
        share = float(np.clip(0.3 + self.slope * np.log10(self.level), 0.0, 1.0))
        right = (ids % 100) < 100 * share
        truth = ids % len(self.classes_)  # the label of row id i is i % classes (see below)
        return np.where(
            right, self.classes_[truth], self.classes_[(truth + 1) % len(self.classes_)]
        )


def _knob_data(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(n, dtype=float)[:, None]
    return np.hstack([ids, np.zeros((n, 2))]), np.array(["a", "b", "c"])[np.arange(n) % 3]


def test_widening_follows_the_edge_up_to_the_bound():
    X, y = _knob_data()
    space = {"clf__level": [1.0, 10.0, 100.0]}  # the largest always wins
    _, info = run_search("knob", Pipeline([("clf", Knob())]), space, X, y, widen=5)
    # one log step (x10) per round, never past 100 x the configured maximum (1e4)
    assert info["space"] == {"clf__level": [1.0, 10.0, 100.0, 1000.0, 10000.0]}
    assert info["best_params"] == {"clf__level": 10000.0}
    assert info["widen"]["grown"] == 2 and info["widen"]["stopped"] == "bound"
    assert info["widen"]["initial_space"] == space
    assert info["at_edge"] == ["clf__level"]  # still at the edge: said so
    assert info["n_candidates"] == 5


def test_widening_downwards_stops_at_the_budget():
    X, y = _knob_data()
    pipe = Pipeline([("clf", Knob(slope=-0.05))])  # the smallest always wins
    _, info = run_search("knob", pipe, {"clf__level": [0.1, 1.0, 10.0]}, X, y, widen=1)
    assert info["space"]["clf__level"] == [0.01, 0.1, 1.0, 10.0]
    assert info["best_params"] == {"clf__level": 0.01}
    assert info["widen"]["grown"] == 1 and info["widen"]["stopped"] == "budget"


def test_no_widening_inside_the_range_or_when_off():
    X, y = _knob_data()
    pipe = Pipeline([("clf", Knob())])
    # saturated: levels >= 1e7 all score 1.0, the first (interior after one step) is kept
    _, info = run_search("knob", pipe, {"clf__level": [1e5, 1e6, 1e7]}, X, y, widen=3)
    assert info["widen"]["grown"] == 1 and info["widen"]["stopped"] == "interior"
    assert info["best_params"] == {"clf__level": 1e7} and info["at_edge"] == []
    _, info = run_search("knob", pipe, {"clf__level": [1.0, 10.0, 100.0]}, X, y, widen=0)
    assert info["widen"]["grown"] == 0 and info["widen"]["stopped"] == "off"
    assert info["at_edge"] == ["clf__level"]
    with pytest.raises(ValueError, match="widen must be an int >= 0"):
        run_search("knob", pipe, {"clf__level": [1.0]}, X, y, widen=-1)


def test_widening_respects_the_estimator_validation():
    # l1_ratio must lie in [0, 1]: the step past 1.0 (2.0) is refused, whatever the budget
    pipe = make_classifier("logreg", solver="saga", l1_ratio=0.5)
    space = {"clf__l1_ratio": [0.25, 0.5, 1.0]}
    assert widen_space(pipe, space, space, {"clf__l1_ratio": 1.0}) == (None, "bound")
    grid, reason = widen_space(pipe, space, space, {"clf__l1_ratio": 0.25})
    assert grid == {"clf__l1_ratio": [0.12]} and reason == "budget"  # 0.25 / 2, 2 digits
    assert widen_space(pipe, space, space, {"clf__l1_ratio": 0.5}) == (None, "interior")
