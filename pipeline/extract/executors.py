"""Scale-out on Dask: sharded extraction and XGBoost training on a cluster.

``--dask local[:N]`` starts a :class:`distributed.LocalCluster` of N single-threaded worker
processes (N defaults to the number of CUDA GPUs, else 2); ``--dask tcp://HOST:PORT`` joins a
running scheduler. Dask does all scheduling, retries and worker-loss recovery: nothing here
talks to sockets or keeps a queue.

Extraction. The plan's ``todo`` list is cut into contiguous shards, in source order. Each shard
is one Dask task that embeds its images with :func:`pipeline.extract.embed_into_parts` into its
own part files ``<out>.parts/part-shardNNNNN-*.h5`` (written atomically, so a killed worker
leaves only whole files). The client updates the store's index as shards finish, and
:func:`pipeline.extract.finish_store` merges everything in source order afterwards. A shard that
is retried (its worker died) skips the rows its earlier attempt already saved; a rerun after a
killed client recomputes only rows that no part file holds. The store's folder must be visible
to every worker under the same path (a shared filesystem on a multi-host cluster).

XGBoost. :func:`fit_xgboost_dask` trains one booster across the workers with
``xgboost.dask.DaskXGBClassifier`` on Dask arrays (in-memory ones, or read from the store chunk
by chunk with :func:`store_array`) and returns a plain fitted :class:`~pipeline.estimators.XGBoostClassifier` that predicts without a cluster.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import multiprocessing
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import PipelineError

__all__ = [
    "ShardResult",
    "dask_client",
    "fit_xgboost_dask",
    "parse_dask_spec",
    "run_dask_extraction",
    "shard_todo",
    "store_array",
]

logger = logging.getLogger(__name__)

MIN_SHARD_SIZE = 64
SHARDS_PER_WORKER = 4
SHARD_RETRIES = 2

# Per worker process: built runners, keyed by (model, weights, device, precision, backend).
_RUNNERS: dict[tuple[Any, ...], Any] = {}
_RUNNERS_LOCK = threading.Lock()


# -- cluster ------------------------------------------------------------------------------------


def parse_dask_spec(spec: str) -> tuple[str, Any]:
    """Parse ``--dask``: ``("local", n_workers)`` or ``("address", "tcp://HOST:PORT")``.

    ``local`` alone means one worker per CUDA GPU, or 2 workers without a GPU.
    """
    spec = spec.strip()
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2]
        if not count:
            import torch

            return "local", torch.cuda.device_count() or 2
        if not count.isdigit() or int(count) < 1:
            raise PipelineError(
                f"--dask: {spec!r}: the worker count after 'local:' must be a positive integer"
            )
        return "local", int(count)
    if "://" in spec and spec.split("://", 1)[1]:
        return "address", spec
    raise PipelineError(
        f"--dask: {spec!r} is neither local[:N] nor a scheduler address such as tcp://HOST:8786"
    )


@contextlib.contextmanager
def dask_client(spec: str) -> Iterator[Any]:
    """A connected :class:`distributed.Client` for ``--dask``; a local cluster is closed after."""
    import dask
    from distributed import Client, LocalCluster

    kind, value = parse_dask_spec(spec)
    if kind == "address":
        try:
            client = Client(value, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise PipelineError(
                f"--dask: cannot reach a Dask scheduler at {value} ({exc})"
            ) from exc
        with client:
            yield client
        return
    # Non-daemonic workers may start DataLoader decoding processes of their own.
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        LocalCluster(
            n_workers=value,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info(
            "started a local Dask cluster of %d worker processes (dashboard: %s)",
            value,
            client.dashboard_link,
        )
        yield client


def _n_workers(client: Any) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


# -- extraction ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What one shard task did: rows embedded and inputs failed (in all, earlier attempts of
    the same task included), and how many of those an earlier attempt had saved."""

    shard: int
    n_embedded: int
    n_failed: int
    n_resumed: int
    seconds: float
    worker: str


def shard_todo(
    todo: Sequence[int],
    n_workers: int,
    shard_size: int | None = None,
    min_size: int = MIN_SHARD_SIZE,
) -> list[list[int]]:
    """Cut ``todo`` into contiguous shards, deterministically (same input, same shards).

    The default size, ``max(min_size, len(todo) / (4 * n_workers))``, gives each worker about
    four shards: enough to balance load and to lose little when a worker dies.
    ``run_dask_extraction`` passes ``min_size = 2 * batch size`` (64 on CPU by default).
    """
    todo = list(todo)
    if shard_size is None:
        shard_size = max(min_size, math.ceil(len(todo) / (SHARDS_PER_WORKER * max(1, n_workers))))
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [todo[i : i + shard_size] for i in range(0, len(todo), shard_size)]


def _shard_prefix(shard: int, run: str) -> str:
    """Part files of one shard of one run. ``run`` keeps a rerun's shards apart from tasks of
    a killed client that may still be running on a remote cluster."""
    return f"part-shard{shard:05d}-{run}-"


def _worker_device(device: str) -> str:
    """Pin each worker of a local multi-GPU cluster to its own GPU (by worker rank)."""
    if device != "cuda":
        return device  # "cpu", or an explicit "cuda:N"
    import torch

    count = torch.cuda.device_count()
    name = _worker_name()
    if count > 1 and isinstance(name, int):
        return f"cuda:{name % count}"
    return device  # a `dask worker` started with CUDA_VISIBLE_DEVICES sees one GPU


def _worker_name() -> Any:
    try:
        from distributed import get_worker

        return get_worker().name
    except ValueError:  # not in a worker (called in-process)
        return None


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError):
        return 1


def _cached_runner(spec: Any, device: str, precision: str, backend: str) -> Any:
    """Build the runner once per worker process (and per device)."""
    import torch

    from ..engine.runners import make_runner

    key = (spec.model, spec.weights, device, precision, backend)
    with _RUNNERS_LOCK:
        if key not in _RUNNERS:
            threads = max(1, _worker_threads())
            if device == "cpu":
                torch.set_num_threads(threads)
            _RUNNERS[key] = make_runner(
                spec, torch.device(device), precision, backend, threads=threads
            )
        return _RUNNERS[key]


def _probe_runner(spec: Any, device: str, precision: str, backend: str) -> tuple[int, str]:
    """Task: build (and cache) a worker's runner; returns (feature_dim, backend)."""
    runner = _cached_runner(spec, _worker_device(device), precision, backend)
    return int(runner.feature_dim), str(runner.backend)


def _saved_in_parts(folder: Path, prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """(rows, failed): path -> key of what the part files named ``prefix*`` hold."""
    from ..store import read_rows_file

    rows: dict[str, str] = {}
    failed: dict[str, str] = {}
    for part in sorted(folder.glob(f"{prefix}*.h5")):
        table = read_rows_file(part, with_features=False)
        rows.update(zip(table.paths, table.keys, strict=True))
        failed.update(zip(table.failed.paths, table.failed.keys, strict=True))
    return rows, failed


def _shard_plan(plan: Any, indices: Sequence[int]) -> Any:
    """A copy of ``plan`` that holds only the shard's records (small to ship to a worker)."""
    from .plan import _Previous

    records = [plan.records[i] for i in indices]
    source = copy.copy(plan.source)
    source.records = records
    config = plan.config
    if config.workers < 0 and not plan.device.startswith("cuda"):
        # One Dask worker per core already: decode in the worker, not in extra processes.
        config = dataclasses.replace(config, workers=0)
    return dataclasses.replace(
        plan,
        config=config,
        source=source,
        records=records,
        keys=[plan.keys[i] for i in indices],
        todo=list(range(len(records))),
        prev=_Previous(),
        attrs=dict(plan.attrs),
    )


def _embed_shard(shard_plan: Any, shard: int, run: str, backend: str) -> ShardResult:
    """Task: embed one shard into its own part files; skips rows an earlier attempt saved."""
    from ..store import parts_dir
    from .plan import embed_into_parts

    started = time.perf_counter()
    prefix = _shard_prefix(shard, run)
    folder = parts_dir(shard_plan.out)
    if not folder.is_dir():
        raise PipelineError(
            f"--dask: worker cannot see {folder}; the store's folder must be on storage "
            "shared by the client and every worker, under the same path"
        )
    saved_rows, saved_failed = _saved_in_parts(folder, prefix)
    pairs = list(zip(shard_plan.records, shard_plan.keys, strict=True))
    resumed = sum(saved_rows.get(r.path) == k for r, k in pairs)
    resumed_failed = sum(saved_failed.get(r.path) == k for r, k in pairs)
    todo = [
        i
        for i, (r, k) in enumerate(pairs)
        if saved_rows.get(r.path) != k and saved_failed.get(r.path) != k
    ]
    device = _worker_device(shard_plan.device)
    on_gpu = device.startswith("cuda")  # decoding processes; on CPU decoding uses threads
    if on_gpu and shard_plan.workers > 0 and multiprocessing.current_process().daemon:
        logger.warning(
            "daemonic Dask worker cannot start decoding processes; decoding in the worker "
            "(start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False to decode in parallel)"
        )
        shard_plan = dataclasses.replace(
            shard_plan, config=dataclasses.replace(shard_plan.config, workers=0)
        )
    runner = _cached_runner(shard_plan.spec, device, shard_plan.precision, backend)
    shard_plan = dataclasses.replace(shard_plan, device=device)
    embedded, failed = embed_into_parts(
        shard_plan, todo, runner, prefix=prefix, update_index=False, progress=False
    )
    return ShardResult(
        shard,
        embedded + resumed,
        failed + resumed_failed,
        resumed,
        time.perf_counter() - started,
        str(_worker_name()),
    )


def run_dask_extraction(
    plan: Any, *, client: Any = None, shard_size: int | None = None
) -> tuple[int, float]:
    """Embed ``plan.todo`` on the Dask cluster of ``plan.config.dask``, one task per shard.

    Leaves part files for :func:`pipeline.extract.finish_store` to merge. Returns
    (images embedded, seconds spent embedding). Pass ``client`` to reuse a connected one.
    """
    if client is None:
        with dask_client(plan.config.dask) as own:
            return run_dask_extraction(plan, client=own, shard_size=shard_size)

    from distributed import as_completed
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..store import write_index
    from .plan import begin_parts

    n_workers = _n_workers(client)
    backend = plan.config.backend  # "auto": each worker picks as in-process runs do
    # Every worker builds its network now (and keeps it for its shards), so that the timing
    # below is embedding only; the first answer gives the embedding size.
    probes = [
        client.submit(
            _probe_runner,
            plan.spec,
            plan.device,
            plan.precision,
            backend,
            workers=[address],
            allow_other_workers=True,
            pure=False,
        )
        for address in sorted(client.scheduler_info().get("workers", {}))
    ]
    feature_dim, resolved = client.gather(probes)[0]
    begin_parts(plan, feature_dim, resolved)
    shards = shard_todo(plan.todo, n_workers, shard_size, min_size=2 * plan.batch_size)
    logger.info(
        "embedding %d images in %d shards on %d Dask workers",
        len(plan.todo),
        len(shards),
        n_workers,
    )
    started = time.perf_counter()
    run = secrets.token_hex(4)
    futures = [
        client.submit(
            _embed_shard,
            _shard_plan(plan, indices),
            sid,
            run,
            backend,
            retries=SHARD_RETRIES,
            pure=False,
            key=f"pipeline-shard-{sid:05d}-{run}",
        )
        for sid, indices in enumerate(shards)
    ]
    n_embedded = n_failed = 0
    try:
        with (
            logging_redirect_tqdm(),
            tqdm(
                total=len(shards),
                unit="shard",
                desc="extract (dask)",
                disable=not plan.config.progress,
                file=sys.stderr,
            ) as bar,
        ):
            for future in as_completed(futures):
                try:
                    result: ShardResult = future.result()
                except Exception as exc:
                    raise PipelineError(
                        f"--dask: a shard failed after {SHARD_RETRIES} retries ({exc}); finished "
                        "shards are saved: run the same command to resume"
                    ) from exc
                n_embedded += result.n_embedded
                n_failed += result.n_failed
                write_index(plan.out, plan.attrs)
                bar.update(1)
                logger.debug(
                    "shard %d on worker %s: %d embedded (%d by a lost attempt), %d failed, %.1f s",
                    result.shard,
                    result.worker,
                    result.n_embedded,
                    result.n_resumed,
                    result.n_failed,
                    result.seconds,
                )
    except BaseException:
        client.cancel(futures)
        raise
    seconds = time.perf_counter() - started
    logger.info(
        "dask extraction: %d embedded, %d failed in %.1f s (%.1f images/s) on %d workers",
        n_embedded,
        n_failed,
        seconds,
        n_embedded / seconds if seconds > 0 else 0.0,
        n_workers,
    )
    return n_embedded, seconds


# -- XGBoost ------------------------------------------------------------------------------------


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

    from ..estimators import XGBoostClassifier

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


def _fit_xgboost_on(estimator: Any, X: Any, y: Any, client: Any) -> Any:
    import dask.array as da
    import torch
    from sklearn.model_selection import train_test_split
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
    final.device_ = (
        ("cuda" if torch.cuda.is_available() else "cpu") if final.device == "auto" else final.device
    )
    early = bool(final.early_stopping_rounds) and len(y_enc) >= 10
    train_rows, val_rows = np.arange(len(y_enc)), np.arange(0)
    if early:  # the same held-out share as the in-process fit
        seed = final.random_state if isinstance(final.random_state, int) else 0
        try:
            train_rows, val_rows = train_test_split(
                train_rows, test_size=final.validation_fraction, random_state=seed, stratify=y_enc
            )
        except ValueError:
            train_rows, val_rows = train_test_split(
                train_rows, test_size=final.validation_fraction, random_state=seed
            )
        train_rows, val_rows = np.sort(train_rows), np.sort(val_rows)
        if len(np.unique(y_enc[train_rows])) < n_classes:
            early, train_rows, val_rows = False, np.arange(len(y_enc)), np.arange(0)

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
