"""XGBoost on Dask: :func:`fit_xgboost_dask` trains one booster across the workers.

It uses ``xgboost.dask.DaskXGBClassifier`` on Dask arrays (in-memory ones, or read from the
store chunk by chunk with :func:`store_array`) and returns a plain fitted
:class:`~pipeline.estimators.XGBoostClassifier` that predicts without a cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._cluster import dask_client
from .._runtime import auto_device
from ..estimators import XGBoostClassifier

__all__ = ["fit_xgboost_dask", "store_array"]


@dataclasses.dataclass(frozen=True)
class _RowReader:
    """Picklable reader of some rows of one dataset of an HDF5 file (h5py handles are not)."""

    path: str
    dataset: str

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as fh:
            return fh[self.dataset][np.sort(rows)] if len(rows) else fh[self.dataset][:0]


def store_array(
    path: str | Path,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    dataset: str = "features",
    chunk_rows: int = 65536,
) -> Any:
    """A Dask array over ``rows`` (sorted; default all) of a store's ``dataset``, read lazily.

    Each chunk is a task that opens the file by path and reads its rows, so the store is never
    loaded on the client and the graph pickles; workers must see ``path``.
    """
    import dask
    import dask.array as da
    import h5py

    path = str(Path(path).resolve())
    with h5py.File(path, "r") as fh:
        ds = fh[dataset]
        n, tail, dtype = ds.shape[0], ds.shape[1:], ds.dtype
    rows = np.arange(n) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= n):
        raise ValueError(f"{path}: rows must lie in [0, {n}), got {rows[0]}..{rows[-1]}")
    reader = _RowReader(path, dataset)
    blocks = [
        da.from_delayed(
            dask.delayed(reader, pure=True)(rows[i : i + chunk_rows]),
            shape=(len(rows[i : i + chunk_rows]), *tail),
            dtype=dtype,
        )
        for i in range(0, len(rows), chunk_rows)
    ]
    if not blocks:
        return da.zeros((0, *tail), dtype=dtype)
    return da.concatenate(blocks, axis=0)


def _xgb_final(estimator: Any) -> Any:
    from sklearn.pipeline import Pipeline

    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    if not isinstance(final, XGBoostClassifier):
        raise TypeError(
            f"fit_xgboost_dask: expected an XGBoostClassifier (or a Pipeline ending in one), "
            f"got {type(final).__name__}"
        )
    if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
        raise TypeError("fit_xgboost_dask: the Pipeline must hold only the XGBoostClassifier")
    return final


def fit_xgboost_dask(estimator: Any, X: Any, y: Any, address: str | Any) -> Any:
    """Fit an :class:`~pipeline.estimators.XGBoostClassifier` with ``xgboost.dask``.

    Parameters
    ----------
    estimator : XGBoostClassifier or Pipeline
        Unfitted; ``make_classifier("xgboost", ...)`` or its ``"clf"`` step. Its
        hyperparameters (early stopping on a held-out ``validation_fraction`` included) apply.
    X : ndarray or dask.array.Array of shape (n_samples, n_features)
        In memory, or lazy (see :func:`store_array`).
    y : array-like of shape (n_samples,)
        Labels of any type (encoded to ``0..K-1`` for XGBoost, decoded on predict).
    address : str or distributed.Client
        ``--dask`` value (``local[:N]`` or ``tcp://HOST:PORT``), or a connected client.

    Returns
    -------
    estimator
        ``estimator`` fitted in place: its booster is a plain ``xgboost.XGBClassifier`` that
        predicts and pickles without a cluster.
    """
    if not isinstance(address, str):
        return _fit_xgboost_on(estimator, X, y, address)
    with dask_client(address) as client:
        return _fit_xgboost_on(estimator, X, y, client)


def _early_stopping_rows(
    final: Any, y_enc: np.ndarray, n_classes: int
) -> tuple[bool, np.ndarray, np.ndarray]:
    """(early stopping?, train rows, validation rows): the same held-out share as the
    in-process fit, stratified when possible; off when too few rows or a class would vanish."""
    from sklearn.model_selection import train_test_split

    everything, nothing = np.arange(len(y_enc)), np.arange(0)
    if not (final.early_stopping_rounds and len(y_enc) >= 10):
        return False, everything, nothing
    seed = final.random_state if isinstance(final.random_state, int) else 0
    try:
        train_rows, val_rows = train_test_split(
            everything, test_size=final.validation_fraction, random_state=seed, stratify=y_enc
        )
    except ValueError:
        train_rows, val_rows = train_test_split(
            everything, test_size=final.validation_fraction, random_state=seed
        )
    train_rows, val_rows = np.sort(train_rows), np.sort(val_rows)
    if len(np.unique(y_enc[train_rows])) < n_classes:
        return False, everything, nothing
    return True, train_rows, val_rows


def _fit_xgboost_on(estimator: Any, X: Any, y: Any, client: Any) -> Any:
    import dask.array as da
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils.multiclass import check_classification_targets
    from xgboost import XGBClassifier
    from xgboost import dask as dxgb

    final = _xgb_final(estimator)
    name = type(final).__name__
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] != len(y):
        raise ValueError(f"{name}: X must be 2-D with one row per label; got {X.shape}, {y.shape}")
    check_classification_targets(y)
    encoder = LabelEncoder().fit(y)
    n_classes = len(encoder.classes_)
    if n_classes < 2:
        raise ValueError(f"{name}: needs at least 2 classes, got {n_classes}")
    y_enc = encoder.transform(y).astype(np.float32)
    final.device_ = auto_device() if final.device == "auto" else final.device
    early, train_rows, val_rows = _early_stopping_rows(final, y_enc, n_classes)

    def dask_rows(rows: np.ndarray) -> tuple[Any, Any]:
        if isinstance(X, da.Array):
            part = X if len(rows) == X.shape[0] else X[rows]
        else:
            part = da.from_array(np.asarray(X)[rows], chunks=(_XGB_CHUNK_ROWS, -1))
        labels = da.from_array(y_enc[rows], chunks=(part.chunks[0],))
        return part.astype(np.float32), labels

    sklearn_model = final._make_booster(early)
    distributed_model = dxgb.DaskXGBClassifier(**sklearn_model.get_params())
    distributed_model.client = client
    X_train, y_train = dask_rows(train_rows)
    eval_set = [dask_rows(val_rows)] if early else None
    distributed_model.fit(X_train, y_train, eval_set=eval_set, verbose=False)
    raw = distributed_model.get_booster().save_raw("ubj")
    plain = XGBClassifier(**sklearn_model.get_params())
    plain.load_model(bytearray(raw))  # a plain model: predicts without the cluster
    final.estimator_ = plain
    final.classes_ = encoder.classes_
    final.n_features_in_ = int(X.shape[1])
    final.best_iteration_ = plain.best_iteration if early else None
    return estimator


_XGB_CHUNK_ROWS = 65536
