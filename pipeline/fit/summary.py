"""The one plain sentence a fit report leads with, chosen from the evidence.

A reader who is not a statistician should learn from it, at a glance, which classifiers are
worth considering, whether the test could tell them apart, which is cheapest, and what would
make the comparison sharper. It is built only from what ``report.json`` holds: the ranking,
``tied_with_best`` (paired tests against the best), the accuracy intervals, fit times and log
losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TIED_MEANING", "plain_summary", "trained_on"]

#: What "tied" means, in words: the footnote and tooltip of the reports.
TIED_MEANING = (
    "tied: the gap to the best is no larger than chance alone produces on this many test "
    "images (a paired test at the 5 % level), so this evaluation cannot say which is better; "
    "p vs best is the chance of a gap at least this large if the two were equally good"
)

_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def _count(n: int) -> str:
    return _WORDS.get(n, str(n))


def _names(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _span(results: Sequence[Mapping[str, Any]]) -> str:
    """``97.8 %`` or ``93.1-97.8 %``: the accuracies of ``results``."""
    values = sorted(float(r["accuracy"]) for r in results)
    if round(100 * values[0], 1) == round(100 * values[-1], 1):
        return _percent(values[0])
    return f"{100 * values[0]:.1f}-{_percent(values[-1])}"


def _seconds(result: Mapping[str, Any]) -> float:
    value = result.get("fit_seconds")
    return float("inf") if value is None else float(value)


#: Named the fastest only when this many times faster than the next: a sentence that flips
#: with timing noise would say nothing.
FASTER = 2.0


def _cheapest(group: Sequence[Mapping[str, Any]]) -> str | None:
    """``logreg is the fastest to train[ and best calibrated]`` for a group of 2+, or None."""
    if len(group) < 2:
        return None
    by_time = sorted(group, key=_seconds)
    fastest = by_time[0] if _seconds(by_time[0]) * FASTER <= _seconds(by_time[1]) else None
    losses = [r.get("log_loss") for r in group]
    calibrated = None
    if all(isinstance(v, int | float) for v in losses):
        calibrated = min(group, key=lambda r: float(r["log_loss"]))
    best_calibrated = "best calibrated (most trustworthy confidence)"
    if fastest is None:
        return f"{calibrated['clf']} is the {best_calibrated}" if calibrated else None
    if calibrated is None or calibrated["clf"] == fastest["clf"]:
        extra = f" and {best_calibrated}" if calibrated else ""
        return f"{fastest['clf']} is the fastest to train{extra}"
    return f"{fastest['clf']} is the fastest to train, {calibrated['clf']} the {best_calibrated}"


def plain_summary(report: Mapping[str, Any]) -> str:
    """One sentence in plain words for ``report`` (``report.json``'s content, results best
    first): which classifiers lead, whether the evaluation could tell them apart, which of
    the leaders is cheapest, and what would sharpen the comparison."""
    results = list(report.get("results") or [])
    if not results:
        return "No classifier was evaluated."
    cv = report.get("cv") or 0
    n = int(report.get("n_test") or 0)
    images = f"{n} images ({cv}-fold cross-validation)" if cv else f"{n} test images"
    more = "more labelled images" if cv else "more test images or --cv"
    best = results[0]
    if len(results) == 1:
        lo, hi = (best.get("ci") or {}).get("accuracy") or (None, None)
        likely = (
            f" (on new images like these, likely {_percent(lo)} to {_percent(hi)})"
            if lo is not None and hi is not None
            else ""
        )
        return f"{best['clf']} classified {_percent(best['accuracy'])} of {images} right{likely}."
    top = [best] + [r for r in results[1:] if r.get("tied_with_best")]
    rest = [r for r in results if r not in top]
    cheapest = _cheapest(top)
    if not rest:
        sentence = f"These {_count(len(top))} cannot be told apart on {images} ({_span(top)} right)"
        parts = [sentence, cheapest, f"{more} would separate them"]
    elif len(top) == 1:
        others = "the other" if len(rest) == 1 else f"the other {_count(len(rest))}"
        parts = [
            f"{best['clf']} is the most accurate ({_percent(best['accuracy'])} of {images} "
            f"right), clearly ahead of {others}"
        ]
    else:
        verb = "is" if len(rest) == 1 else "are"
        parts = [
            f"{_names([r['clf'] for r in top])} are the most accurate and cannot be told apart "
            f"on {images} ({_span(top)} right)",
            f"{_names([r['clf'] for r in rest])} {verb} clearly less accurate",
            f"of the leading {_count(len(top))}, {cheapest}" if cheapest else None,
            f"{more} would separate the leaders",
        ]
    return "; ".join(p for p in parts if p) + "."


def trained_on(result: Mapping[str, Any]) -> str:
    """``, trained on the 1437 training rows`` (or all rows, and how) for a result, or ""."""
    seen = result.get("trained_on") or {}
    if not seen:
        return ""
    if seen.get("rows") == "train":
        return f", trained on the {seen['n_rows']} training rows only"
    return f", trained on all {seen['n_rows']} labelled rows ({seen.get('how')})"
