"""Stage one: embed every image of a source once, into a resumable HDF5 feature store.

``python -m pipeline.extract`` parses flags into an :class:`~pipeline.config.ExtractConfig`
and calls :func:`run_extraction`, which does the work (and is what library users call).

A run plans against what ``--out`` already holds: rows whose input is unchanged (same path and
content key) are kept, failed inputs that did not change are not retried, and only the rest is
embedded. Finished rows are made durable every ``checkpoint_seconds`` as part files (see
:mod:`pipeline.store`), so a killed run loses at most that much work and the next run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import ExtractConfig
from .exceptions import CacheMismatchError, PipelineError, StoreError

__all__ = ["ExtractSummary", "build_parser", "main", "run_extraction"]

logger = logging.getLogger(__name__)

_FINGERPRINT_FIELDS = ("model", "weights", "preprocessing", "precision")


@dataclasses.dataclass(frozen=True)
class ExtractSummary:
    """What a run did: the store it left, its size, and the speed of the new work."""

    out: Path
    n_rows: int
    feature_dim: int
    n_failed: int
    n_embedded: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.n_embedded / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.n_rows} rows x {self.feature_dim} dims, {self.n_failed} failed; "
            f"embedded {self.n_embedded} new in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s) -> {self.out}"
        )


@dataclasses.dataclass
class _Previous:
    """What ``--out`` (and its part files) already hold."""

    done: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> key
    failed: dict[str, tuple[str, str]] = dataclasses.field(
        default_factory=dict
    )  # path -> (key, error)
    complete_attrs: dict[str, Any] | None = None  # attrs of a complete store at --out
    labels: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    next_part: int = 0


def _check_fingerprint(path: Path, attrs: dict[str, Any], expected: dict[str, Any]) -> None:
    if attrs.get("fingerprint") == expected["fingerprint"]:
        return
    diffs = [
        f"{k} {attrs.get(k)!r} -> {expected[k]!r}"
        for k in _FINGERPRINT_FIELDS
        if str(attrs.get(k)) != str(expected[k])
    ] or ["backbone weights or backend"]
    raise CacheMismatchError(
        f"--out: {path} holds embeddings from another backbone ({'; '.join(diffs)}); "
        "pass --overwrite to replace it, or choose another --out"
    )


def _read_previous(out: Path, expected: dict[str, Any]) -> _Previous:
    from .store import list_parts, parts_dir, read_attrs, read_rows_file

    prev = _Previous()
    if out.exists():
        if out.is_dir():
            raise StoreError(
                f"--out: {out} is a directory; give a file path such as {out}/features.h5"
            )
        attrs = read_attrs(out)
        _check_fingerprint(out, attrs, expected)
        if attrs.get("complete"):
            table = read_rows_file(out, with_features=False)
            prev.complete_attrs = attrs
            prev.done = dict(zip(table.paths, table.keys, strict=True))
            prev.labels = {
                p: (int(lab), s)
                for p, lab, s in zip(table.paths, table.labels, table.split, strict=True)
            }
            prev.failed = {
                p: (k, e)
                for p, k, e in zip(
                    table.failed.paths, table.failed.keys, table.failed.errors, strict=True
                )
            }
            if parts_dir(out).exists():  # left over from a run killed after its final rename
                shutil.rmtree(parts_dir(out))
            return prev
    for part in list_parts(out):
        table = read_rows_file(part, with_features=False)
        _check_fingerprint(part, table.attrs, expected)
        prev.done.update(zip(table.paths, table.keys, strict=True))
        prev.failed.update(
            (p, (k, e))
            for p, k, e in zip(
                table.failed.paths, table.failed.keys, table.failed.errors, strict=True
            )
        )
        if part.name.startswith("part-"):
            prev.next_part = max(prev.next_part, int(part.stem.split("-")[1]) + 1)
    return prev


def _check_writable(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PipelineError(f"--out: cannot write to {out.parent} ({exc.strerror or exc})") from exc


def _versions() -> dict[str, str]:
    import h5py
    import torch
    import torchvision

    return {
        "pipeline": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "h5py": h5py.__version__,
        "python": sys.version.split()[0],
    }


def _load_record(source: Any, records: Sequence[Any], draft_size: int | None, i: int) -> Any:
    return source.load(records[i], draft_size)


def run_extraction(config: ExtractConfig) -> ExtractSummary:
    """Embed ``config.data`` into the store ``config.out``; resume or update it if it exists.

    Raises :class:`~pipeline.exceptions.PipelineError` (with a one-line message naming the
    flag or file) before anything is written when an input or option is unusable.
    """
    from tqdm.auto import tqdm

    from .backbones import resolve_backbone
    from .embedding import (
        auto_batch_size,
        auto_workers,
        iter_batches,
        make_runner,
        resolve_device,
        resolve_precision,
    )
    from .sources import open_source
    from .store import (
        FailedInputs,
        Rows,
        list_parts,
        merge_store,
        parts_dir,
        read_rows_file,
        write_index,
        write_rows_file,
    )

    started = time.perf_counter()
    source = open_source(config.data)
    spec = resolve_backbone(config.model, config.weights, config.auto_weights)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if config.backend not in ("auto", "torch"):
        raise PipelineError(
            f"--backend: {config.backend!r} is not available yet; use auto or torch"
        )
    if config.batch_size < 0:
        raise PipelineError(f"--batch-size: must be positive, got {config.batch_size}")
    out = Path(config.out)
    _check_writable(out)

    attrs: dict[str, Any] = {
        **spec.describe(),
        "precision": precision,
        "fingerprint": spec.fingerprint(precision),
        "class_names": source.class_names,
        "source": source.description,
        "versions": _versions(),
        "format_version": 1,
        "complete": False,
    }
    if config.overwrite:
        if out.exists():
            out.unlink()
        shutil.rmtree(parts_dir(out), ignore_errors=True)
    prev = _read_previous(out, attrs)

    records, seen = [], set()
    for record in source.records:
        if record.path in seen:
            logger.warning(
                "--data: %s is listed more than once; using its first entry", record.path
            )
            continue
        seen.add(record.path)
        records.append(record)
    keys = [source.key(r) for r in records]

    todo = [
        i
        for i, (r, k) in enumerate(zip(records, keys, strict=True))
        if prev.done.get(r.path) != k and prev.failed.get(r.path, ("",))[0] != k
    ]
    current = {r.path: (r.label, r.split) for r in records}
    unchanged = (
        prev.complete_attrs is not None
        and not todo
        and prev.complete_attrs.get("class_names") == source.class_names
        and set(prev.done) | set(prev.failed) == set(current)
        and all(prev.labels[p] == current[p] for p in prev.done)
    )
    if unchanged:
        n_failed = len(prev.failed)
        summary = ExtractSummary(
            out,
            len(prev.done),
            int(prev.complete_attrs["feature_dim"]),
            n_failed,
            0,
            time.perf_counter() - started,
        )
        logger.info("%s is up to date with %s", out, source.description)
        return summary

    batch_size = config.batch_size or auto_batch_size(device)
    workers = config.workers if config.workers >= 0 else auto_workers(device)
    runner = make_runner(spec, device, precision, config.backend)
    attrs["feature_dim"] = runner.feature_dim
    attrs["backend"] = runner.backend
    folder = parts_dir(out)
    folder.mkdir(exist_ok=True)
    if prev.complete_attrs is not None:  # keep its rows as the base of this update
        os.replace(out, folder / "base.h5")
    write_index(out, attrs)

    todo_records = [records[i] for i in todo]
    draft = None
    load = functools.partial(_load_record, source, todo_records, draft)
    failed = FailedInputs()
    buffer: dict[str, list[Any]] = {
        "features": [],
        "paths": [],
        "keys": [],
        "labels": [],
        "split": [],
    }
    part_no, last_flush = prev.next_part, time.perf_counter()

    def flush() -> None:
        nonlocal part_no, last_flush, failed
        if not buffer["paths"] and not failed:
            return
        import numpy as np

        rows = Rows(
            features=np.concatenate(buffer["features"])
            if buffer["features"]
            else np.empty((0, runner.feature_dim), np.float32),
            labels=np.asarray(buffer["labels"], dtype=np.int64),
            paths=buffer["paths"],
            split=buffer["split"],
            keys=buffer["keys"],
        )
        write_rows_file(folder / f"part-{part_no:06d}.h5", rows, failed, attrs)
        write_index(out, attrs)
        part_no += 1
        last_flush = time.perf_counter()
        failed = FailedInputs()
        for value in buffer.values():
            value.clear()

    embed_started = time.perf_counter()
    n_new_failed = 0
    batches = iter_batches(
        load,
        len(todo_records),
        spec,
        batch_size=batch_size,
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    with tqdm(
        total=len(todo_records),
        unit="img",
        disable=not config.progress,
        desc="extract",
        file=sys.stderr,
    ) as bar:
        for batch in batches:
            ok = [j for j, e in enumerate(batch.errors) if not e]
            for j, error in enumerate(batch.errors):
                if error:
                    i = todo[batch.indices[j]]
                    failed.add(records[i].path, error, keys[i])
                    n_new_failed += 1
                    logger.warning("skipped %s", error)
            if ok:
                images = batch.images if len(ok) == len(batch.errors) else batch.images[ok]
                buffer["features"].append(runner(images))
                for j in ok:
                    i = todo[batch.indices[j]]
                    buffer["paths"].append(records[i].path)
                    buffer["keys"].append(keys[i])
                    buffer["labels"].append(records[i].label)
                    buffer["split"].append(records[i].split)
            bar.update(len(batch.indices))
            if time.perf_counter() - last_flush >= config.checkpoint_seconds:
                flush()
    flush()
    embed_seconds = time.perf_counter() - embed_started

    # Merge: every current input is now either embedded (in some source) or failed.
    new_failed = FailedInputs()
    for part in list_parts(out):
        table = read_rows_file(part, with_features=False)
        for p, k, e in zip(table.failed.paths, table.failed.keys, table.failed.errors, strict=True):
            prev.failed[p] = (k, e)
    key_of = dict(zip((r.path for r in records), keys, strict=True))
    good, order = [], {}
    for r in records:
        failed_entry = prev.failed.get(r.path)
        if failed_entry is not None and failed_entry[0] == key_of[r.path]:
            new_failed.add(r.path, failed_entry[1], failed_entry[0])
        else:
            order[r.path] = len(good)
            good.append(r)
    n_rows = merge_store(
        out,
        list_parts(out),
        order,
        keys=key_of,
        labels={r.path: r.label for r in good},
        splits={r.path: r.split for r in good},
        failed=new_failed,
        attrs=attrs,
    )
    shutil.rmtree(folder, ignore_errors=True)
    summary = ExtractSummary(
        out,
        n_rows,
        runner.feature_dim,
        len(new_failed),
        len(todo_records) - n_new_failed,
        embed_seconds,
    )
    logger.info(
        "extraction done: %s (%.1f s in all)", summary.line(), time.perf_counter() - started
    )
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.extract",
        description="Embed images with a pretrained torchvision CNN into an HDF5 feature store. "
        "Defaults come from configs/default.toml ([extract]).",
    )
    add = parser.add_argument
    add("--config", help="TOML config file (default: configs/default.toml)")
    add(
        "--data",
        help="ImageFolder dir, dir with train/val/test, CSV path,label[,split], or sklearn:digits",
    )
    add("--model", help="torchvision model name, e.g. mobilenet_v2, resnet50, convnext_tiny")
    add("--weights", help="auto | DEFAULT | none | a weights name such as IMAGENET1K_V1")
    add("--out", help="output HDF5 store (default artifacts/features.h5)")
    add("--batch-size", type=int, help="images per forward pass (0: automatic)")
    add("--workers", type=int, help="decoding processes (-1: automatic, 0: in the main process)")
    add("--device", help="auto | cpu | cuda | cuda:N")
    add("--precision", help="auto | fp32 | bf16 | fp16")
    add("--backend", help="auto | torch | onnxruntime")
    add("--dask", help="run on Dask: local[:N] or tcp://HOST:PORT")
    add("--checkpoint-seconds", type=float, help="how often finished rows are made durable")
    add("--overwrite", action="store_true", default=None, help="replace an existing store at --out")
    add(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bar"
    )
    add("-v", "--verbose", action="count", default=0, help="more log output")
    add("-q", "--quiet", action="count", default=0, help="less log output")
    return parser


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.INFO - 10 * verbose + 10 * quiet
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad usage or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k not in ("config", "verbose", "quiet") and v is not None
    }
    try:
        config = ExtractConfig.from_file(args.config, **overrides)
        summary = run_extraction(config)
    except (PipelineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished rows are saved; run the same command to resume", file=sys.stderr
        )
        return 130
    print(summary.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
