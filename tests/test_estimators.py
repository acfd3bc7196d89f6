"""TorchMLPClassifier, XGBoostClassifier and make_classifier as scikit-learn estimators."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline import TorchMLPClassifier, make_classifier
from pipeline._nystroem import DistinctNystroem
from pipeline.classifiers import CLASSIFIER_NAMES as CLASSIFIERS
from pipeline.ensemble import TiedEnsembleClassifier
from pipeline.estimators import XGBoostClassifier
from tests._fit_helpers import blobs


def _expected_failures(estimator) -> dict[str, str]:
    return {}  # every applicable check passes; kept for future, reasoned exceptions


@parametrize_with_checks(
    [
        TorchMLPClassifier(max_iter=20, random_state=0, device="cpu"),
        XGBoostClassifier(n_estimators=10, random_state=0, device="cpu"),
        DistinctNystroem(n_components=5, random_state=0),
        TiedEnsembleClassifier(
            [("logreg", LogisticRegression()), ("nb", GaussianNB())], random_state=0
        ),
        TiedEnsembleClassifier(
            [("logreg", LogisticRegression()), ("nb", GaussianNB())],
            combine="stack",
            random_state=0,
        ),
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def data():
    X, y = blobs(n_per_class=30, n_classes=3, dim=16, seed=1)
    return X, np.array(["cat", "dog", "owl"])[y]


def _mlp(**kw):
    return TorchMLPClassifier(**{"max_iter": 30, "random_state": 0, "device": "cpu", **kw})


def test_mlp_string_labels_and_proba(data):
    X, y = data
    clf = _mlp().fit(X, y)
    assert clf.classes_.tolist() == ["cat", "dog", "owl"]
    assert clf.n_features_in_ == 16
    assert clf.device_ == torch.device("cpu")
    assert clf.n_iter_ == len(clf.loss_curve_) >= 1
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert isinstance(clf.module_, torch.nn.Sequential) and not clf.module_.training
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    pred = clf.predict(X)
    assert pred.dtype == y.dtype
    assert set(pred) <= set(y)
    assert (pred == y).mean() > 0.95


def test_mlp_predictions_do_not_depend_on_the_other_rows_of_the_batch():
    """A row's probabilities are the same whichever rows are predicted with it (issue 11:
    float32 matrix products gave subsets differences of up to 4.5e-8)."""
    from sklearn.utils.estimator_checks import check_methods_subset_invariance

    rng = np.random.default_rng(0)
    X = rng.normal(size=(97, 64)).astype(np.float32)
    y = rng.integers(0, 3, len(X))
    clf = TorchMLPClassifier(hidden_layer_sizes=(100,), max_iter=5, random_state=0, device="cpu")
    full = clf.fit(X, y).predict_proba(X)
    for n in range(1, len(X) + 1):
        for start in {0, (len(X) - n) // 2, len(X) - n}:
            part = clf.predict_proba(X[start : start + n])
            np.testing.assert_allclose(part, full[start : start + n], rtol=0, atol=1e-12)
    check_methods_subset_invariance("TorchMLPClassifier", TorchMLPClassifier(device="cpu"))


def test_mlp_int_labels(data):
    X, y = data
    y_int = np.where(y == "cat", 7, np.where(y == "dog", -3, 100))
    pred = _mlp().fit(X, y_int).predict(X)
    assert set(pred) == {7, -3, 100}


def test_mlp_layers_and_linear_head(data):
    X, y = data
    module = _mlp(hidden_layer_sizes=(8, 4), dropout=0.5).fit(X, y).module_
    kinds = [type(m).__name__ for m in module]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    linear = _mlp(hidden_layer_sizes=()).fit(X, y).module_
    assert [type(m).__name__ for m in linear] == ["Linear"]


def test_mlp_deterministic_and_no_global_rng_side_effects(data):
    X, y = data
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = _mlp(dropout=0.3, early_stopping=True, validation_fraction=0.2).fit(X, y)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # global state must not matter
    b = _mlp(dropout=0.3, early_stopping=True, validation_fraction=0.2).fit(X, y)
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = _mlp(dropout=0.3, random_state=1).fit(X, y)
    assert c.loss_curve_ != a.loss_curve_


def test_mlp_early_stopping(data):
    X, y = data
    clf = _mlp(max_iter=500, early_stopping=True, n_iter_no_change=3).fit(X, y)
    assert clf.n_iter_ < 500
    assert len(clf.validation_loss_curve_) == clf.n_iter_
    assert clf.best_loss_ == pytest.approx(min(clf.validation_loss_curve_))


def test_mlp_pickle_roundtrip(data):
    X, y = data
    clf = _mlp().fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


@pytest.mark.parametrize(
    ("param", "value", "match"),
    [
        ("dropout", 1.0, "dropout"),
        ("alpha", -1, "alpha"),
        ("batch_size", 0, "batch_size"),
        ("max_iter", 0, "max_iter"),
        ("hidden_layer_sizes", (0,), "hidden_layer_sizes"),
        ("validation_fraction", 1.5, "validation_fraction"),
        ("device", "tpu", "device"),
    ],
)
def test_mlp_bad_params_raise_at_fit(data, param, value, match):
    X, y = data
    clf = _mlp(**{param: value})  # __init__ never validates
    assert clf.get_params()[param] == value
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_mlp_cuda_unavailable_error(data):
    X, y = data
    with pytest.raises(ValueError, match="TorchMLPClassifier: device: .*no CUDA GPU is available"):
        _mlp(device="cuda").fit(X, y)


def test_mlp_one_class_error(data):
    X, _ = data
    with pytest.raises(ValueError, match="at least 2 classes"):
        _mlp().fit(X, np.array(["cat"] * len(X)))


def test_clone_pipeline_gridsearch(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), _mlp(max_iter=10))
    cloned = clone(pipe)
    assert cloned.get_params()["torchmlpclassifier__max_iter"] == 10
    search = GridSearchCV(
        pipe, {"torchmlpclassifier__hidden_layer_sizes": [(8,), (16,)]}, cv=2, n_jobs=1
    ).fit(X, y)
    assert search.best_params_["torchmlpclassifier__hidden_layer_sizes"] in [(8,), (16,)]
    assert search.predict(X[:3]).tolist() == search.best_estimator_.predict(X[:3]).tolist()
    scores = cross_val_score(clone(pipe), X, y, cv=3)
    assert scores.mean() > 0.9


FAST = {
    "nn": {"max_iter": 20, "device": "cpu"},
    "svc": {},
    "xgboost": {"n_estimators": 20, "device": "cpu"},
    "logreg": {},
    "knn": {},
    "svc_approx": {"n_components": 64, "calibration_cv": 3},
    "ensemble": {"candidates": ["logreg", "knn"], "cv": 2},
}


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_make_classifier_predicts_original_labels(data, name):
    X, y = data
    clf = make_classifier(name, random_state=0, **FAST[name])
    assert clf.steps[-1][0] == "clf"
    clf.fit(X, y)
    pred = clf.predict(X)
    assert set(pred) <= {"cat", "dog", "owl"}
    assert (pred == y).mean() > 0.9
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert clf.classes_.tolist() == ["cat", "dog", "owl"]


def test_make_classifier_params_and_errors():
    assert make_classifier("svc", C=10).named_steps["clf"].estimator.C == 10
    assert make_classifier("svc", probability=False).named_steps["clf"].C == 1.0
    assert make_classifier("logreg", C=0.5).named_steps["clf"].C == 0.5
    assert make_classifier("nn", alpha=0.1).named_steps["clf"].alpha == 0.1
    assert make_classifier("xgboost", max_depth=5).named_steps["clf"].max_depth == 5
    with pytest.raises(ValueError, match="valid options: nn, svc, xgboost, logreg"):
        make_classifier("kmeans")
    with pytest.raises(ValueError, match="unknown parameter.*'Cx'"):
        make_classifier("svc", Cx=1)


def test_xgboost_binary_int_labels_and_early_stopping():
    X, y = blobs(n_per_class=40, n_classes=2, dim=8, seed=3)
    labels = np.where(y == 0, 10, 20)
    clf = XGBoostClassifier(n_estimators=200, early_stopping_rounds=5, random_state=0).fit(
        X, labels
    )
    assert set(clf.predict(X)) == {10, 20}
    assert clf.best_iteration_ is not None and clf.best_iteration_ < 200
    # device="auto" resolves to this machine's device, and the booster was built for it.
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert clf.device_ == expected
    assert clf.estimator_.get_params()["device"] == expected
