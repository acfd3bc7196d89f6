"""Hyperparameter search for stage two (``fit --search``): spaces and the search itself.

Each classifier's space is a ``[fit.search.<clf>]`` TOML table, parameter -> list of values,
in the parameter names of the classifier's ``Pipeline`` (its last step is ``clf``):
``clf__C``, ``clf__alpha``, ``map__n_components``... The search is scikit-learn's
(:class:`~sklearn.model_selection.GridSearchCV` or
:class:`~sklearn.model_selection.HalvingGridSearchCV`) with stratified K-fold on the training
rows only: :func:`run_search` is never given the test rows, so they cannot influence a choice.
The chosen parameters are then refitted on all training rows.

A classifier whose ``clf`` step is a :class:`~sklearn.calibration.CalibratedClassifierCV`
(``svc``, ``svc_approx``) is searched without the calibration (which would fit every candidate
``calibration_cv`` more times); the chosen parameters are set on the calibrated pipeline, which
is fitted once.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "SEARCH_OPTIONS",
    "SEARCH_SPACES",
    "as_classifier_params",
    "check_space",
    "format_toml",
    "run_search",
]

logger = logging.getLogger(__name__)

#: Default spaces per classifier, as ``[fit.search.<clf>]`` would hold them. Sized so that
#: ``fit --clf all --search`` on 5,000 x 1,280 embeddings stays within budget on 2 cores
#: (see benchmarks/search_budget.py). ``knn`` chooses k itself by leave-one-out; ``xgboost``
#: its number of rounds by early stopping; ``nn`` its epochs by early stopping. Every space
#: holds the classifier's default value, so the search can always keep the default.
SEARCH_SPACES: dict[str, dict[str, list[Any]]] = {
    "logreg": {"clf__C": [0.001, 0.01, 0.1, 1.0]},
    "svc": {"clf__C": [1.0, 3.0, 10.0]},
    "svc_approx": {"clf__C": [0.01, 0.1, 1.0]},
    "nn": {"clf__alpha": [1e-4, 1e-2], "clf__dropout": [0.2, 0.5]},
    "xgboost": {"clf__max_depth": [2, 3]},
    "knn": {"clf__weights": ["uniform", "distance"]},
}
#: How each classifier is searched: ``run_search`` keyword arguments (``method``: ``"grid"``
#: or ``"halving"``; ``max_rows``: score candidates on a stratified subsample of at most this
#: many training rows, then refit on all). Absent means a full grid.
SEARCH_OPTIONS: dict[str, dict[str, Any]] = {
    "nn": {"method": "halving", "max_rows": 2000},
    "xgboost": {"method": "grid", "max_rows": 1000},
}


def _to_python(value: Any) -> Any:
    """TOML -> estimator values: lists become tuples (``hidden_layer_sizes``), "none" None."""
    if isinstance(value, list | tuple):
        return tuple(_to_python(v) for v in value)
    if isinstance(value, str) and value.lower() == "none":
        return None
    return value


def check_space(name: str, space: Any, estimator: Any | None = None) -> dict[str, list[Any]]:
    """Validate a ``[fit.search.<name>]`` table and turn its values into estimator values.

    Parameters
    ----------
    name : str
        Classifier name, for messages.
    space : mapping
        Parameter name -> non-empty list of candidate values.
    estimator : Pipeline, optional
        The estimator searched (for ``svc``: the plain, uncalibrated pipeline); when given,
        every parameter must be one of its ``get_params()`` keys.

    Returns
    -------
    dict
        Parameter -> list of values (inner lists as tuples, ``"none"`` as None).
    """
    where = f"[fit.search.{name}]"
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"{where}: expected a table of parameter = [values], got {space!r}")
    valid = set(estimator.get_params()) if estimator is not None else None
    checked = {}
    for param, values in space.items():
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(
                f"{where}: {param} must be a non-empty list of candidate values, got {values!r}"
            )
        if valid is not None and param not in valid:
            hints = sorted(p for p in valid if p.startswith(("clf__", "map__")) and "__" in p)
            raise ValueError(
                f"{where}: unknown parameter {param!r}; valid: {', '.join(hints[:40])}"
            )
        checked[str(param)] = [_to_python(v) for v in values]
    return checked


def _is_calibrated(estimator: Any) -> bool:
    from sklearn.calibration import CalibratedClassifierCV

    steps = getattr(estimator, "named_steps", {})
    return isinstance(steps.get("clf"), CalibratedClassifierCV)


def _plain(estimator: Any) -> Any:
    """The pipeline with a calibrated ``clf`` step replaced by its (unfitted) base estimator."""
    from sklearn.base import clone

    plain = clone(estimator)
    return plain.set_params(clf=clone(plain.named_steps["clf"].estimator))


def _calibrated_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``clf__C`` of the plain pipeline -> ``clf__estimator__C`` of the calibrated one."""
    return {
        (f"clf__estimator__{key[5:]}" if key.startswith("clf__") else key): value
        for key, value in params.items()
    }


def as_classifier_params(best_params: Mapping[str, Any]) -> dict[str, Any]:
    """Pipeline parameter names -> the classifier's own names (``clf__C`` -> ``C``), as in
    ``[fit.<clf>]`` and ``make_classifier(name, **params)``."""
    return {key.rsplit("__", 1)[-1]: value for key, value in best_params.items()}


def _inner_cv(y: np.ndarray, cv: int, seed: int, name: str) -> Any:
    from sklearn.model_selection import StratifiedKFold

    if isinstance(cv, bool) or not isinstance(cv, numbers.Integral) or cv < 2:
        raise ValueError(f"search cv must be an int >= 2, got {cv!r}")
    _, counts = np.unique(y, return_counts=True)
    smallest = int(counts.min())
    if smallest < 2:
        raise ValueError(
            f"--search {name}: a class has only {smallest} training row; inner cross-validation "
            "needs at least 2 per class: add training images or drop --search"
        )
    if smallest < cv:
        logger.warning(
            "search %s: a class has only %d training rows; inner CV uses %d folds instead of %d",
            name,
            smallest,
            smallest,
            cv,
        )
        cv = smallest
    return StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=seed)


def _progress_scorer(name: str, params: Sequence[str], n_fits: int | None):
    """An accuracy scorer that logs one line per scored fit (in-process searches)."""
    from sklearn.metrics import accuracy_score

    done = [0]

    def score(estimator: Any, X: ArrayLike, y: ArrayLike) -> float:
        value = float(accuracy_score(y, estimator.predict(X)))
        done[0] += 1
        values = estimator.get_params()
        shown = ", ".join(f"{p.split('__', 1)[-1]}={values[p]!r}" for p in params)
        logger.info(
            "search %s: fit %d/%s (%s, scored on %d rows): accuracy %.4f",
            name,
            done[0],
            "?" if n_fits is None else n_fits,
            shown,
            len(y) if hasattr(y, "__len__") else -1,
            value,
        )
        return value

    return score


def _at_edge(space: Mapping[str, Sequence[Any]], best: Mapping[str, Any]) -> list[str]:
    """Numeric parameters whose chosen value is the smallest or largest of >= 3 candidates."""
    edge = []
    for param, values in space.items():
        numeric = [v for v in values if isinstance(v, numbers.Real) and not isinstance(v, bool)]
        if (
            len(numeric) >= 3
            and len(numeric) == len(values)
            and best[param]
            in (
                min(numeric),
                max(numeric),
            )
        ):
            edge.append(param)
    return edge


def run_search(
    name: str,
    estimator: Any,
    space: Mapping[str, Sequence[Any]],
    X_train: ArrayLike,
    y_train: ArrayLike,
    *,
    cv: int = 3,
    seed: int = 0,
    method: str = "grid",
    max_rows: int | None = None,
    n_jobs: int | None = None,
    verbose: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Choose ``estimator``'s hyperparameters by inner stratified CV on the training rows.

    Parameters
    ----------
    name : str
        Classifier name (for messages).
    estimator : Pipeline
        The unfitted classifier as ``fit`` would train it (``make_classifier(name, ...)``).
    space : mapping
        Parameter -> candidate values (see :func:`check_space`); for a calibrated ``clf``
        the names refer to the plain pipeline (``clf__C``, not ``clf__estimator__C``).
    X_train, y_train : array-like
        The training rows, and only them.
    cv : int, default=3
        Inner folds (``StratifiedKFold(shuffle=True, random_state=seed)``).
    seed : int, default=0
        Seeds the inner folds (and the halving search's subsampling).
    method : {"grid", "halving"}, default="grid"
        ``GridSearchCV`` or ``HalvingGridSearchCV`` (successive halving over rows).
    max_rows : int or None
        Score candidates on at most this many training rows (halving: its
        ``max_resources``; grid: a stratified, seeded subsample of the training rows); the
        chosen parameters are still refitted on all of ``X_train``. For classifiers whose
        fits are too slow to score every candidate on every row (xgboost).
    n_jobs : int or None
        Parallel fits of the search; per-fit progress lines are logged only in-process
        (``n_jobs`` None or 1); otherwise use ``verbose``.
    verbose : int, default=0
        Passed to the search class.

    Returns
    -------
    fitted : Pipeline
        The estimator with the chosen parameters, fitted on all of ``X_train``.
    info : dict
        ``{"space": {param: [values]}, "best_params": {param: value}, "cv_score": float
        (mean inner-CV accuracy of the chosen candidate), "seconds": float (search and
        refit), "search_class": str, "cv": int, "n_candidates": int, "calibrated_after":
        bool, "max_rows": int | None, "at_edge": [param]}`` (``at_edge``: numeric
        parameters whose choice is the smallest or largest of 3 or more candidates; warned).
    """
    from sklearn.base import clone
    from sklearn.model_selection import ParameterGrid

    if method not in ("grid", "halving"):
        raise ValueError(f"search method must be 'grid' or 'halving', got {method!r}")
    calibrated = _is_calibrated(estimator)
    searched = _plain(estimator) if calibrated else clone(estimator)
    checked = check_space(name, space, searched)
    y_train = np.asarray(y_train)
    X_search, y_search = _search_rows(X_train, y_train, max_rows, cv, method, seed)
    splitter = _inner_cv(y_search, cv, seed, name)
    n_candidates = len(ParameterGrid(checked))
    # successive halving decides its number of fits as it goes
    n_fits = n_candidates * splitter.get_n_splits() if method == "grid" else None
    in_process = n_jobs in (None, 1)
    scoring = _progress_scorer(name, list(checked), n_fits) if in_process else "accuracy"
    # The search class refits its best candidate unless the pipeline to ship differs from the
    # one searched (calibration) or the candidates saw only some rows (max_rows).
    search_refits = not calibrated and max_rows is None
    common = dict(
        scoring=scoring,
        cv=splitter,
        n_jobs=n_jobs,
        verbose=verbose,
        refit=search_refits,
        error_score="raise",
        return_train_score=False,  # halving's default is True: twice the scoring, no use here
    )
    search, label = _search_class(method, searched, checked, common, len(y_train), max_rows, seed)
    scored_rows = len(y_search) if method == "grid" else min(len(y_train), max_rows or len(y_train))
    plan = label + (", calibration after the search" if calibrated else "")
    _log_plan(name, n_candidates, splitter.get_n_splits(), scored_rows, len(y_train), plan)
    started = time.perf_counter()
    search.fit(X_search, y_search)
    if search_refits:
        fitted = search.best_estimator_
    else:
        best = _calibrated_params(search.best_params_) if calibrated else search.best_params_
        fitted = clone(estimator).set_params(**best).fit(X_train, y_train)
    seconds = time.perf_counter() - started
    info = _search_info(
        name, search, checked, label, splitter.get_n_splits(), calibrated, max_rows, seconds
    )
    return fitted, info


def _log_plan(
    name: str, n_candidates: int, n_splits: int, scored_rows: int, n_train: int, label: str
) -> None:
    """Log what the search is about to do."""
    logger.info(
        "search %s: %d candidate(s) x %d folds on %d of %d training rows (%s)",
        name,
        n_candidates,
        n_splits,
        scored_rows,
        n_train,
        label,
    )


def _search_rows(
    X_train: ArrayLike, y_train: np.ndarray, max_rows: int | None, cv: int, method: str, seed: int
) -> tuple[ArrayLike, np.ndarray]:
    """Check ``max_rows``; the rows candidates are scored on (grid: a stratified, seeded
    subsample of at most ``max_rows``; halving: all, it subsamples itself)."""
    if max_rows is None:
        return X_train, y_train
    if isinstance(max_rows, bool) or not isinstance(max_rows, numbers.Integral):
        raise ValueError(f"search max_rows must be an int or None, got {max_rows!r}")
    if max_rows < 2 * cv:
        raise ValueError(f"search max_rows must be at least 2 x cv = {2 * cv}, got {max_rows}")
    if method == "grid" and max_rows < len(y_train):
        from sklearn.model_selection import train_test_split

        X_search, _, y_search, _ = train_test_split(
            X_train, y_train, train_size=int(max_rows), stratify=y_train, random_state=seed
        )
        return X_search, y_search
    return X_train, y_train


def _search_class(
    method: str,
    searched: Any,
    checked: Mapping[str, Sequence[Any]],
    common: dict[str, Any],
    n_train: int,
    max_rows: int | None,
    seed: int,
) -> tuple[Any, str]:
    """The unfitted ``GridSearchCV`` or ``HalvingGridSearchCV`` and its class name."""
    from sklearn.model_selection import GridSearchCV

    if method == "halving":
        from sklearn.experimental import enable_halving_search_cv  # noqa: F401
        from sklearn.model_selection import HalvingGridSearchCV

        limit = n_train if max_rows is None else min(int(max_rows), n_train)
        search = HalvingGridSearchCV(
            searched, checked, factor=2, max_resources=limit, random_state=seed, **common
        )
        return search, "HalvingGridSearchCV"
    return GridSearchCV(searched, checked, **common), "GridSearchCV"


def _search_info(
    name: str,
    search: Any,
    checked: Mapping[str, Sequence[Any]],
    label: str,
    n_splits: int,
    calibrated: bool,
    max_rows: int | None,
    seconds: float,
) -> dict[str, Any]:
    """The ``info`` dict of :func:`run_search`; logs the choice and warns about edge values."""
    from sklearn.model_selection import ParameterGrid

    info = {
        "space": {k: list(v) for k, v in checked.items()},
        "best_params": dict(search.best_params_),
        "cv_score": float(search.best_score_),
        "seconds": seconds,
        "search_class": label,
        "cv": n_splits,
        "n_candidates": len(ParameterGrid(checked)),
        "calibrated_after": calibrated,
        "max_rows": max_rows,
        "at_edge": _at_edge(checked, search.best_params_),
    }
    if info["at_edge"]:
        logger.warning(
            "search %s: the chosen %s lie at the edge of the searched values; the best may lie "
            "beyond: widen [fit.search.%s]",
            name,
            ", ".join(f"{p}={search.best_params_[p]!r}" for p in info["at_edge"]),
            name,
        )
    logger.info(
        "search %s: chose %s, inner-CV accuracy %.4f (%.1f s)",
        name,
        info["best_params"],
        info["cv_score"],
        seconds,
    )
    return info


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to TOML")
        return repr(float(value))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} to TOML")


def format_toml(spaces: Mapping[str, Mapping[str, Sequence[Any]]]) -> str:
    """The spaces as ``[fit.search.<clf>]`` TOML tables (for configs/default.toml)."""
    lines: list[str] = []
    for name, space in spaces.items():
        lines.append(f"[fit.search.{name}]")
        lines += [f"{param} = {_toml_value(list(values))}" for param, values in space.items()]
        lines.append("")
    return "\n".join(lines)
