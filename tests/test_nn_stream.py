"""The nn head trains from a RowSource block by block, and gives the model an array gives."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline import TorchMLPClassifier
from pipeline import estimators as estimators_mod
from pipeline.estimators import _DeviceBlocks
from pipeline.rows import ArrayRows, RowSource, StoreRows, accepts_row_source
from tests._fit_helpers import blobs

BLOCK = 64  # training block in these tests (TRAIN_BLOCK_ROWS is 32768)
BATCH = 16


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(estimators_mod, "TRAIN_BLOCK_ROWS", BLOCK)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X, y = blobs(n_per_class=150, n_classes=3, dim=12, seed=4)
    X = X.astype(np.float32)
    path = tmp_path_factory.mktemp("nnstream") / "s.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=X, chunks=(50, 12))
    return path, X, np.array(["cat", "dog", "owl"])[y]


class RecordingRows(RowSource):
    """A source that records the positions of every read and take."""

    def __init__(self, array: np.ndarray) -> None:
        self.inner = ArrayRows(array)
        self.shape = self.inner.shape
        self.requests: list[np.ndarray] = []

    def read(self, start: int, stop: int) -> np.ndarray:
        self.requests.append(np.arange(start, stop))
        return self.inner.read(start, stop)

    def take(self, positions) -> np.ndarray:
        self.requests.append(np.asarray(positions))
        return self.inner.take(positions)


def _mlp(**kw):
    params = {"max_iter": 4, "batch_size": BATCH, "random_state": 0, "device": "cpu"}
    return TorchMLPClassifier(**{**params, "hidden_layer_sizes": (32,), "dropout": 0.3, **kw})


@pytest.mark.parametrize("early_stopping", [False, True])
def test_store_rows_train_the_model_the_array_trains(store, small_blocks, early_stopping):
    path, X, y = store
    rows = np.arange(0, len(X), 2)[::-1]  # not the store's order, not every row
    kw = {"early_stopping": early_stopping, "validation_fraction": 0.2}
    from_array = _mlp(**kw).fit(X[rows], y[rows])
    from_store = _mlp(**kw).fit(StoreRows(path, rows), y[rows])
    assert accepts_row_source(from_store)
    assert from_store.n_features_in_ == 12 and not hasattr(from_store, "feature_names_in_")
    assert from_store.loss_curve_ == from_array.loss_curve_
    assert from_store.validation_loss_curve_ == from_array.validation_loss_curve_
    proba = from_array.predict_proba(X)
    np.testing.assert_array_equal(from_store.predict_proba(X), proba)
    np.testing.assert_array_equal(from_store.predict(X), from_array.predict(X))
    # predict_proba takes a source too, read block by block
    np.testing.assert_array_equal(from_store.predict_proba(StoreRows(path)), proba)
    assert (from_store.predict(X) == y).mean() > 0.9


def test_each_epoch_reads_each_block_once_and_nothing_larger(small_blocks):
    X, y = blobs(n_per_class=100, n_classes=3, dim=8, seed=2)
    source = RecordingRows(X)
    clf = _mlp(max_iter=3, early_stopping=True, validation_fraction=0.1).fit(source, y)
    validation, *blocks = source.requests  # the validation rows are taken first, once
    assert len(validation) == 30  # ceil(0.1 * 300)
    train = np.setdiff1d(np.arange(len(X)), validation)
    assert max(len(block) for block in blocks) == BLOCK
    per_epoch = len(blocks) // clf.n_iter_
    assert clf.n_iter_ == 3 and per_epoch == 5  # 270 training rows in blocks of 64
    epochs = [blocks[i : i + per_epoch] for i in range(0, len(blocks), per_epoch)]
    for epoch in epochs:  # every training row once per epoch
        np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), train)
    assert [b[0] for b in epochs[0]] != [b[0] for b in epochs[1]]  # blocks in a new order


def test_a_source_of_one_block_is_read_once():
    X, y = blobs(n_per_class=20, n_classes=2, dim=4, seed=0)
    source = RecordingRows(X)
    clf = _mlp(max_iter=5).fit(source, y)
    assert clf.n_iter_ == 5 and len(source.requests) == 1
    np.testing.assert_array_equal(source.requests[0], np.arange(len(X)))


def test_array_rows_are_validated_as_the_array(store):
    _, X, y = store
    a = _mlp(max_iter=2).fit(ArrayRows(X.astype(np.float64)), y)
    b = _mlp(max_iter=2).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_in_memory_float32_rows_are_shared_not_copied():
    X = np.arange(40, dtype=np.float32).reshape(10, 4)
    blocks = _DeviceBlocks(X, None, estimators_mod.torch.device("cpu"), "owner")
    assert np.shares_memory(blocks.read(2, 7).numpy(), X)


def test_row_source_errors(store, tmp_path, small_blocks):
    path, X, y = store
    with pytest.raises(ValueError, match="X has 450 rows but y has 449 labels"):
        _mlp().fit(StoreRows(path), y[:-1])
    with pytest.raises(ValueError, match="shape \\(0, 12\\)"):
        _mlp().fit(StoreRows(path, []), y[:0])
    bad = X.copy()
    bad[300, 3] = np.nan
    bad_path = tmp_path / "nan.h5"
    with h5py.File(bad_path, "w") as fh:
        fh.create_dataset("features", data=bad)
    with pytest.raises(ValueError, match="NaN or infinity \\(training rows 256:320\\)"):
        _mlp().fit(StoreRows(bad_path), y)
    bad[::2, 0] = np.inf  # some of these are among the validation rows
    with h5py.File(bad_path, "w") as fh:
        fh.create_dataset("features", data=bad)
    with pytest.raises(ValueError, match="NaN or infinity \\(the validation rows\\)"):
        _mlp(early_stopping=True).fit(StoreRows(bad_path), y)
    clf = _mlp(max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="X has 6 features, but TorchMLPClassifier is expecting"):
        clf.predict(ArrayRows(X[:, :6]))
