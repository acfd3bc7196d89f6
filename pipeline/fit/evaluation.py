"""Stage two: fit and compare classifiers on a feature store (``python -m pipeline.fit``).

For each classifier (nn, svc, xgboost, logreg) a scikit-learn ``Pipeline`` is fitted on the
train rows of ``artifacts/features.h5`` and evaluated on the store's own test (else val) rows,
a stratified seeded holdout, or stratified K-fold cross-validation (``--cv K``). The results go
to ``<out>/report.json``, ``<out>/report.md``, PNG plots, and ``<out>/models/<clf>.joblib``.

This module imports neither torch nor the estimators at import time, so ``--help`` is instant.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..classifiers import ALL_CLASSIFIERS, CLASSIFIER_NAMES, make_classifier
from ..config import FitConfig
from ..exceptions import ConfigError, StoreError
from ..store import check_finite, read_store, split_table
from .memory import check_fit_memory
from .model_file import BACKBONE_KEYS, MODEL_FORMAT_VERSION, save_model
from .report import (
    classification_metrics,
    format_table,
    summarize_folds,
    write_comparison_png,
    write_confusion_png,
    write_report_json,
    write_report_md,
)
from .views import saved_estimator, saved_views, views_report, views_used, wide_features, with_views

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
    section = getattr(config, name) or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"[fit.{name}]: expected a table of hyperparameters, got {section!r}")
    params: dict[str, Any] = {"random_state": config.seed}
    for key, value in section.items():
        if isinstance(value, str) and value.lower() == "none":
            value = None  # TOML has no null
        if key == "hidden_layer_sizes" and isinstance(value, list):
            value = tuple(value)
        params[key] = value
    return params


def _build(name: str, config: FitConfig):
    params = _classifier_params(name, config)
    try:
        return make_classifier(name, **params), params
    except (TypeError, ValueError) as exc:
        raise ValueError(f"[fit.{name}] / --set {name}.KEY=VALUE: {exc}") from exc


def _fit_xgboost_dask(estimator: Any, X: np.ndarray, y: np.ndarray, address: str) -> Any:
    """Fit the xgboost pipeline on the Dask cluster at ``address`` (``local[:N]`` or
    ``tcp://HOST:PORT``); see :func:`pipeline.fit.dask.fit_xgboost_dask`. The result
    predicts the original labels and pickles without the cluster."""
    from .dask import fit_xgboost_dask  # lazy: imports the estimators (torch, sklearn)

    return fit_xgboost_dask(estimator, X, y, address)


def _fit_one(name: str, estimator: Any, X: np.ndarray, y: np.ndarray, config: FitConfig) -> Any:
    if config.dask and name == "xgboost":
        return _fit_xgboost_dask(estimator, X, y, config.dask)
    if config.dask:
        logger.info("--dask: %s is not distributed; it trains in-process on the embeddings", name)
    return estimator.fit(X, y)


# -- evaluation ---------------------------------------------------------------------------------


def _evaluate(
    name: str,
    estimator: Any,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    labels: Sequence[str],
    config: FitConfig,
) -> tuple[Any, dict[str, Any], np.ndarray]:

    started = time.perf_counter()
    fitted = _fit_one(name, estimator, X_train, y_train, config)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    y_pred = fitted.predict(X_test)
    predict_seconds = time.perf_counter() - started
    proba = fitted.predict_proba(X_test) if hasattr(fitted, "predict_proba") else None
    scores = classification_metrics(y_test, y_pred, proba, fitted.classes_, labels)
    scores.update(fit_seconds=fit_seconds, predict_seconds=predict_seconds)
    return fitted, scores, y_pred


def _cross_validate(
    name: str,
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    config: FitConfig,
) -> tuple[Any, dict[str, Any]]:
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    folds, oof = [], np.empty(len(y), dtype=y.dtype)
    splitter = StratifiedKFold(n_splits=config.cv, shuffle=True, random_state=config.seed)
    for k, (train, test) in enumerate(splitter.split(X, y)):
        _, scores, y_pred = _evaluate(
            name, clone(estimator), X[train], y[train], X[test], y[test], labels, config
        )
        oof[test] = y_pred
        folds.append(scores)
        logger.debug("%s fold %d/%d: accuracy %.4f", name, k + 1, config.cv, scores["accuracy"])
    result = summarize_folds(folds)
    pooled = classification_metrics(y, oof, None, labels, labels)
    result["per_class"] = pooled["per_class"]
    result["confusion_matrix"] = pooled["confusion_matrix"]
    started = time.perf_counter()
    fitted = _fit_one(name, clone(estimator), X, y, config)
    result["refit_seconds"] = time.perf_counter() - started
    return fitted, result


# -- the stage ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Data:
    """The labelled rows of a store, ready for holdout (train/test) or cross-validation."""

    evaluation: str  # "cv", or how split_table chose the test rows
    labels: list[str]  # class names present, in class order
    n_train: int
    n_test: int
    X_train: np.ndarray
    y_train: np.ndarray  # class names
    X_test: np.ndarray | None = None  # None under cv
    y_test: np.ndarray | None = None


def _load_data(table: Any, path: Path, config: FitConfig) -> _Data:
    """Check the labels and cut the store's rows for the evaluation ``config`` asks for."""
    class_names = [str(c) for c in table.class_names]
    name_of = np.asarray(class_names)
    if config.cv:
        labelled = table.labels >= 0
        X, y_idx = table.features[labelled], table.labels[labelled]
        _check_labels(path, y_idx, None, class_names)
        _check_cv(path, y_idx, config.cv, class_names)
        labels = [class_names[i] for i in sorted(set(y_idx.tolist()))]
        return _Data("cv", labels, len(y_idx), len(y_idx), X, name_of[y_idx])
    X_train, y_train_idx, X_test, y_test_idx, evaluation = split_table(
        table, path, test_size=config.test_size, random_state=config.seed
    )
    _check_labels(path, y_train_idx, y_test_idx, class_names)
    used = sorted(set(y_train_idx.tolist()) | set(y_test_idx.tolist()))
    return _Data(
        evaluation,
        [class_names[i] for i in used],
        len(y_train_idx),
        len(y_test_idx),
        X_train,
        name_of[y_train_idx],
        X_test,
        name_of[y_test_idx],
    )


def _run_one(
    name: str, built: tuple[Any, dict[str, Any]], data: _Data, backbone: dict, config: FitConfig
) -> dict[str, Any]:
    """Fit and evaluate one classifier, save its model file and confusion plot; its result."""
    estimator, params = built
    out, labels = Path(config.out), data.labels
    if config.cv:
        fitted, result = _cross_validate(
            name, estimator, data.X_train, data.y_train, labels, config
        )
    else:
        fitted, result, _ = _evaluate(
            name, estimator, data.X_train, data.y_train, data.X_test, data.y_test, labels, config
        )
    model_rel = f"models/{name}.joblib"
    save_model(
        out / model_rel,
        {
            "format_version": MODEL_FORMAT_VERSION,
            "pipeline_version": __version__,
            "clf": name,
            "estimator": saved_estimator(fitted),
            "views": saved_views(fitted),  # views averaged at test time (fit/views.py)
            "class_names": list(labels),
            "backbone": dict(backbone),
            "store": str(Path(config.features)),
        },
    )
    confusion_rel = f"confusion_{name}.png"
    write_confusion_png(
        out / confusion_rel, result["confusion_matrix"], labels, f"{name} ({data.evaluation})"
    )
    logger.info(
        "%s: accuracy %.4f, macro F1 %.4f (fit %.2f s, predict %.3f s)",
        name,
        result["accuracy"],
        result["macro_f1"],
        result["fit_seconds"],
        result["predict_seconds"],
    )
    return {
        "clf": name,
        **result,
        "params": params,
        "model": model_rel,
        "confusion_png": confusion_rel,
    }


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
        The content of ``report.json``; ``results`` is sorted best first (accuracy).

    Raises
    ------
    PipelineError, ValueError
        Bad configuration or a store no classifier can learn from (one-line messages).
    """
    names = parse_clf(config.clf)
    _check_config(config)
    path = Path(config.features)
    if not path.is_file():
        raise StoreError(
            f"no such file: {path}; run `python -m pipeline.extract --out {path}` first",
            param="features",
        )
    check_fit_memory(path, names)
    table = read_store(path)
    views = views_used(table.attrs, config.tta, config.augment)
    table.features = wide_features(table, views)  # views as columns: splits keep them together
    check_finite(table, path)
    # Build every estimator first, so a bad hyperparameter (even of a classifier not run this
    # time, such as a typo in --set) fails before any training.
    built = {name: _build(name, config) for name in CLASSIFIER_NAMES}
    if config.dask and "xgboost" not in names:
        logger.warning("--dask only affects xgboost, which is not among --clf %s", config.clf)
    for n in names:  # views as extra samples and/or test-time augmentation (fit/views.py)
        built[n] = (
            with_views(n, built[n][0], views, config.tta, config.augment, config.dask),
            built[n][1],
        )
    data = _load_data(table, path, config)
    if "svc" in names and data.n_train > config.svc_warn_rows:
        logger.warning(
            "svc: %d training rows; exact RBF SVC costs grow quadratically or worse with rows "
            "(see docs/benchmarks.md). --clf svc_approx (Nystroem map + linear SVM) scales "
            "linearly at similar accuracy",
            data.n_train,
        )
    logger.info(
        "%s: %d classes, evaluation %s (%d train / %d test rows), classifiers %s",
        path,
        len(data.labels),
        data.evaluation if not config.cv else f"{config.cv}-fold cv",
        data.n_train,
        data.n_test,
        ", ".join(names),
    )
    backbone = {key: table.attrs.get(key) for key in BACKBONE_KEYS}
    results = [_run_one(name, built[name], data, backbone, config) for name in names]
    results.sort(key=lambda r: -r["accuracy"])  # stable: ties keep --clf order
    out = Path(config.out)
    write_comparison_png(out / "comparison.png", results)
    report = {
        "features": str(path),
        "fingerprint": table.attrs.get("fingerprint"),
        "n_train": data.n_train,
        "n_test": data.n_test,
        "evaluation": data.evaluation,
        "cv": config.cv,
        "test_size": config.test_size if data.evaluation == "holdout" else None,
        "seed": config.seed,
        "class_names": data.labels,
        "backbone": backbone,
        "views": views_report(table.attrs, config.tta, config.augment),
        "pipeline_version": __version__,
        "comparison_png": "comparison.png",
        "results": results,
    }
    write_report_json(out / "report.json", report)
    write_report_md(out / "report.md", report)
    logger.debug("results:\n%s", format_table(results))
    logger.info("report written to %s", out / "report.json")
    return report
