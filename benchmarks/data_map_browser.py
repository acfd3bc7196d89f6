"""The embedding map at scale in headless Chromium: page size, draw time, a box selection.

python benchmarks/data_map_browser.py --rows 100000 --out /tmp/map100k

A synthetic survey (random scores, 2-D points in 100 blobs, paths that do not exist, so the
hover falls back to file: links) is rendered with ``write_html_report``; the script then opens
``report.html`` in headless Chromium (software WebGL), waits for plotly to draw, selects the
left half of the map through plotly's API and reports how long each step took.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _synthetic(rows: int, seed: int = 0):
    import pandas as pd

    from pipeline.fit.data_survey import DataSurvey, class_balance

    rng = np.random.default_rng(seed)
    labels = [f"c{x:02d}" for x in rng.integers(0, 100, rows)]
    splits = np.where(rng.random(rows) < 0.2, "test", "train")
    centres = rng.normal(0, 10, (100, 2))
    xy = (centres[[int(x[1:]) for x in labels]] + rng.normal(0, 1, (rows, 2))).astype(np.float32)
    scores = rng.gamma(4, 0.1, rows)
    order = np.argsort(-scores, kind="stable")
    outliers = pd.DataFrame(
        {
            "row": order,
            "rank": np.arange(1, rows + 1),
            "path": [f"/data/images/{splits[i]}/{labels[i]}/{i:07d}.jpg" for i in order],
            "split": splits[order],
            "label": [labels[i] for i in order],
            "score": scores[order],
            "flagged": scores[order] > 1.0,
        }
    )
    balance, tiny = class_balance(labels, splits)
    dups = pd.DataFrame(
        columns=["path", "split", "label", "other_path", "other_label", "kind", "similarity"]
    )
    survey = DataSurvey(outliers, dups, balance, tiny, scores, 1.0, 10)
    return survey, xy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/data-map-bench"))
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from pipeline.fit.html_report import write_html_report

    survey, xy = _synthetic(args.rows)
    report = {"features": "synthetic.h5", "class_names": sorted(set(survey.outliers["label"]))}
    started = time.perf_counter()
    html = write_html_report(
        args.out, report=report, survey=survey, projection=(xy, "synthetic points")
    )
    written = time.perf_counter() - started
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1000"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        started = time.perf_counter()
        browser.get(html.as_uri())
        while not browser.execute_script(
            "var g = document.getElementById('embedding-map'); return !!(g && g._fullData);"
        ):
            time.sleep(0.05)
        drawn = time.perf_counter() - started
        started = time.perf_counter()
        browser.execute_script(
            "var g = document.getElementById('embedding-map'), d = g._fullData[0];"
            "var xs = d.x.slice().sort((a, b) => a - b), ys = d.y.slice().sort((a, b) => a - b);"
            "Plotly.relayout(g, {selections: [{type: 'rect', xref: 'x', yref: 'y',"
            " x0: xs[0] - 1, x1: xs[xs.length >> 1], y0: ys[0] - 1, y1: ys[ys.length - 1] + 1}]});"
        )
        while not browser.execute_script(
            "return document.querySelectorAll('#map-selected .map-point').length > 0;"
        ):
            time.sleep(0.05)
        selected = time.perf_counter() - started
        count = browser.execute_script(
            "return document.getElementById('map-selection-count').textContent;"
        )
    finally:
        browser.quit()
    print(
        json.dumps(
            {
                "rows": args.rows,
                "write_s": round(written, 1),
                "report_html_mb": round(html.stat().st_size / 2**20, 1),
                "plotly_js_mb": round((args.out / "plotly.min.js").stat().st_size / 2**20, 1),
                "load_and_draw_s": round(drawn, 1),
                "box_select_s": round(selected, 1),
                "selection": count,
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
