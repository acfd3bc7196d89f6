"""Stage two's report: metrics, confusion-matrix and comparison plots, report.json / report.md.

Plots use matplotlib's object API (``Figure`` with the Agg canvas), never ``pyplot``, so no
global backend or figure state is touched. Every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from .html_report import per_class_rows
from .summary import TIED_MEANING, trained_on

__all__ = [
    "SCORE_KEYS",
    "classification_metrics",
    "format_table",
    "verdict",
    "summarize_folds",
    "write_comparison_png",
    "write_confusion_png",
    "write_report_json",
    "write_report_md",
]

logger = logging.getLogger(__name__)

#: Scalar scores of one evaluation, in the order tables show them.
SCORE_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "roc_auc")
_TIME_KEYS = ("fit_seconds", "predict_seconds")


def _clean(value: Any) -> Any:
    """Make ``value`` JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# long: a numpydoc docstring; the code is one metric per report.json key.
def classification_metrics(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    proba: np.ndarray | None,
    proba_classes: Sequence[Any],
    labels: Sequence[Any],
) -> dict[str, Any]:
    """Scores of one set of predictions.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels (class names).
    proba : ndarray of shape (n_samples, n_classes) or None
        Predicted probabilities, columns in ``proba_classes`` order.
    proba_classes : sequence
        The classifier's ``classes_``.
    labels : sequence
        Every class to report on, in display order (rows of the confusion matrix).

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``log_loss`` (None without
        probabilities), ``roc_auc`` (binary problems only), ``per_class`` (precision, recall,
        f1, support per class) and ``confusion_matrix`` (rows: true, columns: predicted).
    """
    from sklearn import metrics

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = list(labels)
    with warnings.catch_warnings():
        # Classes absent from a test fold make some scores ill-defined; those are reported
        # as 0 (zero_division) rather than warned about once per fold.
        warnings.simplefilter("ignore")
        result: dict[str, Any] = {
            "accuracy": metrics.accuracy_score(y_true, y_pred),
            "balanced_accuracy": metrics.balanced_accuracy_score(y_true, y_pred),
            "macro_f1": metrics.f1_score(
                y_true, y_pred, labels=labels, average="macro", zero_division=0
            ),
            "log_loss": None,
        }
        if proba is not None:
            result["log_loss"] = metrics.log_loss(y_true, proba, labels=list(proba_classes))
        if len(labels) == 2:
            auc = None
            if proba is not None and len(np.unique(y_true)) == 2 and len(proba_classes) == 2:
                auc = metrics.roc_auc_score(y_true == proba_classes[1], proba[:, 1])
            result["roc_auc"] = auc
        precision, recall, f1, support = metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
    result["per_class"] = {
        str(name): {
            "precision": precision[i],
            "recall": recall[i],
            "f1": f1[i],
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    result["confusion_matrix"] = metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return _clean(result)


def summarize_folds(folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over cross-validation folds of every scalar score and time.

    ``accuracy`` becomes the mean over folds and ``accuracy_std`` its standard deviation;
    ``fold_scores`` keeps each fold's values.
    """
    summary: dict[str, Any] = {}
    for key in (*SCORE_KEYS, *_TIME_KEYS):
        values = [f.get(key) for f in folds]
        if not values or any(v is None for v in values):
            if key in folds[0]:
                summary[key] = summary[f"{key}_std"] = None
            continue
        summary[key] = float(np.mean(values))
        summary[f"{key}_std"] = float(np.std(values))
    summary["fold_scores"] = [
        {k: f[k] for k in (*SCORE_KEYS, *_TIME_KEYS) if k in f} for f in folds
    ]
    return _clean(summary)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save_png(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_confusion_png(
    path: str | Path, matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str
) -> Path:
    """Plot a confusion matrix (counts, rows normalised for colour) as a PNG."""
    cm = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    size = min(20.0, 2.5 + 0.45 * n)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(class_names), rotation=90 if n > 6 else 0)
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=8)
    return _save_png(fig, Path(path))


def write_comparison_png(path: str | Path, results: Sequence[Mapping[str, Any]]) -> Path:
    """Bar chart of accuracy, balanced accuracy and macro F1 per classifier (with CV std)."""
    keys = ("accuracy", "balanced_accuracy", "macro_f1")
    fig = _figure(max(5.0, 1.8 * len(results) + 2.0), 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(results))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        values = [r.get(key) or 0.0 for r in results]
        errors = [r.get(f"{key}_std") or 0.0 for r in results]
        has_err = any(r.get(f"{key}_std") is not None for r in results)
        ax.bar(
            x + (k - 1) * width,
            values,
            width,
            yerr=errors if has_err else None,
            capsize=3,
            label=key.replace("_", " "),
        )
    ax.set_xticks(x, labels=[r["clf"] for r in results])
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("score")
    ax.set_title("classifier comparison")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=len(keys), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save_png(fig, Path(path))


def write_report_json(path: str | Path, report: Mapping[str, Any]) -> Path:
    """Write ``report`` as indented JSON (NaN written as null)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(report), indent=2) + "\n", encoding="utf-8")
    return path


def _fmt(value: Any, std: Any = None) -> str:
    if value is None:
        return "-"
    if std is not None:
        return f"{value:.4f} ± {std:.4f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def verdict(result: Mapping[str, Any]) -> str:
    """``best``, ``tied (p=..)`` or ``worse (p=..)``: the result against the best, by its
    Holm-adjusted paired test (a tie is never shown as a win)."""
    p = result.get("p_value_vs_best")
    if result.get("tied_with_best") is None:
        return "-"
    if p is None:
        return "best"
    return f"{'tied' if result['tied_with_best'] else 'worse'} (p={p:.2g})"


def _interval(result: Mapping[str, Any], key: str) -> str:
    ci = (result.get("ci") or {}).get(key)
    if not ci or None in ci:
        return ""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _rows(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [
        "clf",
        "accuracy [95% CI]",
        "vs best",
        "balanced_acc",
        "macro_f1",
        "log_loss",
        "fit_s",
        "predict_s",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                str(r["clf"]),
                _fmt(r.get("accuracy"), r.get("accuracy_std")) + _interval(r, "accuracy"),
                verdict(r),
                *(
                    _fmt(r.get(k), r.get(f"{k}_std"))
                    for k in ("balanced_accuracy", "macro_f1", "log_loss")
                ),
                f"{r['fit_seconds']:.2f}",
                f"{r['predict_seconds']:.3f}",
            ]
        )
    return header, rows


def _search_rows(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """report.md lines on --search: space, choice, inner-CV score and time per classifier."""
    searched = [r for r in results if r.get("search")]
    if not searched:
        return []
    rows = [
        [
            str(r["clf"]),
            f"`{r['search']['space']}`",
            f"`{r['search']['best_params']}`"
            + (" (at the edge)" if r["search"].get("at_edge") else ""),
            _fmt(r["search"]["cv_score"]),
            _grown(r["search"].get("widen")),
            f"{r['search']['seconds']:.1f}",
        ]
        for r in searched
    ]
    header = ["clf", "final range", "chosen", "inner-CV accuracy", "range grew", "search_s"]
    return [
        "",
        "## Hyperparameter search (inner CV on training rows only)",
        "",
        *_md_table(header, rows),
        "",
        "A choice at the edge of a numeric range adds one value a log step beyond it and "
        "searches again, up to the budget (rounds) and within the bound (a factor beyond the "
        "configured range); *range grew*: rounds of budget (why it stopped).",
    ]


def _grown(widen: Mapping[str, Any] | None) -> str:
    if not widen:
        return "-"
    return f"{widen['grown']} of {widen['budget']} ({widen['stopped']})"


def _ensemble_rows(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """report.md lines on the ensemble: members, their training-fold evidence, and the
    ensemble against the best single classifier."""
    lines = []
    for r in results:
        e = r.get("ensemble")
        if not e:
            continue
        weights = e.get("weights") or [None] * len(e["members"])
        members = ", ".join(
            f"`{m}`" + (f" ({w:.3f})" if w is not None else "")
            for m, w in zip(e["members"], weights, strict=True)
        )
        selection = e["selection"]
        rows = [
            [name, _fmt(c.get("oof_accuracy")), _fmt(c.get("p_value_vs_best")),
             "yes" if c["member"] else "no"]
            for name, c in selection["candidates"].items()
        ]  # fmt: skip
        lines += [
            "",
            "## Ensemble",
            "",
            f"Members ({e['combine']}): {members}; chosen on {selection['cv']}-fold "
            f"out-of-fold predictions of {selection['rows']} training rows (the candidates an "
            "exact McNemar test, Holm-adjusted, cannot separate from the best).",
            "",
            *_md_table(["candidate", "out-of-fold accuracy", "p vs best", "member"], rows),
        ]
        v = e.get("vs_best_single")
        if v:
            lines += [
                "",
                f"Against the best single classifier `{v['clf']}`: accuracy difference "
                f"{100 * v['difference']:+.2f} points [{100 * v['interval'][0]:+.2f}, "
                f"{100 * v['interval'][1]:+.2f}], p = {v['p_value']:.3g} ({v['test']}).",
            ]
    return lines


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of the results, in the order given (best first)."""
    header, rows = _rows(results)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def write_report_md(path: str | Path, report: Mapping[str, Any]) -> Path:
    """Write a human-readable Markdown version of ``report`` with the plots linked."""
    backbone = report.get("backbone", {})
    lines = [
        "# Classifier comparison",
        "",
        *([f"**{report['summary']}**", ""] if report.get("summary") else []),
        f"- features: `{report['features']}`",
        f"- backbone: `{backbone.get('model')}` weights `{backbone.get('weights')}`, "
        f"precision `{backbone.get('precision')}`, {backbone.get('feature_dim')} dims",
        f"- fingerprint: `{report['fingerprint']}`",
        f"- evaluation: {report['evaluation']}"
        + (f" ({report['cv']} folds, mean ± std)" if report.get("cv") else ""),
        f"- rows: {report['n_train']} train, {report['n_test']} test; "
        f"{len(report['class_names'])} classes; seed {report['seed']}",
        "",
        "## Results (best first)",
        "",
    ]
    header, rows = _rows(report["results"])
    lines += _md_table(header, rows)
    lines += [
        "",
        "Brackets: the range where the accuracy on new images like these likely lies (95 % "
        "interval: bootstrap over the test rows; with --cv a corrected t interval of the fold "
        f"scores). *{TIED_MEANING[0].upper()}{TIED_MEANING[1:]}* (exact McNemar test; with "
        "--cv the Nadeau-Bengio corrected t-test; Holm-adjusted).",
    ]
    lines += ["", *(f"> warning: {w}" for w in report.get("warnings", []))]
    lines += [f"> note: {note}" for note in report.get("notes", [])]
    lines += _search_rows(report["results"])
    lines += _ensemble_rows(report["results"])
    if report.get("comparison_png"):
        lines += ["", f"![comparison]({report['comparison_png']})"]
    for r in report["results"]:
        lines += ["", f"## {r['clf']}", ""]
        if r.get("roc_auc") is not None:
            lines += [f"ROC AUC: {_fmt(r['roc_auc'], r.get('roc_auc_std'))}", ""]
        per_class = [
            [
                str(row["class"]),
                _fmt(row["precision"]),
                _fmt(row["recall"]),
                _fmt(row["f1"]),
                str(row["support"]),
            ]
            for row in per_class_rows(r)
        ]
        lines += _md_table(["class", "precision", "recall", "f1", "support"], per_class)
        if r.get("confusion_png"):
            lines += ["", f"![confusion matrix of {r['clf']}]({r['confusion_png']})"]
        if r.get("model"):
            lines += ["", f"Model: `{r['model']}`{trained_on(r)}"]
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
