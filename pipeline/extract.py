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
from ._cli import add_verbosity, setup_logging
from .config import ExtractConfig
from .exceptions import CacheMismatchError, PipelineError, StoreError

__all__ = [
    "ExtractSummary",
    "ExtractionPlan",
    "begin_parts",
    "build_parser",
    "embed_into_parts",
    "finish_store",
    "main",
    "plan_extraction",
    "run_extraction",
]

logger = logging.getLogger(__name__)

# Embeddings held in memory before they go to a part file, whatever checkpoint_seconds says:
# peak memory must not grow with the number of images.
_FLUSH_BYTES = 16 << 20

_FINGERPRINT_FIELDS = ("model", "weights", "preprocessing", "precision", "jpeg_draft", "gpu_decode")


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


def _fill_from_complete(prev: _Previous, out: Path, attrs: dict[str, Any]) -> None:
    from .store import read_rows_file

    table = read_rows_file(out, with_features=False)
    prev.complete_attrs = attrs
    prev.done = dict(zip(table.paths, table.keys, strict=True))
    prev.labels = {
        p: (int(lab), s) for p, lab, s in zip(table.paths, table.labels, table.split, strict=True)
    }
    failed = table.failed
    prev.failed = {
        p: (k, e) for p, k, e in zip(failed.paths, failed.keys, failed.errors, strict=True)
    }


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
            _fill_from_complete(prev, out, attrs)
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
    return prev


def _check_writable(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PipelineError(f"--out: cannot write to {out.parent} ({exc.strerror or exc})") from exc


def _versions(backend: str | None = None) -> dict[str, str]:
    """Provenance: installed versions, read from package metadata (no imports)."""
    from ._metadata import installed_version

    versions = {"pipeline": __version__, "python": sys.version.split()[0]}
    for package in (
        "torch",
        "torchvision",
        "h5py",
        *([backend] if backend == "onnxruntime" else []),
    ):
        versions[package] = installed_version(package)
    return versions


def _load_record(source: Any, records: Sequence[Any], draft_size: int | None, i: int) -> Any:
    return source.load(records[i], draft_size)


@dataclasses.dataclass
class ExtractionPlan:
    """What a run has to do, worked out before any embedding: the resolved backbone and device,
    the current inputs with their content keys, what ``--out`` already holds, and ``todo``
    (indices into ``records``) still to embed. Picklable, so Dask tasks can take it."""

    config: ExtractConfig
    source: Any
    spec: Any
    device: str
    precision: str
    out: Path
    attrs: dict[str, Any]
    records: list[Any]
    keys: list[str]
    todo: list[int]
    prev: _Previous

    @property
    def batch_size(self) -> int:
        from .embedding import auto_batch_size

        return self.config.batch_size or auto_batch_size(self.device)

    @property
    def workers(self) -> int:
        from .embedding import auto_workers

        return self.config.workers if self.config.workers >= 0 else auto_workers(self.device)

    def is_up_to_date(self) -> bool:
        """True when ``--out`` is complete and matches the inputs: nothing to do at all."""
        return _is_current(self.prev, self.source.class_names, self.records, self.todo)


def _is_current(
    prev: _Previous, class_names: list[str], records: list[Any], todo: list[int]
) -> bool:
    current = {r.path: (r.label, r.split) for r in records}
    return (
        prev.complete_attrs is not None
        and not todo
        and prev.complete_attrs.get("class_names") == class_names
        and set(prev.done) | set(prev.failed) == set(current)
        and all(prev.labels[p] == current[p] for p in prev.done)
    )


def _unique_records(source: Any) -> list[Any]:
    records, seen = [], set()
    for record in source.records:
        if record.path in seen:
            logger.warning(
                "--data: %s is listed more than once; using its first entry", record.path
            )
            continue
        seen.add(record.path)
        records.append(record)
    return records


def _todo(records: list[Any], keys: list[str], prev: _Previous) -> list[int]:
    """Indices of inputs neither embedded nor failed with their current content; a failure
    whose cause was outside the file (``TRANSIENT_PREFIX``) is retried."""
    from .sources import is_transient

    def settled_failure(path: str, key: str) -> bool:
        entry = prev.failed.get(path)
        return entry is not None and entry[0] == key and not is_transient(entry[1])

    return [
        i
        for i, (r, k) in enumerate(zip(records, keys, strict=True))
        if prev.done.get(r.path) != k and not settled_failure(r.path, k)
    ]


def _request(config: ExtractConfig) -> dict[str, Any]:
    """What was asked for, with the installed torchvision's version (read without importing
    torch): a complete store made for the same request needs no fingerprint recomputation."""
    from ._metadata import installed_version

    return {
        "model": config.model,
        "weights": str(config.weights),
        "precision": config.precision,
        "device": config.device,
        "jpeg_draft": bool(config.jpeg_draft),
        "gpu_decode": bool(config.gpu_decode),
        "auto_weights": dict(sorted(config.auto_weights.items())),
        "torchvision": installed_version("torchvision"),
        "pipeline": __version__,
    }


def _unchanged_store(config: ExtractConfig, source: Any) -> ExtractSummary | None:
    """The warm path: a complete store made for the same request over unchanged inputs is
    reported without importing torch or rebuilding the fingerprint; None when there is work."""
    from .store import parts_dir, read_attrs

    out = Path(config.out)
    if config.overwrite or not out.is_file() or parts_dir(out).exists():
        return None
    started = time.perf_counter()
    try:
        attrs = read_attrs(out)
    except StoreError:
        return None
    if not attrs.get("complete") or attrs.get("request") != _request(config):
        return None
    prev = _Previous()
    _fill_from_complete(prev, out, attrs)
    records = _unique_records(source)
    keys = [source.key(r) for r in records]
    if not _is_current(prev, source.class_names, records, _todo(records, keys, prev)):
        return None
    return ExtractSummary(
        out,
        len(prev.done),
        int(attrs["feature_dim"]),
        len(prev.failed),
        0,
        time.perf_counter() - started,
    )


def _make_runner(plan: ExtractionPlan, verified: Any) -> Any:
    """The verified ONNX graph when there is one, else the runner make_runner chooses (and
    records, so that the next run of this request can skip torch)."""
    from .embedding import inference_threads, make_runner
    from .onnx_backend import request_key

    threads = inference_threads(plan.workers)
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
        remember_as=request_key(config.model, config.weights, config.auto_weights),
    )


def _check_gpu_decode(config: ExtractConfig, device: str) -> None:
    if not config.gpu_decode:
        return
    if not device.startswith("cuda"):
        raise PipelineError(f"--gpu-decode: needs a CUDA device; this run is on {device}")
    if config.jpeg_draft:
        raise PipelineError("--gpu-decode: decodes at full size; leave out --jpeg-draft")


def _verified_cpu_graph(config: ExtractConfig) -> Any:
    """The verified ONNX graph of an earlier run of this request, when this run will use it:
    CPU (asked for, or ``auto`` on a machine without GPU devices), fp32, ONNX Runtime allowed.
    With it, extraction never imports torch. None otherwise."""
    from .onnx_backend import load_verified, no_gpu_present, request_key

    cpu = config.device == "cpu" or (config.device == "auto" and no_gpu_present())
    if (
        not cpu
        or config.gpu_decode
        or config.precision not in ("auto", "fp32")
        or config.backend == "torch"
    ):
        return None
    return load_verified(request_key(config.model, config.weights, config.auto_weights))


def plan_extraction(
    config: ExtractConfig, source: Any = None, verified: Any = None
) -> ExtractionPlan:
    """Validate every input and option, read what ``--out`` holds, and list the work left.

    ``verified`` (a :class:`~pipeline.onnx_backend.VerifiedGraph` for this request) supplies
    the resolved backbone without torch, for a CPU fp32 run.

    Raises :class:`~pipeline.exceptions.PipelineError` (a one-line message naming the flag or
    file) before anything is written when an input or option is unusable.
    """
    from .sources import open_source
    from .store import parts_dir

    source = source if source is not None else open_source(config.data)
    if config.backend not in ("auto", "torch", "onnxruntime"):
        raise PipelineError(f"--backend: {config.backend!r} is not one of auto, torch, onnxruntime")
    if verified is not None:
        spec, device, precision = verified.spec, "cpu", "fp32"
    else:
        from .backbones import resolve_backbone
        from .embedding import resolve_device, resolve_precision

        spec = resolve_backbone(config.model, config.weights, config.auto_weights)
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device)
    _check_gpu_decode(config, str(device))
    if config.batch_size < 0:
        raise PipelineError(f"--batch-size: must be positive, got {config.batch_size}")
    out = Path(config.out)
    _check_writable(out)
    attrs: dict[str, Any] = {
        **spec.describe(),
        "precision": precision,
        "fingerprint": spec.fingerprint(
            precision, jpeg_draft=config.jpeg_draft, gpu_decode=config.gpu_decode
        ),
        "jpeg_draft": bool(config.jpeg_draft),
        "gpu_decode": bool(config.gpu_decode),
        "class_names": source.class_names,
        "source": source.description,
        "versions": _versions(),
        "format_version": 1,
        "request": _request(config),
        "complete": False,
    }
    if config.overwrite:
        if out.exists():
            out.unlink()
        shutil.rmtree(parts_dir(out), ignore_errors=True)
    prev = _read_previous(out, attrs)
    records = _unique_records(source)
    keys = [source.key(r) for r in records]
    todo = _todo(records, keys, prev)
    return ExtractionPlan(
        config, source, spec, str(device), precision, out, attrs, records, keys, todo, prev
    )


def begin_parts(plan: ExtractionPlan, feature_dim: int, backend: str) -> None:
    """Turn ``--out`` into an unfinished store: a complete one becomes the base of the update."""
    from .store import parts_dir, write_index

    plan.attrs["feature_dim"] = feature_dim
    plan.attrs["backend"] = backend
    plan.attrs["versions"] = _versions(backend)
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
    import numpy as np
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .decoding import decode_batches
    from .store import FailedInputs, Rows, parts_dir, write_index, write_rows_file

    folder = parts_dir(plan.out)
    part_no = len(list(folder.glob(f"{prefix}*.h5")))
    chosen = [plan.records[i] for i in indices]
    draft = plan.spec.resize_size if plan.attrs.get("jpeg_draft") else None
    load = functools.partial(_load_record, plan.source, chosen, draft)
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
        paths=[r.path for r in chosen] if plan.attrs.get("gpu_decode") else None,
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
                    _log_skipped(plan.records[i].path, error)
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


def _log_skipped(path: str, error: str) -> None:
    """Warn about a failed input, always naming its path."""
    logger.warning("skipped %s", error if path in error else f"{path}: {error}")


def finish_store(plan: ExtractionPlan) -> tuple[int, int]:
    """Merge base and parts into one complete store in source order; returns (rows, failed)."""
    from .store import FailedInputs, list_parts, merge_store, parts_dir, read_rows_file

    failed_seen = dict(plan.prev.failed)
    embedded: set[tuple[str, str]] = set()  # a retried transient failure may have succeeded
    for part in list_parts(plan.out):
        table = read_rows_file(part, with_features=False)
        embedded.update(zip(table.paths, table.keys, strict=True))
        for p, k, e in zip(table.failed.paths, table.failed.keys, table.failed.errors, strict=True):
            failed_seen[p] = (k, e)
    key_of = dict(zip((r.path for r in plan.records), plan.keys, strict=True))
    failed, good, order = FailedInputs(), [], {}
    for r in plan.records:
        entry = failed_seen.get(r.path)
        if entry is not None and entry[0] == key_of[r.path] and (r.path, entry[0]) not in embedded:
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


def run_extraction(config: ExtractConfig) -> ExtractSummary:
    """Embed ``config.data`` into the store ``config.out``; resume or update it if it exists."""
    from .sources import open_source

    started = time.perf_counter()
    source = open_source(config.data)
    unchanged = _unchanged_store(config, source)
    if unchanged is not None:
        logger.info("%s is up to date with %s", unchanged.out, source.description)
        return unchanged
    verified = _verified_cpu_graph(config)
    plan = plan_extraction(config, source, verified)
    if plan.is_up_to_date():
        logger.info("%s is up to date with %s", plan.out, plan.source.description)
        return ExtractSummary(
            plan.out,
            len(plan.prev.done),
            int(plan.prev.complete_attrs["feature_dim"]),
            len(plan.prev.failed),
            0,
            time.perf_counter() - started,
        )
    if config.dask:
        from .distributed import run_dask_extraction

        n_embedded, seconds = run_dask_extraction(plan)
    else:
        runner = _make_runner(plan, verified)
        begin_parts(plan, runner.feature_dim, runner.backend)
        embed_started = time.perf_counter()
        n_embedded, _ = embed_into_parts(plan, plan.todo, runner, progress=config.progress)
        seconds = time.perf_counter() - embed_started
    n_rows, n_failed = finish_store(plan)
    summary = ExtractSummary(
        plan.out, n_rows, int(plan.attrs["feature_dim"]), n_failed, n_embedded, seconds
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
    add(
        "--workers",
        type=int,
        help="decoding threads on CPU, processes with a GPU (-1: automatic, 0: main thread)",
    )
    add("--device", help="auto | cpu | cuda | cuda:N")
    add("--precision", help="auto | fp32 | bf16 | fp16")
    add("--backend", help="auto | torch | onnxruntime")
    add("--dask", help="run on Dask: local[:N] or tcp://HOST:PORT")
    add("--checkpoint-seconds", type=float, help="how often finished rows are made durable")
    add(
        "--jpeg-draft",
        action="store_true",
        default=None,
        help="decode large JPEGs at a reduced scale (faster; part of the fingerprint)",
    )
    add(
        "--gpu-decode",
        action="store_true",
        default=None,
        help="decode JPEG batches on the GPU with torchvision.io.decode_jpeg (nvJPEG), resize "
        "and crop there (CUDA runs; part of the fingerprint)",
    )
    add("--overwrite", action="store_true", default=None, help="replace an existing store at --out")
    add(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bar"
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad usage or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args)
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
    return _exit_code(summary)


def _exit_code(summary: ExtractSummary) -> int:
    """0, or 2 with a one-line error when inputs were given and every one of them failed
    (the store, with its ``/failed`` records, is written all the same)."""
    if summary.n_rows == 0 and summary.n_failed > 0:
        print(
            f"error: --data: every input failed ({summary.n_failed}); the reasons are in "
            f"/failed of {summary.out}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
