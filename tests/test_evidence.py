"""Evidence statistics: bootstrap intervals, paired tests, tie decisions, the size warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import binom
from sklearn import metrics

from pipeline.fit.evidence import (
    bootstrap_intervals,
    compare_to_best,
    corrected_ttest,
    cv_interval,
    mcnemar_exact,
    point_scores,
    separability_warning,
)


def _noisy(rng, n, k, p_right):
    """Labels and a classifier that is right with probability ``p_right`` per row."""
    y = rng.integers(0, k, n)
    wrong = (y + rng.integers(1, k, n)) % k
    return y, np.where(rng.random(n) < p_right, y, wrong)


def test_point_scores_equal_sklearn_including_absent_classes():
    rng = np.random.default_rng(0)
    for _ in range(40):
        k = int(rng.integers(2, 7))
        labels = [f"c{i}" for i in range(k + 1)]  # one class never occurs anywhere
        y, pred = _noisy(rng, int(rng.integers(3, 40)), k, 0.6)
        y, pred = np.asarray(labels)[y], np.asarray(labels)[pred]
        got = point_scores(y, pred, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = {
                "accuracy": metrics.accuracy_score(y, pred),
                "balanced_accuracy": metrics.balanced_accuracy_score(y, pred),
                "macro_f1": metrics.f1_score(
                    y, pred, labels=labels, average="macro", zero_division=0
                ),
            }
        assert got == pytest.approx(ref)


def test_bootstrap_interval_covers_true_accuracy_about_95_percent_of_seeds():
    """Known synthetic classifier (right with probability 0.8): over 400 seeds the 95 %
    interval must cover 0.8 about 95 % of the time; the tolerance is the two-sided binomial
    99.9 % band around 0.95 (0.91-0.9825). Measured: 0.9575; a 90 % interval (0.9075) fails."""
    true_accuracy, n_seeds, n = 0.8, 400, 150
    covered = 0
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        y, pred = _noisy(rng, n, 4, true_accuracy)
        lo, hi = bootstrap_intervals(y, pred, n_boot=1000, seed=seed)["accuracy"]
        covered += lo <= true_accuracy <= hi
    low, high = binom.ppf([0.0005, 0.9995], n_seeds, 0.95) / n_seeds
    assert low <= covered / n_seeds <= high, covered / n_seeds


def test_bootstrap_is_seeded_contains_point_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    y, pred = _noisy(rng, 400, 5, 0.7)
    a = bootstrap_intervals(y, pred, seed=3)
    assert a == bootstrap_intervals(y, pred, seed=3)
    assert a != bootstrap_intervals(y, pred, seed=4)
    point = point_scores(y, pred)
    for key, (lo, hi) in a.items():
        assert 0 <= lo <= point[key] <= hi <= 1, key
    y_big, pred_big = _noisy(rng, 40_000, 5, 0.7)
    lo_big, hi_big = bootstrap_intervals(y_big, pred_big, n_boot=500, seed=0)["accuracy"]
    lo, hi = a["accuracy"]
    assert (hi_big - lo_big) < (hi - lo) / 5  # width ~ 1/sqrt(n): 10x the rows, 1/10 width
    # Wald check of the width: 2 * 1.96 * sqrt(p (1 - p) / n)
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.7 * 0.3 / 400), rel=0.2)


def test_bootstrap_perfect_classifier_and_bad_input():
    y = np.array(["a", "b"] * 20)
    assert bootstrap_intervals(y, y, seed=0) == {
        "accuracy": (1.0, 1.0),
        "balanced_accuracy": (1.0, 1.0),
        "macro_f1": (1.0, 1.0),
    }
    with pytest.raises(ValueError, match="equal length"):
        bootstrap_intervals([0, 1], [0], seed=0)
    with pytest.raises(ValueError, match="not in labels"):
        bootstrap_intervals([0, 1], [0, 2], labels=[0, 1], seed=0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_intervals([0, 1], [0, 1], n_boot=0)


def test_mcnemar_exact_values():
    same = np.array([True, False, True, True])
    assert mcnemar_exact(same, same) == 1.0
    # 6 discordant rows all one way: 2 * 0.5**6
    assert mcnemar_exact([True] * 6 + [False] * 4, [False] * 6 + [False] * 4) == pytest.approx(
        2 * 0.5**6
    )
    assert mcnemar_exact([True] * 5, [False] * 5) == pytest.approx(0.0625)
    # balanced discordance: no evidence
    assert mcnemar_exact([True, False] * 10, [False, True] * 10) == 1.0


def test_identical_classifiers_tied_clearly_better_not():
    rng = np.random.default_rng(2)
    y, good = _noisy(rng, 500, 10, 0.9)
    _, bad = _noisy(rng, 500, 10, 0.6)
    correct = {"a": good == y, "b": good == y, "c": bad == y}
    result = compare_to_best(correct)
    assert result["a"]["is_best"] and result["a"]["tied_with_best"]
    assert result["a"]["p_value_vs_best"] is None
    assert result["b"]["tied_with_best"] and result["b"]["p_value_vs_best"] == 1.0
    assert not result["c"]["tied_with_best"] and result["c"]["p_value_vs_best"] < 1e-6
    # the first named wins equal scores
    assert compare_to_best({"b": good == y, "a": good == y})["b"]["is_best"]


def test_holm_adjustment_makes_ties_more_likely_not_less():
    # Two challengers each 8 rows worse than the best, all discordant one way (raw p = 0.0078),
    # and one 5 rows worse (raw p = 0.0625).
    n = 100
    best = np.ones(n, dtype=bool)
    worse8, worse5 = best.copy(), best.copy()
    worse8[:8] = False
    worse5[:5] = False
    result = compare_to_best({"best": best, "x": worse8, "y": worse8.copy(), "z": worse5})
    assert result["x"]["p_value_raw"] == pytest.approx(2 * 0.5**8)
    assert result["x"]["p_value_vs_best"] == pytest.approx(3 * 2 * 0.5**8)
    assert result["x"]["p_value_vs_best"] >= result["x"]["p_value_raw"]
    assert not result["x"]["tied_with_best"] and result["z"]["tied_with_best"]


def test_corrected_ttest_and_cv_comparison():
    a = np.array([0.80, 0.82, 0.81, 0.79, 0.83])
    assert corrected_ttest(a, a, 800, 200) == 1.0
    # constant gap: no variance, certainly different
    assert corrected_ttest(a, a - 0.05, 800, 200) == 0.0
    b = a - np.array([0.01, -0.005, 0.012, 0.0, 0.008])
    corrected = corrected_ttest(a, b, 800, 200)
    from scipy.stats import ttest_rel

    naive = ttest_rel(a, b).pvalue
    assert naive < corrected < 1  # the correction widens, never narrows
    # hand computation: t = mean / sqrt((1/k + n2/n1) var)
    d = a - b
    t = d.mean() / np.sqrt((1 / 5 + 200 / 800) * d.var(ddof=1))
    from scipy.stats import t as student_t

    assert corrected == pytest.approx(2 * student_t.sf(abs(t), 4))
    folds = {"a": a, "b": b, "c": a - 0.1 + np.array([0.0, 0.01, -0.01, 0.0, 0.005])}
    result = compare_to_best(fold_scores=folds, n_train=800, n_test=200)
    assert result["a"]["is_best"] and result["b"]["tied_with_best"]
    assert not result["c"]["tied_with_best"]
    with pytest.raises(ValueError, match="n_train and n_test"):
        compare_to_best(fold_scores=folds)
    with pytest.raises(ValueError, match="exactly one"):
        compare_to_best()


def test_cv_interval():
    scores = [0.80, 0.82, 0.81, 0.79, 0.83]
    ci = cv_interval(scores, 800, 200)
    assert ci["mean"] == pytest.approx(0.81)
    assert ci["std"] == pytest.approx(np.std(scores, ddof=1))
    lo, hi = ci["interval"]
    assert lo < 0.81 < hi
    # wider than the uncorrected t interval
    from scipy.stats import t as student_t

    naive_half = student_t.ppf(0.975, 4) * np.std(scores, ddof=1) / np.sqrt(5)
    assert (hi - lo) / 2 > naive_half
    assert cv_interval([1.0, 1.0, 0.99], 100, 50)["interval"][1] <= 1.0


def test_separability_warning_rule():
    # 360 rows at 0.97: the 95 % interval is about +-1.8 points: warned, in plain words.
    message = separability_warning(360, (0.952, 0.988))
    assert message is not None and "\n" not in message
    assert message.startswith("360 test images are too few to rank these classifiers")
    assert "±1.8 points" in message and "1.7 points (6 images)" in message
    assert separability_warning(20_000, (0.735, 0.747)) is None


def test_separability_advice_depends_on_the_evaluation():
    holdout = separability_warning(360, (0.94, 0.98))
    cv = separability_warning(360, (0.94, 0.98), cv=True)
    assert holdout.endswith("more test images or --cv would separate them")
    assert cv.endswith("more labelled images would separate them") and "--cv" not in cv
    assert separability_warning(100_000, (0.950, 0.955)) is None
