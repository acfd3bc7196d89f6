"""Writing a store: begin the part files, embed rows into them, merge them into the store.

These steps lie below both executors (:mod:`pipeline.extract.executors`): an in-process run
calls them once over the whole plan, a Dask shard task calls :func:`embed_into_parts` over its
own slice with its own part-file prefix.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from .._progress import Progress
from ..engine.decoding import decode_batches
from ..engine.preprocess import make_view
from ..engine.runners import ordered_map
from ..store import (
    FailedInputs,
    RowIndex,
    Rows,
    is_appended,
    list_parts,
    merge_store,
    parts_dir,
    read_rows_file,
    write_index,
    write_rows_file,
    write_view,
)
from .plan import ExtractionPlan, inputs_digest, stat_part, versions

__all__ = ["PartWriter", "begin_parts", "embed_into_parts", "finish_store"]

logger = logging.getLogger(__name__)

# Embeddings held in memory before they go to a part file, whatever checkpoint_seconds says:
# peak memory must not grow with the number of images.
_FLUSH_BYTES = 16 << 20


def _load_record(source: Any, records: Sequence[Any], draft_size: int | None, i: int) -> Any:
    return source.load(records[i], draft_size)


def begin_parts(plan: ExtractionPlan, feature_dim: int, backend: str) -> ExtractionPlan:
    """Turn ``--out`` into an unfinished store: a complete self-contained one becomes the base
    of the update (renamed, not copied); an appended one already lives in its parts.

    Returns the plan to write with: ``plan`` with the store's attributes completed
    (``feature_dim``, ``backend``, the versions) and ``--out`` no longer complete; ``plan``
    itself is left as it was."""

    attrs = {
        **plan.attrs,
        "feature_dim": feature_dim,
        "backend": backend,
        "versions": versions(backend, plan.spec.model),
    }
    folder = parts_dir(plan.out)
    folder.mkdir(exist_ok=True)
    prev = plan.prev
    if prev.complete_attrs is not None:
        rows_file = plan.out  # an appended store's virtual rows are read through its index
        if not is_appended(prev.complete_attrs):
            rows_file = folder / "base.h5"
            os.replace(plan.out, rows_file)
        reuse = plan.inputs.reuse if plan.inputs is not None else {}
        if reuse:
            _copy_rows(dataclasses.replace(plan, attrs=attrs), rows_file, reuse, feature_dim)
        prev = dataclasses.replace(prev, complete_attrs=None)
    write_index(plan.out, attrs)
    return dataclasses.replace(plan, attrs=attrs, prev=prev)


def _copy_rows(plan: ExtractionPlan, rows_file: Any, reuse: dict[int, int], dim: int) -> None:
    """Copy the embeddings (and views) of stored rows to the inputs with the same bytes, under
    their new keys, into part files: ``reuse`` maps a record to a row of ``rows_file``."""
    writer = PartWriter(plan, dim, "part-", update_index=False)
    records = np.fromiter(reuse, dtype=np.int64, count=len(reuse))
    sources = np.fromiter(reuse.values(), dtype=np.int64, count=len(reuse))
    order = np.argsort(sources, kind="stable")
    records, sources = records[order], sources[order]
    block = max(1, _FLUSH_BYTES // (4 * dim * (1 + len(plan.recipe.views))))
    with h5py.File(rows_file, "r") as fh:
        for start in range(0, len(records), block):
            src, at = np.unique(sources[start : start + block], return_inverse=True)
            features = fh["features"][src][at]  # h5py reads increasing, unique indices
            views = {v: fh[f"views/{v}/features"][src][at] for v in plan.recipe.views}
            writer.add(features, records[start : start + block].tolist(), views)
            writer.flush()


class PartWriter:
    """Buffers embedded rows and failed inputs; each :meth:`flush` writes them as one part file.

    Part files are named ``<prefix>NNNNNN.h5`` in ``<out>.parts/``, numbered after those already
    there; with ``update_index`` the store's index is rewritten over them after each flush.
    """

    def __init__(
        self, plan: ExtractionPlan, feature_dim: int, prefix: str, update_index: bool
    ) -> None:
        self.plan, self.feature_dim, self.prefix = plan, feature_dim, prefix
        self.update_index = update_index
        self.folder = parts_dir(plan.out)
        self.part_no = _next_part_number(self.folder, prefix)
        self._reset()

    def _reset(self) -> None:
        self.features: list[np.ndarray] = []
        self.views: dict[str, list[np.ndarray]] = {v: [] for v in self.plan.recipe.views}
        self.indices: list[int] = []  # into plan.records
        self.failed = FailedInputs()
        self.last_flush = time.perf_counter()

    def add(
        self,
        features: np.ndarray,
        indices: Sequence[int],
        views: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Rows ``features[j]`` (and ``views[name][j]``) of ``plan.records[indices[j]]``."""
        self.features.append(features)
        for name, block in (views or {}).items():
            self.views[name].append(block)
        self.indices.extend(indices)

    def fail(self, i: int, error: str) -> None:
        # A failure is remembered under the stat fields: retried once the file changes.
        self.failed.add(self.plan.records[i].path, error, stat_part(self.plan.keys[i]))

    def due(self) -> bool:
        """A checkpoint is due (``checkpoint_seconds`` passed) or the buffer is full."""
        buffered = len(self.indices) * self.feature_dim * 4 * (1 + len(self.views))
        waited = time.perf_counter() - self.last_flush
        return waited >= self.plan.config.checkpoint_seconds or buffered >= _FLUSH_BYTES

    def flush(self) -> None:
        if not self.indices and not self.failed:
            return
        records = [self.plan.records[i] for i in self.indices]

        def stacked(blocks: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(blocks) if blocks else np.empty((0, self.feature_dim), np.float32)

        features = stacked(self.features)
        rows = Rows(
            features,
            np.asarray([r.label for r in records], dtype=np.int64),
            [r.path for r in records],
            [r.split for r in records],
            [self.plan.keys[i] for i in self.indices],
            {name: stacked(blocks) for name, blocks in self.views.items()},
        )
        path = self.folder / f"{self.prefix}{self.part_no:06d}.h5"
        write_rows_file(path, rows, self.failed, self.plan.attrs)
        if self.update_index:
            write_index(self.plan.out, self.plan.attrs)
        self.part_no += 1
        self._reset()


def _next_part_number(folder: Any, prefix: str) -> int:
    """One more than the highest ``<prefix>NNNNNN.h5`` there (parts an appended store no
    longer uses are deleted, so counting them could reuse a name still in use)."""
    numbers = [
        int(p.stem[len(prefix) :])
        for p in folder.glob(f"{prefix}*.h5")
        if p.stem[len(prefix) :].isdigit()
    ]
    return max(numbers, default=-1) + 1


def embed_into_parts(
    plan: ExtractionPlan,
    indices: Sequence[int],
    runner: Any,
    *,
    prefix: str = "part-",
    update_index: bool = True,
    progress: bool = False,
) -> tuple[int, int]:
    """Embed ``plan.records[i]`` for ``i`` in ``indices`` into part files named ``prefix*``.

    Rows become durable every ``checkpoint_seconds``, and every 16 MiB of embeddings. Returns
    (embedded, failed) counts.
    Dask shards call this with their own ``prefix`` and ``update_index=False``.
    """
    chosen = [plan.records[i] for i in indices]
    batches = decode_batches(
        functools.partial(_load_record, plan.source, chosen, plan.recipe.draft_size),
        len(chosen),
        plan.recipe.preprocessing,
        plan.device,
        batch_size=plan.batch_size,
        workers=plan.workers,
        paths=[r.path for r in chosen] if plan.recipe.decode.gpu_decode else None,
    )
    writer = PartWriter(plan, runner.feature_dim, prefix, update_index)
    counts = [0, 0]  # embedded, failed
    try:
        _embed_batches(batches, indices, runner, writer, counts, len(chosen) if progress else 0)
    except KeyboardInterrupt:
        writer.flush()  # rows embedded before Ctrl-C are kept
        raise KeyboardInterrupt(
            f"interrupted: {counts[0]} rows embedded by this run are saved "
            f"({len(plan.prev.rows) + counts[0]} in all); run the same command to resume"
        ) from None
    writer.flush()
    return counts[0], counts[1]


def _embed_batches(
    batches: Any,
    indices: Sequence[int],
    runner: Any,
    writer: PartWriter,
    counts: list[int],
    progress: int,
) -> None:
    """Embed each batch into ``writer``, flushing when due; ``counts`` tallies as it goes.
    ``progress``: the number of images for the progress bar (0: no bar)."""
    plan = writer.plan
    with Progress(
        progress, unit="images", desc="extract", enabled=progress > 0, logger=logger
    ) as bar:

        def embed(batch: Any) -> tuple[Any, list[int], Any, dict[str, Any]]:
            ok = [j for j, e in enumerate(batch.errors) if not e]
            if not ok:
                return batch, ok, None, {}
            images = batch.images if len(ok) == len(batch.errors) else batch.images[ok]
            views = {v: runner(make_view(v, images)) for v in plan.recipe.views}
            return batch, ok, runner(images), views

        # Written here, in order; embedded in up to runner.streams threads at once.
        for batch, ok, rows, views in ordered_map(embed, batches, getattr(runner, "streams", 1)):
            for j, error in enumerate(batch.errors):
                if error:
                    i = indices[batch.indices[j]]
                    writer.fail(i, error)
                    counts[1] += 1
                    _log_skipped(plan.records[i].path, error)
            if ok:
                writer.add(rows, [indices[batch.indices[j]] for j in ok], views)
                counts[0] += len(ok)
            bar.update(len(batch.indices))
            if writer.due():
                writer.flush()


def _log_skipped(path: str, error: str) -> None:
    """Warn about a failed input, always naming its path."""
    logger.warning("skipped %s", error if path in error else f"{path}: {error}")


def finish_store(plan: ExtractionPlan) -> tuple[int, int]:
    """Finish the store; returns (rows, failed).

    An update of a complete store (its rows are in ``base.h5``) is *appended*: ``<out>``
    becomes a small index over the rows of base and new parts, and nothing is copied. A fresh
    run, ``--compact``, or an update that changes a kept row's label or split merges base and
    parts into one self-contained store in source order.
    """
    inputs = plan.input_rows()
    good, failed = _failed_inputs(plan, inputs)
    # What the store is finished for: a later run over the same inputs is warm at once.
    digest = plan.inputs.digest if plan.inputs is not None else None
    if digest is None:  # over the stat fields, as the warm check sees the inputs
        stats = [stat_part(k) for k in plan.keys]
        digest = inputs_digest(plan.records, stats, plan.attrs["class_names"])
    attrs = {**plan.attrs, "inputs_digest": digest}
    keep = inputs.take(good) if failed else inputs
    sources = list_parts(plan.out)
    if sources and sources[0].name == "base.h5" and not plan.config.compact:
        hints = _view_hints(plan, good, bool(failed))
        unused = write_view(plan.out, sources, keep, failed, attrs, **hints)
        if unused is not None:
            for part in unused:  # no row of theirs is current any more
                part.unlink()
            return len(keep), len(failed)
        logger.info(
            "labels or splits of kept rows changed, or rows too scattered: rewriting %s", plan.out
        )
    paths = keep.paths.tolist()
    n_rows = merge_store(
        plan.out,
        sources,
        dict(zip(paths, range(len(paths)), strict=True)),
        dict(zip(paths, keep.keys.tolist(), strict=True)),
        dict(zip(paths, keep.labels.tolist(), strict=True)),
        dict(zip(paths, keep.split.tolist(), strict=True)),
        failed,
        attrs=attrs,
    )
    shutil.rmtree(parts_dir(plan.out), ignore_errors=True)
    return n_rows, len(failed)


def _view_hints(plan: ExtractionPlan, good: np.ndarray, any_failed: bool) -> dict[str, Any]:
    """What planning already worked out for :func:`~pipeline.store.write_view`: the index of
    the inputs' paths, and the rows of the previous store (``base.h5`` is that file, renamed)
    with the input each one is, renumbered over the inputs that keep a row."""
    planned = plan.inputs
    if planned is None:
        return {}
    hints: dict[str, Any] = {} if any_failed else {"index": planned.index}
    if plan.prev.rows.stamp is not None:
        at = planned.prev_at
        if any_failed:
            renumber = np.cumsum(good) - 1
            at = np.where((at >= 0) & good[at], renumber[at], -1)
        hints.update(known=plan.prev.rows, known_at=at)
    return hints


def _failed_inputs(plan: ExtractionPlan, inputs: RowIndex) -> tuple[np.ndarray, FailedInputs]:
    """(which inputs have a row, the failed ones): an input failed when the store or a part
    recorded a failure for its current content and no part holds a row of that content."""
    failed_seen = dict(plan.prev.failed)
    embedded: set[tuple[str, str]] = set()  # a retried transient failure may have succeeded
    for part in list_parts(plan.out):
        # A retry succeeds in a part written after base (a complete store, consistent in
        # itself), so base's rows need not be read here: an update costs O(new rows).
        table = read_rows_file(part, with_features=False, with_rows=part.name != "base.h5")
        embedded.update(zip(table.paths, map(stat_part, table.keys), strict=True))
        for p, k, e in zip(table.failed.paths, table.failed.keys, table.failed.errors, strict=True):
            failed_seen[p] = (k, e)
    good, failed = np.ones(len(inputs), dtype=bool), FailedInputs()
    if not failed_seen:
        return good, failed
    paths, keys = inputs.paths.tolist(), inputs.keys.tolist()
    for i in [i for i, p in enumerate(paths) if p in failed_seen]:
        key, error = failed_seen[paths[i]]
        if key == stat_part(keys[i]) and (paths[i], key) not in embedded:
            failed.add(paths[i], error, key)
            good[i] = False
    return good, failed
