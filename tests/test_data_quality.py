"""Likely label errors and duplicates across splits, on planted synthetic embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.fit.data_quality import (
    content_hashes,
    find_duplicates,
    find_label_issues,
    leakage_warning,
)
from tests._fit_helpers import blobs


def test_planted_label_errors_rank_first():
    X, y = blobs(n_per_class=40, n_classes=4, dim=32, seed=1)
    names = np.array(["ant", "bee", "cow", "dog"])[y]
    planted = {3: "bee", 50: "cow", 100: "ant", 150: "ant"}
    for row, wrong in planted.items():
        names[row] = wrong
    paths = [f"img/{i:03d}.png" for i in range(len(y))]
    splits = ["test" if i % 5 == 0 else "train" for i in range(len(y))]
    issues = find_label_issues(X, names, paths=paths, splits=splits, seed=0)
    assert set(issues["path"].head(len(planted))) == {paths[r] for r in planted}
    assert len(issues) <= len(planted) + 2  # clean separable data: few false alarms
    first = issues.iloc[0]
    assert first["label"] == planted[first["row"]]
    assert first["predicted"] == np.array(["ant", "bee", "cow", "dog"])[y[first["row"]]]
    assert (np.diff(issues["p_label"]) >= 0).all()
    assert issues["rank"].tolist() == list(range(1, len(issues) + 1))
    # Test rows are judged too (row 50 and 100 are test rows: 50 % 5 == 0).
    assert {"train", "test"} <= set(issues["split"])


def test_label_issues_are_deterministic_and_skip_singleton_classes():
    X, y = blobs(n_per_class=20, n_classes=3, dim=8, seed=2)
    labels = np.array(["a", "b", "c"], dtype=object)[y]
    labels[0] = "lonely"  # a class of one row cannot be judged out of fold
    a = find_label_issues(X, labels, seed=3)
    b = find_label_issues(X, labels, seed=3)
    assert a.equals(b)
    assert "lonely" not in set(a["label"])


def test_label_issues_bad_shape_names_the_parameter():
    with pytest.raises(ValueError, match="features"):
        find_label_issues(np.zeros((3, 2)), [0, 1])


def test_exact_and_near_duplicates_between_train_and_test():
    X, y = blobs(n_per_class=30, n_classes=3, dim=16, seed=4)
    n = len(y)
    paths = [f"img/{i:03d}.png" for i in range(n)]
    splits = np.array(["train"] * n, dtype=object)
    splits[-10:] = "test"
    splits[-12:-10] = "val"
    hashes = [f"h{i}" for i in range(n)]
    hashes[-1] = hashes[5]  # byte-identical copy of train row 5 (embedding differs a little)
    X[-1] = X[5] + 0.01
    X[-2] = X[7] + 1e-3  # different bytes, nearly the same embedding
    hashes[-3] = None  # unreadable: never an exact match
    dups = find_duplicates(X, paths, splits, hashes, labels=y, threshold=0.99)
    assert dups["kind"].tolist() == ["exact", "near"]
    assert dups["path"].tolist() == [paths[-1], paths[-2]]
    assert dups["train_path"].tolist() == [paths[5], paths[7]]
    assert dups["similarity"].iloc[1] > 0.99
    # Train rows duplicating each other are not leakage; a lower threshold finds more pairs.
    assert set(dups["split"]) == {"test"}
    assert len(find_duplicates(X, paths, splits, hashes, threshold=0.2)) > 2
    assert "(1 identical, 1 near-identical;" in leakage_warning(dups)
    assert leakage_warning(dups.iloc[:0]) is None


def test_duplicates_query_in_batches_equals_one_batch():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    splits = ["train"] * 200 + ["test"] * 100
    X[250] = X[3]
    paths = [str(i) for i in range(300)]
    hashes = [str(i) for i in range(300)]
    one = find_duplicates(X, paths, splits, hashes, threshold=0.9, batch_size=1000)
    many = find_duplicates(X, paths, splits, hashes, threshold=0.9, batch_size=7)
    assert one.equals(many)
    assert "250" in set(one["path"])


def test_duplicates_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(np.zeros((2, 2)), ["a", "b"], ["train", "test"], ["x", "y"], threshold=2)


def test_content_hashes_stream_files_and_record_unreadable(tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    c.write_bytes(b"y")
    hashes, unreadable = content_hashes([str(a), str(b), str(c), str(tmp_path / "gone.png")])
    assert hashes[0] == hashes[1] != hashes[2]
    assert hashes[3] is None
    assert list(unreadable) == [str(tmp_path / "gone.png")]
    assert "FileNotFoundError" in unreadable[str(tmp_path / "gone.png")]


def test_content_hashes_of_builtin_digits_use_pixels():
    hashes, unreadable = content_hashes(
        ["sklearn:digits/0000", "sklearn:digits/0001", "sklearn:digits/0000", "sklearn:digits/9999"]
    )
    assert hashes[0] == hashes[2] != hashes[1]
    assert hashes[3] is None and "sklearn:digits/9999" in unreadable
