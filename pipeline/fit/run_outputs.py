"""Everything one ``fit`` run writes into its output folder, from the evaluated classifiers.

``models/<clf>.joblib``, ``predictions.csv`` / ``.npz``, ``comparison.png`` (the decision chart),
``confusion_<clf>.png``, ``report.json`` (per-class data compact beyond 30 classes, the full
matrices in ``confusion_<clf>.csv``), ``report.md`` and ``report.html`` with the data-quality
audit (``label_issues.csv``, ``duplicates.csv``, ``thumbs/``) and the data survey
(``outliers.csv``, ``duplicates_within_split.csv``, ``class_balance.csv``, the embedding map's
``plotly.min.js``). Every file is written atomically.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from .._io import atomic_path
from ..rows import StoreRows, materialize
from ..store import read_block_rows, reading_store
from .data_quality import AUDIT_MAX_ROWS, audit_table, content_hashes, leakage_warning
from .data_survey import DataSurvey, survey
from .decision_chart import write_decision_png
from .html_report import _confusion_chart, compact_result, write_html_report
from .model_file import MODEL_FORMAT_VERSION, save_model
from .predictions import write_predictions
from .report import write_report_json, write_report_md
from .views import saved_estimator, saved_views

if TYPE_CHECKING:
    import pandas as pd

    from ..config import FitConfig
    from ..store import FeatureTable

__all__ = ["write_confusion_png", "write_outputs"]

logger = logging.getLogger(__name__)

#: Beyond this many classes report.json keeps per-class data compact (see compact_result).
COMPACT_CLASSES = 30


def write_confusion_png(
    path: Path, matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str
) -> Path:
    """The report's confusion chart (row-normalised; the classes with the most errors when
    there are more than :data:`COMPACT_CLASSES`) as a PNG file."""
    uri, _ = _confusion_chart(np.asarray(matrix), class_names, COMPACT_CLASSES, title)
    with atomic_path(path) as tmp:
        tmp.write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    return path


def _save_models(out: Path, report: dict[str, Any], outcomes: Sequence[Any]) -> None:
    for outcome in outcomes:
        result = outcome.result
        result["model"] = f"models/{result['clf']}.joblib"
        save_model(
            out / result["model"],
            {
                "format_version": MODEL_FORMAT_VERSION,
                "pipeline_version": __version__,
                "clf": result["clf"],
                "estimator": saved_estimator(outcome.fitted),
                "views": saved_views(outcome.fitted),  # views averaged at test time
                "class_names": list(report["class_names"]),
                "backbone": dict(report["backbone"]),
                "store": report["features"],
                # which rows the model saw: {"rows": "train" | "all", "n_rows", "how"}
                "trained_on": dict(result.get("trained_on") or {}),
            },
        )


def _labelled(table: FeatureTable, split: np.ndarray, store: Path) -> FeatureTable:
    """The labelled rows of ``table`` with ``split`` and their plain embeddings, read from
    ``store`` into one float32 matrix: the audit's memory (labelled rows x dims x 4 bytes, plus
    its probes' copies), the one part of ``fit`` that holds the rows whatever the classifier.
    Issue rows are mapped back to store rows by :func:`audit_table`'s caller."""
    labelled = np.flatnonzero(table.labels >= 0)
    with reading_store(store):
        features = materialize(StoreRows(store, labelled), read_block_rows())
    return dataclasses.replace(
        table,
        features=features,
        labels=table.labels[labelled],
        paths=table.paths[labelled],
        split=split[labelled],
        keys=table.keys[labelled],
        views={},
    )


def _audit(
    table: FeatureTable, data: Any, config: FitConfig, store: Path
) -> tuple[
    pd.DataFrame | None,
    pd.DataFrame | None,
    dict[str, str],
    list[str],
    tuple[DataSurvey, tuple[np.ndarray, str]] | None,
]:
    """Label issues and duplicates across *this run's* split: ``(issues, duplicates,
    unreadable, notes)``. Holdout: the drawn test rows against the train rows; --cv: every row
    is tested once, so there is no split to leak across and duplicates are not checked.
    Only the labelled rows are audited (all that fit reads); ``issues["row"]`` is a store row.
    The last item is the data survey of the same rows and their 2-D map (:mod:`.data_survey`,
    :mod:`.embedding_map`), ``None`` when the audit is skipped."""
    if not config.audit:
        return None, None, {}, ["data-quality audit skipped (--no-audit)"], None
    n_labelled = int((table.labels >= 0).sum())
    if n_labelled > AUDIT_MAX_ROWS:
        note = (
            f"data-quality audit skipped: {n_labelled} labelled rows are more than "
            f"{AUDIT_MAX_ROWS} (its duplicate search grows with test x train rows); audit a "
            "subset: extract a sample of the images into another --out and fit that"
        )
        logger.warning("%s", note)
        return None, None, {}, [note], None
    split = np.full(len(table.labels), "", dtype=object)
    notes = []
    if config.cv:
        notes.append(
            "--cv: every row is tested once, in its fold; duplicates across splits are not "
            "checked (use a holdout or given split for the leakage check)"
        )
    else:
        split[data.train_rows] = "train"
        split[data.eval_rows] = "test"
    started = time.perf_counter()
    labelled = _labelled(table, split, store)
    hashes, unreadable = content_hashes(labelled.paths.tolist())
    issues, duplicates, _ = audit_table(labelled, seed=config.seed, hashes=hashes)
    if len(issues):
        issues["row"] = np.flatnonzero(table.labels >= 0)[issues["row"].to_numpy(dtype=int)]
    logger.info(
        "audit: %d likely wrong label(s), %d test image(s) copying training images (%.1f s)",
        len(issues),
        len(duplicates),
        time.perf_counter() - started,
    )
    return (
        issues,
        (None if config.cv else duplicates),
        unreadable,
        notes,
        _survey(labelled, hashes, config.seed),
    )


def _survey(
    labelled: FeatureTable, hashes: list[str | None], seed: int
) -> tuple[DataSurvey, tuple[np.ndarray, str]]:
    """Outliers, duplicates inside a split, class balance and the 2-D map of the audited rows."""
    from .embedding_map import project_2d

    started = time.perf_counter()
    names = np.asarray([str(c) for c in labelled.class_names], dtype=object)
    found = survey(
        labelled.features,
        labelled.paths.tolist(),
        names[labelled.labels].tolist(),
        labelled.split.tolist(),
        hashes=hashes,
        seed=seed,
    )
    surveyed = time.perf_counter()
    projection = project_2d(labelled.features, seed=seed)
    logger.info(
        "survey: %.1f s; map (%s): %.1f s",
        surveyed - started,
        projection[1],
        time.perf_counter() - surveyed,
    )
    return found, projection


def _write_html(
    out: Path,
    report: dict[str, Any],
    table: FeatureTable,
    data: Any,
    config: FitConfig,
    predictions: pd.DataFrame,
) -> None:
    """``report.html`` from the run's predictions (the rows of ``predictions.csv``)."""
    issues, duplicates, unreadable, notes, surveyed = _audit(
        table, data, config, Path(report["features"])
    )
    report["notes"] += notes
    leak = leakage_warning(duplicates) if duplicates is not None else None
    if leak:  # logged once, here; report["warnings"] keeps it for the reports
        logger.warning("%s", leak)
        report["warnings"].append(leak)
    if surveyed:
        found, (_, map_note) = surveyed
        report["notes"] += found.notes
        report["data_survey"] = {
            "outliers_csv": "outliers.csv",
            "n_outliers": found.n_flagged,
            "outlier_fence": round(found.threshold, 6),
            "duplicates_within_split_csv": "duplicates_within_split.csv",
            "n_duplicates_within_split": len(found.split_duplicates),
            "class_balance_csv": "class_balance.csv",
            "tiny_classes": found.tiny_classes,
            "map": map_note,
        }
    failed = dict(zip(table.failed.paths, table.failed.errors, strict=True))
    failed.update(unreadable)
    write_html_report(
        out,
        report=report,
        predictions=predictions,
        label_issues=issues,
        duplicates=duplicates,
        failed=failed,
        survey=surveyed[0] if surveyed else None,
        projection=surveyed[1] if surveyed else None,
    )


def write_outputs(
    out: Path,
    report: dict[str, Any],
    outcomes: Sequence[Any],
    data: Any,
    table: FeatureTable,
    config: FitConfig,
) -> dict[str, Any]:
    """Write every output of a run into ``out``; return report.json's content as written.

    ``outcomes`` (best first) carry each classifier's result, fitted model and per-row
    predictions (``y_pred``, ``proba`` in class order) on ``data``'s evaluated rows.
    """
    labels = report["class_names"]
    _save_models(out, report, outcomes)
    predictions = write_predictions(
        out,
        paths=table.paths[data.eval_rows].tolist(),
        split=data.eval_split,
        labels=data.y_eval,
        class_names=labels,
        proba={o.result["clf"]: o.proba for o in outcomes},
        preds={o.result["clf"]: o.y_pred for o in outcomes},
        rows=data.eval_rows,
    )
    for r in report["results"]:
        r["confusion_png"] = f"confusion_{r['clf']}.png"
        title = f"{r['clf']} ({data.evaluation}, row-normalised)"
        write_confusion_png(out / r["confusion_png"], r["confusion_matrix"], labels, title)
    write_decision_png(out / "comparison.png", report["results"])
    _write_html(out, report, table, data, config, predictions)
    compact = {
        **report,
        "results": [
            compact_result(r, labels, max_classes=COMPACT_CLASSES) for r in report["results"]
        ],
    }
    write_report_json(out / "report.json", compact)
    write_report_md(out / "report.md", compact)
    return compact
