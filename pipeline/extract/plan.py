"""Planning a stage-one run: what ``--out`` holds, what is left to embed, and the warm path.

A run plans against what ``--out`` already holds: rows whose input is unchanged (same path and
content key) are kept, failed inputs that did not change are not retried, and only the rest is
embedded. Finished rows are made durable every ``checkpoint_seconds`` as part files (see
:mod:`pipeline.store`), so a killed run loses at most that much work and the next run resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import __version__
from .._metadata import installed_version
from .._runtime import (
    auto_batch_size,
    auto_workers,
    check_backend,
    resolve_device,
    resolve_precision,
)
from ..config import ExtractConfig
from ..engine.backbones import BackboneSpec, resolve_backbone
from ..engine.onnx import load_verified, no_gpu_present, request_key
from ..engine.sources import is_transient, open_source
from ..exceptions import CacheMismatchError, ConfigError, StoreError
from ..recipe import DecodeOptions, EmbeddingRecipe, parse_views
from ..store import (
    FORMAT_VERSION,
    is_appended,
    list_parts,
    parts_dir,
    read_attrs,
    read_rows_file,
)

__all__ = [
    "ExtractSummary",
    "ExtractionPlan",
    "Previous",
    "plan_extraction",
    "unchanged_store",
    "verified_cpu_graph",
    "versions",
]

logger = logging.getLogger(__name__)


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
class Previous:
    """What ``--out`` (and its part files) already hold."""

    done: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> key
    failed: dict[str, tuple[str, str]] = dataclasses.field(
        default_factory=dict
    )  # path -> (key, error)
    complete_attrs: dict[str, Any] | None = None  # attrs of a complete store at --out
    labels: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)


def _check_recipe(path: Path, attrs: dict[str, Any], recipe: EmbeddingRecipe) -> None:
    mismatch = recipe.mismatch(attrs)
    if mismatch is not None:
        raise CacheMismatchError(
            f"{path} holds embeddings from another backbone ({mismatch}); "
            "pass --overwrite to replace it, or choose another --out",
            param="out",
        )


def _fill_from_complete(prev: Previous, out: Path, attrs: dict[str, Any]) -> None:

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


def _read_previous(out: Path, recipe: EmbeddingRecipe) -> Previous:

    prev = Previous()
    if out.exists():
        if out.is_dir():
            raise StoreError(
                f"{out} is a directory; give a file path such as {out}/features.h5",
                param="out",
            )
        attrs = read_attrs(out)
        _check_recipe(out, attrs, recipe)
        if attrs.get("complete"):
            _fill_from_complete(prev, out, attrs)
            # Left over from a run killed after its final merge; an appended store's rows
            # live there.
            if parts_dir(out).exists() and not is_appended(attrs):
                shutil.rmtree(parts_dir(out))
            return prev
    for part in list_parts(out):
        table = read_rows_file(part, with_features=False)
        _check_recipe(part, table.attrs, recipe)
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
        raise ConfigError(
            f"cannot write to {out.parent} ({exc.strerror or exc})", param="out"
        ) from exc


def versions(backend: str | None = None) -> dict[str, str]:
    """Provenance: installed versions, read from package metadata (no imports)."""

    versions = {"pipeline": __version__, "python": sys.version.split()[0]}
    for package in (
        "torch",
        "torchvision",
        "h5py",
        *([backend] if backend == "onnxruntime" else []),
    ):
        versions[package] = installed_version(package)
    return versions


@dataclasses.dataclass
class ExtractionPlan:
    """What a run has to do, worked out before any embedding: the resolved backbone and device,
    the current inputs with their content keys, what ``--out`` already holds, and ``todo``
    (indices into ``records``) still to embed. Picklable, so Dask tasks can take it."""

    config: ExtractConfig
    source: Any
    recipe: EmbeddingRecipe
    device: str
    out: Path
    attrs: dict[str, Any]
    records: list[Any]
    keys: list[str]
    todo: list[int]
    prev: Previous

    @property
    def spec(self) -> BackboneSpec:
        return self.recipe.spec

    @property
    def precision(self) -> str:
        return self.recipe.precision

    @property
    def batch_size(self) -> int:

        return self.config.batch_size or auto_batch_size(self.device)

    @property
    def workers(self) -> int:

        return self.config.workers if self.config.workers >= 0 else auto_workers(self.device)

    def is_up_to_date(self) -> bool:
        """True when ``--out`` is complete and matches the inputs: nothing to do at all
        (``--compact`` on an appended store is something to do)."""
        attrs = self.prev.complete_attrs
        if self.config.compact and attrs is not None and is_appended(attrs):
            return False
        return _is_current(self.prev, self.source.class_names, self.records, self.todo)


def _is_current(
    prev: Previous, class_names: list[str], records: list[Any], todo: list[int]
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


def _todo(records: list[Any], keys: list[str], prev: Previous) -> list[int]:
    """Indices of inputs neither embedded nor failed with their current content; a failure
    whose cause was outside the file (``TRANSIENT_PREFIX``) is retried."""

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

    return {
        "model": config.model,
        "weights": str(config.weights),
        "precision": config.precision,
        "device": config.device,
        "jpeg_draft": bool(config.jpeg_draft),
        "gpu_decode": bool(config.gpu_decode),
        **({"crop_mode": config.crop_mode} if config.crop_mode != "center" else {}),
        **({"views": list(parse_views(config.views))} if parse_views(config.views) else {}),
        "auto_weights": dict(sorted(config.auto_weights.items())),
        "torchvision": installed_version("torchvision"),
        "pipeline": __version__,
    }


def unchanged_store(config: ExtractConfig, source: Any) -> ExtractSummary | None:
    """The warm path: a complete store made for the same request over unchanged inputs is
    reported without importing torch or rebuilding the fingerprint; None when there is work."""

    out = Path(config.out)
    if config.overwrite or not out.is_file():
        return None
    started = time.perf_counter()
    try:
        attrs = read_attrs(out)
    except StoreError:
        return None
    if not attrs.get("complete") or attrs.get("request") != _request(config):
        return None
    if is_appended(attrs) == (config.compact or not parts_dir(out).exists()):
        return None  # leftover parts of a merged store, or an appended store to compact
    prev = Previous()
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


def _check_gpu_decode(config: ExtractConfig, device: str) -> None:
    if not config.gpu_decode:
        return
    if config.crop_mode != "center":
        raise ConfigError(
            f"has only the center crop mode on the GPU; leave out --crop-mode {config.crop_mode}",
            param="gpu_decode",
        )
    if not device.startswith("cuda"):
        raise ConfigError(f"needs a CUDA device; this run is on {device}", param="gpu_decode")
    if config.jpeg_draft:
        raise ConfigError("decodes at full size; leave out --jpeg-draft", param="gpu_decode")


def verified_cpu_graph(config: ExtractConfig) -> Any:
    """The verified ONNX graph of an earlier run of this request, when this run will use it:
    CPU (asked for, or ``auto`` on a machine without GPU devices), fp32, ONNX Runtime allowed.
    With it, extraction never imports torch. None otherwise."""

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

    source = source if source is not None else open_source(config.data)
    check_backend(config.backend)
    if verified is not None:
        spec, device, precision = verified.spec, "cpu", "fp32"
    else:
        spec = resolve_backbone(config.model, config.weights, config.auto_weights)
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device)
    options = DecodeOptions(config.jpeg_draft, config.gpu_decode, config.crop_mode, config.views)
    _check_gpu_decode(config, str(device))
    if config.batch_size < 0:
        raise ConfigError(f"must be positive, got {config.batch_size}", param="batch_size")
    out = Path(config.out)
    _check_writable(out)
    recipe = EmbeddingRecipe(spec, precision, options)
    attrs: dict[str, Any] = {
        **recipe.to_attrs(),
        "class_names": source.class_names,
        "source": source.description,
        "versions": versions(),
        "format_version": FORMAT_VERSION,
        "request": _request(config),
        "complete": False,
    }
    if config.overwrite:
        if out.exists():
            out.unlink()
        shutil.rmtree(parts_dir(out), ignore_errors=True)
    prev = _read_previous(out, recipe)
    records = _unique_records(source)
    keys = [source.key(r) for r in records]
    todo = _todo(records, keys, prev)
    return ExtractionPlan(
        config, source, recipe, str(device), out, attrs, records, keys, todo, prev
    )
