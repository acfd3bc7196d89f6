"""The decision chart: zoomed score axis with intervals, ties marked, fit time on a log axis."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from pipeline.fit.decision_chart import score_axis_limits, write_decision_png

RESULTS = [
    {
        "clf": "svc",
        "accuracy": 0.978,
        "ci": {"accuracy": [0.961, 0.992]},
        "tied_with_best": True,
        "p_value_vs_best": None,
        "fit_seconds": 0.4,
    },
    {
        "clf": "logreg",
        "accuracy": 0.969,
        "ci": {"accuracy": [0.95, 0.986]},
        "tied_with_best": True,
        "p_value_vs_best": 0.38,
        "fit_seconds": 0.05,
    },
    {
        "clf": "xgboost",
        "accuracy": 0.953,
        "ci": {"accuracy": [0.93, 0.975]},
        "tied_with_best": False,
        "p_value_vs_best": 0.01,
        "fit_seconds": 12.0,
    },
]


def test_axis_is_zoomed_to_the_intervals():
    lo, hi = score_axis_limits([0.93, 0.95], [0.975, 0.992])
    assert 0.9 < lo < 0.93 and 0.992 < hi <= 1.0
    assert score_axis_limits([0.999], [1.0])[1] == 1.0
    lo, hi = score_axis_limits([0.5], [0.5])
    assert hi - lo == pytest.approx(0.02 * 1.3)


def test_writes_png_with_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_decision_png(tmp_path / "decision.png", RESULTS)
    finally:
        os.umask(old)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 600
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["decision.png"]
    with pytest.raises(ValueError, match="no results"):
        write_decision_png(tmp_path / "x.png", [])
