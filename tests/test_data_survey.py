"""The data survey (issue 27): outliers, duplicates inside a split, class balance, and the
embedding map, in the tables and in a real browser."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from pipeline.fit.data_survey import class_balance, survey
from pipeline.fit.embedding_map import project_2d

from .test_html_report import _browser_paths

# -- on synthetic embeddings --------------------------------------------------------------------


def _clustered(n_per_class: int = 60, n_classes: int = 4, dims: int = 200, seed: int = 0):
    """Rows around class centres with wide in-class spread (no accidental near-duplicates)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dims)) * 2.0
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + rng.normal(size=(len(labels), dims))
    return features.astype(np.float32), labels


def test_planted_outliers_rank_first_and_copies_inside_a_split_are_found():
    features, labels = _clustered()
    rng = np.random.default_rng(1)
    n = len(features)
    splits = np.where(np.arange(n) % 5 == 0, "test", "train")
    # three rows far from every class (another domain), one training row copied twice
    odd = [7, 70, 130]
    features[odd] = rng.normal(size=(3, features.shape[1])).astype(np.float32) * 6.0
    source, copy, near = 1, 2, 3  # all train rows (indices not multiples of 5)
    features[copy] = features[source]
    features[near] = features[source] + 0.05 * rng.normal(size=features.shape[1])
    paths = [f"img{i:03d}.png" for i in range(n)]
    hashes = [f"h{i}" for i in range(n)]
    hashes[copy] = hashes[source]
    found = survey(features, paths, [f"c{x}" for x in labels], splits, hashes=hashes)

    assert set(found.outliers["row"].head(3)) == set(odd)
    assert found.outliers["rank"].tolist() == list(range(1, n + 1))
    assert found.outliers["score"].is_monotonic_decreasing
    assert set(found.outliers.loc[found.outliers["flagged"], "row"]) == set(odd)
    assert found.n_flagged == 3
    pairs = {(r.path, r.other_path): r.kind for r in found.split_duplicates.itertuples()}
    assert pairs[(paths[source], paths[copy])] == "exact"
    assert pairs[(paths[source], paths[near])] == "near"
    assert pairs[(paths[copy], paths[near])] == "near"
    assert len(pairs) == 3  # nothing else: the in-class spread is wide
    assert set(found.split_duplicates["split"]) == {"train"}


def test_sampled_reference_is_noted_and_still_scores_every_row():
    features, labels = _clustered(n_per_class=40)
    found = survey(
        features, list(map(str, range(len(features)))), labels, [""] * len(features),
        max_reference=50,
    )  # fmt: skip
    assert len(found.outliers) == len(features)
    assert any("random sample of 50" in note for note in found.notes)


def test_class_balance_counts_and_tiny_classes():
    labels = ["a"] * 40 + ["b"] * 38 + ["c"] * 3 + ["d"] * 12
    splits = (["train", "test"] * 47)[: len(labels)]
    table, tiny = class_balance(labels, splits)
    assert table.loc["a", "total"] == 40 and table.loc["c", "total"] == 3
    assert table.loc["a", "train"] + table.loc["a", "test"] == 40
    assert tiny == ["c"]


def test_projection_is_deterministic_and_places_every_row():
    features, _ = _clustered(n_per_class=30)
    a, note = project_2d(features, seed=3, max_tsne_rows=60)
    b, _ = project_2d(features, seed=3, max_tsne_rows=60)
    assert a.shape == (len(features), 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert "t-SNE" in note and "60 nearest" not in note and "placed" in note


# -- end to end: extract, fit, report in Chromium ------------------------------------------------


def _chrome(chromium: str, driver: str, downloads: Path):
    """Headless Chromium with the console log kept, downloads into ``downloads``, offline."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.set_network_conditions(
        offline=True, latency=0, download_throughput=0, upload_throughput=0
    )
    return browser


def _scene(rng: np.random.Generator, colour: int) -> Image.Image:
    """A 32x32 'cifar-like' picture: a smooth gradient background and a few soft blobs in the
    class's colour."""
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    base = rng.uniform(40, 160, size=3)
    tilt = rng.uniform(-60, 60, size=3)
    pixels = base + tilt * (xx[..., None] * rng.uniform() + yy[..., None] * rng.uniform())
    for _ in range(3):
        cy, cx, r = rng.uniform(6, 26), rng.uniform(6, 26), rng.uniform(3, 9)
        blob = np.exp(-((yy * 31 - cy) ** 2 + (xx * 31 - cx) ** 2) / (2 * r * r))
        shade = np.full(3, 40.0)
        shade[colour] = 230.0
        pixels = pixels * (1 - blob[..., None]) + shade * blob[..., None]
    pixels += rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _odd_images() -> dict[str, Image.Image]:
    """Off-distribution images: a blank frame, a rendered text page, pure noise."""
    text = Image.new("RGB", (32, 32), "white")
    draw = ImageDraw.Draw(text)
    for row in range(4):
        draw.text((1, row * 8), "Lorem", fill="black")
    rng = np.random.default_rng(99)
    return {
        "blank": Image.new("RGB", (32, 32), (128, 128, 128)),
        "text": text,
        "noise": Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
    }


def _survey_folder(root: Path, per_class: tuple[int, int] = (20, 6)) -> dict[str, str]:
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for colour, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                _scene(rng, colour).save(folder / f"{name}_{i:02d}.png")
    planted = {"source": root / "train" / "red" / "red_04.png"}
    # a training image copied twice inside the training split: once byte for byte, once
    # resized to 64 x 64 (other bytes, the same picture)
    planted["copy"] = root / "train" / "red" / "copy_of_red_04.png"
    shutil.copyfile(planted["source"], planted["copy"])
    planted["resized"] = root / "train" / "red" / "resized_red_04.png"
    Image.open(planted["source"]).resize((64, 64), Image.Resampling.BICUBIC).save(
        planted["resized"]
    )
    for name, image in _odd_images().items():
        planted[name] = (
            root / "test" / ("green", "blue", "red")[len(planted) % 3] / f"odd_{name}.png"
        )
        image.save(planted[name])
    return {k: str(v) for k, v in planted.items()}


def _run(tmp_path: Path, model: list[str], per_class: tuple[int, int] = (20, 6)):
    from pipeline.extract.cli import main as extract
    from pipeline.fit import main as fit_main

    planted = _survey_folder(tmp_path / "data", per_class)
    store = tmp_path / "features.h5"
    argv = ["--data", str(tmp_path / "data"), "--out", str(store), "--no-progress", "-q"]
    assert extract([*argv, *model]) == 0
    out = tmp_path / "run"
    assert fit_main(["--features", str(store), "--clf", "logreg", "--out", str(out), "-q"]) == 0
    return planted, out


@pytest.mark.slow
@pytest.mark.usefixtures("real_weights")
def test_off_distribution_images_rank_among_the_top_outliers(tmp_path):
    """With the real MobileNetV2 embeddings, a blank frame, a text page and noise planted
    among generated pictures are the most unusual images."""
    planted, out = _run(tmp_path, ["--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1"])
    outliers = pd.read_csv(out / "outliers.csv")
    assert list(outliers.columns[:5]) == ["rank", "path", "split", "label", "score"]
    top = outliers["path"].head(5).tolist()
    for name in ("blank", "text", "noise"):
        assert planted[name] in top, (name, outliers.head(8))
    flagged = set(outliers.loc[outliers["flagged"], "path"])
    assert {planted["text"], planted["noise"]} <= flagged
    # the training image copied twice: byte for byte (exact) and resized (near); the
    # generated pictures are alike, so other near pairs may be listed too
    within = pd.read_csv(out / "duplicates_within_split.csv")
    pairs = {frozenset((r.path, r.other_path)): r.kind for r in within.itertuples()}
    assert pairs[frozenset((planted["source"], planted["copy"]))] == "exact"
    assert pairs[frozenset((planted["source"], planted["resized"]))] == "near"
    assert pairs[frozenset((planted["copy"], planted["resized"]))] == "near"


def test_map_hover_selection_and_download_in_a_real_browser(tmp_path):
    chromium, driver = _browser_paths()
    planted, out = _run(tmp_path, ["--model", "squeezenet1_1", "--weights", "none"], (8, 3))
    outliers = pd.read_csv(out / "outliers.csv")
    n_rows = len(outliers)
    assert n_rows == 3 * (8 + 3) + 2 + 3  # every labelled row, once
    within = pd.read_csv(out / "duplicates_within_split.csv")
    pairs = {frozenset((r.path, r.other_path)): r.kind for r in within.itertuples()}
    assert pairs[frozenset((planted["source"], planted["copy"]))] == "exact"
    assert planted["resized"] in set(within["path"]) | set(within["other_path"])
    balance = pd.read_csv(out / "class_balance.csv", index_col="class")
    assert balance["total"].sum() == n_rows
    manifest = json.loads((out / ".fit-run.json").read_text())["names"]
    for name in (
        "outliers.csv",
        "duplicates_within_split.csv",
        "class_balance.csv",
        "plotly.min.js",
    ):
        assert name in manifest

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = _chrome(chromium, driver, downloads)
    try:
        browser.get((out / "report.html").as_uri())
        for _ in range(50):  # plotly draws asynchronously
            if browser.execute_script(
                "var g = document.getElementById('embedding-map'); return !!(g && g._fullData);"
            ):
                break
            time.sleep(0.1)
        state = browser.execute_script(
            "var g = document.getElementById('embedding-map');"
            "var d = JSON.parse(document.getElementById('embedding-map-data').textContent);"
            "return {n: g._fullData[0].x.length, type: g._fullData[0].type, paths: d.path,"
            " outliers: Array.from(document.querySelectorAll('.card.outlier')).map(e => e.dataset.path),"
            " summary: document.getElementById('n-outliers').textContent};"
        )
        assert state["type"] == "scattergl" and state["n"] == n_rows
        assert sorted(state["paths"]) == sorted(outliers["path"])
        assert state["outliers"][:5] == outliers["path"].head(5).tolist()
        assert f"of {n_rows} rows" in state["summary"]

        # hover: move the real mouse onto the point of the blank image
        from selenium.webdriver.common.action_chains import ActionChains

        target = state["paths"].index(planted["blank"])
        offset = browser.execute_script(
            "var g = document.getElementById('embedding-map'), L = g._fullLayout, i = arguments[0];"
            "var r = g.getBoundingClientRect();"
            "return [L.xaxis._offset + L.xaxis.l2p(g._fullData[0].x[i]) - r.width / 2,"
            "        L.yaxis._offset + L.yaxis.l2p(g._fullData[0].y[i]) - r.height / 2];",
            target,
        )
        element = browser.find_element("id", "embedding-map")
        ActionChains(browser).move_to_element_with_offset(
            element, int(offset[0]), int(offset[1])
        ).perform()
        for _ in range(30):
            hovered = browser.execute_script(
                "var c = document.getElementById('map-hover-point'); if (!c) return null;"
                "var i = c.querySelector('img');"
                "return {path: c.dataset.path, done: !!i && i.complete, w: i ? i.naturalWidth : 0};"
            )
            if hovered and hovered["done"]:
                break
            time.sleep(0.1)
        assert hovered is not None and hovered["w"] > 0, hovered
        # the blank image's point, or one drawn on the very same spot
        same_spot = browser.execute_script(
            "var d = JSON.parse(document.getElementById('embedding-map-data').textContent);"
            "var a = d.path.indexOf(arguments[0]), b = arguments[1];"
            "return d.x[a] === d.x[b] && d.y[a] === d.y[b];",
            hovered["path"],
            target,
        )
        assert hovered["path"] == planted["blank"] or same_spot, hovered

        # selection: a box over the left half of the map, through plotly's own API
        selected = browser.execute_script(
            "var g = document.getElementById('embedding-map'), d = g._fullData[0];"
            "var xs = d.x.slice().sort((a, b) => a - b), mid = xs[Math.floor(xs.length / 2)];"
            "var ys = d.y.slice().sort((a, b) => a - b);"
            "var box = {x0: xs[0] - 1, x1: mid, y0: ys[0] - 1, y1: ys[ys.length - 1] + 1};"
            "var pts = []; for (var i = 0; i < d.x.length; i++) {"
            "  if (d.x[i] >= box.x0 && d.x[i] <= box.x1 && d.y[i] >= box.y0 && d.y[i] <= box.y1) pts.push(i); }"
            "return Plotly.relayout(g, {selections: [Object.assign({type: 'rect', xref: 'x', yref: 'y'}, box)]})"
            "  .then(function () { return pts; });"
        )
        for _ in range(30):
            count = browser.execute_script(
                "return document.querySelectorAll('#map-selected .map-point').length;"
            )
            if count:
                break
            time.sleep(0.1)
        if not count:  # a plotly.js without programmatic selections: its select event then
            browser.execute_script(
                "var g = document.getElementById('embedding-map');"
                "g.emit('plotly_selected', {points: arguments[0].map(i => ({pointIndex: i, curveNumber: 0}))});",
                selected,
            )
        listed = browser.execute_script(
            "return Array.from(document.querySelectorAll('#map-selected .map-point')).map(e => e.dataset.path);"
        )
        expected = sorted(state["paths"][i] for i in selected)
        assert 0 < len(selected) < n_rows
        assert sorted(listed) == expected
        browser.find_element("id", "map-download").click()
        csv_file = downloads / "selected_paths.csv"
        for _ in range(50):
            if csv_file.exists() and csv_file.stat().st_size:
                break
            time.sleep(0.1)
        assert sorted(pd.read_csv(csv_file)["path"]) == expected
        browser.execute_script(
            "var s = document.getElementById('map-colour');"
            "['split', 'correct', 'score', 'label'].forEach(v => { s.value = v; s.dispatchEvent(new Event('change')); });"
        )
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert severe == []
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # opens offline
    assert '<script src="plotly.min.js">' in html
