"""predictions.csv / predictions.npz: one row per image per classifier, agreeing with scores."""

from __future__ import annotations

import csv
import os
import stat

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from pipeline._knn import CosineKNNClassifier
from pipeline.fit.predictions import (
    CSV_COLUMNS,
    accuracy_from_csv,
    align_proba,
    load_probabilities,
    read_predictions,
    write_predictions,
)
from tests._fit_helpers import blobs

NAMES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def fitted():
    X, y = blobs(n_per_class=30, n_classes=3, dim=6, seed=5)
    X = X + np.random.default_rng(0).normal(0, 2.5, X.shape)  # overlap: some errors
    labels = np.asarray(NAMES)[y]
    train, test = np.arange(len(y)) % 3 != 0, np.arange(len(y)) % 3 == 0
    clfs = {
        "logreg": LogisticRegression(max_iter=500).fit(X[train], labels[train]),
        "knn": CosineKNNClassifier().fit(X[train], labels[train]),
    }
    return X[test], labels[test], np.flatnonzero(test), clfs


def test_csv_accuracy_equals_computed_accuracy(tmp_path, fitted):
    X, labels, rows, clfs = fitted
    paths = [f"img/{label}/{i:03d}.png" for i, label in zip(rows, labels, strict=True)]
    proba = {name: align_proba(c.predict_proba(X), c.classes_, NAMES) for name, c in clfs.items()}
    preds = {name: c.predict(X) for name, c in clfs.items()}
    out = write_predictions(
        tmp_path,
        paths=paths,
        split="test",
        labels=labels,
        class_names=NAMES,
        proba=proba,
        preds=preds,
        rows=rows,
    )
    expected = {name: accuracy_score(labels, c.predict(X)) for name, c in clfs.items()}
    assert 0.4 < min(expected.values()) < 1.0  # the check means something: errors exist
    assert accuracy_from_csv(out["csv"]) == pytest.approx(expected, abs=0)
    table = read_predictions(out["csv"])
    assert len(table) == 2 * len(labels)
    with open(out["csv"], newline="") as fh:
        assert tuple(next(csv.reader(fh))) == CSV_COLUMNS
    first = table[0]
    assert first["path"] == paths[0] and first["split"] == "test" and first["clf"] == "logreg"
    p = clfs["logreg"].predict_proba(X[:1])[0]
    assert float(first["confidence"]) == pytest.approx(p.max(), rel=1e-5)
    assert first["correct"] == str(int(first["pred"] == first["label"]))
    npz = load_probabilities(out["npz"])
    assert npz["clf"].tolist() == ["logreg", "knn"]
    assert npz["proba"].shape == (2, len(labels), 3)
    assert npz["class_names"].tolist() == NAMES and npz["row"].tolist() == rows.tolist()
    np.testing.assert_allclose(npz["proba"].sum(axis=2), 1.0, atol=1e-5)
    recomputed = (npz["class_names"][npz["pred"]] == npz["label"][None, :]).mean(axis=1)
    assert recomputed.tolist() == pytest.approx([expected["logreg"], expected["knn"]])


def test_files_are_atomic_and_follow_umask(tmp_path, fitted):
    X, labels, _, clfs = fitted
    c = clfs["logreg"]
    old = os.umask(0o027)
    try:
        out = write_predictions(
            tmp_path,
            paths=[str(i) for i in range(len(labels))],
            split=["fold1"] * len(labels),
            labels=labels,
            class_names=NAMES,
            proba={"logreg": c.predict_proba(X)},
        )
    finally:
        os.umask(old)
    for path in out.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "predictions.npz"]


def test_align_proba_and_errors(tmp_path):
    p = align_proba([[0.3, 0.7]], ["owl", "cat"], NAMES)
    np.testing.assert_allclose(p, [[0.7, 0.0, 0.3]])
    with pytest.raises(ValueError, match="not among class_names"):
        align_proba([[1.0]], ["bat"], NAMES)
    with pytest.raises(ValueError, match="align the columns"):
        write_predictions(
            tmp_path,
            paths=["a"],
            split="test",
            labels=["cat"],
            class_names=NAMES,
            proba={"x": [[1.0, 0.0]]},
        )
    with pytest.raises(ValueError, match="not among class_names"):
        write_predictions(
            tmp_path,
            paths=["a"],
            split="test",
            labels=["bat"],
            class_names=NAMES,
            proba={"x": [[1.0, 0.0, 0.0]]},
        )
    assert not any(tmp_path.iterdir())  # nothing half-written
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a predictions.csv"):
        read_predictions(bad)
