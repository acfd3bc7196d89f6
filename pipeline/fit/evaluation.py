"""Stage two: fit and compare classifiers on a feature store (``python -m pipeline.fit``).

For each classifier of the registry a scikit-learn ``Pipeline`` is fitted (or, with
``--search``, tuned by inner CV on the training rows) on the train rows of the store and
evaluated on the store's own test (else val) rows, a stratified seeded holdout, or stratified
K-fold cross-validation (``--cv K``). Each result carries its confidence intervals and a paired
test against the best (:mod:`pipeline.fit.evidence`). The outputs (:func:`write_outputs` in
:mod:`pipeline.fit.run_outputs`) are report.json/md/html, predictions.csv/npz, plots and
``models/<clf>.joblib``.

This module imports neither torch nor the estimators at import time, so ``--help`` is instant.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._cli import command
from .._progress import slow_step
from ..classifiers import ALL_CLASSIFIERS, CLASSIFIER_NAMES, classifier_params, make_classifier
from ..config import FitConfig
from ..exceptions import ConfigError, StoreError
from ..rows import RowSource, StoreRows, materialize
from ..store import FeatureTable, check_finite, read_attrs, read_store, split_rows, view_dataset
from .evidence import (
    bootstrap_intervals,
    compare_to_best,
    corrected_ttest,
    cv_interval,
    mcnemar_exact,
    paired_difference_interval,
    separability_warning,
)
from .memory import check_fit_memory, held_out_share
from .model_file import BACKBONE_KEYS
from .outputs import check_out_dir, check_replace, publish_run
from .predictions import align_proba
from .report import classification_metrics, format_table, summarize_folds
from .run_outputs import write_outputs
from .search import SEARCH_OPTIONS, run_search
from .streaming import Plan, fit_plan, fit_rows, predict_rows
from .summary import plain_summary
from .views import ViewsClassifier, saved_estimator, views_report, views_used, with_views

__all__ = ["parse_clf", "run_fit"]

logger = logging.getLogger(__name__)


# -- inputs -------------------------------------------------------------------------------------


def parse_clf(value: str) -> list[str]:
    """``"all"``, one name or a comma list (``"svc,xgboost"``) -> classifier names, in order."""
    names: list[str] = []
    for part in str(value).split(","):
        part = part.strip().lower()
        if part == "all":
            candidates = list(ALL_CLASSIFIERS)
        elif part in CLASSIFIER_NAMES:
            candidates = [part]
        else:
            raise ConfigError(
                f"unknown classifier {part!r}; valid options: "
                f"{', '.join(CLASSIFIER_NAMES)}, all, or a comma list such as svc,xgboost",
                param="clf",
            )
        names += [c for c in candidates if c not in names]
    return names


def _check_config(config: FitConfig) -> None:
    cv = config.cv
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 0 or cv == 1:
        raise ConfigError(f"must be 0 (no cross-validation) or K >= 2, got {cv!r}", param="cv")
    ts = config.test_size
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 < ts < 1:
        raise ConfigError(f"must be a fraction in (0, 1), got {ts!r}", param="test_size")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ConfigError(f"must be an int, got {config.seed!r}", param="seed")


def _check_labels(
    path: Path, y_train: np.ndarray, y_test: np.ndarray | None, class_names: Sequence[str]
) -> None:
    """Refuse data no classifier can learn from, with a message saying what to do."""
    all_y = y_train if y_test is None else np.concatenate([y_train, y_test])
    present = sorted(set(all_y.tolist()))
    if not present:
        raise StoreError(
            f"{path}: no labelled rows; extract a labelled source (class folders or a CSV "
            "with a label column)"
        )
    if len(present) < 2:
        raise StoreError(
            f"{path}: labelled rows of only 1 class ({class_names[present[0]]!r}); a "
            "classifier needs at least 2 classes: extract images of more classes"
        )
    if y_test is None:
        return
    if len(y_train) == 0:
        raise StoreError(
            f"{path}: no training rows: all {len(y_test)} labelled rows are in the store's "
            "test split; add train rows to the source (or give no split for a holdout)"
        )
    missing = sorted(set(y_test.tolist()) - set(y_train.tolist()))
    if missing:
        names = [class_names[i] for i in missing]
        raise StoreError(
            f"{path}: class(es) {names} appear in the test split but not in train; add "
            "training images of them to the source and extract again"
        )
    if len(set(y_train.tolist())) < 2:
        raise StoreError(
            f"{path}: the train rows hold only 1 class; add training images of more classes"
        )


def _check_cv(path: Path, y: np.ndarray, k: int, class_names: Sequence[str]) -> None:
    labels, counts = np.unique(y, return_counts=True)
    if counts.min() < k:
        name, count = class_names[labels[counts.argmin()]], int(counts.min())
        fix = f"use --cv {count} or fewer" if count >= 2 else "give no --cv (holdout)"
        raise StoreError(
            f"--cv {k}: class {name!r} has only {count} labelled row(s) in {path}; {fix}"
        )


def _classifier_params(name: str, config: FitConfig) -> dict[str, Any]:
    """The ``[fit.<name>]`` table (with ``--set`` values) as estimator keyword arguments."""
    return classifier_params(name, getattr(config, name) or {}, config.seed)


def _build(name: str, config: FitConfig):
    params = _classifier_params(name, config)
    try:
        return make_classifier(name, **params), params
    except (TypeError, ValueError) as exc:
        raise ValueError(f"[fit.{name}] / --set {name}.KEY=VALUE: {exc}") from exc


def _fit_xgboost_dask(estimator: Any, X: RowSource, y: np.ndarray, address: str) -> Any:
    """Fit the xgboost pipeline on the Dask cluster at ``address`` (``local[:N]`` or
    ``tcp://HOST:PORT``); see :func:`pipeline.fit.dask.fit_xgboost_dask`. ``X`` goes as the
    store's rows (never read here: the workers read them). The result predicts the original
    labels and pickles without the cluster."""
    from .dask import fit_xgboost_dask  # lazy: imports the estimators (torch, sklearn)

    return fit_xgboost_dask(estimator, X, y, address)


def _fit_one(name: str, estimator: Any, X: RowSource, y: np.ndarray, config: FitConfig) -> Any:
    if config.dask and name == "xgboost":
        return _fit_xgboost_dask(estimator, X, y, config.dask)
    if config.dask:
        logger.info("--dask: %s is not distributed; it trains in-process on the embeddings", name)
    return fit_rows(estimator, X, y)


def _fit_or_search(
    name: str, estimator: Any, X: RowSource, y: np.ndarray, config: FitConfig
) -> tuple[Any, float, dict[str, Any] | None]:
    """Fit ``estimator`` on ``(X, y)``, or with ``--search`` choose its hyperparameters by inner
    CV on these rows only and refit; ``(fitted, seconds, search info or None)``. The search
    reads the rows into one matrix; a plain fit reads them as :func:`fit_rows` plans."""
    if not config.search_enabled or name == "ensemble":  # its candidates carry the choices
        started = time.perf_counter()
        fitted = _fit_one(name, estimator, X, y, config)
        return fitted, time.perf_counter() - started, None
    if config.dask:
        logger.info("--search: %s is searched in-process (--dask is not used)", name)
    views = isinstance(estimator, ViewsClassifier)
    X = materialize(X)
    fitted, info = run_search(
        name,
        estimator.estimator if views else estimator,
        config.search_spaces[name],
        X[:, : X.shape[1] // (1 + len(estimator.views))] if views else X,  # the plain view
        y,
        cv=config.search_cv,
        seed=config.seed,
        widen=config.search_widen[0],
        widen_bound=config.search_widen[1],
        **SEARCH_OPTIONS.get(name, {}),
    )
    if views:  # chosen on the plain view; then refit with the views (--augment) for TTA
        started = time.perf_counter()
        wrapper = ViewsClassifier(fitted, estimator.views, estimator.tta, estimator.augment)
        fitted = wrapper.fit(X, y)
        info["seconds"] += time.perf_counter() - started
    return fitted, info["seconds"], info


def _predict(
    fitted: Any, X: RowSource, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Predicted class names, probabilities in ``labels`` order (one-hot for a classifier
    without ``predict_proba``) and the prediction time (classes and probabilities, read block
    by block)."""
    started = time.perf_counter()
    y_pred, raw = predict_rows(fitted, X)
    seconds = time.perf_counter() - started
    if raw is not None:
        proba = align_proba(raw, fitted.classes_, labels)
    else:
        proba = (y_pred[:, None] == np.asarray(labels)[None, :]).astype(np.float64)
    return y_pred, proba, seconds


@dataclasses.dataclass
class _Outcome:
    """One classifier's evaluation: its report entry, fitted model and per-row predictions."""

    result: dict[str, Any]
    fitted: Any
    y_pred: np.ndarray  # class names, one per evaluated row (out of fold with --cv)
    proba: np.ndarray  # (evaluated rows, classes) in class order
    fold_accuracy: list[float] | None = None  # --cv only


def _evaluate(
    name: str,
    estimator: Any,
    X_train: RowSource,
    y_train: np.ndarray,
    X_test: RowSource,
    y_test: np.ndarray,
    labels: Sequence[str],
    config: FitConfig,
) -> _Outcome:
    """Fit (or search) on the train rows, score on the test rows."""
    fitted, fit_seconds, search = _fit_or_search(name, estimator, X_train, y_train, config)
    y_pred, proba, predict_seconds = _predict(fitted, X_test, labels)
    scores = classification_metrics(y_test, y_pred, proba, labels, labels)
    scores.update(fit_seconds=fit_seconds, predict_seconds=predict_seconds, search=search)
    return _Outcome(scores, fitted, y_pred, proba)


# -- evaluation ---------------------------------------------------------------------------------

#: Scores that get a confidence interval.
CI_KEYS = ("accuracy", "balanced_accuracy", "macro_f1")


def _search_summary(info: dict[str, Any] | None, folds: Sequence[Any] = ()) -> Any:
    """The report's ``search`` entry: space, chosen parameters, inner-CV score, seconds."""
    if info is None:
        return None
    keep = ("space", "best_params", "cv_score", "seconds", "search_class", "cv", "max_rows")
    summary = {key: info[key] for key in keep}
    summary["at_edge"] = info.get("at_edge", [])
    summary["widen"] = info.get("widen")  # initial_space, grown, budget, bound, stopped
    if folds:  # --cv: the search ran again inside each outer fold
        summary["fold_best_params"] = [f["best_params"] for f in folds]
        summary["fold_grown"] = [(f.get("widen") or {}).get("grown", 0) for f in folds]
        summary["fold_seconds"] = [f["seconds"] for f in folds]
    return summary


def _holdout(name: str, estimator: Any, data: _Data, config: FitConfig) -> _Outcome:
    outcome = _evaluate(
        name, estimator, data.X_train, data.y_train, data.X_test, data.y_test, data.labels, config
    )
    outcome.result["search"] = _search_summary(outcome.result["search"])
    intervals = bootstrap_intervals(data.y_test, outcome.y_pred, data.labels, seed=config.seed)
    outcome.result["ci"] = {key: list(intervals[key]) for key in CI_KEYS}
    return outcome


def _cross_validate(name: str, estimator: Any, data: _Data, config: FitConfig) -> _Outcome:
    """Out-of-fold predictions of every row, fold scores with corrected intervals, and the
    model refitted (or searched again) on every row."""
    from sklearn.base import clone

    X, y, labels = data.X_train, data.y_train, data.labels
    y_pred = np.empty(len(y), dtype=y.dtype)
    proba = np.zeros((len(y), len(labels)))
    folds = []
    for k, (train, test) in enumerate(data.folds):
        X_fit, X_eval = X.subset(train), X.subset(test)  # fold rows stay ascending
        fold = _evaluate(name, clone(estimator), X_fit, y[train], X_eval, y[test], labels, config)
        y_pred[test], proba[test] = fold.y_pred, fold.proba
        folds.append(fold.result)
        logger.debug(
            "%s fold %d/%d: accuracy %.4f", name, k + 1, config.cv, fold.result["accuracy"]
        )
    result = summarize_folds(folds)
    pooled = classification_metrics(y, y_pred, None, labels, labels)
    result["oof_accuracy"] = pooled["accuracy"]
    result["per_class"] = pooled["per_class"]
    result["confusion_matrix"] = pooled["confusion_matrix"]
    fitted, result["refit_seconds"], search = _fit_or_search(name, clone(estimator), X, y, config)
    result["search"] = _search_summary(search, [f["search"] for f in folds if f["search"]])
    n_train, n_test = _fold_sizes(data)
    result["ci"] = {
        key: list(cv_interval([f[key] for f in folds], n_train, n_test)["interval"])
        for key in CI_KEYS
    }
    return _Outcome(result, fitted, y_pred, proba, [f["accuracy"] for f in folds])


def _fold_sizes(data: _Data) -> tuple[float, float]:
    """Mean training and test rows per fold (Nadeau & Bengio's n_train and n_test)."""
    return (
        float(np.mean([len(train) for train, _ in data.folds])),
        float(np.mean([len(test) for _, test in data.folds])),
    )


def _compare(outcomes: Mapping[str, _Outcome], data: _Data, config: FitConfig) -> None:
    """Mark each result tied with the best or not (Holm-adjusted paired tests), in place."""
    if config.cv:
        n_train, n_test = _fold_sizes(data)
        fold_scores = {name: o.fold_accuracy for name, o in outcomes.items()}
        verdict = compare_to_best(fold_scores=fold_scores, n_train=n_train, n_test=n_test)
    else:
        correct = {name: o.y_pred == data.y_test for name, o in outcomes.items()}
        verdict = compare_to_best(correct=correct)
    for name, outcome in outcomes.items():
        outcome.result["tied_with_best"] = verdict[name]["tied_with_best"]
        outcome.result["p_value_vs_best"] = verdict[name]["p_value_vs_best"]
        outcome.result["p_value_raw"] = verdict[name]["p_value_raw"]


def _train_saved_models(
    outcomes: Mapping[str, _Outcome],
    built: Mapping[str, tuple[Any, Any]],
    data: _Data,
    path: Path,
    config: FitConfig,
) -> None:
    """Record in each result which rows its saved model saw (``trained_on``); with
    ``--refit`` (and no ``--cv``, whose models are refitted on every row already) first train
    it again on every labelled row of the run, train and test, after the comparison."""
    from sklearn.base import clone

    n_all = len(np.union1d(data.train_rows, data.eval_rows))
    if config.cv:
        if config.refit:
            logger.info("--refit: with --cv the saved models are trained on every row already")
        seen = {"rows": "all", "n_rows": n_all, "how": f"refit after {config.cv}-fold cv"}
    elif config.refit:
        order = np.argsort(np.concatenate([data.train_rows, data.eval_rows]), kind="stable")
        rows = np.concatenate([data.train_rows, data.eval_rows])[order]
        y = np.concatenate([data.y_train, data.y_eval])[order]
        X = StoreRows(path, rows, data.X_train.datasets)
        for name, outcome in outcomes.items():
            with slow_step(
                logger, "%s: training the saved model on all %d rows ...", name, len(rows)
            ):
                fitted, seconds, _ = _fit_or_search(name, clone(built[name][0]), X, y, config)
            logger.info(
                "%s: saved model trained on all %d labelled rows (--refit)", name, len(rows)
            )
            outcome.fitted, outcome.result["refit_seconds"] = fitted, seconds
        seen = {"rows": "all", "n_rows": len(rows), "how": "--refit after the comparison"}
    else:
        seen = {"rows": "train", "n_rows": data.n_train, "how": "the comparison's training rows"}
    for outcome in outcomes.values():
        outcome.result["trained_on"] = dict(seen)


# -- ensemble -----------------------------------------------------------------------------------


def _with_candidates(
    built: Mapping[str, tuple[Any, dict[str, Any]]],
    outcomes: Mapping[str, _Outcome],
    config: FitConfig,
) -> tuple[Any, dict[str, Any]]:
    """The ensemble with its candidates as this run trains them: each its ``[fit.<clf>]``
    estimator, or, with ``--search`` on a holdout, the parameters its search chose on the
    training rows (the fitted model's, cloned unfitted). With ``--cv`` the saved models'
    choices were made on every row, the evaluated ones' too: the candidates keep their
    configured parameters there, so no fold's test rows shape its ensemble."""
    from sklearn.base import clone

    estimator, params = built["ensemble"]
    ensemble = clone(estimator)
    inner = ensemble.estimator if isinstance(ensemble, ViewsClassifier) else ensemble
    candidates = []
    for name, default in inner.named_steps["clf"].estimators:
        chosen = outcomes.get(name)
        if chosen is not None and config.search_enabled and not config.cv:
            default = saved_estimator(chosen.fitted)
        elif name in built:
            default = built[name][0]
            default = default.estimator if isinstance(default, ViewsClassifier) else default
        candidates.append((name, clone(default)))
    inner.set_params(clf__estimators=candidates)
    return ensemble, params


def ensemble_summary(
    outcomes: Mapping[str, _Outcome], data: _Data, config: FitConfig
) -> dict[str, Any]:
    """report.json's ``ensemble`` entry of the ensemble's result: its members, weights and the
    training-fold evidence that chose them, and its accuracy against the best single
    classifier of this run (the difference with its interval and a paired test: exact
    McNemar and a paired bootstrap of the test rows, or with ``--cv`` the corrected t-test
    and interval of the fold differences)."""
    fitted = saved_estimator(outcomes["ensemble"].fitted).named_steps["clf"]
    summary: dict[str, Any] = {
        "members": list(fitted.names_),
        "weights": None if fitted.weights_ is None else [float(w) for w in fitted.weights_],
        "combine": fitted.combine,
        "selection": fitted.selection_,  # per candidate: oof_accuracy, p_value_vs_best, member
    }
    singles = [n for n in outcomes if n != "ensemble"]
    if not singles:
        return summary
    best = max(singles, key=lambda n: (outcomes[n].result["accuracy"], -singles.index(n)))
    ens = outcomes["ensemble"]
    if config.cv:
        n_train, n_test = _fold_sizes(data)
        diffs = np.subtract(ens.fold_accuracy, outcomes[best].fold_accuracy)
        interval = cv_interval(diffs, n_train, n_test)["interval"]
        p_value = corrected_ttest(ens.fold_accuracy, outcomes[best].fold_accuracy, n_train, n_test)
        test = "corrected resampled t-test over the folds"
    else:
        right = ens.y_pred == data.y_test, outcomes[best].y_pred == data.y_test
        interval = paired_difference_interval(*right, seed=config.seed)
        p_value = mcnemar_exact(*right)
        test = "exact McNemar on the test rows; interval: paired bootstrap"
    summary["vs_best_single"] = {
        "clf": best,
        "difference": float(ens.result["accuracy"] - outcomes[best].result["accuracy"]),
        "interval": [float(interval[0]), float(interval[1])],
        "p_value": float(p_value),
        "test": test,
    }
    return summary


# -- the stage ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Data:
    """The labelled rows of a store, ready for holdout (train/test) or cross-validation.

    ``X_train`` / ``X_test`` are the store's rows (:class:`~pipeline.rows.StoreRows`, in
    ascending store order, views as extra columns), read only as each classifier needs them.
    """

    evaluation: str  # "cv", or how split_rows chose the test rows
    labels: list[str]  # class names present, in class order
    n_train: int
    n_test: int
    X_train: RowSource  # under cv: every labelled row
    y_train: np.ndarray  # class names
    train_rows: np.ndarray  # store row of each X_train row (ascending)
    eval_rows: np.ndarray  # store row of each evaluated row (predictions.csv order)
    eval_split: list[str]  # predictions.csv's split column: store split, "holdout", "foldK"
    X_test: RowSource | None = None  # None under cv
    y_test: np.ndarray | None = None
    folds: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)

    @property
    def y_eval(self) -> np.ndarray:
        """True class names of the evaluated rows."""
        return self.y_train if self.y_test is None else self.y_test


def _cv_data(table: FeatureTable, path: Path, datasets: Sequence[str], config: FitConfig) -> _Data:
    from sklearn.model_selection import StratifiedKFold

    class_names = [str(c) for c in table.class_names]
    rows = np.flatnonzero(table.labels >= 0)
    y_idx = table.labels[rows]
    _check_labels(path, y_idx, None, class_names)
    _check_cv(path, y_idx, config.cv, class_names)
    labels = [class_names[i] for i in sorted(set(y_idx.tolist()))]
    splitter = StratifiedKFold(n_splits=config.cv, shuffle=True, random_state=config.seed)
    folds = list(splitter.split(np.zeros((len(rows), 1)), y_idx))
    fold_of = np.empty(len(rows), dtype=object)
    for k, (_, test) in enumerate(folds):
        fold_of[test] = f"fold{k + 1}"
    y = np.asarray(class_names)[y_idx]
    n, X = len(rows), StoreRows(path, rows, datasets)
    return _Data("cv", labels, n, n, X, y, rows, rows, fold_of.tolist(), folds=folds)


def _load_data(
    table: FeatureTable, path: Path, datasets: Sequence[str], config: FitConfig
) -> _Data:
    """Check the labels and cut the store's rows for the evaluation ``config`` asks for; the
    rows of ``datasets`` (``features`` and the views in use) side by side."""
    if config.cv:
        return _cv_data(table, path, datasets, config)
    class_names = [str(c) for c in table.class_names]
    name_of = np.asarray(class_names)
    train, test, evaluation = split_rows(
        table, path, test_size=config.test_size, random_state=config.seed
    )
    train, test = np.sort(train), np.sort(test)  # ascending: blocks read from the store in order
    y_train_idx, y_test_idx = table.labels[train], table.labels[test]
    _check_labels(path, y_train_idx, y_test_idx, class_names)
    used = sorted(set(y_train_idx.tolist()) | set(y_test_idx.tolist()))
    split = table.split[test].tolist() if evaluation == "given split" else ["holdout"] * len(test)
    return _Data(
        evaluation,
        [class_names[i] for i in used],
        len(train),
        len(test),
        StoreRows(path, train, datasets),
        name_of[y_train_idx],
        train,
        test,
        [str(s) for s in split],
        StoreRows(path, test, datasets),
        name_of[y_test_idx],
    )


def _check_data_finite(path: Path, table: FeatureTable, data: _Data) -> None:
    """One pass over every row the run reads (train and evaluated rows, every dataset in
    use), block by block: a NaN or infinity is a one-line error naming example paths."""
    rows = np.union1d(data.train_rows, data.eval_rows)
    check_finite(StoreRows(path, rows, data.X_train.datasets), path, table.paths[rows])


def _run_one(name: str, built: tuple[Any, dict[str, Any]], data: _Data, config: FitConfig):
    """Fit and evaluate one classifier; its outcome (report entry, model, predictions)."""
    estimator, params = built
    rows = f"{config.cv}-fold cv on {data.n_train}" if config.cv else str(data.n_train)
    with slow_step(logger, "%s: training on %s rows ...", name, rows):
        if config.cv:
            outcome = _cross_validate(name, estimator, data, config)
        else:
            outcome = _holdout(name, estimator, data, config)
    result = outcome.result
    lo, hi = result["ci"]["accuracy"]
    logger.info(  # plain words; the table printed at the end has every score
        "%s: %.1f %% of %d %s right (likely %.1f-%.1f %%), trained in %.1f s",
        name,
        100 * result["accuracy"],
        data.n_test,
        "images, cross-validated" if config.cv else "test images",
        100 * lo,
        100 * hi,
        result["fit_seconds"],
    )
    outcome.result = {"clf": name, **result, "params": params}
    return outcome


def _store_path(config: FitConfig) -> Path:
    """The store ``--features`` names; if it is missing or a folder, an error whose hint is a
    command doing what the user meant (placeholders in capitals: ``YOUR_IMAGES``)."""
    path = Path(config.features)
    if path.is_file():
        return path
    extract, fit = command("extract"), command("fit")
    if path.is_dir():
        stores = sorted(path.glob("*.h5"))
        if stores:  # an output folder such as artifacts/: one of the stores in it was meant
            raise StoreError(
                f"{path} is a folder; pass a feature store in it: `{fit} --features "
                f"{_quoted(stores[0])}`",
                param="features",
            )
        store = _quoted(path.parent / f"{path.name or 'features'}.h5")
        raise StoreError(
            f"{path} is a folder, not a feature store; embed its images first with "
            f"`{extract} --data {_quoted(path)} --out {store}`, then run `{fit} --features "
            f"{store}`",
            param="features",
        )
    raise StoreError(
        f"no such file: {path}; make it from your images first with `{extract} --data "
        f"YOUR_IMAGES --out {_quoted(path)}` (YOUR_IMAGES: a folder of class folders, a CSV "
        "of path,label, or sklearn:digits)",
        param="features",
    )


def _quoted(path: Path) -> str:
    """``path`` as a shell word."""
    return shlex.quote(str(path))


def _plans(built: Mapping[str, tuple[Any, Any]], names: Sequence[str], config: FitConfig):
    """How each classifier of ``names`` will read the rows (:func:`fit_plan`): ``--search``
    reads them into a matrix; xgboost on ``--dask`` streams (its workers read the store)."""
    plans: dict[str, Plan] = {}
    for name in names:
        if config.search_enabled:
            plans[name] = "matrix"
        elif config.dask and name == "xgboost":
            plans[name] = "stream"
        else:
            plans[name] = fit_plan(built[name][0])
    return plans


def _check_memory(
    path: Path,
    built: Mapping[str, tuple[Any, Any]],
    names: Sequence[str],
    datasets: Sequence[str],
    config: FitConfig,
) -> None:
    """Refuse a run that will not fit in memory (:func:`check_fit_memory`), before reading."""
    every = _plans(built, CLASSIFIER_NAMES, config)
    check_fit_memory(
        path,
        {name: every[name] for name in names},
        n_views=len(datasets) - 1,
        audit=config.audit,
        streaming=[n for n, plan in every.items() if plan == "stream" and len(datasets) == 1],
        held_out={name: held_out_share(built[name][0]) for name in names},
    )


def _use_views(
    attrs: Mapping[str, Any],
    built: dict[str, tuple[Any, dict[str, Any]]],
    names: Sequence[str],
    config: FitConfig,
) -> tuple[str, ...]:
    """The store datasets the classifiers read: ``features``, plus each view's embeddings with
    a store's views in use (TTA, ``--augment``), as extra columns of each row (so every split
    keeps an image with its views); the classifiers of ``names`` are then wrapped in
    :class:`~pipeline.fit.views.ViewsClassifier`."""
    views = views_used(attrs, config.tta, config.augment)
    for name in names if views else ():
        estimator, params = built[name]
        built[name] = (
            with_views(name, estimator, views, config.tta, config.augment, config.dask),
            params,
        )
    return ("features", *(view_dataset(v) for v in views))


def _check_search(names: Sequence[str], config: FitConfig) -> None:
    if not config.search_enabled:
        return
    cv = config.search_cv
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise ConfigError(f"must be an int >= 2, got {cv!r}", param="search-cv")
    widen, bound = config.search_widen
    if isinstance(widen, bool) or not isinstance(widen, int) or widen < 0:
        raise ConfigError(f"must be an int >= 0 (rounds), got {widen!r}", param="search.widen")
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not bound >= 1:
        raise ConfigError(f"must be a number >= 1, got {bound!r}", param="search.widen_bound")
    searched = [name for name in names if name != "ensemble"]  # its candidates are searched
    missing = [name for name in searched if name not in config.search_spaces]
    if missing:
        raise ConfigError(
            f"no search space for {', '.join(missing)}: add [fit.search.{missing[0]}] to the "
            "config (parameter = [candidates])",
            param="search",
        )


def _log_plan(path: Path, data: _Data, names: Sequence[str], config: FitConfig) -> None:
    if "svc" in names and data.n_train > config.svc_warn_rows:
        logger.warning(
            "svc: %d training rows; exact RBF SVC costs grow quadratically or worse with rows "
            "(see docs/benchmarks.md). --clf svc_approx (Nystroem map + linear SVM) scales "
            "linearly at similar accuracy",
            data.n_train,
        )
    logger.info(
        "%s: %d classes, evaluation %s (%d train / %d test rows), classifiers %s%s",
        path,
        len(data.labels),
        data.evaluation if not config.cv else f"{config.cv}-fold cv",
        data.n_train,
        data.n_test,
        ", ".join(names),
        f", hyperparameters searched by {config.search_cv}-fold inner CV"
        if config.search_enabled
        else "",
    )


def _report(
    path: Path, table: FeatureTable, data: _Data, results: list, config: FitConfig
) -> dict[str, Any]:
    """The content of report.json (before per-class data is made compact)."""
    warnings = []
    note = separability_warning(data.n_test, results[0]["ci"]["accuracy"], cv=bool(config.cv))
    if note:  # logged once, here; report["warnings"] keeps it for the reports
        logger.warning("%s", note)
        warnings.append(note)
    report = {
        "summary": "",  # the plain sentence the reports lead with, set below
        "features": str(path),
        "fingerprint": table.attrs.get("fingerprint"),
        "n_train": data.n_train,
        "n_test": data.n_test,
        "evaluation": data.evaluation,
        "cv": config.cv,
        "test_size": config.test_size if data.evaluation == "holdout" else None,
        "seed": config.seed,
        "class_names": data.labels,
        "backbone": {key: table.attrs.get(key) for key in BACKBONE_KEYS},
        "pipeline_version": __version__,
        "comparison_png": "comparison.png",
        "predictions": "predictions.csv",
        "html": "report.html",
        "warnings": warnings,
        "notes": [],
        "config": dataclasses.asdict(config),
        "views": views_report(table.attrs, config.tta, config.augment),
        "results": results,
    }
    report["summary"] = plain_summary(report)
    return report


# long: a numpydoc docstring; its code (checks, one _run_one per classifier, report) is < 60.
def run_fit(config: FitConfig) -> dict[str, Any]:
    """Fit, evaluate and save every classifier named by ``config.clf``; return the report.

    Parameters
    ----------
    config : FitConfig
        Where the store is, which classifiers, how to evaluate, where to write.

    Returns
    -------
    dict
        The content of ``report.json``; ``results`` is sorted best first (accuracy), each
        with its confidence intervals (``ci``), ``tied_with_best`` and ``p_value_vs_best``.

    Raises
    ------
    PipelineError, ValueError
        Bad configuration or a store no classifier can learn from (one-line messages).
    """
    names = parse_clf(config.clf)
    _check_config(config)
    _check_search(names, config)
    path = _store_path(config)
    out = Path(config.out)
    check_out_dir(out)  # before any training: a bad --out costs nothing
    if check_replace(out, dataclasses.asdict(config), config.replace):
        logger.info("--replace: this run replaces the outputs of another run in %s", out)
    attrs = read_attrs(path)
    # Build every estimator first, so a bad hyperparameter (even of a classifier not run this
    # time, such as a typo in --set) fails before any training.
    built = {name: _build(name, config) for name in CLASSIFIER_NAMES}
    if config.dask and "xgboost" not in names:
        logger.warning("--dask only affects xgboost, which is not among --clf %s", config.clf)
    datasets = _use_views(attrs, built, names, config)
    _check_memory(path, built, names, datasets, config)  # before reading: say what to do
    table = read_store(path, with_features=False)  # row columns only; features in blocks
    data = _load_data(table, path, datasets, config)
    _check_data_finite(path, table, data)
    _log_plan(path, data, names, config)
    outcomes: dict[str, _Outcome] = {}
    for name in names:  # ensemble last (registry order): its candidates take the choices
        if name == "ensemble":
            built[name] = _with_candidates(built, outcomes, config)
        outcomes[name] = _run_one(name, built[name], data, config)
    _compare(outcomes, data, config)
    if "ensemble" in outcomes:
        outcomes["ensemble"].result["ensemble"] = ensemble_summary(outcomes, data, config)
    _train_saved_models(outcomes, built, data, path, config)
    # best first; stable, so equal accuracies keep the --clf order (as compare_to_best does)
    ranked = sorted(outcomes.values(), key=lambda o: -o.result["accuracy"])
    report = _report(path, table, data, [o.result for o in ranked], config)
    settings = dataclasses.asdict(config)
    with publish_run(out, settings, replace=config.replace) as staging:  # all outputs, or none
        report = write_outputs(staging, report, ranked, data, table, config)
    logger.debug("results:\n%s", format_table(report["results"]))
    logger.debug("report written to %s", out / "report.json")
    return report
