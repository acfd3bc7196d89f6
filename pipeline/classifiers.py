"""The classifier registry: every stage-two classifier by name, with how to build it.

``fit`` (``--clf`` and its help), the config's ``[fit.<name>]`` tables and the docs take the
names from :data:`REGISTRY`; :func:`make_classifier` builds one. Adding a classifier is an entry
here plus its ``[fit.<name>]`` table in ``pipeline/default.toml`` (the CLI's defaults, checked
against this registry by the tests) and its field in :class:`~pipeline.config.FitConfig`.

Importing this module imports neither scikit-learn nor torch: each builder imports what it
needs when called, so ``python -m pipeline.fit --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .config import default_values

__all__ = [
    "ALL_CLASSIFIERS",
    "CLASSIFIER_NAMES",
    "ENSEMBLE_CANDIDATES",
    "REGISTRY",
    "ClassifierEntry",
    "classifier_params",
    "default_params",
    "make_classifier",
]


@dataclasses.dataclass(frozen=True)
class ClassifierEntry:
    """One classifier: ``final(**params)`` builds the last step, ``params()`` names what it
    accepts; ``scaled`` puts a StandardScaler first; ``in_all`` runs it under ``--clf all``."""

    name: str
    summary: str
    final: Callable[..., Any]
    params: Callable[[], set[str]]
    scaled: bool = True
    in_all: bool = True


# Builders import scikit-learn, and the estimators module (which imports torch), on call.


def _nn(**params: Any) -> Any:
    from .estimators import TorchMLPClassifier  # lazy: torch

    return TorchMLPClassifier(**params)


def _nn_params() -> set[str]:
    from .estimators import TorchMLPClassifier  # lazy: torch

    return set(TorchMLPClassifier().get_params())


def _svc(probability: bool = True, calibration_cv: int = 5, **params: Any) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    svc = SVC(**{"kernel": "rbf", **params})
    if not probability:
        return svc
    # SVC(probability=True) is deprecated since scikit-learn 1.9: this is its replacement.
    return CalibratedClassifierCV(svc, ensemble=False, cv=calibration_cv)


def _svc_params() -> set[str]:
    from sklearn.svm import SVC

    return set(SVC().get_params()) | {"probability", "calibration_cv"}


def _xgboost(**params: Any) -> Any:
    from .estimators import XGBoostClassifier  # lazy: torch

    return XGBoostClassifier(**params)


def _xgboost_params() -> set[str]:
    from .estimators import XGBoostClassifier  # lazy: torch

    return set(XGBoostClassifier().get_params())


def _logreg(**params: Any) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(**{"max_iter": 1000, **params})


def _logreg_params() -> set[str]:
    from sklearn.linear_model import LogisticRegression

    return set(LogisticRegression().get_params())


def _knn(random_state: Any = None, **params: Any) -> Any:
    """``random_state`` is accepted for fit's common parameters and ignored (deterministic)."""
    from ._knn import CosineKNNClassifier  # lazy: sklearn

    return CosineKNNClassifier(**params)


def _knn_params() -> set[str]:
    from ._knn import CosineKNNClassifier  # lazy: sklearn

    return set(CosineKNNClassifier().get_params()) | {"random_state"}


def _svc_approx(
    C: float = 1.0,
    gamma: float | None = None,
    n_components: int = 1024,
    class_weight: Any = None,
    calibration_cv: int = 5,
    random_state: Any = None,
) -> Any:
    """Nystroem RBF feature map + linear SVM: approximates ``svc`` at linear cost in rows.

    ``gamma=None`` is ``1 / n_features``, which after standardisation equals SVC's
    ``gamma="scale"``. The map is :class:`~pipeline._nystroem.DistinctNystroem` (distinct
    components, float64), so a row's output does not depend on the batch or the BLAS kernel.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline
    from sklearn.svm import LinearSVC

    from ._nystroem import DistinctNystroem  # lazy: sklearn

    svm = LinearSVC(C=C, class_weight=class_weight, random_state=random_state)
    nystroem = DistinctNystroem(gamma=gamma, n_components=n_components, random_state=random_state)
    return Pipeline(
        [
            ("map", nystroem),
            ("clf", CalibratedClassifierCV(svm, ensemble=False, cv=calibration_cv)),
        ]
    )


def _svc_approx_params() -> set[str]:
    return set(inspect.signature(_svc_approx).parameters)


#: The candidates of ``ensemble`` unless told otherwise: the other classifiers of ``--clf all``.
ENSEMBLE_CANDIDATES = ("nn", "svc", "xgboost", "logreg", "knn")


def _ensemble(
    candidates: Any = ENSEMBLE_CANDIDATES,
    cv: int = 3,
    alpha: float = 0.05,
    combine: str = "vote",
    max_rows: int | None = None,
    random_state: Any = None,
) -> Any:
    """:class:`~pipeline.ensemble.TiedEnsembleClassifier` of ``candidates`` (registry names),
    each built with its ``[fit.<name>]`` defaults (``fit`` gives it the run's own, searched
    ones)."""
    from .ensemble import TiedEnsembleClassifier  # lazy: sklearn

    unknown = [c for c in candidates if c not in REGISTRY or c == "ensemble"]
    if unknown or not candidates:
        raise ValueError(
            f"ensemble candidates must be classifier names other than ensemble, got "
            f"{list(candidates)!r}; valid: {', '.join(n for n in REGISTRY if n != 'ensemble')}"
        )
    estimators = [
        (c, make_classifier(c, **{**classifier_params(c), "random_state": random_state}))
        for c in candidates
    ]
    return TiedEnsembleClassifier(
        estimators, cv=cv, alpha=alpha, combine=combine, max_rows=max_rows,
        random_state=random_state,
    )  # fmt: skip


def _ensemble_params() -> set[str]:
    return set(inspect.signature(_ensemble).parameters)


REGISTRY: dict[str, ClassifierEntry] = {
    entry.name: entry
    for entry in (
        ClassifierEntry("nn", "StandardScaler + TorchMLPClassifier (MLP head)", _nn, _nn_params),
        ClassifierEntry("svc", "StandardScaler + calibrated RBF SVC", _svc, _svc_params),
        ClassifierEntry(
            "xgboost", "XGBoostClassifier (hist trees)", _xgboost, _xgboost_params, scaled=False
        ),
        ClassifierEntry("logreg", "StandardScaler + LogisticRegression", _logreg, _logreg_params),
        ClassifierEntry(
            "knn",
            "cosine k-nearest-neighbours, k by leave-one-out",
            _knn,
            _knn_params,
            scaled=False,
        ),
        ClassifierEntry(
            "svc_approx",
            "StandardScaler + Nystroem map + calibrated LinearSVC",
            _svc_approx,
            _svc_approx_params,
            in_all=False,
        ),
        ClassifierEntry(  # last: under --clf all it takes the other classifiers' choices
            "ensemble",
            "soft vote of the candidates tied with the best on training folds",
            _ensemble,
            _ensemble_params,
            scaled=False,
        ),
    )
}

#: Every classifier name, in registry order.
CLASSIFIER_NAMES = tuple(REGISTRY)
#: What ``--clf all`` runs.
ALL_CLASSIFIERS = tuple(name for name, entry in REGISTRY.items() if entry.in_all)


def default_params(name: str) -> dict[str, Any]:
    """The CLI's hyperparameters of ``name``: its ``[fit.<name>]`` table of the shipped defaults
    (as given to :func:`make_classifier` by ``python -m pipeline.fit``)."""
    return default_values(f"fit.{name}")


def classifier_params(
    name: str, table: Mapping[str, Any] | None = None, seed: int | None = None
) -> dict[str, Any]:
    """A ``[fit.<name>]`` table as keyword arguments of :func:`make_classifier`: ``"none"`` is
    None (TOML has no null), ``hidden_layer_sizes`` a tuple, and ``random_state`` the seed.
    ``table`` defaults to the shipped one (:func:`default_params`), ``seed`` to ``[fit] seed``:
    the one conversion both ``python -m pipeline.fit`` and :func:`make_classifier` use."""
    if table is None:
        table = default_params(name)
    if not isinstance(table, Mapping):
        raise ValueError(f"[fit.{name}]: expected a table of hyperparameters, got {table!r}")
    params: dict[str, Any] = {
        "random_state": default_values("fit")["seed"] if seed is None else seed
    }
    for key, value in table.items():
        if isinstance(value, str) and value.lower() == "none":
            value = None
        if key == "hidden_layer_sizes" and isinstance(value, list):
            value = tuple(value)
        params[key] = value
    return params


def make_classifier(name: str, **params: Any) -> Any:
    """Return an unfitted classifier for embeddings by name (a key of :data:`REGISTRY`).

    Its hyperparameters are those ``python -m pipeline.fit`` trains with: the ``[fit.<name>]``
    table of the shipped ``pipeline/default.toml`` and ``random_state`` ``[fit] seed``
    (:func:`classifier_params`), each overridden by ``params``.

    Each is a :class:`~sklearn.pipeline.Pipeline` whose last step is named ``"clf"``:

    - ``nn``: StandardScaler + :class:`~pipeline.estimators.TorchMLPClassifier`;
    - ``svc``: StandardScaler + RBF :class:`~sklearn.svm.SVC`, with probabilities from
      ``CalibratedClassifierCV(svc, ensemble=False)`` unless ``probability=False``;
    - ``xgboost``: :class:`~pipeline.estimators.XGBoostClassifier` (hist trees, CUDA when
      available);
    - ``logreg``: StandardScaler + :class:`~sklearn.linear_model.LogisticRegression`
      (a linear probe);
    - ``knn``: :class:`~pipeline._knn.CosineKNNClassifier` (cosine k-nearest-neighbours on the
      raw embeddings, k chosen by leave-one-out on the training rows);
    - ``svc_approx``: StandardScaler + Nystroem RBF map + calibrated
      :class:`~sklearn.svm.LinearSVC`, for row counts where exact SVC is too slow;
    - ``ensemble``: :class:`~pipeline.ensemble.TiedEnsembleClassifier`, the soft vote of the
      ``candidates`` that out-of-fold predictions on the training rows cannot separate from
      the best.

    Parameters
    ----------
    name : str
        A key of :data:`REGISTRY` (:data:`CLASSIFIER_NAMES`).
    **params
        Hyperparameters of the final estimator, over the CLI's defaults (for ``svc``: SVC's,
        plus ``probability`` and ``calibration_cv``).

    Returns
    -------
    Pipeline
        Unfitted; it predicts the labels it was fitted on.

    Examples
    --------
    >>> from pipeline import make_classifier
    >>> clf = make_classifier("svc", C=10)
    >>> clf.named_steps["clf"].estimator.C
    10
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if name not in REGISTRY:
        raise ValueError(
            f"unknown classifier {name!r}; valid options: {', '.join(CLASSIFIER_NAMES)}"
        )
    entry = REGISTRY[name]
    params = {**classifier_params(name), **params}
    valid = entry.params()
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for classifier {name!r}; valid: "
            f"{', '.join(sorted(valid))}"
        )
    final = entry.final(**params)
    steps = [("scale", StandardScaler())] if entry.scaled else []
    if isinstance(final, Pipeline):  # svc_approx: its map and classifier become steps
        return Pipeline([*steps, *final.steps])
    return Pipeline([*steps, ("clf", final)])
