"""Writing a store: begin the part files, embed rows into them, merge them into the store.

These steps lie below both executors (:mod:`pipeline.extract.executors`): an in-process run
calls them once over the whole plan, a Dask shard task calls :func:`embed_into_parts` over its
own slice with its own part-file prefix.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..engine.decoding import decode_batches
from ..store import (
    FailedInputs,
    Rows,
    list_parts,
    merge_store,
    parts_dir,
    read_rows_file,
    write_index,
    write_rows_file,
)
from .plan import ExtractionPlan, versions

__all__ = ["begin_parts", "embed_into_parts", "finish_store"]

logger = logging.getLogger(__name__)

# Embeddings held in memory before they go to a part file, whatever checkpoint_seconds says:
# peak memory must not grow with the number of images.
_FLUSH_BYTES = 16 << 20


def _load_record(source: Any, records: Sequence[Any], draft_size: int | None, i: int) -> Any:
    return source.load(records[i], draft_size)


def begin_parts(plan: ExtractionPlan, feature_dim: int, backend: str) -> None:
    """Turn ``--out`` into an unfinished store: a complete one becomes the base of the update."""

    plan.attrs["feature_dim"] = feature_dim
    plan.attrs["backend"] = backend
    plan.attrs["versions"] = versions(backend)
    folder = parts_dir(plan.out)
    folder.mkdir(exist_ok=True)
    if plan.prev.complete_attrs is not None:
        os.replace(plan.out, folder / "base.h5")
        plan.prev.complete_attrs = None
    write_index(plan.out, plan.attrs)


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

    folder = parts_dir(plan.out)
    part_no = len(list(folder.glob(f"{prefix}*.h5")))
    chosen = [plan.records[i] for i in indices]
    load = functools.partial(_load_record, plan.source, chosen, plan.recipe.draft_size)
    failed = FailedInputs()
    buffer: dict[str, list[Any]] = {k: [] for k in ("features", "paths", "keys", "labels", "split")}
    last_flush, n_embedded, n_failed = time.perf_counter(), 0, 0

    def flush() -> None:
        nonlocal part_no, last_flush, failed
        if not buffer["paths"] and not failed:
            return
        features = (
            np.concatenate(buffer["features"])
            if buffer["features"]
            else np.empty((0, runner.feature_dim), np.float32)
        )
        rows = Rows(
            features,
            np.asarray(buffer["labels"], dtype=np.int64),
            buffer["paths"],
            buffer["split"],
            buffer["keys"],
        )
        write_rows_file(folder / f"{prefix}{part_no:06d}.h5", rows, failed, plan.attrs)
        if update_index:
            write_index(plan.out, plan.attrs)
        part_no += 1
        last_flush = time.perf_counter()
        failed = FailedInputs()
        for value in buffer.values():
            value.clear()

    batches = decode_batches(
        load,
        len(chosen),
        plan.spec.preprocessing,
        plan.device,
        batch_size=plan.batch_size,
        workers=plan.workers,
        paths=[r.path for r in chosen] if plan.recipe.decode.gpu_decode else None,
    )
    with (
        logging_redirect_tqdm(),
        tqdm(
            total=len(chosen), unit="img", disable=not progress, desc="extract", file=sys.stderr
        ) as bar,
    ):
        for batch in batches:
            ok = [j for j, e in enumerate(batch.errors) if not e]
            for j, error in enumerate(batch.errors):
                if error:
                    i = indices[batch.indices[j]]
                    failed.add(plan.records[i].path, error, plan.keys[i])
                    n_failed += 1
                    logger.warning("skipped %s", error)
            if ok:
                images = batch.images if len(ok) == len(batch.errors) else batch.images[ok]
                buffer["features"].append(runner(images))
                for j in ok:
                    i = indices[batch.indices[j]]
                    record = plan.records[i]
                    buffer["paths"].append(record.path)
                    buffer["keys"].append(plan.keys[i])
                    buffer["labels"].append(record.label)
                    buffer["split"].append(record.split)
                n_embedded += len(ok)
            bar.update(len(batch.indices))
            buffered = len(buffer["paths"]) * runner.feature_dim * 4
            if (
                time.perf_counter() - last_flush >= plan.config.checkpoint_seconds
                or buffered >= _FLUSH_BYTES
            ):
                flush()
    flush()
    return n_embedded, n_failed


def finish_store(plan: ExtractionPlan) -> tuple[int, int]:
    """Merge base and parts into one complete store in source order; returns (rows, failed)."""

    failed_seen = dict(plan.prev.failed)
    for part in list_parts(plan.out):
        table = read_rows_file(part, with_features=False)
        for p, k, e in zip(table.failed.paths, table.failed.keys, table.failed.errors, strict=True):
            failed_seen[p] = (k, e)
    key_of = dict(zip((r.path for r in plan.records), plan.keys, strict=True))
    failed, good, order = FailedInputs(), [], {}
    for r in plan.records:
        entry = failed_seen.get(r.path)
        if entry is not None and entry[0] == key_of[r.path]:
            failed.add(r.path, entry[1], entry[0])
        else:
            order[r.path] = len(good)
            good.append(r)
    n_rows = merge_store(
        plan.out,
        list_parts(plan.out),
        order,
        keys=key_of,
        labels={r.path: r.label for r in good},
        splits={r.path: r.split for r in good},
        failed=failed,
        attrs=plan.attrs,
    )
    shutil.rmtree(parts_dir(plan.out), ignore_errors=True)
    return n_rows, len(failed)
