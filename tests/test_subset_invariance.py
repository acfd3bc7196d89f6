"""A row's predictions do not depend on the rows predicted with it, for every registry
classifier, on data with duplicate rows (scikit-learn's ``check_methods_subset_invariance``,
extended: blocks of 1, 3 and 7 rows against one block, for ``predict``, ``predict_proba`` and
``decision_function``).

What each classifier can promise follows from its arithmetic. Elementwise operations
(scaling, ``exp``, division, a sigmoid, a tree's comparisons) are correctly rounded, so they
give the same result for the same operands whatever else is in the batch. A matrix product
does not: the BLAS kernel (which depends on the CPU: ``OPENBLAS_CORETYPE``) blocks it
differently for different numbers of rows, so its sums are rounded in a different order.
Higham's bound (Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.13) for a
computed product of ``A`` (n columns) and ``B``, in a format of unit roundoff ``u``::

    |fl(A @ B) - A @ B| <= gamma(n) * |A| @ |B|,        gamma(n) = n u / (1 - n u)

holds for any summation order. Two batchings of the same rows are each within the bound of
the exact result, so they differ by at most twice the bound, carried through the rest of the
classifier to first order (``_bound_*`` below, one per classifier). Hence:

- ``svc`` (libsvm: one dot product per row and support vector), ``xgboost`` (each row's trees
  summed in tree order) and ``knn`` (vote shares): exact, 0. ``knn``'s neighbours come from a
  matrix product, so it is exact on rows whose k-th and (k+1)-th cosine distances are more
  than twice that product's bound apart; rows nearer a tie than that are left out (counted).
- ``logreg`` (float32 product), ``nn`` (float64 copy of the head) and ``svc_approx`` (float64
  Nystroem map): the bound carried through. It must itself be small, which is the classifier's
  promise: below :data:`PROMISE` (1e-5 for logreg's float32 product of O(1) terms, 1e-9 for the
  float64 ones).

The data holds rows twice with the same label and twice with another label, and test rows that
repeat training rows and each other. scikit-learn's ``Nystroem`` drew two identical rows as
components there: its ``normalization_`` reached 5e5 and a float32 product turned a rounding
unit into 0.02 of a probability (issue 23), which this test catches (its bound for that map is
not below 1e-9, and neither are the differences).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.preprocessing import normalize

from pipeline.classifiers import REGISTRY, make_classifier

from ._fit_helpers import CLASS_NAMES, blobs

SMALL = {
    "nn": {"max_iter": 20},
    "svc": {"calibration_cv": 2},
    "xgboost": {"n_estimators": 20, "device": "cpu"},
    "svc_approx": {"n_components": 64, "calibration_cv": 2},
    # alpha ~0: every candidate the evidence does not reject outright is a member
    "ensemble": {"candidates": ["logreg", "knn", "xgboost"], "cv": 2, "alpha": 1e-9},
}
#: The most a probability (or decision value) may move with the batch: each classifier's promise.
PROMISE = {
    "svc": 0.0,
    "xgboost": 0.0,
    "knn": 0.0,
    # float32 product: gamma(13) = 7.7e-7 times sum |x w| (3.4 at most here), float32 softmax
    "logreg": 1e-5,
    "nn": 1e-9,  # float64 head
    "svc_approx": 1e-9,  # float64 map
    "ensemble": 1e-5,  # its members' weighted mean: logreg's float32 promise at most
}
BLOCKS = (1, 3, 7)
METHODS = ("predict_proba", "decision_function", "predict")


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blobs; 15 rows again with their label, 10 again under the next class; test rows: those
    25, 4 of them a third time, and 10 new rows."""
    X, labels = blobs(n_per_class=40, n_classes=3, dim=12, seed=5, spread=0.8)
    rng = np.random.default_rng(0)
    same = rng.choice(len(X), 15, replace=False)
    other = rng.choice(len(X), 10, replace=False)
    X_train = np.concatenate([X, X[same], X[other]])
    labels = np.concatenate([labels, labels[same], (labels[other] + 1) % 3])
    new = X[:10] + rng.normal(size=(10, X.shape[1])).astype(np.float32)
    X_test = np.concatenate([X[same], X[other], X[other[:4]], new])
    return X_train, np.asarray(CLASS_NAMES)[labels], X_test


def _gamma(n: int, dtype: np.dtype) -> float:
    """Higham's gamma(n) for a product summing n terms in ``dtype``."""
    nu = n * float(np.finfo(dtype).eps) / 2
    return nu / (1 - nu)


def _unit(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def _softmax_bound(error: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A softmax's Jacobian has infinity norm max 2 p (1 - p) <= 1/2; plus its own rounding
    (exp, sum, division: a few units, equal on both sides for equal inputs)."""
    return 0.5 * error.max(axis=1, keepdims=True) + 4 * _unit(dtype)


def _bound_logreg(pipe, X):
    """decision = scaled @ coef.T + intercept in the coefficients' dtype; proba = softmax."""
    scaled = pipe.named_steps["scale"].transform(X)
    clf = pipe.named_steps["clf"]
    dtype = np.result_type(scaled, clf.coef_)
    n = scaled.shape[1] + 1
    decision = _gamma(n, dtype) * (np.abs(scaled) @ np.abs(clf.coef_).T + np.abs(clf.intercept_))
    return _softmax_bound(decision, dtype), decision


def _bound_nn(pipe, X):
    """The head's Linear layers (float64 copy, bias added in the product), ReLU (1-Lipschitz),
    dropout (identity in eval); proba = softmax of the logits."""
    import torch

    h = pipe.named_steps["scale"].transform(X).astype(np.float64)
    error = np.zeros_like(h)
    for layer in pipe.named_steps["clf"].module_:
        if isinstance(layer, torch.nn.Linear):
            W = layer.weight.detach().double().cpu().numpy()
            b = layer.bias.detach().double().cpu().numpy()
            rounding = _gamma(W.shape[1] + 1, np.float64) * (np.abs(h) @ np.abs(W).T + np.abs(b))
            error = error @ np.abs(W).T + rounding
            h = h @ W.T + b
        elif isinstance(layer, torch.nn.ReLU):
            h = np.maximum(h, 0)
    return _softmax_bound(error, np.float64), None


def _bound_svc_approx(pipe, X):
    """scaled -> Nystroem: D = |x|^2 + |c|^2 - 2 x.c, K = exp(-gamma D), map = K @ N.T (in the
    map's dtype) -> LinearSVC decision z = map @ w.T + b -> per class q = expit(-(a z + b))
    (slope <= |a|/4) -> p = q / sum(q)."""
    scaled = pipe.named_steps["scale"].transform(X).astype(np.float64)
    nys = pipe.named_steps["map"]
    dtype = nys.normalization_.dtype
    C, N = nys.components_.astype(np.float64), nys.normalization_.astype(np.float64)
    gamma = nys.gamma if nys.gamma is not None else 1.0 / scaled.shape[1]
    norms = np.linalg.norm(scaled, axis=1)[:, None] + np.linalg.norm(C, axis=1)[None, :]
    # The distances: float64 (float32 input is upcast by scikit-learn), then rounded once to
    # the map's dtype (a relative unit of D, gamma D u in K).
    dist_error = _gamma(scaled.shape[1] + 3, np.float64) * norms**2
    sq = np.maximum((scaled**2).sum(1)[:, None] + (C**2).sum(1)[None, :] - 2 * scaled @ C.T, 0)
    K = np.exp(-gamma * sq)
    k_error = (gamma * dist_error + (gamma * sq + 2) * _unit(dtype)) * K
    mapped = K @ N.T
    m_error = k_error @ np.abs(N).T + _gamma(N.shape[1], dtype) * (K @ np.abs(N).T)
    calibrated = pipe.named_steps["clf"].calibrated_classifiers_[0]
    svm = calibrated.estimator
    w, b = svm.coef_, svm.intercept_
    z_error = m_error @ np.abs(w).T + _gamma(w.shape[1] + 1, np.float64) * (
        np.abs(mapped) @ np.abs(w).T + np.abs(b)
    )
    z = mapped @ w.T + b
    slopes = np.array([abs(c.a_) for c in calibrated.calibrators]) / 4
    q = np.column_stack(
        [1 / (1 + np.exp(c.a_ * z[:, i] + c.b_)) for i, c in enumerate(calibrated.calibrators)]
    )
    q_error = slopes * z_error + 2 * _unit(np.float64)
    total = q.sum(axis=1, keepdims=True)
    p = q / total
    p_error = (q_error + p * q_error.sum(axis=1, keepdims=True)) / total + 2 * _unit(np.float64)
    return p_error, None


def _bound_ensemble(pipe, X):
    """The weighted mean of the members' probabilities (``weights_``): each member's bound
    carried with its weight, plus the mean's own float64 rounding (a sum of len(members))."""
    ensemble = pipe.named_steps["clf"]
    assert ensemble.weights_ is not None, "the default combine is the vote"
    total = np.zeros((len(X), 1))
    for name, member, weight in zip(
        ensemble.names_, ensemble.estimators_, ensemble.weights_, strict=True
    ):
        member_bound, _ = BOUNDS[name](member, X)
        total = total + weight * member_bound.max(axis=1, keepdims=True)
    return total + _gamma(len(ensemble.names_), np.float64), None


def _exact(pipe, X):
    return np.zeros((len(X), 1)), np.zeros((len(X), 1))


BOUNDS = {
    "svc": _exact,
    "xgboost": _exact,
    "knn": _exact,
    "logreg": _bound_logreg,
    "nn": _bound_nn,
    "svc_approx": _bound_svc_approx,
    "ensemble": _bound_ensemble,
}


def _knn_tied_rows(pipe, X) -> np.ndarray:
    """Rows whose k-th and (k+1)-th cosine distances are within twice the distance product's
    bound (unit rows: gamma(d) each; both distances move)."""
    clf = pipe.named_steps["clf"]
    dist, _ = clf.knn_.kneighbors(normalize(X), n_neighbors=clf.k_ + 1)
    slack = 4 * _gamma(X.shape[1], np.float64 if X.dtype == np.float64 else np.float32)
    return dist[:, clf.k_] - dist[:, clf.k_ - 1] <= slack


@pytest.fixture(scope="module")
def fitted():
    X, y, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the tiny fits
        return {
            name: make_classifier(name, random_state=0, **SMALL.get(name, {})).fit(X, y)
            for name in REGISTRY
        }


def test_every_registry_classifier_has_a_derived_tolerance():
    assert set(PROMISE) == set(BOUNDS) == set(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_predictions_do_not_depend_on_the_other_rows_of_the_batch(fitted, name):
    _, _, X = _data()
    pipe = fitted[name]
    proba_bound, decision_bound = BOUNDS[name](pipe, X)
    rows = np.ones(len(X), dtype=bool)
    if name == "knn":  # neighbours within rounding of a tie: either may be taken
        rows = ~_knn_tied_rows(pipe, X)
        assert rows.sum() >= len(X) // 2, rows.sum()
    if name == "ensemble":  # so for a knn member
        ensemble = pipe.named_steps["clf"]
        assert len(ensemble.names_) >= 2, ensemble.names_
        for member_name, member in zip(ensemble.names_, ensemble.estimators_, strict=True):
            if member_name == "knn":
                rows &= ~_knn_tied_rows(member, X)
        assert rows.sum() >= len(X) // 2, rows.sum()
    whole = {m: getattr(pipe, m)(X) for m in METHODS if hasattr(pipe, m)}
    assert {"predict", "predict_proba"} <= set(whole)
    observed = 0.0
    for block in BLOCKS:
        for method, full in whole.items():
            parts = np.concatenate(
                [getattr(pipe, method)(X[i : i + block]) for i in range(0, len(X), block)]
            )
            if method == "predict":
                # Labels may differ only where the two largest outputs are within the bound.
                scores = whole["decision_function" if name == "logreg" else "predict_proba"]
                bound = decision_bound if name == "logreg" else proba_bound
                top2 = np.sort(scores, axis=1)[:, -2:]
                decided = rows & (top2[:, 1] - top2[:, 0] > 2 * bound.max(axis=1))
                np.testing.assert_array_equal(parts[decided], full[decided], err_msg=name)
                assert decided.sum() >= len(X) // 2, (
                    f"{name}: labels beyond rounding of a tie on {decided.sum()} of {len(X)} rows"
                )
                continue
            bound = proba_bound if method == "predict_proba" else decision_bound
            difference = np.abs(parts - full)[rows]
            observed = max(observed, float(difference.max()))
            allowed = 2 * bound[rows]
            assert np.all(difference <= allowed), (
                f"{name}.{method} in blocks of {block}: differs by up to "
                f"{difference.max():.3g} (allowed by its arithmetic: {allowed.max():.3g})"
            )
    # The bound is the classifier's promise only if it is small on data with duplicates.
    worst = max(float(b.max()) for b in (proba_bound, decision_bound) if b is not None)
    assert worst <= PROMISE[name], (
        f"{name}: its arithmetic bounds a row's batch dependence by {worst:.3g} on this data "
        f"(observed: {observed:.3g}), above its promise {PROMISE[name]:g}"
    )
