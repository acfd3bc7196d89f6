"""Stage two with views: grouped splits, test-time augmentation, augmented training, the report
entry, old stores, and predict reproducing fit's TTA predictions."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from pipeline.config import FitConfig
from pipeline.fit import load_model_file, main, run_fit
from pipeline.fit import views as fit_views
from pipeline.fit.views import ViewsClassifier, expand_views, predict_proba_views, split_views
from pipeline.predict import main as predict_main
from pipeline.recipe import EmbeddingRecipe
from pipeline.store import FailedInputs, Rows, read_store, write_rows_file

from ._fit_helpers import blobs, store_attrs, write_store
from .conftest import write_images
from .test_views import extract


def _views_store(path, n_per_class=20, dim=8, split=None):
    """Blobs whose column 0 is the row id, in the plain view and in the flip view."""
    X, y = blobs(n_per_class, 3, dim)
    X[:, 0] = np.arange(len(y))
    flip = X + np.random.default_rng(1).normal(0, 0.3, X.shape).astype(np.float32)
    flip[:, 0] = X[:, 0]
    rows = Rows(
        X, y, [f"img/{i}.png" for i in range(len(y))], split or [""] * len(y),
        [f"k{i}" for i in range(len(y))], {"flip": flip},
    )  # fmt: skip
    write_rows_file(path, rows, FailedInputs(), store_attrs(["a", "b", "c"], dim, views=["flip"]))
    return path


def test_split_and_expand_keep_an_image_with_its_views():
    X = np.arange(2 * 3 * 4, dtype=np.float32).reshape(3, 8)  # 3 rows, plain + flip of 4 dims
    stack = split_views(X, 1)
    assert stack.shape == (2, 3, 4) and np.array_equal(stack[1], X[:, 4:])
    X_rows, y_rows, groups = expand_views(X, np.array([0, 1, 2]), 1)
    assert X_rows.shape == (6, 4) and groups.tolist() == [0, 1, 2, 0, 1, 2]
    assert y_rows.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("cv", [0, 3])
def test_no_fold_trains_on_a_view_of_its_own_test_image(tmp_path, monkeypatch, cv):
    store = _views_store(tmp_path / "f.h5")
    seen: list[tuple[set, set]] = []
    fit, proba = ViewsClassifier.fit, ViewsClassifier.predict_proba

    def spy_fit(self, X, y):
        seen.append((set(X[:, 0].tolist()), set()))
        return fit(self, X, y)

    def spy_proba(self, X):
        seen[-1][1].update(X[:, 0].tolist())
        return proba(self, X)

    monkeypatch.setattr(ViewsClassifier, "fit", spy_fit)
    monkeypatch.setattr(ViewsClassifier, "predict_proba", spy_proba)
    extra = ["--cv", str(cv)] if cv else []
    argv = ["--features", str(store), "--clf", "logreg", "--out", str(tmp_path / "run")]
    assert main([*argv, "--augment", "-q", *extra]) == 0
    folds = [(train, test) for train, test in seen if test]
    assert len(folds) == max(cv, 1)
    for train, test in folds:
        assert train and test and not train & test
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["views"] == {"available": ["flip"], "tta": True, "augment": True}


def test_augment_trains_on_every_view_and_tta_averages(tmp_path):
    X, y = blobs(10, 2, 4)
    wide = np.concatenate([X, X + 1], axis=1)
    from sklearn.linear_model import LogisticRegression

    model = ViewsClassifier(LogisticRegression(), ("flip",), tta=True, augment=True).fit(wide, y)
    assert model.estimator_.n_features_in_ == 4
    want = (model.estimator_.predict_proba(X) + model.estimator_.predict_proba(X + 1)) / 2
    np.testing.assert_allclose(model.predict_proba(wide), want)
    plain = ViewsClassifier(LogisticRegression(), ("flip",), tta=False).fit(wide, y)
    np.testing.assert_allclose(plain.predict_proba(wide), plain.estimator_.predict_proba(X))


def test_tta_off_and_old_stores_use_the_plain_view(tmp_path, capsys):
    store = _views_store(tmp_path / "f.h5")
    assert main(["--features", str(store), "--clf", "logreg", "--out", str(tmp_path / "off"),
                 "--tta", "off", "-q"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "off" / "report.json").read_text())
    assert report["views"] == {"available": ["flip"], "tta": False, "augment": False}
    assert load_model_file(tmp_path / "off" / "models" / "logreg.joblib")["views"] == []
    old = write_store(tmp_path / "old.h5")
    with h5py.File(old, "a") as fh:  # as written before crop modes and views existed
        del fh.attrs["crop_mode"], fh.attrs["views"]
    from pipeline.config import FitConfig

    report = run_fit(FitConfig(features=str(old), clf="logreg", out=str(tmp_path / "old")))
    assert report["views"] == {"available": [], "tta": False, "augment": False}
    backbone = load_model_file(tmp_path / "old" / "models" / "logreg.joblib")["backbone"]
    assert backbone["crop_mode"] is None and backbone["views"] is None  # the store lacked them
    recipe = EmbeddingRecipe.from_attrs({**backbone, "model": "squeezenet1_1", "weights": "none"})
    assert recipe.decode.crop_mode == "center" and recipe.views == ()
    # a usage error: one line, exit code 2
    assert main(["--features", str(store), "--clf", "logreg", "--tta", "maybe"]) == 2


def test_predict_equals_fits_tta_predictions(tmp_path):
    data = tmp_path / "images"
    for split, seed in (("train", 0), ("test", 5)):
        write_images(data / split, {"cat": 5, "dog": 5}, seed=seed)
    out = tmp_path / "f.h5"
    # --device cpu here and for predict: fp32 makes an image's embedding independent of the
    # batch it is in; a GPU's bf16 default moves probabilities by more than 2e-4.
    assert extract(data, out, "--crop-mode", "squash", "--device", "cpu") == 0
    run = tmp_path / "run"
    assert main(["--features", str(out), "--clf", "logreg", "--out", str(run), "-q"]) == 0
    payload = load_model_file(run / "models" / "logreg.joblib")
    assert payload["views"] == ["flip"] and payload["backbone"]["crop_mode"] == "squash"
    table = read_store(out)
    test = table.split == "test"
    stack = np.stack([table.features[test], table.views["flip"][test]])
    proba = predict_proba_views(payload["estimator"], stack)
    labels = np.asarray(payload["estimator"].classes_)[proba.argmax(axis=1)]
    report = json.loads((run / "report.json").read_text())
    truth = np.asarray(table.class_names)[table.labels[test]]
    assert report["results"][0]["accuracy"] == pytest.approx(np.mean(labels == truth))
    csv_path = tmp_path / "pred.csv"
    code = predict_main(["--model", str(run / "models" / "logreg.joblib"), str(data / "test"),
                         "--device", "cpu", "--out", str(csv_path), "-q"])  # fmt: skip
    assert code == 0
    lines = csv_path.read_text().splitlines()[1:]
    got = {line.split(",")[0]: line.split(",")[1:3] for line in lines}
    for path, label, p in zip(table.paths[test], labels, proba.max(axis=1), strict=True):
        assert got[path][0] == label
        assert float(got[path][1]) == pytest.approx(p, abs=2e-4)
    assert fit_views.saved_views(ViewsClassifier(None, ("flip",), tta=False)) == []


def test_search_with_views_chooses_on_the_plain_view_then_uses_the_views(tmp_path):
    store = _views_store(tmp_path / "f.h5")
    report = run_fit(
        FitConfig(
            features=str(store), clf="logreg", out=str(tmp_path / "run"), augment=True,
            search={**FitConfig().search, "enabled": True, "cv": 2},
        )
    )  # fmt: skip
    (result,) = report["results"]
    assert result["search"]["best_params"] and report["views"]["augment"]
    payload = load_model_file(tmp_path / "run" / "models" / "logreg.joblib")
    assert payload["views"] == ["flip"]  # TTA over the flip view at predict time
    # the saved inner model reads one view at a time (predict averages over the views)
    assert payload["estimator"].n_features_in_ == 8
