"""Stage two: fit and compare classifiers on a feature store (``python -m pipeline.fit``).

For each classifier (nn, svc, xgboost, logreg) a scikit-learn ``Pipeline`` is fitted on the
train rows of ``artifacts/features.h5`` and evaluated on the store's own test (else val) rows,
a stratified seeded holdout, or stratified K-fold cross-validation (``--cv K``). The results go
to ``<out>/report.json``, ``<out>/report.md``, PNG plots, and ``<out>/models/<clf>.joblib``.

This module imports neither torch nor the estimators at import time, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._cli import add_verbosity, setup_logging
from ..config import FitConfig, parse_set_overrides
from ..exceptions import PipelineError, StoreError
from ..store import atomic_path, check_finite, read_store, split_table

__all__ = [
    "BACKBONE_KEYS",
    "MODEL_FORMAT_VERSION",
    "ModelFileError",
    "build_parser",
    "load_model_file",
    "main",
    "parse_clf",
    "run_fit",
]

logger = logging.getLogger(__name__)

CLASSIFIER_NAMES = ("nn", "svc", "xgboost", "logreg", "svc_approx")
ALL_CLASSIFIERS = ("nn", "svc", "xgboost", "logreg")  # what --clf all runs
MODEL_FORMAT_VERSION = 1
#: Store attributes copied into every model file, so predictions can rebuild the same embedding.
BACKBONE_KEYS = (
    "jpeg_draft",
    "gpu_decode",
    "model",
    "weights",
    "preprocessing",
    "preprocessing_fields",
    "precision",
    "fingerprint",
    "feature_dim",
)
_MODEL_KEYS = ("clf", "estimator", "class_names", "backbone")
#: Backbone keys added after model files were first written; absent means off.
_LATER_BACKBONE_KEYS = frozenset({"gpu_decode"})


class ModelFileError(PipelineError, ValueError):
    """A model file is missing, unreadable, of another format version, or lacks metadata."""


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
            raise ValueError(
                f"--clf: unknown classifier {part!r}; valid options: "
                f"{', '.join(CLASSIFIER_NAMES)}, all, or a comma list such as svc,xgboost"
            )
        names += [c for c in candidates if c not in names]
    return names


def _check_config(config: FitConfig) -> None:
    cv = config.cv
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 0 or cv == 1:
        raise ValueError(f"--cv: must be 0 (no cross-validation) or K >= 2, got {cv!r}")
    ts = config.test_size
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 < ts < 1:
        raise ValueError(f"--test-size: must be a fraction in (0, 1), got {ts!r}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ValueError(f"--seed: must be an int, got {config.seed!r}")


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
    from ..estimators import make_classifier

    params = _classifier_params(name, config)
    try:
        return make_classifier(name, **params), params
    except (TypeError, ValueError) as exc:
        raise ValueError(f"[fit.{name}] / --set {name}.KEY=VALUE: {exc}") from exc


def _fit_xgboost_dask(estimator: Any, X: np.ndarray, y: np.ndarray, address: str) -> Any:
    """Fit the xgboost pipeline on the Dask cluster at ``address`` (``local[:N]`` or
    ``tcp://HOST:PORT``); see :func:`pipeline.distributed.fit_xgboost_dask`. The result
    predicts the original labels and pickles without the cluster."""
    from ..extract.executors import fit_xgboost_dask

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
    from .report import classification_metrics

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

    from .report import classification_metrics, summarize_folds

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


# -- model files --------------------------------------------------------------------------------


def _save_model(path: Path, payload: Mapping[str, Any]) -> None:
    import joblib

    with atomic_path(path) as tmp:
        joblib.dump(dict(payload), tmp)


def load_model_file(path: str | Path) -> dict[str, Any]:
    """Load and validate a ``models/<clf>.joblib`` file written by ``python -m pipeline.fit``.

    .. warning:: joblib files are pickles: loading one runs code from it. Load only model
       files from sources you trust.

    Parameters
    ----------
    path : str or Path
        The model file.

    Returns
    -------
    dict
        ``format_version``, ``pipeline_version``, ``clf``, ``estimator`` (a fitted sklearn
        Pipeline predicting class names), ``class_names``, ``backbone`` (``model``,
        ``weights``, ``preprocessing``, ``preprocessing_fields``, ``precision``,
        ``fingerprint``, ``feature_dim``) and ``store``.

    Raises
    ------
    ModelFileError
        The file is missing, not a joblib dict, of another ``format_version``, or lacks keys.
    """
    import joblib

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file; train one with `python -m pipeline.fit`")
    try:
        payload = joblib.load(path)
    except Exception as exc:  # unpickling fails in many ways; all mean "not a model file"
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ModelFileError(
            f"{path}: not a readable pipeline model file ({detail}); use a "
            "models/<clf>.joblib written by `python -m pipeline.fit`"
        ) from exc
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ModelFileError(
            f"{path}: not a pipeline model file (holds a {type(payload).__name__}, expected the "
            "dict written by `python -m pipeline.fit`)"
        )
    if payload["format_version"] != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format_version {payload['format_version']!r}, but this pipeline "
            f"{__version__} reads format_version {MODEL_FORMAT_VERSION}; retrain with "
            "`python -m pipeline.fit`"
        )
    missing = [k for k in _MODEL_KEYS if k not in payload]
    if missing:
        raise ModelFileError(
            f"{path}: model file lacks {missing}; retrain with `python -m pipeline.fit`"
        )
    backbone = payload["backbone"]
    if not isinstance(backbone, dict):
        raise ModelFileError(f"{path}: model file's backbone metadata is not a dict; retrain it")
    missing = [k for k in BACKBONE_KEYS if k not in backbone and k not in _LATER_BACKBONE_KEYS]
    if missing:
        raise ModelFileError(
            f"{path}: model file's backbone metadata lacks {missing}; retrain with "
            "`python -m pipeline.fit` on a current feature store"
        )
    if not hasattr(payload["estimator"], "predict"):
        raise ModelFileError(f"{path}: model file's estimator has no predict(); retrain it")
    return payload


# -- the stage ----------------------------------------------------------------------------------


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
            f"--features: no such file: {path}; run `python -m pipeline.extract --out {path}` first"
        )
    table = read_store(path)
    check_finite(table, path)
    class_names = [str(c) for c in table.class_names]
    name_of = np.asarray(class_names)

    # Build every estimator first, so a bad hyperparameter (even of a classifier not run this
    # time, such as a typo in --set) fails before any training.
    built = {name: _build(name, config) for name in CLASSIFIER_NAMES}
    estimators = {name: built[name] for name in names}
    if config.dask and "xgboost" not in names:
        logger.warning("--dask only affects xgboost, which is not among --clf %s", config.clf)

    if config.cv:
        labelled = table.labels >= 0
        X, y_idx = table.features[labelled], table.labels[labelled]
        _check_labels(path, y_idx, None, class_names)
        _check_cv(path, y_idx, config.cv, class_names)
        y = name_of[y_idx]
        evaluation, n_train, n_test = "cv", len(y), len(y)
        used = sorted(set(y_idx.tolist()))
    else:
        X_train, y_train_idx, X_test, y_test_idx, evaluation = split_table(
            table, path, test_size=config.test_size, random_state=config.seed
        )
        _check_labels(path, y_train_idx, y_test_idx, class_names)
        y_train, y_test = name_of[y_train_idx], name_of[y_test_idx]
        n_train, n_test = len(y_train), len(y_test)
        used = sorted(set(y_train_idx.tolist()) | set(y_test_idx.tolist()))
    labels = [class_names[i] for i in used]
    if "svc" in names and n_train > config.svc_warn_rows:
        logger.warning(
            "svc: %d training rows; exact RBF SVC costs grow quadratically or worse with rows "
            "(see docs/benchmarks.md). --clf svc_approx (Nystroem map + linear SVM) scales "
            "linearly at similar accuracy",
            n_train,
        )
    logger.info(
        "%s: %d classes, evaluation %s (%d train / %d test rows), classifiers %s",
        path,
        len(labels),
        evaluation if not config.cv else f"{config.cv}-fold cv",
        n_train,
        n_test,
        ", ".join(names),
    )

    out = Path(config.out)
    backbone = {key: table.attrs.get(key) for key in BACKBONE_KEYS}
    from .report import (
        format_table,
        write_comparison_png,
        write_confusion_png,
        write_report_json,
        write_report_md,
    )

    results = []
    for name in names:
        estimator, params = estimators[name]
        if config.cv:
            fitted, result = _cross_validate(name, estimator, X, y, labels, config)
        else:
            fitted, result, _ = _evaluate(
                name, estimator, X_train, y_train, X_test, y_test, labels, config
            )
        model_rel = f"models/{name}.joblib"
        _save_model(
            out / model_rel,
            {
                "format_version": MODEL_FORMAT_VERSION,
                "pipeline_version": __version__,
                "clf": name,
                "estimator": fitted,
                "class_names": list(labels),
                "backbone": dict(backbone),
                "store": str(path),
            },
        )
        confusion_rel = f"confusion_{name}.png"
        write_confusion_png(
            out / confusion_rel, result["confusion_matrix"], labels, f"{name} ({evaluation})"
        )
        result = {
            "clf": name,
            **result,
            "params": params,
            "model": model_rel,
            "confusion_png": confusion_rel,
        }
        logger.info(
            "%s: accuracy %.4f, macro F1 %.4f (fit %.2f s, predict %.3f s)",
            name,
            result["accuracy"],
            result["macro_f1"],
            result["fit_seconds"],
            result["predict_seconds"],
        )
        results.append(result)

    results.sort(key=lambda r: -r["accuracy"])  # stable: ties keep --clf order
    write_comparison_png(out / "comparison.png", results)
    report = {
        "features": str(path),
        "fingerprint": table.attrs.get("fingerprint"),
        "n_train": n_train,
        "n_test": n_test,
        "evaluation": evaluation,
        "cv": config.cv,
        "test_size": config.test_size if evaluation == "holdout" else None,
        "seed": config.seed,
        "class_names": labels,
        "backbone": backbone,
        "pipeline_version": __version__,
        "comparison_png": "comparison.png",
        "results": results,
    }
    write_report_json(out / "report.json", report)
    write_report_md(out / "report.md", report)
    logger.debug("results:\n%s", format_table(results))
    logger.info("report written to %s", out / "report.json")
    return report


# -- CLI ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.fit",
        description="Fit and compare classifiers (nn, svc, xgboost, logreg) on a feature store "
        "from `python -m pipeline.extract`. Defaults come from configs/default.toml ([fit]).",
    )
    add = parser.add_argument
    add("--config", help="TOML config file (default: configs/default.toml)")
    add("--features", help="HDF5 feature store (default artifacts/features.h5)")
    add("--clf", help="nn | svc | xgboost | logreg | all, or a comma list such as svc,xgboost")
    add("--cv", type=int, help="K >= 2: stratified K-fold cross-validation; 0: split or holdout")
    add("--test-size", type=float, help="holdout fraction when the store has no split (0.2)")
    add("--out", help="output folder for report.json, report.md, plots and models/ (artifacts)")
    add("--seed", type=int, help="random seed for splits and classifiers (0)")
    add("--dask", help="train xgboost on Dask: local[:N] or tcp://HOST:PORT")
    add(
        "--set",
        dest="sets",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set svc.C=10 --set nn.hidden_layer_sizes=[512]",
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad usage or input)."""
    args = build_parser().parse_args(argv)
    setup_logging(args)
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k not in ("config", "verbose", "quiet", "sets") and v is not None
    }
    try:
        sets = parse_set_overrides(args.sets)
        config = FitConfig.from_file(args.config, sets=sets, **overrides)
        report = run_fit(config)
    except (PipelineError, ValueError, NotImplementedError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    from .report import format_table

    print(format_table(report["results"]))
    print(f"report: {Path(config.out) / 'report.json'}")
    return 0
