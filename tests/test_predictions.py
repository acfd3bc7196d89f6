"""predictions.csv / predictions.npz: one row per image per classifier, agreeing with scores."""

from __future__ import annotations

import csv
import os
import stat

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from pipeline._knn import CosineKNNClassifier
from pipeline.fit.predictions import (
    CSV_COLUMNS,
    PREDICTIONS_CSV,
    PREDICTIONS_NPZ,
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
    write_predictions(
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
    out = {"csv": tmp_path / PREDICTIONS_CSV, "npz": tmp_path / PREDICTIONS_NPZ}
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
        write_predictions(
            tmp_path,
            paths=[str(i) for i in range(len(labels))],
            split=["fold1"] * len(labels),
            labels=labels,
            class_names=NAMES,
            proba={"logreg": c.predict_proba(X)},
        )
    finally:
        os.umask(old)
    for path in (tmp_path / PREDICTIONS_CSV, tmp_path / PREDICTIONS_NPZ):
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


def _read_back(path):
    """predictions.csv read as fit used to read it back for report.html."""
    back = pd.read_csv(path, dtype={"path": str, "label": str, "pred": str})
    back["correct"] = back["correct"].astype(bool)
    return back


def test_the_frame_is_what_reading_predictions_csv_back_gives(tmp_path):
    """Values, dtypes and order: paths with commas, quotes and accents; confidences that tie,
    that round at the 6th digit, tiny ones; labels given by predict (not the arg-max) for one
    classifier, the arg-max for the other; several splits."""
    rng = np.random.default_rng(4)
    n = 300
    proba = rng.dirichlet(np.full(3, 0.3), n)
    proba[:20] = [0.5, 0.5, 0.0]  # ties
    proba[20:40] = [1e-30, 1 - 2e-30, 1e-30]
    proba[40:60] = [0.1234565, 0.8765435, 0.0]  # rounds at the 6th digit
    preds = np.asarray(NAMES)[rng.integers(0, 3, n)]  # not the arg-max
    frame = write_predictions(
        tmp_path,
        paths=[f'img/{i}, "x" é.png' for i in range(n)],
        split=["test", "fold1", "fold2"] * (n // 3),
        labels=np.asarray(NAMES)[rng.integers(0, 3, n)],
        class_names=NAMES,
        proba={"logreg": proba, "knn": proba[::-1]},
        preds={"logreg": preds},
    )
    back = _read_back(tmp_path / "predictions.csv")
    pd.testing.assert_frame_equal(frame, back)
    assert frame["pred"].tolist()[:n] == preds.tolist()
    tied = frame.iloc[2 * n - 20 :]  # knn's last rows: [0.5, 0.5, 0] (its rows reversed)
    assert (tied["confidence"] == 0.5).all() and (tied["pred"] == "cat").all()
    assert frame["correct"].dtype == bool


def test_the_frame_keeps_class_names_that_read_csv_takes_for_missing(tmp_path):
    """A class named "NA" (or "None", "null") is a name: the frame keeps it, where reading the
    file back made it NaN."""
    names = ["NA", "None", "owl"]
    frame = write_predictions(
        tmp_path,
        paths=["a.png", "b.png"],
        split="test",
        labels=["NA", "None"],
        class_names=names,
        proba={"logreg": [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]]},
    )
    assert frame["label"].tolist() == frame["pred"].tolist() == ["NA", "None"]
    assert frame["correct"].tolist() == [True, True]
    assert _read_back(tmp_path / "predictions.csv")["label"].isna().all()  # what it replaces
