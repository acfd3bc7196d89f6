"""`fit` end to end: intervals, ties, --search isolation, predictions.csv and report.html."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from pipeline.config import FitConfig
from pipeline.fit import evaluation, main, run_fit
from pipeline.fit.predictions import accuracy_from_csv, load_probabilities, read_predictions
from tests._fit_helpers import CLASS_NAMES, blobs, write_store

FAST = ["--set", "svc.calibration_cv=3"]


def _run(capsys, *argv: str) -> tuple[dict, str, str]:
    code = main([*argv, "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "report.json").read_text()), captured.out, captured.err


def _as_svc(monkeypatch, make) -> None:
    """Make ``--clf svc`` build ``make(config)`` instead (a test-only classifier)."""
    original = evaluation._build

    def build(name, config):
        return (make(config), {}) if name == "svc" else original(name, config)

    monkeypatch.setattr(evaluation, "_build", build)


@pytest.mark.parametrize("cv", [None, "3"])
def test_predictions_csv_agrees_with_the_report(tmp_path, capsys, cv):
    store = write_store(tmp_path / "f.h5", n_per_class=30)
    out = tmp_path / "out"
    argv = ["--features", str(store), "--out", str(out), "--clf", "logreg,knn", "--no-audit"]
    report, _, _ = _run(capsys, *argv, *(["--cv", cv] if cv else []))
    assert report["predictions"] == "predictions.csv"
    rows = read_predictions(out / "predictions.csv")
    from_csv = accuracy_from_csv(out / "predictions.csv")
    npz = load_probabilities(out / "predictions.npz")
    for r in report["results"]:
        # with --cv every row is predicted once, out of fold: the pooled accuracy
        expected = r["oof_accuracy"] if cv else r["accuracy"]
        assert from_csv[r["clf"]] == pytest.approx(expected, abs=1e-12)
        assert set(r["ci"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
        for lo, hi in r["ci"].values():
            assert 0.0 <= lo <= hi <= 1.0
        assert r["ci"]["accuracy"][0] <= r["accuracy"] <= r["ci"]["accuracy"][1]
        assert r["search"] is None and "p_value_vs_best" in r
    n_eval = 90 if cv else 18
    assert len(rows) == 2 * n_eval and npz["proba"].shape == (2, n_eval, 3)
    np.testing.assert_allclose(npz["proba"].sum(axis=2), 1.0, atol=1e-5)
    assert sorted(npz["row"][:n_eval].tolist()) == (
        list(range(90)) if cv else sorted(set(npz["row"]))
    )
    splits = {row["split"] for row in rows}
    assert splits == ({"fold1", "fold2", "fold3"} if cv else {"holdout"})
    assert report["config"]["clf"] == "logreg,knn" and "search" in report["config"]
    assert report["results"][0]["tied_with_best"] is True
    assert report["results"][0]["p_value_vs_best"] is None


def test_identical_classifiers_are_tied_and_a_clearly_worse_one_is_not(
    tmp_path, capsys, monkeypatch
):
    from pipeline.classifiers import make_classifier

    store = write_store(tmp_path / "f.h5", n_per_class=40)
    _as_svc(monkeypatch, lambda config: make_classifier("logreg", random_state=0))
    base = ["--features", str(store), "--clf", "logreg,svc", "--no-audit"]
    report, stdout, _ = _run(capsys, *base, "--out", str(tmp_path / "twins"))
    by = {r["clf"]: r for r in report["results"]}
    assert by["logreg"]["accuracy"] == by["svc"]["accuracy"]
    assert by["logreg"]["tied_with_best"] and by["svc"]["tied_with_best"]
    assert by["svc"]["p_value_vs_best"] == 1.0  # no discordant row
    assert "best" in stdout and "tied (p=1)" in stdout  # a tie is printed as a tie

    _as_svc(monkeypatch, lambda config: Pipeline([("clf", DummyClassifier())]))
    for cv in ([], ["--cv", "3"]):
        report, stdout, _ = _run(capsys, *base, *cv, "--out", str(tmp_path / f"worse{cv}"))
        worse = report["results"][-1]
        assert worse["clf"] == "svc" and worse["tied_with_best"] is False
        assert worse["p_value_vs_best"] < 0.05
        assert "worse (p=" in stdout.splitlines()[3]


#: (kind, store rows) of every fit and predict_proba call of a RowRecorder, in order.
EVENTS: list[tuple[str, np.ndarray]] = []


class RowRecorder(ClassifierMixin, BaseEstimator):
    """Canary: feature 0 is the store row; records every row id given to fit and predict."""

    def __init__(self, mode="means", random_state=None):
        self.mode = mode
        self.random_state = random_state

    def fit(self, X, y):
        X, y = np.asarray(X), np.asarray(y)
        EVENTS.append(("fit", X[:, 0].astype(int)))
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c, 1:].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, X):
        X = np.asarray(X)
        EVENTS.append(("predict", X[:, 0].astype(int)))
        if self.mode == "constant":
            return np.eye(len(self.classes_))[np.zeros(len(X), dtype=int)]
        d = ((X[:, None, 1:] - self.means_[None]) ** 2).sum(axis=2)
        e = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


@pytest.mark.parametrize("cv", [0, 3])
def test_canary_search_never_sees_test_rows(tmp_path, monkeypatch, cv):
    """The search's fits and inner-CV scoring touch only training rows; the test rows are seen
    once, by the refitted model's final evaluation (with --cv: once per outer fold)."""
    X, y = blobs(n_per_class=30, dim=6, seed=3)
    X[:, 0] = np.arange(len(y))  # feature 0: the store row
    split = np.where(np.arange(len(y)) % 5 == 0, "test", "train")
    store = write_store(tmp_path / "f.h5", features=X, labels=y, split=split.tolist())
    _as_svc(monkeypatch, lambda config: Pipeline([("clf", RowRecorder())]))
    EVENTS.clear()
    config = FitConfig.from_file(
        None, features=str(store), out=str(tmp_path / "o"), clf="svc", cv=cv, audit=False
    )
    space = {"clf__mode": ["constant", "means"]}
    config = dataclasses.replace(config, search={"enabled": True, "cv": 3, "svc": space})
    report = run_fit(config)
    search = report["results"][0]["search"]
    assert search["best_params"] == {"clf__mode": "means"} and search["cv"] == 3
    assert search["space"] == space and search["cv_score"] > 0.9 and search["seconds"] >= 0
    outer = [(np.flatnonzero(split == "train"), np.flatnonzero(split == "test"))]
    if cv:
        folds = defaultdict(list)
        for row in read_predictions(tmp_path / "o" / "predictions.csv"):
            folds[row["split"]].append(int(row["path"][4:8]))
        everything = np.arange(len(y))
        tests = [np.array(folds[f"fold{k}"]) for k in (1, 2, 3)]
        outer = [(np.setdiff1d(everything, t), t) for t in tests]
        outer.append((everything, np.array([], dtype=int)))  # the model file's search: all rows
    per_outer = 2 * 3 + 1  # candidates x inner folds, then the refit on all training rows
    k, fits, evaluated = 0, 0, []
    for kind, ids in EVENTS:
        if kind == "fit" and fits == per_outer:  # the next outer fold starts
            k, fits = k + 1, 0
        train, test = outer[k]
        if kind == "fit":
            assert set(ids) <= set(train)  # no fit of the search ever saw a test row
            fits += 1
            if fits == per_outer:
                assert sorted(ids) == sorted(train)  # the refit: every training row
        elif set(ids) & set(test):  # only the refitted model's final evaluation sees test rows
            assert fits == per_outer and sorted(ids) == sorted(test)
            evaluated.append(k)
        else:
            assert set(ids) <= set(train)
    assert k == len(outer) - 1 and sorted(set(evaluated)) == [
        i for i, (_, t) in enumerate(outer) if len(t)
    ]


def test_search_through_the_cli_reports_space_choice_and_time(tmp_path, capsys):
    store = write_store(tmp_path / "f.h5")
    out = tmp_path / "out"
    report, _, _ = _run(
        capsys, "--features", str(store), "--out", str(out), "--clf", "logreg,knn",
        "--search", "--search-cv", "2", "--no-audit",
    )  # fmt: skip
    for r in report["results"]:
        assert set(r["search"]) >= {"space", "best_params", "cv_score", "seconds"}
        assert r["search"]["cv"] == 2
        assert set(r["search"]["best_params"]) == set(r["search"]["space"])
    md = (out / "report.md").read_text()
    assert "Hyperparameter search" in md and "clf__C" in md


def test_report_html_leakage_line_and_compact_many_classes(tmp_path, capsys, caplog):
    X, y = blobs(n_per_class=6, n_classes=32, dim=64, seed=1, spread=1.5)
    names = [f"c{i:02d}" for i in range(32)]
    split = np.array(["train"] * len(y), dtype=object)
    split[::6] = "test"
    X[1] = X[0]  # a test row that duplicates a train row: leakage
    store = write_store(tmp_path / "f.h5", features=X, labels=y, split=split.tolist(),
                        class_names=names)  # fmt: skip
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        report, _, err = _run(
            capsys, "--features", str(store), "--out", str(out), "--clf", "logreg"
        )
    leak = "1 test image(s) are copies of training images (0 identical, 1 near-identical;"
    assert [r.getMessage() for r in caplog.records].count(report["warnings"][-1]) == 1  # once
    assert report["warnings"][-1].startswith(leak)
    dups = pd.read_csv(out / "duplicates.csv")
    assert dups[["path", "train_path"]].values.tolist() == [["img/0000.png", "img/0001.png"]]
    result = report["results"][0]
    assert result["per_class"]["class"] == names and "confusion_matrix" not in result
    matrix = pd.read_csv(out / result["confusion_csv"], index_col=0)
    assert matrix.shape == (32, 32) and matrix.values.sum() == report["n_test"]
    assert (out / "report.html").stat().st_size > 0 and (out / "label_issues.csv").exists()
    assert (out / "confusion_logreg.png").read_bytes()[:4] == b"\x89PNG"
    assert set(CLASS_NAMES).isdisjoint(names)


def test_out_is_checked_before_training_and_a_failed_run_keeps_the_last(
    tmp_path, capsys, monkeypatch
):
    store = write_store(tmp_path / "f.h5")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["--features", str(store), "--out", str(a_file), "--clf", "logreg", "-q"]) == 2
    assert capsys.readouterr().err.startswith("error: --out: ")
    out = tmp_path / "out"
    report, _, _ = _run(capsys, "--features", str(store), "--out", str(out), "--clf", "logreg",
                        "--no-audit")  # fmt: skip
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("pipeline.fit.run_outputs.write_decision_png", broken)
    with pytest.raises(RuntimeError):
        run_fit(
            FitConfig.from_file(None, features=str(store), out=str(out), clf="knn", replace=True)
        )
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and report["config"]["out"] == str(out)
