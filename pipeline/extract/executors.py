"""Executors of stage one: in-process, or sharded over a Dask cluster.

Both run the same steps from below (:mod:`~pipeline.extract.plan`, then
:func:`~pipeline.extract.parts.begin_parts`, :func:`~pipeline.extract.parts.embed_into_parts`
and :func:`~pipeline.extract.parts.finish_store`); :func:`run_extraction` picks one.

Dask. The plan's ``todo`` list is cut into contiguous shards, in source order. Each shard is one
Dask task that embeds its images with :func:`~pipeline.extract.parts.embed_into_parts` into its
own part files ``<out>.parts/part-shardNNNNN-*.h5`` (written atomically, so a killed worker
leaves only whole files). The client updates the store's index as shards finish, and
:func:`~pipeline.extract.parts.finish_store` finishes the store afterwards (merged in source
order, or, for an update, appended as a view over base and parts). A
shard that is retried (its worker died) skips the rows its earlier attempt already saved; a
rerun after a killed client recomputes only rows that no part file holds. The store's folder
must be visible to every worker under the same path (a shared filesystem on a multi-host
cluster).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import math
import multiprocessing
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from .._cluster import count_workers, dask_client
from .._io import LockedError, exclusive_run, remove_stale_temps
from .._progress import Progress
from ..config import ExtractConfig
from ..engine.runners import inference_threads, make_runner
from ..engine.sources import open_source
from ..exceptions import ConfigError, PipelineError, StoreError
from ..store import parts_dir, read_rows_file, write_index
from .parts import begin_parts, embed_into_parts, finish_store
from .plan import (
    ExtractionPlan,
    ExtractSummary,
    Previous,
    plan_extraction,
    request_key,
    stat_part,
    verified_cpu_graph,
    warm_check,
)

__all__ = [
    "DaskExecutor",
    "Embedded",
    "Executor",
    "InProcessExecutor",
    "ShardResult",
    "run_dask_extraction",
    "run_extraction",
    "shard_todo",
]

logger = logging.getLogger(__name__)

MIN_SHARD_SIZE = 64
SHARDS_PER_WORKER = 4
SHARD_RETRIES = 2

# Per worker process: built runners, keyed by (spec, device, precision, backend).
_RUNNERS: dict[tuple[Any, ...], Any] = {}
_RUNNERS_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Embedded:
    """What an executor did: the plan it wrote with (as returned by
    :func:`~pipeline.extract.parts.begin_parts`, which :func:`~pipeline.extract.parts.finish_store`
    takes), the images it embedded and the seconds spent embedding."""

    plan: ExtractionPlan
    n_embedded: int
    seconds: float


class Executor(Protocol):
    """Begins the parts of ``plan.out`` and embeds ``plan.todo`` into them."""

    def __call__(self, plan: ExtractionPlan, verified: Any = None) -> Embedded: ...


# -- in-process ---------------------------------------------------------------------------------


def _make_runner(plan: ExtractionPlan, verified: Any) -> Any:
    """The verified ONNX graph when there is one, else the runner make_runner chooses (and
    records, so that the next run of this request can skip torch)."""

    threads = inference_threads()
    if verified is not None:
        try:
            runner = verified.runner(threads)
            logger.info(
                "backend: onnxruntime, verified graph %s (max relative difference to torch %.1e)",
                runner.path.name,
                verified.difference,
            )
            return runner
        except Exception as exc:  # a damaged cache file: rebuild through torch
            logger.warning("cached ONNX graph unusable (%s); rebuilding it", exc)
    config = plan.config
    return make_runner(
        plan.spec,
        plan.device,
        plan.precision,
        config.backend,
        threads=threads,
        remember_as=request_key(
            config.model, config.weights, config.auto_weights, config.preprocess
        ),
        int8_graph=plan.recipe.int8_graph,
    )


class InProcessExecutor:
    """Embed in this process with one runner (the verified ONNX graph when there is one)."""

    def __call__(self, plan: ExtractionPlan, verified: Any = None) -> Embedded:
        runner = _make_runner(plan, verified)
        plan = begin_parts(plan, runner.feature_dim, runner.backend)
        started = time.perf_counter()
        n_embedded, _ = embed_into_parts(plan, plan.todo, runner, progress=plan.config.progress)
        return Embedded(plan, n_embedded, time.perf_counter() - started)


class DaskExecutor:
    """Embed on the Dask cluster of ``spec`` (``local[:N]``, an address, or a ``Client``)."""

    def __init__(self, spec: Any, shard_size: int | None = None) -> None:
        self.spec = spec
        self.shard_size = shard_size

    def __call__(self, plan: ExtractionPlan, verified: Any = None) -> Embedded:
        client = None if isinstance(self.spec, str) else self.spec
        if client is None:
            with dask_client(self.spec) as own:
                return run_dask_extraction(plan, client=own, shard_size=self.shard_size)
        return run_dask_extraction(plan, client=client, shard_size=self.shard_size)


# -- Dask ---------------------------------------------------------------------------------------


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


def _cached_runner(
    spec: Any, device: str, precision: str, backend: str, int8_graph: str = ""
) -> Any:
    """Build the runner once per worker process (and per device)."""
    import torch

    key = (spec, device, precision, backend, int8_graph)
    with _RUNNERS_LOCK:
        if key not in _RUNNERS:
            threads = max(1, _worker_threads())
            if device == "cpu":
                torch.set_num_threads(threads)
            _RUNNERS[key] = make_runner(
                spec,
                torch.device(device),
                precision,
                backend,
                threads=threads,
                int8_graph=int8_graph,
            )
        return _RUNNERS[key]


def _probe_runner(
    spec: Any, device: str, precision: str, backend: str, int8_graph: str = ""
) -> tuple[int, str]:
    """Task: build (and cache) a worker's runner; returns (feature_dim, backend)."""
    runner = _cached_runner(spec, _worker_device(device), precision, backend, int8_graph)
    return int(runner.feature_dim), str(runner.backend)


def _saved_in_parts(folder: Path, prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """(rows, failed): path -> key of what the part files named ``prefix*`` hold."""

    rows: dict[str, str] = {}
    failed: dict[str, str] = {}
    for part in sorted(folder.glob(f"{prefix}*.h5")):
        table = read_rows_file(part, with_features=False)
        rows.update(zip(table.paths, table.keys, strict=True))
        failed.update(zip(table.failed.paths, table.failed.keys, strict=True))
    return rows, failed


def _shard_plan(plan: ExtractionPlan, indices: Sequence[int]) -> Any:
    """A copy of ``plan`` that holds only the shard's records (small to ship to a worker)."""

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
        prev=Previous(),
        attrs=dict(plan.attrs),
        inputs=None,
    )


def _embed_shard(shard_plan: Any, shard: int, run: str, backend: str) -> ShardResult:
    """Task: embed one shard into its own part files; skips rows an earlier attempt saved."""

    started = time.perf_counter()
    prefix = _shard_prefix(shard, run)
    folder = parts_dir(shard_plan.out)
    if not folder.is_dir():
        raise ConfigError(
            f"worker cannot see {folder}; the store's folder must be on storage "
            "shared by the client and every worker, under the same path",
            param="dask",
        )
    saved_rows, saved_failed = _saved_in_parts(folder, prefix)
    pairs = list(zip(shard_plan.records, shard_plan.keys, strict=True))
    resumed = sum(saved_rows.get(r.path) == k for r, k in pairs)
    # Failures are recorded under the stat fields of the key (stat_part).
    resumed_failed = sum(saved_failed.get(r.path) == stat_part(k) for r, k in pairs)
    todo = [
        i
        for i, (r, k) in enumerate(pairs)
        if saved_rows.get(r.path) != k and saved_failed.get(r.path) != stat_part(k)
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
    runner = _cached_runner(
        shard_plan.spec, device, shard_plan.precision, backend, shard_plan.recipe.int8_graph
    )
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
    plan: ExtractionPlan, *, client: Any = None, shard_size: int | None = None
) -> Embedded:
    """Embed ``plan.todo`` on the Dask cluster of ``plan.config.dask``, one task per shard.

    Leaves part files for :func:`~pipeline.extract.parts.finish_store` to merge (pass it the
    returned plan). Pass ``client`` to reuse a connected one.
    """
    if client is None:
        return DaskExecutor(plan.config.dask, shard_size)(plan)
    n_workers = count_workers(client)
    backend = plan.config.backend  # "auto": each worker picks as in-process runs do
    feature_dim, resolved = _probe_workers(client, plan, backend)
    plan = begin_parts(plan, feature_dim, resolved)
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
    try:
        n_embedded, n_failed = _collect_shards(futures, plan)
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
    return Embedded(plan, n_embedded, seconds)


def _probe_workers(client: Any, plan: ExtractionPlan, backend: str) -> tuple[int, str]:
    """Every worker builds its network now (and keeps it for its shards), so that the timing
    of the shards is embedding only; the first answer gives (feature_dim, resolved backend)."""
    probes = [
        client.submit(
            _probe_runner,
            plan.spec,
            plan.device,
            plan.precision,
            backend,
            plan.recipe.int8_graph,
            workers=[address],
            allow_other_workers=True,
            pure=False,
        )
        for address in sorted(client.scheduler_info().get("workers", {}))
    ]
    return client.gather(probes)[0]


def _collect_shards(futures: list[Any], plan: ExtractionPlan) -> tuple[int, int]:
    """Wait for the shard tasks as they finish, updating the store's index; (embedded, failed)."""
    from distributed import as_completed

    n_embedded = n_failed = 0
    with Progress(
        len(futures),
        unit="shards",
        desc="extract (dask)",
        enabled=plan.config.progress,
        logger=logger,
    ) as bar:
        for future in as_completed(futures):
            try:
                result: ShardResult = future.result()
            except Exception as exc:
                raise PipelineError(
                    f"a shard failed after {SHARD_RETRIES} retries ({exc}); finished "
                    "shards are saved: run the same command to resume",
                    param="dask",
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
    return n_embedded, n_failed


# -- choosing one -------------------------------------------------------------------------------


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """Hold ``<out>.lock`` for the whole run (the client process, on Dask too), and remove the
    temporary files a killed run left; another run holding it is a one-line error at once."""
    hold = contextlib.ExitStack()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        hold.enter_context(exclusive_run(out))
    except LockedError as exc:
        raise StoreError(
            f"another extract (process {exc.holder or '?'}) is writing {out}; wait for it to "
            "finish, or choose another --out",
            param="out",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot write to {out.parent} ({exc.strerror or exc})", param="out"
        ) from exc
    with hold:
        remove_stale_temps(out, parts_dir(out))
        yield


def run_extraction(config: ExtractConfig, executor: Executor | None = None) -> ExtractSummary:
    """Embed ``config.data`` into the store ``config.out``; resume or update it if it exists.

    ``executor`` defaults to :class:`DaskExecutor` when ``config.dask`` is set, else
    :class:`InProcessExecutor`. The run holds ``<out>.lock``: a second run on the same
    ``--out`` raises :class:`~pipeline.exceptions.StoreError` at once.
    """
    with _writing(Path(config.out)):
        return _run_extraction(config, executor)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: listing and planning build millions of small
    objects (records, keys, paths) and no cycles, and each full collection would walk all of
    them again (a third of a warm run over a million images). Reference counting still frees
    everything; the collector resumes as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _run_extraction(config: ExtractConfig, executor: Executor | None) -> ExtractSummary:
    started = time.perf_counter()
    with _gc_paused():
        source = open_source(config.data)
        logger.debug(
            "listed %d inputs (%.2f s)", len(source.records), time.perf_counter() - started
        )
        unchanged, known = warm_check(config, source)
        if unchanged is not None:
            logger.info("%s is up to date with %s", unchanged.out, source.description)
            return unchanged
        verified = verified_cpu_graph(config)
        plan = plan_extraction(config, source, verified, known)
        del known
        if plan.is_up_to_date():
            logger.info("%s is up to date with %s", plan.out, plan.source.description)
            return ExtractSummary(
                plan.out,
                len(plan.prev.rows),
                int(plan.prev.complete_attrs["feature_dim"]),
                len(plan.prev.failed),
                0,
                time.perf_counter() - started,
            )
    logger.debug("planned: %d to embed (%.2f s)", len(plan.todo), time.perf_counter() - started)
    if executor is None:
        executor = DaskExecutor(config.dask) if config.dask else InProcessExecutor()
    done = executor(plan, verified)
    finishing = time.perf_counter()
    with _gc_paused():
        n_rows, n_failed = finish_store(done.plan)
    logger.debug("store finished (%.2f s)", time.perf_counter() - finishing)
    summary = ExtractSummary(
        plan.out,
        n_rows,
        int(done.plan.attrs["feature_dim"]),
        n_failed,
        done.n_embedded,
        done.seconds,
        plan.n_pruned,
    )
    # DEBUG: the CLI prints summary.line() (standard output), once
    logger.debug(
        "extraction done: %s (%.1f s in all)", summary.line(), time.perf_counter() - started
    )
    return summary
