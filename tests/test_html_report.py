"""The HTML report: files, escaping, caps and compact results; and end to end in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape
from PIL import Image

from pipeline.fit.html_report import (
    compact_result,
    make_thumbnails,
    per_class_rows,
    top_confused_pairs,
    write_atomic,
    write_html_report,
)

HOSTILE = 'odd "quote" <b>&\'.png'


# -- helpers ------------------------------------------------------------------------------------


def _synthetic_report(tmp_path: Path, n_classes: int = 40, n_rows: int = 400, seed: int = 0):
    """A report.json-shaped dict and a predictions table over real little image files."""
    rng = np.random.default_rng(seed)
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = []
    for i in range(12):
        name = HOSTILE if i == 0 else f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / name)
        files.append(str(folder / name))
    names = np.array([f"c{i:02d}" for i in range(n_classes)], dtype=object)
    label = rng.integers(0, n_classes, n_rows)
    frames, results = [], []
    for clf, acc in (("svc", 0.7), ("logreg", 0.6)):
        pred = np.where(rng.random(n_rows) < acc, label, rng.integers(0, n_classes, n_rows))
        frames.append(
            pd.DataFrame(
                {
                    "path": np.array(files, dtype=object)[np.arange(n_rows) % len(files)],
                    "split": "test",
                    "label": names[label],
                    "clf": clf,
                    "pred": names[pred],
                    "confidence": rng.random(n_rows),
                    "correct": pred == label,
                }
            )
        )
        cm = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(cm, (label, pred), 1)
        results.append(
            {
                "clf": clf,
                "accuracy": float((pred == label).mean()),
                "balanced_accuracy": 0.5,
                "macro_f1": 0.5,
                "fit_seconds": 1.0,
                "predict_seconds": 0.1,
                "ci": {"accuracy": [0.55, 0.75]},
                "tied_with_best": clf == "svc",
                "p_value_vs_best": None if clf == "svc" else 0.03,
                "per_class": {
                    str(c): {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10}
                    for c in names
                },
                "confusion_matrix": cm.tolist(),
            }
        )
    report = {
        "features": "<script>alert(1)</script>.h5",
        "fingerprint": "abc",
        "n_train": 1000,
        "n_test": n_rows,
        "evaluation": "given split",
        "class_names": names.tolist(),
        "backbone": {"model": "mobilenet_v2", "weights": "IMAGENET1K_V1"},
        "results": results,
    }
    return report, pd.concat(frames, ignore_index=True), files


# -- unit tests ---------------------------------------------------------------------------------


def test_report_files_caps_and_escaping(tmp_path):
    report, predictions, files = _synthetic_report(tmp_path)
    issues = pd.DataFrame(
        {
            "rank": [1, 2],
            "path": [files[0], "/no/such/file.png"],
            "split": ["train", "test"],
            "label": ["c01", "c02"],
            "predicted": ["c03", "c04"],
            "p_label": [0.01, 0.02],
            "p_predicted": [0.9, 0.8],
        }
    )
    out = tmp_path / "run"
    path = write_html_report(
        out, report=report, predictions=predictions, label_issues=issues, gallery_limit=25
    )
    html = path.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert f'data-path="{escape(files[0])}"' in html
    assert "<b>&'.png" not in html
    assert html.count('class="card misclassified"') == 50  # 25 per classifier
    assert "http://" not in html and "https://" not in html  # opens offline
    # Gallery: the most confident mistakes first.
    first = predictions[(predictions.clf == "svc") & ~predictions.correct].confidence.max()
    assert f"confidence {first:.3f}" in html
    # CSVs: the full confusion matrices, the issues as given.
    cm = pd.read_csv(out / "confusion_svc.csv", index_col=0)
    assert (
        cm.shape == (40, 40) and cm.to_numpy().tolist() == report["results"][0]["confusion_matrix"]
    )
    assert pd.read_csv(out / "label_issues.csv")["path"].tolist() == issues["path"].tolist()
    assert not (out / "duplicates.csv").exists()  # not computed, not written
    # Thumbnails: relative links; an unreadable file gets no <img>.
    thumbs = list((out / "thumbs").iterdir())
    assert thumbs and all(f.suffix == ".jpg" for f in thumbs)
    assert 'src="thumbs/' in html and "no image" in html
    assert "The 30 classes with the most errors of 40" in html


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        report, predictions, _ = _synthetic_report(tmp_path, n_classes=3, n_rows=30)
        out = tmp_path / "run"
        write_html_report(out, report=report, predictions=predictions)
    finally:
        os.umask(old)
    written = [out / "report.html", out / "confusion_svc.csv", *(out / "thumbs").iterdir()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o640}
    assert not list(out.glob(".*.tmp"))


def test_write_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "f.txt"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_text() == "two" and os.listdir(target.parent) == ["f.txt"]


def test_thumbnails_content_addressed_and_digits_rendered(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.full((300, 200, 3), 120, dtype=np.uint8)).save(img)
    shutil.copy(img, tmp_path / "b.png")
    links = make_thumbnails(
        [str(img), str(tmp_path / "b.png"), "sklearn:digits/0007", str(tmp_path / "bad.png")],
        tmp_path / "out",
        size=64,
    )
    assert links[str(img)] == links[str(tmp_path / "b.png")]  # same bytes, one file
    assert links[str(tmp_path / "bad.png")] is None
    with Image.open(tmp_path / "out" / links[str(img)]) as t:
        assert max(t.size) == 64
    with Image.open(tmp_path / "out" / links["sklearn:digits/0007"]) as t:
        assert t.size == (32, 32) and t.format == "PNG"


def test_compact_result_and_pairs():
    cm = np.array([[5, 3, 0], [1, 4, 0], [0, 7, 2]])
    pairs = top_confused_pairs(cm, ["a", "b", "c"], k=2)
    assert [(p["true"], p["pred"], p["count"]) for p in pairs] == [("c", "b", 7), ("a", "b", 3)]
    assert pairs[0]["share"] == pytest.approx(7 / 9)
    result = {
        "clf": "svc",
        "per_class": {
            c: {"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 3} for c in "abc"
        },
        "confusion_matrix": cm.tolist(),
    }
    assert compact_result(result, ["a", "b", "c"], max_classes=5) == result
    small = compact_result(result, ["a", "b", "c"], max_classes=2, top_pairs=1)
    assert "confusion_matrix" not in small and small["confusion_csv"] == "confusion_svc.csv"
    assert small["per_class"]["class"] == ["a", "b", "c"]
    assert small["per_class"]["precision"] == [0.3333] * 3
    assert small["top_confused"][0]["count"] == 7
    assert per_class_rows(small) == [
        {"class": c, "precision": 0.3333, "recall": 0.5, "f1": 0.4, "support": 3} for c in "abc"
    ]


def test_missing_prediction_columns_is_a_clear_error(tmp_path):
    report, predictions, _ = _synthetic_report(tmp_path, n_classes=3, n_rows=30)
    with pytest.raises(ValueError, match="confidence"):
        write_html_report(
            tmp_path / "o", report=report, predictions=predictions.drop(columns="confidence")
        )


# -- end to end in a real browser ---------------------------------------------------------------

_COLOURS = {"blue": 2, "green": 1, "red": 0}


def _picture(colour: str, rng: np.random.Generator) -> Image.Image:
    """A 32x32 image: the class's colour channel high, with a class-specific stripe pattern."""
    c = _COLOURS[colour]
    pixels = rng.integers(0, 60, size=(32, 32, 3)).astype(np.int64)
    pixels[..., c] += 170
    if c == 0:
        pixels[::4, :, :] = 30
    elif c == 1:
        pixels[:, ::4, :] = 30
    else:
        pixels[::4, ::4, :] = 250
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _planted_folder(root: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for colour in _COLOURS:
            folder = root / split / colour
            folder.mkdir(parents=True)
            for i in range(count):
                _picture(colour, rng).save(folder / f"{colour}_{i:02d}.png")
    planted = {
        # training images filed under the wrong class
        "mislabelled_train_1": root / "train" / "green" / "really_red.png",
        "mislabelled_train_2": root / "train" / "blue" / "really_green.png",
        "mislabelled_train_3": root / "train" / "red" / "really_blue.png",
        "copy": root / "test" / "red" / "copy_of_red_03.png",
        "mislabelled_test": root / "test" / "red" / HOSTILE,
    }
    _picture("red", rng).save(planted["mislabelled_train_1"])
    _picture("green", rng).save(planted["mislabelled_train_2"])
    _picture("blue", rng).save(planted["mislabelled_train_3"])
    shutil.copyfile(root / "train" / "red" / "red_03.png", planted["copy"])
    _picture("blue", rng).save(planted["mislabelled_test"])
    return {k: str(v) for k, v in planted.items()}


def _browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver, or a skip (a failure when CI sets PIPELINE_REQUIRE_BROWSER)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        driver = None
    if not (chromium and driver):
        reason = "chromium, chromedriver and selenium are needed (.ci/setup.sh installs them)"
        if os.environ.get("PIPELINE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium, driver


def _chrome(chromium: str, driver: str):
    """A headless Chromium driven by selenium, keeping the console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def test_report_in_a_real_browser_shows_the_planted_cases(tmp_path):
    from pipeline.extract.cli import main as extract
    from pipeline.fit import main as fit_main

    chromium, driver = _browser_paths()
    planted = _planted_folder(tmp_path / "data")
    store = tmp_path / "features.h5"
    argv = ["--data", str(tmp_path / "data"), "--out", str(store), "--no-progress", "-q"]
    assert extract([*argv, "--model", "squeezenet1_1", "--weights", "none"]) == 0
    out = tmp_path / "run"
    assert fit_main(["--features", str(store), "--clf", "logreg", "--out", str(out), "-q"]) == 0
    html = out / "report.html"
    predictions = pd.read_csv(out / "predictions.csv")
    predictions["correct"] = predictions["correct"].astype(bool)
    report = json.loads((out / "report.json").read_text())
    assert (predictions["label"] == predictions["pred"]).mean() == report["results"][0]["accuracy"]

    # The planted cases, in the tables behind the report.
    issue_paths = set(pd.read_csv(out / "label_issues.csv")["path"])
    for key in ("mislabelled_train_1", "mislabelled_train_2", "mislabelled_train_3"):
        assert planted[key] in issue_paths, key
    dup_csv = pd.read_csv(out / "duplicates.csv")
    exact = dup_csv[dup_csv["kind"] == "exact"]
    assert exact["path"].tolist() == [planted["copy"]]
    assert exact["train_path"].tolist() == [str(tmp_path / "data/train/red/red_03.png")]
    errors = predictions[~predictions["correct"]]
    assert planted["mislabelled_test"] in set(errors["path"])

    browser = _chrome(chromium, driver)
    try:
        browser.get(html.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map("
            "i => [i.getAttribute('src').slice(0, 40), i.complete, i.naturalWidth]);"
        )
        items = browser.execute_script(
            "const get = s => Array.from(document.querySelectorAll(s)).map(e => e.dataset.path);"
            "return {m: get('.misclassified'), l: get('.label-issue'), d: get('.duplicate')};"
        )
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert len(images) >= len(items["m"]) + len(items["l"]) + 2 * len(items["d"])
    assert all(complete and width > 0 for _, complete, width in images), images
    assert severe == []
    assert sorted(items["m"]) == sorted(errors["path"])
    assert items["l"] == pd.read_csv(out / "label_issues.csv")["path"].tolist()
    assert items["d"] == dup_csv["path"].tolist()
    assert planted["mislabelled_test"] in items["m"]  # the hostile name survives escaping
    assert planted["copy"] in items["d"]


def test_report_leads_with_a_plain_sentence_and_shows_the_decision_chart(tmp_path):
    """Issue 26: the summary sentence is on the page and visible, the decision chart (scores
    with intervals and fit time) is shown, and "tied" is explained where it appears."""
    from selenium.webdriver.common.by import By

    from pipeline.fit import main as fit_main

    from ._fit_helpers import write_store

    chromium, driver = _browser_paths()
    split = ["test" if i % 4 == 0 else "train" for i in range(90)]
    store = write_store(tmp_path / "f.h5", split=split, spread=0.8)
    out = tmp_path / "run"
    argv = ["--features", str(store), "--clf", "logreg,knn", "--out", str(out), "--no-audit"]
    assert fit_main([*argv, "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"] and report["results"][1]["tied_with_best"] is not None
    assert report["summary"] in (out / "report.md").read_text()
    browser = _chrome(chromium, driver)
    try:
        browser.get((out / "report.html").as_uri())
        headline = browser.find_element(By.ID, "headline")
        chart = browser.find_element(By.ID, "decision-chart")
        shown = {
            "headline": (headline.is_displayed(), headline.text),
            "chart": (chart.is_displayed(), chart.size["width"], chart.size["height"]),
            "chart loaded": browser.execute_script(
                "const i = document.getElementById('decision-chart');"
                "return [i.complete, i.naturalWidth, i.naturalHeight];"
            ),
            "note": browser.find_element(By.ID, "tied-note").is_displayed(),
            "tied titles": browser.execute_script(
                "return Array.from(document.querySelectorAll('#results abbr')).map(a => a.title);"
            ),
            "headline first": browser.execute_script(
                "const h = document.getElementById('headline').getBoundingClientRect();"
                "const t = document.querySelector('#results table').getBoundingClientRect();"
                "return h.top < t.top && h.top < window.innerHeight;"
            ),
        }
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert shown["headline"] == (True, report["summary"]), shown
    assert shown["chart"][0] and min(shown["chart"][1:]) > 100, shown
    complete, width, height = shown["chart loaded"]
    assert complete and width > 300 and height > 100, shown
    assert shown["note"] and shown["headline first"], shown
    assert shown["tied titles"] and all("chance" in t for t in shown["tied titles"]), shown
    assert severe == []
