"""The decision chart: each classifier's score with its interval, ties with the best marked,
and fit time on a log axis beside it.

matplotlib's object API (``Figure``, Agg canvas), never ``pyplot``; written atomically with the
user's umask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_path

__all__ = ["score_axis_limits", "write_decision_png"]

_BEST, _TIED, _WORSE = "#1f77b4", "#6baed6", "#9e9e9e"


def score_axis_limits(
    lows: Sequence[float], highs: Sequence[float], *, pad: float = 0.15, min_span: float = 0.02
) -> tuple[float, float]:
    """An axis zoomed to the intervals: their range plus ``pad`` of it on each side, at least
    ``min_span`` wide, within [0, 1]."""
    lo, hi = min(lows), max(highs)
    span = max(hi - lo, min_span)
    centre = (lo + hi) / 2
    lo, hi = centre - span * (0.5 + pad), centre + span * (0.5 + pad)
    if lo < 0:
        lo, hi = 0.0, min(1.0, hi - lo)
    if hi > 1:
        lo, hi = max(0.0, lo - (hi - 1)), 1.0
    return lo, hi


def write_decision_png(
    path: str | Path,
    results: Sequence[Mapping[str, Any]],
    *,
    metric: str = "accuracy",
    title: str | None = None,
) -> Path:
    """Plot the decision chart for ``results`` (best first) and write it as a PNG.

    Parameters
    ----------
    path : str or Path
        The PNG to write.
    results : sequence of mapping
        report.json ``results`` entries: ``clf``, ``<metric>``, ``ci[metric]`` (lo, hi),
        ``tied_with_best``, ``p_value_vs_best`` and ``fit_seconds`` (``refit_seconds`` is
        used when ``fit_seconds`` is missing; a classifier without a time gets no bar).
    metric : str, default="accuracy"
        The score shown.
    title : str, optional
        Figure title; default names the metric and the interval.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no results to plot")
    rows = list(results)
    n = len(rows)
    scores = [float(r[metric]) for r in rows]
    intervals = [
        tuple(r.get("ci", {}).get(metric) or (s, s)) for r, s in zip(rows, scores, strict=True)
    ]
    lows = [float(lo) for lo, _ in intervals]
    highs = [float(hi) for _, hi in intervals]
    best_index = next((i for i, r in enumerate(rows) if r.get("p_value_vs_best") is None), 0)

    fig = Figure(figsize=(9.0, 1.2 + 0.55 * n), dpi=100, layout="constrained")
    ax_score, ax_time = fig.subplots(1, 2, sharey=True, width_ratios=[3, 1.4])
    y = list(range(n))[::-1]  # best on top
    _draw_scores(ax_score, rows, scores, lows, highs, best_index, y, metric)
    _draw_times(ax_time, rows, y)
    fig.suptitle(
        title
        or f"which classifier? {metric.replace('_', ' ')} with 95% intervals; "
        "light band: the best's interval",
        fontsize=10,
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _draw_scores(
    ax_score: Any,
    rows: list[Mapping[str, Any]],
    scores: list[float],
    lows: list[float],
    highs: list[float],
    best_index: int,
    y: list[int],
    metric: str,
) -> None:
    """The left panel: each classifier's score with its interval, coloured best/tied/worse."""
    best_lo, best_hi = lows[best_index], highs[best_index]
    ax_score.axvspan(best_lo, best_hi, color=_TIED, alpha=0.15, lw=0)
    for i, r in enumerate(rows):
        tied = bool(r.get("tied_with_best", i == best_index))
        colour = _BEST if i == best_index else _TIED if tied else _WORSE
        ax_score.errorbar(
            scores[i],
            y[i],
            # clamped: a percentile interval may miss its own point estimate by rounding
            xerr=[[max(0.0, scores[i] - lows[i])], [max(0.0, highs[i] - scores[i])]],
            fmt="o",
            color=colour,
            ecolor=colour,
            elinewidth=2.5,
            capsize=4,
        )
        p = r.get("p_value_vs_best")
        if i == best_index:
            note = "best"
        elif tied:
            note = f"tied (p={p:.2g})" if p is not None else "tied"
        else:
            note = f"worse (p={p:.2g})" if p is not None else "worse"
        ax_score.annotate(
            f"{scores[i]:.3f}  {note}",
            (highs[i], y[i]),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color="black" if tied else "#555555",
        )
    lo, hi = score_axis_limits(lows, highs)
    # room on the right for the labels
    ax_score.set_xlim(lo, min(1.0, hi + (hi - lo) * 0.35) if hi < 1 else hi)
    ax_score.set_yticks(y, labels=[str(r["clf"]) for r in rows])
    ax_score.set_xlabel(f"{metric.replace('_', ' ')} (95% interval; axis zoomed)")
    ax_score.grid(axis="x", alpha=0.3)


def _draw_times(ax_time: Any, rows: list[Mapping[str, Any]], y: list[int]) -> None:
    """The right panel: fit times on a log axis (no bar for a classifier without one)."""
    times = [r.get("fit_seconds", r.get("refit_seconds")) for r in rows]
    shown = [(yy, float(t)) for yy, t in zip(y, times, strict=True) if t is not None and t > 0]
    if shown:
        ax_time.barh([yy for yy, _ in shown], [t for _, t in shown], color=_WORSE, height=0.5)
        ax_time.set_xscale("log")
        smallest = min(t for _, t in shown)
        largest = max(t for _, t in shown)
        ax_time.set_xlim(10 ** math.floor(math.log10(smallest)), largest * 6)
        for yy, t in shown:
            ax_time.annotate(
                f"{t:.3g} s",
                (t, yy),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    ax_time.set_xlabel("fit time (s, log)")
    ax_time.grid(axis="x", alpha=0.3)
