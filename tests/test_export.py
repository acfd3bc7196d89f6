"""pipeline export: one ONNX graph from pixels to probabilities, checked against predict.

Tiny generated images and a random-init squeezenet1_1 keep it fast; the real-weights test
is marked slow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image

from pipeline.classifiers import CLASSIFIER_NAMES
from pipeline.console import main as console_main
from pipeline.export.cli import main as export_main
from pipeline.export.runtime import ExportedModel
from pipeline.extract import main as extract_main
from pipeline.fit import main as fit_main
from pipeline.predict import run_predict
from pipeline.recipe import EmbeddingRecipe

from .conftest import TINY_MODEL, write_images

FAST = [
    "--set", "nn.max_iter=20", "--set", "xgboost.n_estimators=20",
    "--set", "svc_approx.n_components=16", "--no-audit", "-q",
    # svc's own probability calibration needs 5 rows a class in each of the ensemble's folds
    "--set", 'ensemble.candidates=["nn", "xgboost", "logreg", "knn"]', "--set", "ensemble.cv=2",
]  # fmt: skip
CLASSES = {"red": 8, "green": 8, "blue": 8}


def _run(root: Path, crop_mode: str, views: list[str]) -> Path:
    """A store of generated images with ``crop_mode``/``views``, every classifier fitted."""
    data = root / "data"
    write_images(data, CLASSES, size=(40, 30))
    store = root / "f.h5"
    flags = ["--crop-mode", crop_mode] + (["--views", ",".join(views)] if views else [])
    argv = ["--data", str(data), "--out", str(store), *TINY_MODEL, "--no-progress", "-q", *flags]
    assert extract_main(argv) == 0
    clfs = ",".join(CLASSIFIER_NAMES)
    assert (
        fit_main(["--features", str(store), "--clf", clfs, "--out", str(root / "run"), *FAST]) == 0
    )
    return root / "run" / "models"


@pytest.fixture(scope="module")
def center_flip(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("center"), "center", ["flip"])


@pytest.fixture(scope="module")
def squash(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("squash"), "squash", [])


@pytest.fixture(scope="module")
def new_images(tmp_path_factory) -> list[str]:
    """Unseen images of other sizes than the training ones (other resize paths)."""
    root = tmp_path_factory.mktemp("new")
    paths = write_images(root, {"red": 2, "blue": 2}, size=(37, 52), seed=5)
    paths += write_images(root, {"green": 2}, size=(300, 200), seed=6)
    return [str(p) for p in paths]


def _export(models: Path, clf: str, out: Path, *extra: str) -> int:
    return export_main(
        ["--model", str(models / f"{clf}.joblib"), "--out", str(out), "--images", "8", "-q", *extra]
    )


def _check_against_predict(models: Path, clf: str, tmp_path: Path, images: list[str]) -> None:
    out = tmp_path / f"{clf}.onnx"
    assert _export(models, clf, out) == 0
    model = ExportedModel(out)
    payload = joblib.load(models / f"{clf}.joblib")
    assert model.class_names == [str(c) for c in payload["estimator"].classes_]
    check = model.json("verification")
    assert check["n_images"] == 8 and check["images"] == "store"
    assert check["max_abs_probability_difference_from_pil_crops"] <= check["tolerance"] == 1e-3
    assert check["label_agreement"] >= 0.9
    assert model.json("recipe")["fingerprint"] == model.metadata["fingerprint"]
    assert model.json("preprocessing")["views"] == list(payload["views"])
    assert model.json("source_run")["clf"] == clf
    # predict --model x.onnx against predict --model x.joblib on unseen images
    exported = run_predict(out, images)
    reference = run_predict(models / f"{clf}.joblib", images)
    assert [p.label for p in exported] == [p.label for p in reference]
    got = np.array([p.probability for p in exported])
    # the resize rounds like PIL's but not always identically (docs/export.md): close
    assert np.abs(got - [p.probability for p in reference]).max() < 0.1


@pytest.mark.parametrize("clf", CLASSIFIER_NAMES)
def test_every_classifier_exports_with_views_center(clf, center_flip, tmp_path, new_images):
    payload = joblib.load(center_flip / f"{clf}.joblib")
    assert payload["views"] == ["flip"] and payload["backbone"]["crop_mode"] == "center"
    _check_against_predict(center_flip, clf, tmp_path, new_images)


@pytest.mark.parametrize("clf", CLASSIFIER_NAMES)
def test_every_classifier_exports_without_views_squash(clf, squash, tmp_path, new_images):
    payload = joblib.load(squash / f"{clf}.joblib")
    assert payload["views"] == [] and payload["backbone"]["crop_mode"] == "squash"
    _check_against_predict(squash, clf, tmp_path, new_images)


@pytest.mark.parametrize("clf", ["logreg", "xgboost"])
def test_two_classes(clf, center_flip, tmp_path):
    """Binary heads (onnxmltools #671: XGBoost with two classes) match predict_proba."""
    from pipeline.classifiers import make_classifier
    from pipeline.export.heads import head_model
    from pipeline.store import read_store

    payload = joblib.load(center_flip / f"{clf}.joblib")
    table = read_store(payload["store"])
    keep = table.labels < 2
    X, y = table.features[keep], np.asarray(table.class_names)[table.labels[keep]]
    estimator = make_classifier(clf, random_state=0).fit(X, y)
    import onnxruntime as ort

    model = head_model(clf, estimator, X.shape[1])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": X.astype(np.float32)})[0]
    assert got.shape == (len(X), 2)
    assert np.abs(got - estimator.predict_proba(X)).max() < 1e-4


def test_crops_follow_pil(tmp_path):
    """The graph's resize and crop against Preprocessing.crop (PIL), every mode and filter."""
    import dataclasses

    import onnxruntime as ort
    from onnx import TensorProto

    from pipeline.engine.preprocess import Preprocessing
    from pipeline.export.crops import add_crops, add_view
    from pipeline.export.graph import GraphBuilder, tensor

    base = Preprocessing(224, 256, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    rng = np.random.default_rng(0)
    sizes = [(32, 40), (500, 375), (256, 256), (224, 300), (100, 50), (8, 8), (257, 1000)]
    for mode in ("center", "squash", "border"):
        for interpolation in ("bilinear", "bicubic"):
            pre = dataclasses.replace(base, crop_mode=mode, interpolation=interpolation)
            g = GraphBuilder()
            crops = add_crops(g, "image", pre)
            flipped = add_view(g, crops, "flip")
            model = g.finish(
                [tensor("image", TensorProto.UINT8, ["N", "H", "W", 3])],
                [
                    tensor(crops, TensorProto.UINT8, [None] * 4),
                    tensor(flipped, TensorProto.UINT8, [None] * 4),
                ],
            )
            session = ort.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            for w, h in sizes:
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                expected = pre.crop(Image.fromarray(pixels)).astype(int)
                got, flip = session.run(None, {"image": np.stack([pixels, pixels])})
                assert got.shape == (2, *expected.shape)
                assert np.array_equal(flip[0], got[0][:, ::-1])
                difference = np.abs(got[1].astype(int) - expected)
                # PIL and ONNX Runtime both filter in fixed point; they round apart rarely
                assert difference.max() <= 2, (mode, interpolation, w, h)
                assert (difference > 0).mean() < 0.05, (mode, interpolation, w, h)


def _tampered(models: Path, tmp_path: Path, **changes) -> Path:
    payload = joblib.load(models / "logreg.joblib")
    backbone = payload["backbone"]
    backbone.update(changes.pop("backbone", {}))
    backbone["fingerprint"] = EmbeddingRecipe.from_attrs(backbone).fingerprint()
    payload.update(changes)
    path = tmp_path / "tampered.joblib"
    joblib.dump(payload, path)
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backbone": {"gpu_decode": True}}, "--gpu-decode"),
        ({"backbone": {"jpeg_draft": True}}, "--jpeg-draft"),
        ({"clf": "mystery"}, "classifier 'mystery' of"),
        ({"format_version": 99}, "format_version 99"),
    ],
)
def test_what_cannot_be_exported_is_one_line_and_writes_nothing(
    changes, message, center_flip, tmp_path, capsys
):
    model = _tampered(center_flip, tmp_path, **changes)
    out = tmp_path / "out.onnx"
    assert export_main(["--model", str(model), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and list(tmp_path.glob("*.onnx*")) == []


def test_over_the_tolerance_exits_2_and_writes_nothing(center_flip, tmp_path, capsys):
    out = tmp_path / "logreg.onnx"
    # float32 in the graph against predict's float64: never exactly equal
    assert _export(center_flip, "logreg", out, "--tolerance", "1e-15") == 2
    err = capsys.readouterr().err.strip()
    assert "does not reproduce predict" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_page_without_its_module_is_one_line(center_flip, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pipeline.export.page", None)  # import fails
    out = tmp_path / "logreg.onnx"
    assert _export(center_flip, "logreg", out, "--page", str(tmp_path / "page")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --page:") and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_console_command_and_predict_on_onnx(center_flip, tmp_path, new_images, capsys):
    out = tmp_path / "knn.onnx"
    argv = [
        "export",
        "--model",
        str(center_flip / "knn.joblib"),
        "--out",
        str(out),
        "--images",
        "4",
    ]
    assert console_main(argv) == 0
    assert "check against predict: 4 store images: labels agree on" in capsys.readouterr().out
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    csv_out = tmp_path / "pred.csv"
    argv = ["predict", "--model", str(out), *new_images, str(broken), "--out", str(csv_out), "-q"]
    assert console_main(argv) == 0
    rows = csv_out.read_text().splitlines()
    assert len(rows) == 1 + len(new_images) + 1
    assert "cannot identify image" in rows[-1]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert console_main(["predict", "--model", str(bad), *new_images, "-q"]) == 2
    assert "not a model written by `pipeline export`" in capsys.readouterr().err


def test_help_loads_no_torch():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['pipeline.export', '--help']\n"
        "try:\n"
        "    runpy.run_module('pipeline.export', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted({'torch', 'sklearn', 'onnxruntime', 'onnx'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--page DIR" in done.stdout


@pytest.mark.slow
def test_real_mobilenet_v2(real_weights, tmp_path):
    data = tmp_path / "data"
    write_images(data, {"red": 6, "green": 6, "blue": 6}, size=(64, 48))
    store = tmp_path / "f.h5"
    argv = [
        "--data",
        str(data),
        "--out",
        str(store),
        "--model",
        "mobilenet_v2",
        "--no-progress",
        "-q",
    ]
    assert extract_main([*argv, "--views", "flip"]) == 0
    run = tmp_path / "run"
    assert (
        fit_main(
            ["--features", str(store), "--clf", "logreg", "--out", str(run), "--no-audit", "-q"]
        )
        == 0
    )
    out = tmp_path / "logreg.onnx"
    assert _export(run / "models", "logreg", out) == 0
    check = ExportedModel(out).json("verification")
    assert check["label_agreement"] == 1.0 and check["max_abs_probability_difference"] < 0.01


@pytest.mark.parametrize("clf", ["svc", "xgboost"])
def test_export_page_end_to_end_in_chromium(clf, center_flip, tmp_path, new_images):
    """`pipeline export --page`: the page of a really exported model (views, a skl2onnx or
    onnxmltools head) gives, offline in Chromium, ONNX Runtime's probabilities in Python."""
    import onnxruntime as ort

    from tests.test_export_page import (
        TOLERANCE,
        _browser_paths,
        _classify,
        _load,
        _offline_chrome,
        _runtime_or_skip,
    )

    _runtime_or_skip()
    chromium, driver = _browser_paths()
    out, page_dir = tmp_path / f"{clf}.onnx", tmp_path / "page"
    assert _export(center_flip, clf, out, "--page", str(page_dir)) == 0
    pngs = [Path(p) for p in new_images if p.endswith(".png")]
    assert pngs
    browser = _offline_chrome(chromium, driver)
    try:
        assert _load(browser, page_dir / "index.html") == "ready"
        seen = _classify(browser, pngs)
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert severe == [], severe
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for result, path in zip(seen, pngs, strict=True):
        with Image.open(path) as opened:
            pixels = np.asarray(opened.convert("RGB"))[None]
        expected, label = session.run(["probabilities", "label"], {"image": pixels})
        assert result["error"] is None, result
        np.testing.assert_allclose(result["probabilities"], expected[0], rtol=0, atol=TOLERANCE)
        assert result["label"] == label[0]


@pytest.mark.parametrize("combine", ["vote", "stack"])
def test_ensemble_head_equals_predict_proba(combine, center_flip):
    """The ensemble's head (members' heads averaged, or the stacker on them) against
    ``TiedEnsembleClassifier.predict_proba``, for both ways of combining."""
    import onnxruntime as ort
    from sklearn.pipeline import Pipeline

    from pipeline.classifiers import make_classifier
    from pipeline.ensemble import TiedEnsembleClassifier
    from pipeline.export.heads import head_model
    from pipeline.store import read_store

    table = read_store(joblib.load(center_flip / "logreg.joblib")["store"])
    X, y = table.features, np.asarray(table.class_names)[table.labels]
    members = [(n, make_classifier(n, random_state=0)) for n in ("logreg", "knn", "xgboost")]
    ensemble = TiedEnsembleClassifier(members, cv=2, alpha=1e-9, combine=combine, random_state=0)
    estimator = Pipeline([("clf", ensemble)]).fit(X, y)
    model = head_model("ensemble", estimator, X.shape[1])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": X.astype(np.float32)})[0]
    assert len(ensemble.names_) >= 2
    assert np.abs(got - estimator.predict_proba(X)).max() < 1e-4
