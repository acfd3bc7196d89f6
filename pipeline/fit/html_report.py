"""Stage two's HTML report: ``<out>/report.html``, thumbnails, CSVs, readable confusion.

:func:`write_html_report` renders the Jinja2 template shipped in ``pipeline/fit/templates/``
(autoescaped: paths and class names are untrusted) into one HTML file that opens from disk
with no server and no network: plain CSS and JavaScript inline, charts embedded as PNG data
URIs, thumbnails in ``<out>/thumbs/`` under content-addressed names and linked relatively, so
the folder can be moved. Beside it: ``label_issues.csv``, ``duplicates.csv`` and
``confusion_<clf>.csv`` (the full matrix; report.json can then stay compact, see
:func:`compact_result`), and with a data survey ``outliers.csv``, ``duplicates_within_split.csv``,
``class_balance.csv`` and ``plotly.min.js`` (the embedding map's library, loaded relatively).

Large runs stay fast: galleries hold at most ``gallery_limit`` items per classifier (most
confident mistakes first) and are paged in the browser; confusion matrices beyond
``top_k_classes`` classes show the classes with the most errors; per-class tables are
collapsed. Every file is written atomically (temporary file + ``os.replace``) with the
permissions the user's umask gives a new file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_path
from .._progress import slow_step
from .data_quality import DIGITS_PREFIX, DUPLICATE_COLUMNS, LABEL_ISSUE_COLUMNS, digits_image
from .decision_chart import write_decision_png
from .summary import TIED_MEANING, plain_summary, trained_on

if TYPE_CHECKING:
    import pandas as pd

    from .data_survey import DataSurvey

__all__ = [
    "PREDICTION_COLUMNS",
    "compact_result",
    "make_thumbnails",
    "per_class_rows",
    "top_confused_pairs",
    "write_atomic",
    "write_confusion_csv",
    "write_html_report",
]

logger = logging.getLogger(__name__)

#: Columns of the per-image predictions table the report reads.
PREDICTION_COLUMNS = ("path", "split", "label", "clf", "pred", "confidence", "correct")
_SCORES = ("accuracy", "balanced_accuracy", "macro_f1")
_SMALL_EVALUATION = 100


# -- files --------------------------------------------------------------------------------------


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically, with the user's umask
    (:func:`pipeline._io.atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _csv_text(table: pd.DataFrame, columns: Sequence[str]) -> str:
    present = [c for c in columns if c in table.columns]
    return table.to_csv(columns=present, index=False, float_format="%.6g")


def write_confusion_csv(
    path: str | Path, matrix: Sequence[Sequence[int]], class_names: Sequence[str]
) -> Path:
    """The full confusion matrix as CSV: rows true classes, columns predicted classes."""
    import pandas as pd

    frame = pd.DataFrame(
        np.asarray(matrix, dtype=np.int64),
        index=pd.Index([str(c) for c in class_names], name="true \\ predicted"),
        columns=[str(c) for c in class_names],
    )
    return write_atomic(path, frame.to_csv())


# -- thumbnails ---------------------------------------------------------------------------------


def _render(path: str, size: int) -> tuple[bytes, str]:
    from PIL import Image, ImageOps

    if path.startswith(DIGITS_PREFIX):
        image = Image.fromarray(digits_image(path), mode="L")
        side = max(8, size // 2)
        image = image.resize((side, side), Image.Resampling.NEAREST)
        fmt = "PNG"
    else:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        fmt = "JPEG"
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format=fmt, quality=85)
    else:
        image.save(buffer, format=fmt, optimize=True)
    return buffer.getvalue(), ".jpg" if fmt == "JPEG" else ".png"


def make_thumbnails(
    paths: Iterable[str], out_dir: str | Path, *, size: int = 96, folder: str = "thumbs"
) -> dict[str, str | None]:
    """Write a small thumbnail of every image into ``out_dir/folder``.

    Files are named by the SHA-256 of their own bytes (identical images share one file;
    unchanged ones are not rewritten). ``sklearn:digits/NNNN`` rows are rendered from the
    data. Returns ``{path: link relative to out_dir}``, ``None`` for images that could not
    be read (logged, never raised).
    """
    out_dir = Path(out_dir)
    links: dict[str, str | None] = {}
    failed = 0
    for path in paths:
        path = str(path)
        if path in links:
            continue
        try:
            data, ext = _render(path, size)
        except Exception as exc:  # any decode failure means "no thumbnail", never a crash
            logger.debug("no thumbnail for %s: %s: %s", path, type(exc).__name__, exc)
            links[path] = None
            failed += 1
            continue
        name = hashlib.sha256(data).hexdigest()[:24] + ext
        target = out_dir / folder / name
        if not target.exists():
            write_atomic(target, data)
        links[path] = f"{folder}/{name}"
    if failed:
        logger.warning("%d image(s) could not be read to show them in report.html", failed)
    return links


# -- per-class data -----------------------------------------------------------------------------


def per_class_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``result["per_class"]`` as rows, from either the dict-per-class form or the compact
    columnar form of :func:`compact_result`."""
    per_class = result.get("per_class") or {}
    if "class" in per_class and isinstance(per_class["class"], list):
        keys = [k for k in per_class if k != "class"]
        return [
            {"class": name, **{k: per_class[k][i] for k in keys}}
            for i, name in enumerate(per_class["class"])
        ]
    return [{"class": name, **values} for name, values in per_class.items()]


def top_confused_pairs(
    matrix: np.ndarray, class_names: Sequence[str], k: int = 20
) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells: true, predicted, count, share of the true class."""
    cm = np.asarray(matrix, dtype=np.int64)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    k = int(min(k, np.count_nonzero(flat)))
    if k == 0:
        return []
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.lexsort((top, -flat[top]))]
    support = cm.sum(axis=1)
    pairs = []
    for cell in top:
        i, j = divmod(int(cell), cm.shape[1])
        pairs.append(
            {
                "true": str(class_names[i]),
                "pred": str(class_names[j]),
                "count": int(cm[i, j]),
                "share": float(cm[i, j] / support[i]) if support[i] else 0.0,
            }
        )
    return pairs


def compact_result(
    result: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    max_classes: int = 30,
    top_pairs: int = 20,
    decimals: int = 4,
) -> dict[str, Any]:
    """A copy of one ``report.json`` result that stays small at many classes.

    Up to ``max_classes`` classes it is returned unchanged. Beyond, ``per_class`` becomes
    columns (``{"class": [...], "precision": [...], ...}``, rounded to ``decimals``), and
    ``confusion_matrix`` is replaced by ``confusion_csv`` (``confusion_<clf>.csv``, which
    the caller writes with :func:`write_confusion_csv`) and ``top_confused`` pairs.
    """
    out = dict(result)
    if len(class_names) <= max_classes:
        return out
    rows = per_class_rows(result)
    columns: dict[str, list[Any]] = {"class": [r["class"] for r in rows]}
    for key in ("precision", "recall", "f1", "support"):
        columns[key] = [
            round(r[key], decimals) if isinstance(r.get(key), float) else r.get(key) for r in rows
        ]
    out["per_class"] = columns
    matrix = out.pop("confusion_matrix", None)
    out["confusion_csv"] = f"confusion_{result['clf']}.csv"
    if matrix is not None:
        out["top_confused"] = top_confused_pairs(np.asarray(matrix), class_names, top_pairs)
    return out


def _confusion(
    result: Mapping[str, Any], predictions: pd.DataFrame | None, class_names: Sequence[str]
) -> np.ndarray | None:
    matrix = result.get("confusion_matrix")
    if isinstance(matrix, list) and len(matrix) == len(class_names):
        return np.asarray(matrix, dtype=np.int64)
    if predictions is None:
        return None
    from sklearn.metrics import confusion_matrix

    rows = predictions[predictions["clf"] == result["clf"]]
    if rows.empty:
        return None
    labels = [str(c) for c in class_names]
    return confusion_matrix(
        rows["label"].astype(str), rows["pred"].astype(str), labels=labels
    ).astype(np.int64)


# -- charts -------------------------------------------------------------------------------------


def _png_data_uri(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _confusion_chart(
    matrix: np.ndarray, class_names: Sequence[str], top_k: int, title: str
) -> tuple[str, list[str]]:
    """Row-normalised confusion matrix; beyond ``top_k`` classes only the ``top_k`` classes
    with the most errors (as true or predicted class). Returns the data URI and the classes
    shown."""
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(matrix, dtype=np.int64)
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape, dtype=float), where=support > 0)
    keep = np.arange(len(class_names))
    if len(class_names) > top_k:
        errors = cm.sum(axis=0) + cm.sum(axis=1) - 2 * np.diag(cm)
        keep = np.sort(np.argsort(-errors, kind="stable")[:top_k])
    shown = [str(class_names[i]) for i in keep]
    n = len(keep)
    side = min(9.0, 2.6 + 0.3 * n)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(norm[np.ix_(keep, keep)], display_labels=shown)
    display.plot(
        ax=ax,
        cmap="Blues",
        include_values=n <= 12,
        values_format=".2f",
        xticks_rotation="vertical",
        colorbar=True,
        im_kw={"vmin": 0.0, "vmax": 1.0},
    )
    display.im_.colorbar.set_label("share of the true class")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n > 20:
        ax.tick_params(labelsize=6)
    return _png_data_uri(fig), shown


# -- the report ---------------------------------------------------------------------------------


def _template_env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.fit", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _result_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row = {"clf": r["clf"], "tied": r.get("tied_with_best"), "p": r.get("p_value_vs_best")}
        for key in (*_SCORES, "log_loss"):
            ci = (r.get("ci") or {}).get(key)
            row[key] = {
                "value": r.get(key),
                "std": r.get(f"{key}_std"),
                "ci": ci if ci and None not in ci else None,
            }
        row["trained_on"] = trained_on(r).removeprefix(", ")
        row["model"] = r.get("model")
        row["fit_seconds"] = r.get("fit_seconds")
        row["predict_seconds"] = r.get("predict_seconds")
        rows.append(row)
    return rows


def _gallery(predictions: pd.DataFrame, clf: str, limit: int) -> tuple[list[dict], int]:
    rows = predictions[(predictions["clf"] == clf) & ~predictions["correct"].astype(bool)]
    total = len(rows)
    rows = rows.sort_values(["confidence", "path"], ascending=[False, True], kind="stable")
    return rows.head(limit).to_dict("records"), total


def _warnings(
    report: Mapping[str, Any],
    duplicates: pd.DataFrame | None,
    failed: Mapping[str, str],
) -> list[str]:
    # fit's own warnings (the separability rule, leakage) and notes come first, as it states them
    notes = [*report.get("warnings", []), *report.get("notes", [])]
    n_test = report.get("n_test") or 0
    if "warnings" not in report and report.get("evaluation") != "cv" and n_test < _SMALL_EVALUATION:
        notes.append(
            f"Small evaluation: {n_test} test rows; one image moves accuracy by "
            f"{100 / max(n_test, 1):.1f} points, so differences between classifiers are noisy."
        )
    if duplicates is not None and len(duplicates) and "warnings" not in report:
        exact = int((duplicates["kind"] == "exact").sum())
        notes.append(
            f"Leakage: {exact} exact and {len(duplicates) - exact} near duplicate(s) of "
            "training images in the test/val split; scores on them are optimistic."
        )
    if failed:
        notes.append(f"{len(failed)} input(s) could not be read and were left out.")
    return notes


def _common_folder(paths: Sequence[str]) -> str:
    """The folder all ``paths`` share (with its trailing separator), or ``""``."""
    files = [p for p in paths if not p.startswith(DIGITS_PREFIX)]
    if len(files) < 2:
        return ""
    try:
        common = os.path.commonpath(files)
    except ValueError:  # a mix of absolute and relative paths
        return ""
    return common.rstrip(os.sep) + os.sep if common not in ("", os.sep) else ""


def _confusion_sections(
    results: list[Mapping[str, Any]],
    predictions: pd.DataFrame | None,
    class_names: list[str],
    out_dir: Path,
    top_k: int,
) -> list[dict[str, Any]]:
    """Per classifier: per-class rows (worst F1 first), top confused pairs, the confusion chart
    and its CSV (written here)."""
    sections = []
    for r in results:
        clf = str(r["clf"])
        matrix = _confusion(r, predictions, class_names)
        section: dict[str, Any] = {
            "clf": clf,
            "per_class": sorted(per_class_rows(r), key=lambda row: row.get("f1") or 0.0),
            "pairs": [],
            "chart": None,
            "shown": [],
            "csv": None,
        }
        if matrix is not None:
            section["pairs"] = top_confused_pairs(matrix, class_names, 20)
            section["chart"], section["shown"] = _confusion_chart(
                matrix, class_names, top_k, f"{clf}: confusion (row-normalised)"
            )
            section["csv"] = write_confusion_csv(
                out_dir / f"confusion_{clf}.csv", matrix, class_names
            ).name
        elif r.get("top_confused"):
            section["pairs"] = r["top_confused"]
        sections.append(section)
    return sections


def write_html_report(
    out_dir: str | Path,
    *,
    report: Mapping[str, Any],
    predictions: pd.DataFrame | None = None,
    label_issues: pd.DataFrame | None = None,
    duplicates: pd.DataFrame | None = None,
    failed: Mapping[str, str] | None = None,
    gallery_limit: int = 200,
    issue_limit: int = 200,
    duplicate_limit: int = 200,
    page_size: int = 40,
    top_k_classes: int = 30,
    thumbnail_size: int = 96,
    survey: DataSurvey | None = None,
    projection: tuple[np.ndarray, str] | None = None,
    survey_limit: int = 200,
    map_thumbnail_rows: int = 20_000,
) -> Path:
    """Write ``<out_dir>/report.html`` with its thumbnails and CSVs; return its path.

    Parameters
    ----------
    out_dir : str or Path
        The run's output folder (where report.json lives).
    report : mapping
        The ``report.json`` content (``features``, ``backbone``, ``evaluation``, ``n_train``,
        ``n_test``, ``class_names``, ``results`` best first with scores, ``per_class``,
        ``confusion_matrix`` or ``confusion_csv``, and, when present, ``ci``,
        ``tied_with_best``, ``p_value_vs_best``).
    predictions : DataFrame, optional
        One row per evaluated image per classifier, columns :data:`PREDICTION_COLUMNS`
        (``label``/``pred`` class names, ``confidence`` the predicted class's probability,
        ``correct`` bool). Feeds the misclassified gallery (and confusion matrices that the
        report no longer holds).
    label_issues, duplicates : DataFrame, optional
        From :func:`pipeline.data_quality.find_label_issues` / ``find_duplicates``; written
        to ``label_issues.csv`` / ``duplicates.csv`` (all rows) and shown (the first
        ``issue_limit`` / ``duplicate_limit``).
    failed : mapping, optional
        ``{path: reason}`` of inputs that could not be read (store failures, hashing).
    gallery_limit, page_size : int
        Misclassified images kept per classifier (most confident first) and shown per page.
    top_k_classes : int
        Beyond this many classes, confusion charts show the classes with the most errors.
    thumbnail_size : int
        Longest side of the thumbnails, in pixels.
    survey : DataSurvey, optional
        From :func:`pipeline.fit.data_survey.survey`: outliers (``outliers.csv``, the first
        ``survey_limit`` shown), duplicates inside a split (``duplicates_within_split.csv``),
        class balance (``class_balance.csv``).
    projection : (ndarray of shape (n_rows, 2), str), optional
        The 2-D map of the survey's rows (row order of its inputs) and how it was made
        (:func:`pipeline.fit.embedding_map.project_2d`): drawn with plotly.js, which is
        written beside the report. Up to ``map_thumbnail_rows`` rows every point gets a
        thumbnail; above, hovering shows the original file (a ``file:`` link).
    """
    out_dir = Path(out_dir)
    failed = dict(failed or {})
    class_names = [str(c) for c in report.get("class_names", [])]
    results = list(report.get("results", []))
    _check_prediction_columns(predictions)
    sections = _confusion_sections(results, predictions, class_names, out_dir, top_k_classes)
    galleries = _galleries(predictions, results, gallery_limit)
    _write_quality_csvs(out_dir, label_issues, duplicates)
    issue_items = [] if label_issues is None else label_issues.head(issue_limit).to_dict("records")
    duplicate_items = (
        [] if duplicates is None else duplicates.head(duplicate_limit).to_dict("records")
    )
    wanted = _thumbnail_paths(galleries, issue_items, duplicate_items)
    survey_view = _survey_view(out_dir, survey, survey_limit, wanted)
    with slow_step(logger, "report: drawing %d thumbnails for report.html ...", len(set(wanted))):
        thumbs = make_thumbnails(wanted, out_dir, size=thumbnail_size)
    if survey is not None and projection is not None:
        survey_view["map"] = _map_view(
            out_dir, survey, projection, predictions, results, thumbs, thumbnail_size,
            map_thumbnail_rows,
        )  # fmt: skip
    html = _render_page(
        report,
        results=results,
        sections=sections,
        galleries=galleries,
        issue_items=issue_items,
        duplicate_items=duplicate_items,
        label_issues=label_issues,
        duplicates=duplicates,
        predictions=predictions,
        failed=failed,
        thumbs=thumbs,
        prefix=_common_folder(wanted),
        limits={"top_k": top_k_classes, "gallery_limit": gallery_limit, "page_size": page_size},
        out_dir=out_dir,
        survey=survey_view,
    )
    path = write_atomic(out_dir / "report.html", html)
    logger.debug("HTML report written (%s, %.0f kB)", path.name, path.stat().st_size / 1024)
    return path


def _n_exact(duplicates: pd.DataFrame | None) -> int:
    """How many duplicates are exact (same content)."""
    if duplicates is None or not len(duplicates):
        return 0
    return int((duplicates["kind"] == "exact").sum())


def _check_prediction_columns(predictions: pd.DataFrame | None) -> None:
    """Raise ``ValueError`` when ``predictions`` lacks a column of :data:`PREDICTION_COLUMNS`."""
    if predictions is not None:
        missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
        if missing:
            raise ValueError(f"predictions: missing column(s) {missing}")


def _galleries(
    predictions: pd.DataFrame | None, results: Sequence[Mapping[str, Any]], limit: int
) -> list[dict[str, Any]]:
    """Per classifier: its most confident misclassified images (up to ``limit``) and their count."""
    galleries = []
    if predictions is not None:
        for r in results:
            items, total = _gallery(predictions, str(r["clf"]), limit)
            galleries.append({"clf": str(r["clf"]), "items": items, "total": total})
    return galleries


def _write_quality_csvs(
    out_dir: Path, label_issues: pd.DataFrame | None, duplicates: pd.DataFrame | None
) -> None:
    """Write ``label_issues.csv`` / ``duplicates.csv`` (all rows) for the tables given."""
    if label_issues is not None:
        write_atomic(out_dir / "label_issues.csv", _csv_text(label_issues, LABEL_ISSUE_COLUMNS))
    if duplicates is not None:
        write_atomic(out_dir / "duplicates.csv", _csv_text(duplicates, DUPLICATE_COLUMNS))


def _thumbnail_paths(
    galleries: list[dict[str, Any]], issue_items: list[dict], duplicate_items: list[dict]
) -> list[str]:
    """Every image path the page shows: gallery items, label issues, both sides of duplicates."""
    wanted = [item["path"] for g in galleries for item in g["items"]]
    wanted += [item["path"] for item in issue_items]
    wanted += [p for item in duplicate_items for p in (item["path"], item["train_path"])]
    return wanted


def _decision_chart(
    out_dir: Path, report: Mapping[str, Any], results: Sequence[Mapping[str, Any]]
) -> str:
    """The decision chart (scores with intervals, ties, fit time) as a data URI: the run's
    ``comparison.png`` when written, else drawn here."""
    png = out_dir / str(report.get("comparison_png") or "comparison.png")
    if not png.is_file():
        with tempfile.TemporaryDirectory() as folder:
            data = write_decision_png(Path(folder) / "chart.png", results).read_bytes()
    else:
        data = png.read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _render_page(
    report: Mapping[str, Any],
    *,
    results: list[Mapping[str, Any]],
    sections: list[dict[str, Any]],
    galleries: list[dict[str, Any]],
    issue_items: list[dict],
    duplicate_items: list[dict],
    label_issues: pd.DataFrame | None,
    duplicates: pd.DataFrame | None,
    predictions: pd.DataFrame | None,
    failed: dict[str, str],
    thumbs: dict[str, str | None],
    prefix: str,
    limits: Mapping[str, int],
    out_dir: Path,
    survey: dict[str, Any],
) -> str:
    """Render ``report.html.j2`` with everything the page shows (``out_dir``: the run's folder,
    for its ``comparison.png``)."""
    return (
        _template_env()
        .get_template("report.html.j2")
        .render(
            report=report,
            backbone=dict(report.get("backbone") or {}),
            n_classes=len(report.get("class_names", [])),
            warnings=_with_survey_warnings(_warnings(report, duplicates, failed), survey),
            results=_result_rows(results),
            comparison=_decision_chart(out_dir, report, results) if results else None,
            headline=report.get("summary") or (plain_summary(report) if results else ""),
            tied_meaning=TIED_MEANING,
            sections=sections,
            galleries=galleries,
            issues=issue_items,
            n_issues=len(label_issues) if label_issues is not None else 0,
            duplicates=duplicate_items,
            n_duplicates=len(duplicates) if duplicates is not None else 0,
            n_exact=_n_exact(duplicates),
            failed=sorted(failed.items())[:200],
            n_failed=len(failed),
            thumbs=thumbs,
            prefix=prefix,
            has_predictions=predictions is not None,
            has_issues=label_issues is not None,
            has_duplicates=duplicates is not None,
            survey=survey,
            **limits,
        )
    )


# -- the data survey (outliers, duplicates inside a split, class balance, map) -------------------


def _survey_view(
    out_dir: Path, survey: DataSurvey | None, limit: int, wanted: list[str]
) -> dict[str, Any]:
    """Write the survey's CSVs; return what the page shows of it (and add its images to
    ``wanted``). Empty when there is no survey."""
    if survey is None:
        return {}
    from .data_survey import OUTLIER_COLUMNS, SPLIT_DUPLICATE_COLUMNS

    write_atomic(out_dir / "outliers.csv", _csv_text(survey.outliers, OUTLIER_COLUMNS))
    write_atomic(
        out_dir / "duplicates_within_split.csv",
        _csv_text(survey.split_duplicates, SPLIT_DUPLICATE_COLUMNS),
    )
    write_atomic(out_dir / "class_balance.csv", survey.balance.to_csv(index_label="class"))
    outliers = survey.outliers.head(limit).to_dict("records")
    pairs = survey.split_duplicates.head(limit).to_dict("records")
    wanted += [item["path"] for item in outliers]
    wanted += [p for item in pairs for p in (item["path"], item["other_path"])]
    balance = survey.balance
    warnings = list(survey.notes)  # fit also puts them in report["notes"]: shown once
    if survey.tiny_classes:
        shown = ", ".join(f"{c} ({int(balance.loc[c, 'total'])})" for c in survey.tiny_classes[:20])
        more = len(survey.tiny_classes) - 20
        warnings.append(
            f"Tiny classes: {shown}{f' and {more} more' if more > 0 else ''} rows; their "
            "scores rest on few images (see class_balance.csv)."
        )
    n_exact = int((survey.split_duplicates["kind"] == "exact").sum())
    return {
        "outliers": outliers,
        "n_rows": len(survey.outliers),
        "n_flagged": survey.n_flagged,
        "fence": survey.threshold,
        "k": survey.k,
        "pairs": pairs,
        "n_pairs": len(survey.split_duplicates),
        "n_pairs_exact": n_exact,
        "balance_columns": [str(c) for c in balance.columns],
        "balance": [
            {"class": str(c), "counts": [int(v) for v in row], "tiny": c in survey.tiny_classes}
            for c, row in zip(balance.index, balance.to_numpy(), strict=True)
        ],
        "n_tiny": len(survey.tiny_classes),
        "warnings": warnings,
    }


def _map_view(
    out_dir: Path,
    survey: DataSurvey,
    projection: tuple[np.ndarray, str],
    predictions: pd.DataFrame | None,
    results: Sequence[Mapping[str, Any]],
    thumbs: dict[str, str | None],
    thumbnail_size: int,
    thumbnail_rows: int,
) -> dict[str, Any]:
    """The embedding map's page data (and ``plotly.min.js`` written beside the report);
    thumbnails of every row up to ``thumbnail_rows`` rows (added to ``thumbs``)."""
    from .embedding_map import map_payload, write_plotly_js

    xy, note = projection
    by_row = survey.outliers.sort_values("row")
    paths = by_row["path"].astype(str).tolist()
    if len(paths) != len(xy):
        raise ValueError(f"projection: {len(xy)} points for {len(paths)} surveyed rows")
    if len(paths) <= thumbnail_rows:
        # the gallery's thumbnails are made (or found unreadable, and said so) already
        missing = [p for p in paths if p not in thumbs]
        thumbs.update(make_thumbnails(missing, out_dir, size=thumbnail_size))
    else:
        note += (
            f"; {len(paths)} rows are more than {thumbnail_rows}: hovering shows the original "
            "file (a file: link), which needs the images where they were"
        )
        for p in paths:
            if p not in thumbs and not p.startswith(DIGITS_PREFIX):
                thumbs[p] = Path(p).resolve().as_uri()
    best = str(results[0]["clf"]) if results else None
    predicted = None
    if predictions is not None and best is not None:
        rows = predictions[predictions["clf"] == best]
        predicted = {
            str(p): (str(q), bool(c))
            for p, q, c in zip(rows["path"], rows["pred"], rows["correct"], strict=True)
        }
    payload = map_payload(
        xy, paths, by_row["label"].tolist(), by_row["split"].tolist(),
        by_row["score"].to_numpy(), thumbs, predictions=predicted, best_clf=best, note=note,
    )  # fmt: skip
    return {"data": payload, "script": write_plotly_js(out_dir), "n": len(paths)}


def _with_survey_warnings(warnings: list[str], survey: Mapping[str, Any]) -> list[str]:
    """``warnings`` and the survey's (tiny classes, sampling notes) not already among them."""
    return warnings + [w for w in survey.get("warnings", []) if w not in warnings]
