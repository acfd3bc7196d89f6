"""pipeline.predict: new images through the recorded backbone, errors as rows, model checks."""

from __future__ import annotations

import csv
import io

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pipeline.extract import main as extract_main
from pipeline.fit import main as fit_main
from pipeline.predict import _classify, run_predict
from pipeline.predict import main as predict_main

from .conftest import TINY_MODEL, write_images


@pytest.fixture
def trained(tmp_path):
    """A store from 3 colour-coded classes and a logreg model trained on it."""
    data = tmp_path / "data"
    write_images(data / "train", {"red": 8, "green": 8, "blue": 8}, size=(40, 40))
    write_images(data / "test", {"red": 3, "green": 3, "blue": 3}, size=(40, 40), seed=1)
    store = tmp_path / "f.h5"
    assert (
        extract_main(["--data", str(data), "--out", str(store), *TINY_MODEL, "--no-progress", "-q"])
        == 0
    )
    out = tmp_path / "run"
    assert fit_main(["--features", str(store), "--clf", "logreg", "--out", str(out), "-q"]) == 0
    return out / "models" / "logreg.joblib", data


def test_predict_cli_writes_csv_with_an_error_row(trained, tmp_path, capsys):
    model, data = trained
    new = tmp_path / "new"
    write_images(new, {"red": 2, "blue": 2}, size=(40, 40), seed=7)
    (new / "red" / "broken.png").write_bytes(b"not a png")
    out_csv = tmp_path / "pred.csv"
    assert predict_main(["--model", str(model), str(new), "--out", str(out_csv), "-q"]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 5
    broken = [r for r in rows if r["path"].endswith("broken.png")][0]
    assert broken["prediction"] == "" and "cannot identify image" in broken["error"]
    good = [r for r in rows if not r["error"]]
    assert all(r["prediction"] in {"red", "green", "blue"} for r in good)
    assert all(0 < float(r["probability"]) <= 1 for r in good)
    # On the images it was trained on, the model (a linear probe) is right almost always.
    seen = run_predict(model, [str(data / "train")])
    assert sum(p.label in p.path.rsplit("/", 2)[1] for p in seen) >= 0.9 * len(seen)
    # Without --out, CSV goes to standard output.
    capsys.readouterr()
    assert predict_main(["--model", str(model), str(new / "blue" / "blue_000.png"), "-q"]) == 0
    printed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(printed) == 1 and printed[0]["prediction"] in {"red", "green", "blue"}


def test_predictions_match_the_stored_embeddings_pipeline(trained):
    model, data = trained
    test_images = sorted((data / "test").rglob("*.png"))
    predictions = run_predict(model, [str(p) for p in test_images])
    payload = joblib.load(model)
    from pipeline.store import read_store

    table = read_store(payload["store"])
    stored = dict(zip(table.paths, table.features, strict=True))
    expected = payload["estimator"].predict([stored[str(p)] for p in test_images])
    assert [p.label for p in predictions] == list(expected)


def test_mismatched_backbone_and_bad_model_files(trained, tmp_path, capsys):
    model, data = trained
    payload = joblib.load(model)
    payload["backbone"]["fingerprint"] = "0" * 32
    joblib.dump(payload, tmp_path / "tampered.joblib")
    capsys.readouterr()
    assert predict_main(["--model", str(tmp_path / "tampered.joblib"), str(data), "-q"]) == 2
    err = capsys.readouterr().err
    assert "fingerprint differs" in err and len(err.strip().splitlines()) == 1
    joblib.dump({"format_version": 99}, tmp_path / "future.joblib")
    assert predict_main(["--model", str(tmp_path / "future.joblib"), str(data), "-q"]) == 2
    assert predict_main(["--model", str(tmp_path / "missing.joblib"), str(data), "-q"]) == 2
    (tmp_path / "empty").mkdir()
    assert predict_main(["--model", str(model), str(tmp_path / "empty"), "-q"]) == 2
    assert "no images found" in capsys.readouterr().err


def test_one_view_labels_are_what_fit_reports_even_at_a_near_tie():
    """A logreg whose binary score is 1e-20: predict (and fit's predictions.csv) say "b",
    the probabilities 0.5 / 0.5 have arg-max "a"; predict's CLI must say what fit says."""
    clf = LogisticRegression().fit(np.arange(4.0)[:, None], list("aabb"))
    clf.coef_, clf.intercept_ = np.array([[1.0]]), np.zeros(1)
    features = np.array([[[1e-20], [5.0]]])  # (views, N, D): one view, two images
    got = _classify(clf, ["tie.png", "far.png", "bad.png"], features, ["", "", "broken"])
    assert [p.label for p in got] == ["b", "b", ""] and got[2].error == "broken"
    assert got[0].probability == pytest.approx(0.5)
    assert got[1].probability == pytest.approx(clf.predict_proba([[5.0]])[0, 1])


def test_nothing_predictable_exits_2_with_the_count(trained, tmp_path, capsys):
    model, _ = trained
    new = tmp_path / "bad"
    new.mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        (new / name).write_bytes(b"not an image")
    out_csv = tmp_path / "pred.csv"
    capsys.readouterr()
    assert predict_main(["--model", str(model), str(new), "--out", str(out_csv), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every input (3) is unreadable" in err[0] and str(out_csv) in err[0]
    rows = list(csv.DictReader(out_csv.open()))  # the reasons are written all the same
    assert len(rows) == 3 and all(r["error"] and not r["prediction"] for r in rows)


def test_a_model_the_installed_libraries_cannot_run_names_the_versions(trained, tmp_path, capsys):
    """As after a library upgrade: an attribute the estimator needs is gone, and the file
    records other versions than those installed."""
    from pipeline.fit.model_file import library_versions

    model, data = trained
    payload = joblib.load(model)
    del payload["estimator"][-1].coef_
    payload["versions"] = {**payload["versions"], "scikit-learn": "0.0.1"}
    broken = tmp_path / "upgraded.joblib"
    joblib.dump(payload, broken)
    capsys.readouterr()
    assert predict_main(["--model", str(broken), str(data / "test"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert str(broken) in line and "coef_" in line and "scikit-learn 0.0.1" in line
    assert f"installed: scikit-learn {library_versions()['scikit-learn']}" in line
    assert "refit" in line and "install the recorded versions" in line
