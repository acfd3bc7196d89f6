"""Stage two reads the store in blocks: ``fit_rows`` / ``predict_rows`` on row sources, and
``fit`` end to end equal to fitting the same rows in memory."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from pipeline import rows, store
from pipeline.classifiers import default_params, make_classifier
from pipeline.exceptions import StoreError
from pipeline.fit import main as fit_main
from pipeline.fit.predictions import load_probabilities
from pipeline.fit.streaming import fit_plan, fit_rows, predict_rows
from pipeline.store import load_features, read_store

from ._fit_helpers import CLASS_NAMES, blobs, flip_a_feature_bit, write_store

BLOCK = 16


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of BLOCK rows everywhere (also where a default argument holds the size)."""
    monkeypatch.setattr(rows, "BLOCK_ROWS", BLOCK)
    monkeypatch.setattr(rows.iter_blocks, "__defaults__", (BLOCK,))
    monkeypatch.setattr(rows.materialize, "__defaults__", (BLOCK,))


class _Recorder(rows.RowSource):
    """A row source that records the rows of every read it serves."""

    def __init__(self, base: rows.RowSource) -> None:
        self.base, self.shape, self.reads = base, base.shape, []

    def take(self, positions):
        self.reads.append(len(positions))
        return self.base.take(positions)

    def read(self, start, stop):
        block = self.base.read(start, stop)
        self.reads.append(len(block))
        return block


class _Centroids(ClassifierMixin, BaseEstimator):
    """Nearest class mean; its fit reads a row source block by block (as the nn head will)."""

    accepts_row_source = True

    def fit(self, X, y):
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.seen_ = type(X)
        self.block_rows_ = []
        sums = np.zeros((len(self.classes_), X.shape[1]))
        for start, block in rows.iter_blocks(X, rows.BLOCK_ROWS):
            self.block_rows_.append(len(block))
            codes = np.searchsorted(self.classes_, y[start : start + len(block)])
            np.add.at(sums, codes, block)
        self.means_ = sums / np.bincount(np.searchsorted(self.classes_, y))[:, None]
        return self

    def predict_proba(self, X):
        d = ((np.asarray(X)[:, None, :] - self.means_[None]) ** 2).sum(-1)
        e = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class _Untagged(_Centroids):
    accepts_row_source = False


def _store_rows(tmp_path, n_per_class=30, dim=8):
    path = write_store(tmp_path / "s.h5", n_per_class=n_per_class, dim=dim)
    table = read_store(path)
    y = np.asarray(CLASS_NAMES)[table.labels]
    return path, table.features, y


def test_a_tagged_final_step_reads_scaled_blocks_and_the_pipeline_is_ordinary(
    tmp_path, small_blocks
):
    path, X, y = _store_rows(tmp_path)
    source = _Recorder(rows.StoreRows(path))
    pipe = Pipeline([("scale", StandardScaler()), ("clf", _Centroids())])
    assert fit_plan(pipe) == "stream"
    fitted = fit_rows(pipe, source, y)
    final = fitted.named_steps["clf"]
    assert fitted is pipe and final.seen_ is rows.TransformedRows
    assert source.reads and max(source.reads) <= BLOCK and max(final.block_rows_) <= BLOCK
    assert len(final.block_rows_) == int(np.ceil(len(X) / BLOCK))
    scaler = fitted.named_steps["scale"]
    np.testing.assert_allclose(scaler.mean_, X.mean(axis=0, dtype=np.float64), rtol=1e-10)
    np.testing.assert_allclose(scaler.var_, X.var(axis=0, dtype=np.float64), rtol=1e-8)
    # the same model as fitting the scaled matrix in memory
    in_memory = Pipeline([("scale", StandardScaler()), ("clf", _Centroids())]).fit(X, y)
    np.testing.assert_allclose(final.means_, in_memory.named_steps["clf"].means_, atol=1e-5)
    # an ordinary fitted Pipeline: predicts on arrays, pickles, is fitted for scikit-learn
    check_is_fitted(fitted)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X), in_memory.predict(X))


def test_an_untagged_final_step_gets_one_scaled_float32_matrix(tmp_path, small_blocks):
    path, X, y = _store_rows(tmp_path)
    seen = {}

    class Spy(_Untagged):
        def fit(self, X, y):
            seen["X"] = X
            return super().fit(X, y)

    pipe = Pipeline([("scale", StandardScaler()), ("clf", Spy())])
    assert fit_plan(pipe) == "scaled"
    fit_rows(pipe, rows.StoreRows(path), y)
    got = seen["X"]
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, StandardScaler().fit_transform(X), atol=1e-5)


def test_plans_of_the_registry_and_of_other_estimators():
    assert fit_plan(make_classifier("logreg")) == "scaled"
    assert fit_plan(make_classifier("svc")) == "scaled"  # one scaled matrix, not two
    for name in ("nn", "xgboost"):  # stream once their estimators declare the tag
        final = make_classifier(name).steps[-1][1]
        expected = (
            "stream" if rows.accepts_row_source(final) else {"nn": "scaled"}.get(name, "matrix")
        )
        assert fit_plan(make_classifier(name)) == expected
    assert fit_plan(make_classifier("knn")) == "matrix"  # no scaler, no tag
    assert fit_plan(make_classifier("svc_approx")) == "matrix"  # Nystroem has no partial_fit
    assert fit_plan(_Centroids()) == "stream" and fit_plan(_Untagged()) == "matrix"
    assert fit_plan(Pipeline([("clf", _Centroids())])) == "stream"
    assert fit_plan(Pipeline([("clf", _Untagged())])) == "matrix"


def test_plain_arrays_fit_and_predict_as_before(small_blocks):
    X, labels = blobs(n_per_class=20, dim=6)
    y = np.asarray(CLASS_NAMES)[labels]
    streamed = fit_rows(make_classifier("logreg", random_state=0), X, y)
    plain = make_classifier("logreg", random_state=0).fit(X, y)
    pred, proba = predict_rows(streamed, X)
    np.testing.assert_array_equal(pred, plain.predict(X))
    np.testing.assert_allclose(proba, plain.predict_proba(X), atol=1e-6)
    knn = fit_rows(make_classifier("knn"), rows.ArrayRows(X), y)  # "matrix": materialised
    np.testing.assert_array_equal(
        predict_rows(knn, X)[0], make_classifier("knn").fit(X, y).predict(X)
    )


def _fit_run(tmp_path, store_path, clf, *extra):
    out = tmp_path / f"out-{clf}"
    argv = ["--features", str(store_path), "--clf", clf, "--out", str(out), "-q", "--no-audit"]
    assert fit_main([*argv, *extra]) == 0
    return load_probabilities(out / "predictions.npz")


@pytest.mark.parametrize("clf", ["logreg", "nn"])
def test_fit_equals_the_in_memory_fit_of_the_same_rows(tmp_path, small_blocks, clf):
    """Through the CLI, in blocks of 16 rows: the same predictions (and, within 1e-6, the same
    probabilities) as the classifier fitted on the train rows read whole."""
    split = ["test" if i % 4 == 0 else "train" for i in range(90)]
    path = write_store(tmp_path / "s.h5", n_per_class=30, dim=8, split=split)
    # nn on the CPU whatever the machine: this compares two fits to 1e-6.
    extra = ["--set", "nn.max_iter=30", "--set", "nn.device=cpu"] if clf == "nn" else []
    got = _fit_run(tmp_path, path, clf, *extra)
    X_train, y_train, X_test, y_test, names = load_features(path)
    params = {**default_params(clf), "random_state": 0}
    if clf == "nn":
        params.update(max_iter=30, hidden_layer_sizes=tuple(params["hidden_layer_sizes"]))
        params.update(device="cpu")
    names = np.asarray(names)
    expected = make_classifier(clf, **params).fit(X_train, names[y_train])
    np.testing.assert_array_equal(got["row"], np.flatnonzero(np.asarray(split) == "test"))
    np.testing.assert_array_equal(names[got["pred"][0]], expected.predict(X_test))
    np.testing.assert_allclose(got["proba"][0], expected.predict_proba(X_test), atol=1e-6)


def test_the_store_is_read_in_blocks_never_whole(tmp_path, small_blocks, monkeypatch):
    """A fit with the audit and 3-fold CV: every read of embeddings is one block at most, and
    the row columns are read without the features."""
    path = write_store(tmp_path / "s.h5", n_per_class=30, dim=8)
    reads, whole = [], []
    take = rows.StoreRows.take

    def counting_take(self, positions):
        reads.append(len(positions))
        return take(self, positions)

    read_rows_file = store.read_rows_file

    def spy_read(path, with_features=True, with_rows=True):
        whole.append(with_features)
        return read_rows_file(path, with_features, with_rows)

    monkeypatch.setattr(rows.StoreRows, "take", counting_take)
    monkeypatch.setattr(store, "read_rows_file", spy_read)
    out = tmp_path / "out"
    assert (
        fit_main(["--features", str(path), "--clf", "logreg", "--cv", "3", "-q", "--out", str(out)])
        == 0
    )
    assert (out / "report.html").is_file()
    assert reads and max(reads) <= BLOCK and whole == [False]


def test_nan_anywhere_in_the_rows_read_is_the_one_line_error(tmp_path, small_blocks, capsys):
    X, labels = blobs(n_per_class=30, dim=8)
    X[77, 2] = np.inf  # in the 5th block of 16
    path = write_store(tmp_path / "nan.h5", features=X, labels=labels)
    out = tmp_path / "out"
    assert fit_main(["--features", str(path), "--clf", "logreg", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "1 row(s) hold NaN or infinite features" in err and "img/0077.png" in err
    assert not out.exists()
    with pytest.raises(StoreError, match=r"img/0077\.png"):
        load_features(path)


def test_load_features_reads_each_split_into_its_own_float32_array(tmp_path):
    path = write_store(tmp_path / "s.h5", n_per_class=30, dim=8)
    table = read_store(path)
    X_train, y_train, X_test, y_test, names = load_features(path, test_size=0.3, random_state=1)
    train, test, _ = store.split_rows(table, path, test_size=0.3, random_state=1)
    for X, idx in ((X_train, train), (X_test, test)):
        assert X.dtype == np.float32 and X.flags.c_contiguous
        np.testing.assert_array_equal(X, table.features[np.sort(idx)])  # in store order
    np.testing.assert_array_equal(y_train, table.labels[np.sort(train)])
    np.testing.assert_array_equal(y_test, table.labels[np.sort(test)])
    assert names == CLASS_NAMES


def test_a_damaged_chunk_read_in_blocks_is_the_one_line_checksum_error(tmp_path):
    path = write_store(tmp_path / "s.h5", n_per_class=30, dim=8)
    flip_a_feature_bit(path)
    with pytest.raises(StoreError, match="checksum mismatch"):
        load_features(path)
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.check_finite(rows.StoreRows(path), path)


def test_dask_xgboost_gets_the_store_rows_not_a_matrix(tmp_path, monkeypatch):
    """``--dask`` hands ``fit_xgboost_dask`` the training rows as ``StoreRows`` (its workers
    read them); here a stand-in fits in-process instead of on a cluster."""
    from pipeline.fit import dask as fit_dask

    path = write_store(tmp_path / "s.h5", n_per_class=30, dim=8)
    seen = []

    def fake(estimator, X, y, address):
        seen.append((X, address))
        return estimator.fit(np.asarray(X), y)

    monkeypatch.setattr(fit_dask, "fit_xgboost_dask", fake)
    out = tmp_path / "out"
    argv = ["--features", str(path), "--clf", "xgboost", "--dask", "local:1", "--out", str(out)]
    assert fit_main([*argv, "-q", "--no-audit", "--set", "xgboost.n_estimators=5"]) == 0
    ((X, address),) = seen
    assert isinstance(X, rows.StoreRows) and address == "local:1"
    report_rows = load_probabilities(out / "predictions.npz")["row"]
    assert len(X) + len(report_rows) == 90 and X.datasets == ("features",)
    assert np.all(np.diff(X.rows) > 0) and not set(X.rows) & set(report_rows)


def test_the_audit_of_a_store_beyond_its_row_limit_is_skipped_and_said(
    tmp_path, monkeypatch, caplog
):
    """Beyond AUDIT_MAX_ROWS labelled rows the audit (quadratic duplicate search) does not run;
    the run says so in the log and in report.json's notes, and writes no audit table."""
    import json
    import logging

    from pipeline.fit import run_outputs

    path = write_store(tmp_path / "s.h5", n_per_class=20, dim=8)
    out = tmp_path / "out"
    monkeypatch.setattr(run_outputs, "AUDIT_MAX_ROWS", 59)
    with caplog.at_level(logging.WARNING):
        assert fit_main(["--features", str(path), "--clf", "logreg", "--out", str(out), "-q"]) == 0
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any("audit skipped: 60 labelled rows are more than 59" in n for n in notes), notes
    assert "audit skipped" in caplog.text
    assert not (out / "label_issues.csv").exists()
    monkeypatch.setattr(run_outputs, "AUDIT_MAX_ROWS", 60)  # at the limit it runs
    assert fit_main(["--features", str(path), "--clf", "logreg", "--out", str(out), "-q"]) == 0
    assert (out / "label_issues.csv").exists()
