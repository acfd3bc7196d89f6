"""Evidence for stage two's decision: confidence intervals and paired tests of classifiers.

Pure numpy/scipy statistics, no I/O:

- :func:`bootstrap_intervals`: seeded percentile bootstrap over the test rows of accuracy,
  balanced accuracy and macro-F1, vectorised;
- :func:`mcnemar_exact`: exact McNemar test of two classifiers on the same rows;
- :func:`corrected_ttest` and :func:`cv_interval`: Nadeau & Bengio's corrected resampled
  t-test and interval for cross-validation fold scores (folds overlap in their training rows);
- :func:`compare_to_best`: which classifiers are statistically tied with the best;
- :func:`separability_warning`: one line when the evaluation is too small to separate them.

Conventions follow scikit-learn's metrics so that the point estimates equal
:func:`pipeline.report.classification_metrics`: balanced accuracy is the mean recall over the
classes present in ``y_true`` (as :func:`sklearn.metrics.balanced_accuracy_score`), macro-F1
the mean over ``labels`` of ``2 TP / (2 TP + FP + FN)``, 0 for a class with no true and no
predicted row (``f1_score(..., average="macro", zero_division=0)``). A bootstrap resample is
scored exactly as scikit-learn would score it: a class that the resample happens to lack is left
out of balanced accuracy and counts 0 in macro-F1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ALPHA",
    "bootstrap_intervals",
    "compare_to_best",
    "corrected_ttest",
    "cv_interval",
    "mcnemar_exact",
    "paired_difference_interval",
    "point_scores",
    "separability_warning",
]

#: Significance level of every "tied with the best" decision.
ALPHA = 0.05
#: Cap on the (resamples x confusion cells) block held in memory at once.
_BLOCK_CELLS = 2_000_000
_SCORES = ("accuracy", "balanced_accuracy", "macro_f1")


def _encode(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels of any type -> integer codes ``0..K-1`` over ``labels`` (default: all seen)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must be 1-d and of equal length, got shapes {y_true.shape} "
            f"and {y_pred.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("y_true is empty: there are no rows to score")
    seen = np.unique(np.concatenate([y_true, y_pred]))
    classes = seen if labels is None else np.asarray(list(labels))
    extra = np.setdiff1d(seen, classes)
    if len(extra):
        raise ValueError(f"labels {extra.tolist()} occur in y_true or y_pred but not in labels")
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]
    codes_true = order[np.searchsorted(sorted_classes, y_true)]
    codes_pred = order[np.searchsorted(sorted_classes, y_pred)]
    return codes_true, codes_pred, len(classes)


def _scores_from_counts(
    tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray, n_rows: int
) -> dict[str, np.ndarray]:
    """Scores of each row of per-class counts (shape ``(B, K)``), sklearn conventions."""
    accuracy = tp.sum(axis=1) / n_rows
    present = n_true > 0
    recall = np.divide(tp, n_true, out=np.zeros(tp.shape), where=present)
    balanced = recall.sum(axis=1) / present.sum(axis=1)
    denom = n_true + n_pred
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "macro_f1": f1.mean(axis=1)}


def _per_class(codes: np.ndarray, draws: np.ndarray, k: int) -> np.ndarray:
    """Sum the rows drawn into each cell by the cell's class: ``(B, cells) -> (B, K)``."""
    b = draws.shape[0]
    index = (np.arange(b) * k)[:, None] + codes[None, :]
    return np.bincount(index.ravel(), weights=draws.ravel(), minlength=b * k).reshape(b, k)


def point_scores(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Sequence[Any] | None = None
) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 with the conventions of the bootstrap.

    They equal scikit-learn's ``accuracy_score``, ``balanced_accuracy_score`` and
    ``f1_score(labels=labels, average="macro", zero_division=0)``.
    """
    t, p, k = _encode(y_true, y_pred, labels)
    tp = np.bincount(t[t == p], minlength=k)[None, :]
    scores = _scores_from_counts(
        tp, np.bincount(t, minlength=k)[None, :], np.bincount(p, minlength=k)[None, :], len(t)
    )
    return {key: float(v[0]) for key, v in scores.items()}


def bootstrap_intervals(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    labels: Sequence[Any] | None = None,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap confidence intervals of accuracy, balanced accuracy and macro-F1.

    Resampling the ``n`` test rows with replacement is the same as drawing the cells of the
    confusion matrix from a multinomial with ``n`` trials and the observed cell shares, since
    the three scores depend on the rows only through that matrix. So each resample is one
    multinomial draw over the non-empty cells (at most ``min(n, K**2)``, not ``n`` indices),
    and per-class true-positive, true and predicted counts come from one ``bincount`` over
    ``resample * K + class``. Memory is bounded by processing resamples in blocks; 100,000
    test rows cost no more than 1,000.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels, any type.
    labels : sequence, optional
        Every class of the problem (macro-F1 averages over these, as sklearn's ``labels=``);
        default: the classes seen in ``y_true`` or ``y_pred``.
    n_boot : int, default=2000
        Number of resamples.
    confidence : float, default=0.95
        Coverage of each interval.
    seed : int, Generator or None, default=0
        Seeds the resampling; the same seed gives the same intervals.

    Returns
    -------
    dict
        ``{"accuracy": (lo, hi), "balanced_accuracy": (lo, hi), "macro_f1": (lo, hi)}``,
        floats in [0, 1].

    Examples
    --------
    >>> ci = bootstrap_intervals([0, 1, 1, 0] * 50, [0, 1, 0, 0] * 50, seed=0)
    >>> lo, hi = ci["accuracy"]
    >>> bool(lo < 0.75 < hi)
    True
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    t, p, k = _encode(y_true, y_pred, labels)
    n = len(t)
    cells, counts = np.unique(t * k + p, return_counts=True)
    cell_true, cell_pred = cells // k, cells % k
    cell_hit = cell_true == cell_pred
    shares = counts / n
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // max(len(cells), k))
    stats: dict[str, list[np.ndarray]] = {key: [] for key in _SCORES}
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        draws = rng.multinomial(n, shares, size=b)  # (b, cells): rows per cell per resample
        tp = _per_class(cell_true[cell_hit], draws[:, cell_hit], k)
        n_true = _per_class(cell_true, draws, k)
        n_pred = _per_class(cell_pred, draws, k)
        for key, values in _scores_from_counts(tp, n_true, n_pred, n).items():
            stats[key].append(values)
    tail = 50.0 * (1.0 - confidence)
    result = {}
    for key in _SCORES:
        lo, hi = np.percentile(np.concatenate(stats[key]), [tail, 100.0 - tail])
        result[key] = (float(lo), float(hi))
    return result


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> float:
    """Two-sided exact McNemar test of two classifiers scored on the same rows.

    Only discordant rows (one right, the other wrong) carry evidence; under the null both kinds
    are equally likely, so the p-value is an exact binomial test of ``b`` out of ``b + c``.

    Parameters
    ----------
    correct_a, correct_b : array-like of bool, shape (n_samples,)
        Whether each classifier got each row right (same rows, same order).

    Returns
    -------
    float
        The p-value; 1.0 when there is no discordant row.

    Examples
    --------
    >>> mcnemar_exact([True] * 10, [True] * 10)
    1.0
    >>> round(mcnemar_exact([True] * 6, [False] * 6), 4)
    0.0312
    """
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"correct_a and correct_b must be 1-d of equal length, got {a.shape} and {b.shape}"
        )
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_difference_interval(
    correct_a: ArrayLike,
    correct_b: ArrayLike,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``accuracy(a) - accuracy(b)`` on the same rows.

    The rows are resampled in pairs; the difference depends only on how many rows only ``a``
    and only ``b`` got right, so each resample is one multinomial draw over those two kinds
    and the rest.

    Examples
    --------
    >>> lo, hi = paired_difference_interval([True] * 90 + [False] * 10, [True] * 80 + [False] * 20)
    >>> bool(0 < lo < 0.1 < hi)
    True
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(
            f"correct_a and correct_b must be 1-d, non-empty, of equal length, got "
            f"{a.shape} and {b.shape}"
        )
    n = len(a)
    shares = np.array([np.sum(a & ~b), np.sum(~a & b), np.sum(a == b)]) / n
    draws = np.random.default_rng(seed).multinomial(n, shares, size=n_boot)
    diffs = (draws[:, 0] - draws[:, 1]) / n
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(diffs, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _corrected_variance(values: np.ndarray, n_train: int, n_test: int) -> float:
    """Nadeau & Bengio's variance of a mean over k overlapping folds."""
    k = len(values)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    return (1.0 / k + n_test / n_train) * float(np.var(values, ddof=1))


def corrected_ttest(scores_a: ArrayLike, scores_b: ArrayLike, n_train: int, n_test: int) -> float:
    """Nadeau & Bengio's corrected resampled t-test of two classifiers' fold scores.

    Plain paired t-tests over cross-validation folds are too liberal because the folds share
    training rows; the correction inflates the variance of the mean difference from
    ``var / k`` to ``(1 / k + n_test / n_train) * var`` (Nadeau & Bengio 2003, Machine
    Learning 52:239). For K-fold CV, ``n_test / n_train = 1 / (K - 1)``.

    Parameters
    ----------
    scores_a, scores_b : array-like of shape (k,)
        Per-fold scores of the two classifiers on the same folds, k >= 2.
    n_train, n_test : int
        Rows in each fold's training and test part (averages where they vary).

    Returns
    -------
    float
        Two-sided p-value (Student t, k - 1 degrees of freedom). When all fold differences are
        equal, 1.0 if they are zero and 0.0 otherwise.
    """
    from scipy.stats import t as student_t

    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(
            f"scores_a and scores_b must be 1-d, of equal length >= 2, got {a.shape}, {b.shape}"
        )
    diff = a - b
    mean = float(diff.mean())
    var = _corrected_variance(diff, n_train, n_test)
    if var <= 1e-300:
        return 1.0 if abs(mean) < 1e-12 else 0.0
    stat = mean / math.sqrt(var)
    return float(min(1.0, 2.0 * student_t.sf(abs(stat), df=len(diff) - 1)))


def cv_interval(
    fold_scores: ArrayLike, n_train: int, n_test: int, *, confidence: float = 0.95
) -> dict[str, Any]:
    """Mean, standard deviation and corrected t interval of cross-validation fold scores.

    The interval is ``mean +- t(k-1) * sqrt((1/k + n_test/n_train) * var)``, the
    Nadeau & Bengio correction for overlapping training folds, clipped to [0, 1].

    Returns
    -------
    dict
        ``{"mean": float, "std": float (ddof=1), "interval": (lo, hi)}``.
    """
    from scipy.stats import t as student_t

    values = np.asarray(fold_scores, dtype=float)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"fold_scores must hold >= 2 fold scores, got shape {values.shape}")
    mean = float(values.mean())
    half = float(student_t.ppf(0.5 + confidence / 2, df=len(values) - 1)) * math.sqrt(
        _corrected_variance(values, n_train, n_test)
    )
    return {
        "mean": mean,
        "std": float(values.std(ddof=1)),
        "interval": (max(0.0, mean - half), min(1.0, mean + half)),
    }


def _holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def compare_to_best(
    correct: Mapping[str, ArrayLike] | None = None,
    *,
    fold_scores: Mapping[str, ArrayLike] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    alpha: float = ALPHA,
) -> dict[str, dict[str, Any]]:
    """Mark which classifiers cannot be told apart from the best.

    Give either ``correct`` (holdout: per classifier, whether each of the same test rows was
    predicted right; exact McNemar test against the best) or ``fold_scores`` (CV: per
    classifier, its accuracy on each of the same folds, with the fold sizes ``n_train`` and
    ``n_test``; corrected resampled t-test against the best).

    The best is the highest accuracy (mean fold accuracy with CV); equal scores go to the
    classifier named first, so the order given should be the ``--clf`` order.

    Multiple comparisons: the ``m - 1`` p-values against the best are Holm-adjusted, and a
    classifier is tied unless its adjusted p-value is below ``alpha``. This controls the chance
    of calling *any* false win at ``alpha``, so it errs towards "tied": the table never claims
    a win that the data do not support. (Without an adjustment, more classifiers would be
    called worse, not fewer.) Picking the best on the same rows favours it slightly; the
    adjustment also leans against that.

    Returns
    -------
    dict
        Per classifier name, in the order given: ``{"score": float, "is_best": bool,
        "tied_with_best": bool (True for the best), "p_value_vs_best": float | None
        (Holm-adjusted; None for the best), "p_value_raw": float | None}``.
    """
    if (correct is None) == (fold_scores is None):
        raise ValueError("give exactly one of correct (holdout) or fold_scores (cv)")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if fold_scores is not None:
        if n_train is None or n_test is None:
            raise ValueError("fold_scores needs n_train and n_test (rows per fold)")
        data = {name: np.asarray(v, dtype=float) for name, v in fold_scores.items()}
    else:
        data = {name: np.asarray(v, dtype=bool) for name, v in correct.items()}
    if not data:
        raise ValueError("no classifiers to compare")
    names = list(data)
    scores = {name: float(values.mean()) for name, values in data.items()}
    best = max(names, key=lambda name: (scores[name], -names.index(name)))
    others = [name for name in names if name != best]
    raw = []
    for name in others:
        if fold_scores is not None:
            raw.append(corrected_ttest(data[best], data[name], n_train, n_test))
        else:
            raw.append(mcnemar_exact(data[best], data[name]))
    adjusted = dict(zip(others, _holm(raw), strict=True)) if others else {}
    raw_of = dict(zip(others, raw, strict=True))
    result = {}
    for name in names:
        is_best = name == best
        result[name] = {
            "score": scores[name],
            "is_best": is_best,
            "tied_with_best": is_best or adjusted[name] >= alpha,
            "p_value_vs_best": None if is_best else adjusted[name],
            "p_value_raw": None if is_best else raw_of[name],
        }
    return result


def separability_warning(
    n_test: int, best_interval: Sequence[float], *, resolution: float = 0.01, cv: bool = False
) -> str | None:
    """One line in plain words when the evaluation is too small to separate classifiers,
    else None.

    Rule: warn when the best classifier's accuracy interval (95 % bootstrap, or the corrected
    CV interval) has a half-width above ``resolution`` (1 point by default): gaps smaller
    than that half-width are within the noise of this evaluation, and classifier choices on
    embeddings usually hinge on gaps of 1-2 points. The message also states the floor of the
    exact McNemar test: no gap smaller than 6 rows (``6 / n_test``) can ever be significant at
    5 %, since it needs at least 6 discordant rows, all on one side.

    Parameters
    ----------
    n_test : int
        Rows the classifiers were scored on (all rows with CV).
    best_interval : (float, float)
        The best classifier's accuracy interval.
    resolution : float, default=0.01
        Half-width above which the warning is given.
    cv : bool, default=False
        The scores come from cross-validation (the advice is then more rows, not ``--cv``).
    """
    lo, hi = float(best_interval[0]), float(best_interval[1])
    half = (hi - lo) / 2
    if n_test >= 1 and half <= resolution:
        return None
    floor = 6 / n_test if n_test >= 1 else float("inf")
    images = f"{n_test} images (cross-validated)" if cv else f"{n_test} test images"
    return (
        f"{images} are too few to rank these classifiers: each accuracy is uncertain by about "
        f"±{100 * half:.1f} points, and two classifiers must differ by at least "
        f"{100 * floor:.1f} points (6 images) before the difference can be told from chance; "
        + (
            "more labelled images would separate them"
            if cv
            else "more test images or --cv would separate them"
        )
    )
