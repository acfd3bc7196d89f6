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

from ..config import default_values

__all__ = [
    "SEARCH_OPTIONS",
    "SEARCH_SPACES",
    "as_classifier_params",
    "check_space",
    "format_toml",
    "run_search",
    "widen_space",
]

logger = logging.getLogger(__name__)

#: Default spaces per classifier: the ``[fit.search.<clf>]`` tables of the shipped
#: ``pipeline/default.toml`` (their one source). Sized so that ``fit --clf all --search`` on
#: 5,000 x 1,280 embeddings stays within budget on 2 cores (see benchmarks/search_budget.py).
#: ``knn`` chooses k itself by leave-one-out; ``xgboost`` its number of rounds by early
#: stopping; ``nn`` its epochs by early stopping. Every space holds the classifier's default.
SEARCH_SPACES: dict[str, dict[str, list[Any]]] = {
    name: dict(space)
    for name, space in default_values("fit.search").items()
    if isinstance(space, Mapping)
}
#: How each classifier is searched: ``run_search`` keyword arguments (``method``: ``"grid"``
#: or ``"halving"``; ``max_rows``: score candidates on a stratified subsample of at most this
#: many training rows, then refit on all). Absent means a full grid.
#: Default of ``widen_bound`` (``[fit.search] widen_bound``): a widened value stays within this
#: factor of the configured range.
WIDEN_BOUND = 100.0
SEARCH_OPTIONS: dict[str, dict[str, Any]] = {
    "nn": {"method": "halving", "max_rows": 2000},
    "xgboost": {"method": "grid", "max_rows": 600},
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
    widen: int = 0,
    widen_bound: float = WIDEN_BOUND,
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
    widen : int, default=0
        Budget of widening rounds (see :func:`widen_space`): while a numeric parameter's
        choice is the smallest or largest of its candidates, one more value one log step
        beyond it is searched (the other parameters held at their chosen values), at most
        ``widen`` times. Every round scores on the same rows and folds, so the scores compare.
    widen_bound : float, default=100.0
        A widened value never lies more than this factor beyond the configured range
        (below ``min / widen_bound`` or above ``max * widen_bound``).

    Returns
    -------
    fitted : Pipeline
        The estimator with the chosen parameters, fitted on all of ``X_train``.
    info : dict
        ``{"space": {param: [values]}, "best_params": {param: value}, "cv_score": float
        (mean inner-CV accuracy of the chosen candidate), "seconds": float (search and
        refit), "search_class": str, "cv": int, "n_candidates": int, "calibrated_after":
        bool, "max_rows": int | None, "at_edge": [param], "widen": {...}}`` (``space``:
        every value searched, the final range; ``at_edge``: numeric parameters whose choice is
        still the smallest or largest of 3 or more candidates, warned; ``widen``:
        ``initial_space``, ``grown`` (rounds run), ``budget``, ``bound``, ``stopped``
        (``"interior"``, ``"bound"``, ``"budget"`` or ``"off"``)).
    """
    from sklearn.base import clone

    if method not in ("grid", "halving"):
        raise ValueError(f"search method must be 'grid' or 'halving', got {method!r}")
    _check_widen(widen, widen_bound)
    calibrated = _is_calibrated(estimator)
    searched = _plain(estimator) if calibrated else clone(estimator)
    checked = check_space(name, space, searched)
    y_train = np.asarray(y_train)
    X_search, y_search = _search_rows(X_train, y_train, max_rows, cv, method, seed)
    splitter = _inner_cv(y_search, cv, seed, name)
    started = time.perf_counter()
    rounds = _Rounds(name, searched, checked, widen, widen_bound)
    while rounds.next_grid is not None:
        search, label = _search_round(
            name, searched, rounds.next_grid, X_search, y_search, splitter, len(y_train),
            method, max_rows, seed, n_jobs, verbose, calibrated,
        )  # fmt: skip
        rounds.add(search)
    best = _calibrated_params(rounds.best_params) if calibrated else rounds.best_params
    fitted = clone(estimator).set_params(**best).fit(X_train, y_train)
    seconds = time.perf_counter() - started
    info = _search_info(
        name, rounds.space, rounds.best_params, rounds.best_score, label,
        splitter.get_n_splits(), calibrated, max_rows, seconds,
    )  # fmt: skip
    info["n_candidates"] = rounds.n_candidates  # scored, over every round
    info["widen"] = rounds.summary()
    return fitted, info


class _Rounds:
    """The rounds of one search: each round's grid, the best of all rounds so far, the range
    searched, and when to stop widening. Every round scores on the same rows and folds (a
    seeded splitter), so the best of all rounds is one comparison (ties: the earlier)."""

    def __init__(
        self,
        name: str,
        searched: Any,
        initial: Mapping[str, Sequence[Any]],
        budget: int,
        bound: float,
    ) -> None:
        self.name, self.searched, self.initial = name, searched, initial
        self.budget, self.bound = budget, bound
        self.next_grid: Mapping[str, Sequence[Any]] | None = initial
        self.space = {k: list(v) for k, v in initial.items()}
        self.results: list[tuple[dict[str, Any], float]] = []
        self.n_candidates = 0
        self.stopped = "off" if budget == 0 else "budget"

    def add(self, search: Any) -> None:
        """Record a fitted search of ``next_grid``; set the grid of the next round, or None."""
        from sklearn.model_selection import ParameterGrid

        self.results.append((dict(search.best_params_), float(search.best_score_)))
        self.n_candidates += len(ParameterGrid(self.next_grid))
        self.best_params, self.best_score = max(self.results, key=lambda r: r[1])
        self.next_grid = None
        if len(self.results) > self.budget:
            if self.stopped == "budget" and not _numeric_edges(self.space, self.best_params):
                self.stopped = "interior"  # the last value added was not chosen
            return
        grid, self.stopped = widen_space(
            self.searched, self.initial, self.space, self.best_params, self.bound
        )
        if grid is None:
            return
        logger.info(
            "search %s: widening (round %d of %d): %s",
            self.name,
            len(self.results),
            self.budget,
            grid,
        )
        for param, (value,) in grid.items():
            if value not in self.space[param]:  # a widened parameter: numbers only
                self.space[param] = sorted([*self.space[param], value])
        self.next_grid = grid

    def summary(self) -> dict[str, Any]:
        """report.json's ``search.widen``."""
        return {
            "initial_space": {k: list(v) for k, v in self.initial.items()},
            "grown": len(self.results) - 1,
            "budget": self.budget,
            "bound": self.bound,
            "stopped": self.stopped,
        }


def _check_widen(widen: Any, bound: Any) -> None:
    if isinstance(widen, bool) or not isinstance(widen, numbers.Integral) or widen < 0:
        raise ValueError(f"search widen must be an int >= 0 (rounds), got {widen!r}")
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not bound >= 1:
        raise ValueError(f"search widen_bound must be a number >= 1, got {bound!r}")


def _search_round(
    name: str,
    searched: Any,
    grid: Mapping[str, Sequence[Any]],
    X_search: ArrayLike,
    y_search: np.ndarray,
    splitter: Any,
    n_train: int,
    method: str,
    max_rows: int | None,
    seed: int,
    n_jobs: int | None,
    verbose: int,
    calibrated: bool,
) -> tuple[Any, str]:
    """One fitted ``GridSearchCV`` / ``HalvingGridSearchCV`` over ``grid`` (no refit)."""
    from sklearn.model_selection import ParameterGrid

    n_candidates = len(ParameterGrid(grid))
    # successive halving decides its number of fits as it goes
    n_fits = n_candidates * splitter.get_n_splits() if method == "grid" else None
    in_process = n_jobs in (None, 1)
    scoring = _progress_scorer(name, list(grid), n_fits) if in_process else "accuracy"
    common = dict(
        scoring=scoring,
        cv=splitter,
        n_jobs=n_jobs,
        verbose=verbose,
        refit=False,  # the choice of all rounds is refitted on all training rows
        error_score="raise",
        return_train_score=False,  # halving's default is True: twice the scoring, no use here
    )
    search, label = _search_class(method, searched, grid, common, n_train, max_rows, seed)
    scored_rows = len(y_search) if method == "grid" else min(n_train, max_rows or n_train)
    plan = label + (", calibration after the search" if calibrated else "")
    _log_plan(name, n_candidates, splitter.get_n_splits(), scored_rows, n_train, plan)
    search.fit(X_search, y_search)
    return search, label


def _numeric_edges(space: Mapping[str, Sequence[Any]], best: Mapping[str, Any]) -> list[str]:
    """:func:`_at_edge`, for parameters whose candidates are all positive numbers (a log
    step needs them)."""
    return [p for p in _at_edge(space, best) if all(v > 0 for v in space[p])]


def _step_beyond(values: Sequence[Any], up: bool) -> Any:
    """The next value one log step past the end of ``values`` (sorted, positive): the ratio of
    the two outermost values, rounded to 2 significant digits (ints: to an int)."""
    a, b = (values[-2], values[-1]) if up else (values[1], values[0])
    nxt = b * (b / a)
    if all(isinstance(v, numbers.Integral) for v in values):
        return int(round(nxt))
    return float(f"{nxt:.2g}")


def _accepts(searched: Any, param: str, value: Any) -> bool:
    """Does ``searched``'s own parameter validation accept ``param=value``? (scikit-learn's
    ``_validate_params`` of the step's declared constraints; other estimators are trusted)."""
    from sklearn.base import clone

    step_name, _, key = param.rpartition("__")
    probe = clone(searched).set_params(**{param: value})
    step = probe.get_params()[step_name] if step_name else probe
    if getattr(type(step), "_parameter_constraints", None) is None:
        return True  # not a scikit-learn estimator with declared constraints
    try:
        step._validate_params()
    except (TypeError, ValueError):
        return False
    return True


def widen_space(
    searched: Any,
    initial: Mapping[str, Sequence[Any]],
    space: Mapping[str, Sequence[Any]],
    best: Mapping[str, Any],
    bound: float = 100.0,
) -> tuple[dict[str, list[Any]] | None, str]:
    """The next round's grid when a choice lies at the edge of ``space``, else None.

    For each positive numeric parameter whose chosen value is the smallest (largest) of 3 or
    more candidates, one value one log step below (above) it (:func:`_step_beyond`), unless
    that value passes ``bound`` (a factor beyond the ``initial`` range) or the estimator
    rejects it; every other parameter is held at its chosen value.

    Returns
    -------
    grid : dict or None
        Parameter -> candidates of the next round; None when nothing is to be widened.
    reason : str
        ``"budget"`` (a grid was returned: widening goes on while the budget lasts),
        ``"interior"`` (no choice at an edge) or ``"bound"`` (every edge is at its bound).
    """
    edges = _numeric_edges(space, best)
    if not edges:
        return None, "interior"
    grid: dict[str, list[Any]] = {p: [v] for p, v in best.items()}
    grown = False
    for param in edges:
        values = sorted(space[param])
        up = best[param] == values[-1]
        nxt = _step_beyond(values, up)
        lo, hi = min(initial[param]) / bound, max(initial[param]) * bound
        within = (nxt <= hi * (1 + 1e-9)) if up else (nxt >= lo * (1 - 1e-9))
        if within and nxt not in values and nxt > 0 and _accepts(searched, param, nxt):
            grid[param] = [nxt]
            grown = True
    return (grid, "budget") if grown else (None, "bound")


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
    space: Mapping[str, Sequence[Any]],
    best_params: Mapping[str, Any],
    best_score: float,
    label: str,
    n_splits: int,
    calibrated: bool,
    max_rows: int | None,
    seconds: float,
) -> dict[str, Any]:
    """The ``info`` dict of :func:`run_search`; logs the choice and warns about edge values."""
    from sklearn.model_selection import ParameterGrid

    info = {
        "space": {k: list(v) for k, v in space.items()},
        "best_params": dict(best_params),
        "cv_score": float(best_score),
        "seconds": seconds,
        "search_class": label,
        "cv": n_splits,
        "n_candidates": len(ParameterGrid(space)),
        "calibrated_after": calibrated,
        "max_rows": max_rows,
        "at_edge": _at_edge(space, best_params),
    }
    if info["at_edge"]:
        logger.warning(
            "search %s: the chosen %s lie at the edge of the searched values; the best may lie "
            "beyond: widen [fit.search.%s]",
            name,
            ", ".join(f"{p}={best_params[p]!r}" for p in info["at_edge"]),
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
