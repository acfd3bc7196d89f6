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
from ..rows import StoreRows

__all__ = ["fit_xgboost_dask", "store_array"]


@dataclasses.dataclass(frozen=True)
class _RowReader:
    """Picklable reader of some rows of one dataset of an HDF5 file (h5py handles are not)."""

    path: str
    dataset: str

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The rows, sorted (a repeated row is read once and repeated)."""
        import h5py

        unique, inverse = np.unique(rows, return_inverse=True)
        with h5py.File(self.path, "r") as fh:
            block = fh[self.dataset][unique] if len(unique) else fh[self.dataset][:0]
        return block if len(unique) == len(rows) else block[inverse.reshape(-1)]


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
    X : ndarray, dask.array.Array or StoreRows of shape (n_samples, n_features)
        In memory, lazy (see :func:`store_array`), or a store's rows
        (:class:`~pipeline.rows.StoreRows` of one dataset), which become lazy Dask arrays
        read by the workers: the client never reads a feature, and every worker must see
        the store's path.
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


def _dask_rows(X: Any, y_enc: np.ndarray, positions: np.ndarray) -> tuple[Any, Any]:
    """(features, labels) of ``X``'s rows ``positions`` as Dask arrays. A :class:`StoreRows`
    becomes :func:`store_array` tasks that read the store on the workers (the client reads
    no feature), its rows sorted by store row (labels follow), as a store is read fastest."""
    import dask.array as da

    if isinstance(X, StoreRows):
        if len(X.datasets) != 1:
            raise ValueError(
                f"fit_xgboost_dask: rows of one dataset only, got {X.datasets} (views)"
            )
        positions = positions[np.argsort(X.rows[positions], kind="stable")]
        rows = X.rows[positions]
        part = store_array(X.path, rows, dataset=X.datasets[0], chunk_rows=_XGB_CHUNK_ROWS)
    elif isinstance(X, da.Array):
        part = X if len(positions) == X.shape[0] else X[positions]
    else:  # an array, or another row source (read here)
        part = da.from_array(np.asarray(X)[positions], chunks=(_XGB_CHUNK_ROWS, -1))
    labels = da.from_array(y_enc[positions], chunks=(part.chunks[0],))
    return part.astype(np.float32), labels


def _fit_xgboost_on(estimator: Any, X: Any, y: Any, client: Any) -> Any:
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
    early, train_rows, val_rows = final.validation_split(y_enc)
    sklearn_model = final._make_booster(early)
    distributed_model = dxgb.DaskXGBClassifier(**sklearn_model.get_params())
    distributed_model.client = client
    X_train, y_train = _dask_rows(X, y_enc, train_rows)
    eval_set = [_dask_rows(X, y_enc, val_rows)] if early else None
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
