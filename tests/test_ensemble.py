"""``--clf ensemble``: members chosen on training folds only, an sklearn estimator end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier

from pipeline.classifiers import make_classifier
from pipeline.ensemble import TiedEnsembleClassifier
from pipeline.extract import main as extract_main
from pipeline.fit import load_model_file
from pipeline.fit import main as fit_main
from pipeline.predict import main as predict_main
from pipeline.predict import run_predict
from tests._fit_helpers import blobs, write_store

from .conftest import TINY_MODEL, write_images


@pytest.fixture(scope="module")
def data():
    X, y = blobs(n_per_class=40, n_classes=3, dim=8, seed=3, spread=1.5)
    return X, np.array(["cat", "dog", "owl"])[y]


def _candidates():
    return [
        ("logreg", LogisticRegression(max_iter=500)),
        ("knn", KNeighborsClassifier(5)),
        ("prior", DummyClassifier(strategy="prior")),  # chance: clearly worse than the best
    ]


def test_members_are_the_candidates_tied_with_the_best(data):
    X, y = data
    ens = TiedEnsembleClassifier(_candidates(), random_state=0).fit(X, y)
    assert ens.names_ == ["logreg", "knn"]  # the chance-level candidate is left out
    assert [type(e).__name__ for e in ens.estimators_] == [
        "LogisticRegression",
        "KNeighborsClassifier",
    ]
    np.testing.assert_allclose(ens.weights_, [0.5, 0.5])
    assert ens.selection_["cv"] == 3 and ens.selection_["rows"] == len(y)
    sel = ens.selection_["candidates"]
    assert not sel["prior"]["member"] and sel["prior"]["p_value_vs_best"] < 0.05
    assert sel["prior"]["oof_accuracy"] < 0.5 < sel["logreg"]["oof_accuracy"]
    # the vote is the weighted mean of the members' probabilities: what export averages
    expected = sum(
        w * e.predict_proba(X) for w, e in zip(ens.weights_, ens.estimators_, strict=True)
    )
    np.testing.assert_allclose(ens.predict_proba(X), expected)
    assert (ens.predict(X) == ens.classes_[expected.argmax(axis=1)]).all()
    few = TiedEnsembleClassifier(_candidates(), max_rows=45, random_state=0).fit(X, y)
    assert few.selection_["rows"] == 45  # members chosen on a stratified subsample...
    assert few.estimators_[1].n_samples_fit_ == len(y)  # ...and fitted on every row
    stacked = TiedEnsembleClassifier(_candidates(), combine="stack", random_state=0).fit(X, y)
    assert stacked.weights_ is None and stacked.stacker_.coef_.shape == (3, 6)
    assert (stacked.predict(X) == y).mean() > 0.8


def test_clone_grid_search_and_joblib(data, tmp_path):
    X, y = data
    pipe = make_classifier("ensemble", candidates=["logreg", "knn"], random_state=0)
    assert pipe.steps[-1][0] == "clf" and len(pipe.steps) == 1
    search = GridSearchCV(clone(pipe), {"clf__combine": ["vote", "stack"]}, cv=2).fit(X, y)
    assert search.best_params_["clf__combine"] in ("vote", "stack")
    fitted = clone(pipe).fit(X, y)
    joblib.dump(fitted, tmp_path / "e.joblib")
    again = joblib.load(tmp_path / "e.joblib")
    np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))
    with pytest.raises(ValueError, match="ensemble candidates must be classifier names"):
        make_classifier("ensemble", candidates=["ensemble"])
    with pytest.raises(ValueError, match="combine must be 'vote' or 'stack'"):
        TiedEnsembleClassifier(_candidates(), combine="max").fit(X, y)


def _store(path: Path, *, plant: bool) -> Path:
    """80 train / 40 test rows of overlapping blobs, the store's own split. With ``plant``
    the test rows alone carry a perfect signal (feature 0 = label x 100) and their labels
    are permuted: were the test rows used by the search or the member choice, these would
    change them."""
    X, y = blobs(n_per_class=40, n_classes=3, dim=6, seed=11, spread=0.8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    split = np.array(["train"] * 80 + ["test"] * 40)
    if plant:
        test = split == "test"
        y = y.copy()
        y[test] = rng.permutation(y[test])
        X = X.copy()
        X[test, 0] = 100.0 * y[test]
    return write_store(path, features=X, labels=y, split=split.tolist())


def test_test_rows_never_shape_the_search_or_the_members(tmp_path):
    reports = {}
    for plant in (False, True):
        store = _store(tmp_path / f"s{plant}.h5", plant=plant)
        out = tmp_path / f"out{plant}"
        argv = [
            "--features", str(store), "--out", str(out), "--clf", "logreg,knn,ensemble",
            "--search", "--set", 'ensemble.candidates=["logreg","knn"]', "--no-audit", "-q",
        ]  # fmt: skip
        assert fit_main(argv) == 0
        reports[plant] = {
            r["clf"]: r for r in json.loads((out / "report.json").read_text())["results"]
        }
    clean, planted = reports[False], reports[True]
    assert clean["logreg"]["accuracy"] != planted["logreg"]["accuracy"]  # the plant matters
    for name in ("logreg", "knn"):
        a, b = dict(clean[name]["search"]), dict(planted[name]["search"])
        a.pop("seconds"), b.pop("seconds")
        assert a == b  # space, widened range, rounds, choice and inner-CV score
    assert clean["logreg"]["search"]["widen"]["budget"] == 3
    ens_a, ens_b = clean["ensemble"]["ensemble"], planted["ensemble"]["ensemble"]
    assert ens_a["members"] == ens_b["members"] and ens_a["selection"] == ens_b["selection"]
    assert ens_a["weights"] == ens_b["weights"]


def test_ensemble_through_the_cli_fit_model_file_predict(tmp_path):
    data = tmp_path / "data"
    write_images(data / "train", {"red": 8, "green": 8, "blue": 8}, size=(40, 40))
    write_images(data / "test", {"red": 3, "green": 3, "blue": 3}, size=(40, 40), seed=1)
    store = tmp_path / "f.h5"
    argv = ["--data", str(data), "--out", str(store), *TINY_MODEL, "--no-progress", "-q"]
    assert extract_main(argv) == 0
    out = tmp_path / "run"
    argv = [
        "--features", str(store), "--clf", "ensemble", "--out", str(out), "-q",
        "--set", 'ensemble.candidates=["logreg","knn"]',
    ]  # fmt: skip
    assert fit_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    (result,) = report["results"]
    assert result["clf"] == "ensemble" and set(result["ensemble"]["members"]) <= {"logreg", "knn"}
    assert "## Ensemble" in (out / "report.md").read_text()
    assert 'id="ensemble"' in (out / "report.html").read_text()
    model = load_model_file(out / "models" / "ensemble.joblib")
    inner = model["estimator"].named_steps["clf"]
    assert (
        isinstance(inner, TiedEnsembleClassifier) and inner.names_ == result["ensemble"]["members"]
    )
    images = sorted(str(p) for p in (data / "test").rglob("*.png"))
    out_csv = tmp_path / "pred.csv"
    assert (
        predict_main(
            [
                "--model",
                str(out / "models" / "ensemble.joblib"),
                *images,
                "--out",
                str(out_csv),
                "-q",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 9 and all(r["prediction"] in {"red", "green", "blue"} for r in rows)
    # predict's labels are the model's on the stored embeddings of the same images
    from pipeline.store import read_store

    table = read_store(store)
    stored = dict(zip(table.paths, table.features, strict=True))
    expected = model["estimator"].predict(np.stack([stored[p] for p in images]))
    assert [p.label for p in run_predict(out / "models" / "ensemble.joblib", images)] == list(
        expected
    )
