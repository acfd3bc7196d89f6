"""Planning a stage-one run: what ``--out`` holds, what is left to embed, and the warm path.

A run plans against what ``--out`` already holds: rows whose input is unchanged (same path and
content key) are kept, failed inputs that did not change are not retried, and only the rest is
embedded.

Content keys. A file's key is ``size:mtime_ns:ctime_ns:inode#hash``: the stat fields git's
index compares notice a possible change without reading the file; ``hash`` (the first 128 bits
of the SHA-256 of its bytes) is taken, before decoding, only for files whose stat fields
differ from the stored row's (or that have none). A file whose bytes are a stored row's (after
a ``chmod``, a ``touch``, a move between folders) reuses that row's embedding under its new
key instead of being embedded again. A failure is recorded under the stat fields alone.
Stores written before (keys ``size:mtime_ns``) are migrated on their first update: a row whose
size and mtime still match is kept, under its new key, without embedding it again.

Finished rows are made durable every ``checkpoint_seconds`` as part files (see
:mod:`pipeline.store`), so a killed run loses at most that much work and the next run resumes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._metadata import installed_version
from .._runtime import (
    auto_batch_size,
    auto_workers,
    check_backend,
    inference_threads,
    resolve_device,
    resolve_precision,
)
from ..config import ExtractConfig
from ..engine.backbones import BackboneSpec, resolve_backbone
from ..engine.onnx import backbone_request, load_verified, no_gpu_present, request_key
from ..engine.quantize import CALIBRATION_IMAGES
from ..engine.sources import ImageSource, content_hash, is_transient, open_source
from ..engine.timm_models import is_timm
from ..exceptions import BackboneError, CacheMismatchError, ConfigError, StoreError
from ..recipe import DecodeOptions, EmbeddingRecipe, parse_views
from ..store import (
    FORMAT_VERSION,
    PathIndex,
    RowIndex,
    file_stamp,
    is_appended,
    list_parts,
    parts_dir,
    read_attrs,
    read_rows_file,
)

__all__ = [
    "ExtractSummary",
    "ExtractionPlan",
    "Inputs",
    "Previous",
    "inputs_digest",
    "plan_extraction",
    "stat_part",
    "unchanged_store",
    "verified_cpu_graph",
    "versions",
    "warm_check",
]

logger = logging.getLogger(__name__)

_HASH_SEP = "#"  # between a key's stat fields and its content hash


def stat_part(key: str) -> str:
    """A content key's stat fields (all of a key without content hash)."""
    return key.partition(_HASH_SEP)[0]


def _hash_part(key: str) -> str | None:
    sep, tail = key.partition(_HASH_SEP)[1:]
    return tail if sep else None


def _legacy_match(stored: str, current: str) -> bool:
    """A key of a store from before the stat key had ctime and inode (``size:mtime_ns``) whose
    size and mtime are still the file's: kept under the old rule, once (migration)."""
    return _HASH_SEP not in stored and stored.count(":") == 1 and current.startswith(stored + ":")


@dataclasses.dataclass(frozen=True)
class ExtractSummary:
    """What a run did: the store it left, its size, and the speed of the new work."""

    out: Path
    n_rows: int
    feature_dim: int
    n_failed: int
    n_embedded: int
    seconds: float
    n_pruned: int = 0  # rows removed because their input left --data (--prune)

    @property
    def images_per_second(self) -> float:
        return self.n_embedded / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        pruned = f"; pruned {self.n_pruned} rows of inputs not in --data" if self.n_pruned else ""
        return (
            f"{self.n_rows} rows x {self.feature_dim} dims, {self.n_failed} failed; "
            f"embedded {self.n_embedded} new in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s){pruned} -> {self.out}"
        )


@dataclasses.dataclass
class Previous:
    """What ``--out`` (and its part files) already hold: its rows (path, content key, label,
    split; one row per path) and its failed inputs."""

    rows: RowIndex = dataclasses.field(default_factory=lambda: RowIndex.of([], []))
    failed: dict[str, tuple[str, str]] = dataclasses.field(
        default_factory=dict
    )  # path -> (key, error)
    complete_attrs: dict[str, Any] | None = None  # attrs of a complete store at --out


@dataclasses.dataclass
class Inputs:
    """The current inputs, as records and as columns, set against what ``--out`` holds."""

    prev: Previous
    records: list[Any]
    keys: list[str]  # content key of each record
    rows: RowIndex  # the records as columns, with their current keys
    index: PathIndex  # over rows.paths
    prev_at: np.ndarray  # the record each row of prev.rows is (any key), -1 when none
    held: np.ndarray  # the row of prev.rows holding each record (any key), -1 when none
    todo: list[int]  # indices of records to embed
    digest: str | None = None  # inputs_digest(records, keys, class names), once computed
    # record -> row of prev.rows with the same bytes: its embedding is copied, not recomputed
    reuse: dict[int, int] = dataclasses.field(default_factory=dict)
    n_gone: int = 0  # rows of prev.rows of no current input whose bytes no input reuses


def _check_recipe(path: Path, attrs: dict[str, Any], recipe: EmbeddingRecipe) -> None:
    mismatch = recipe.mismatch(attrs)
    if mismatch is not None:
        raise CacheMismatchError(
            f"{path} holds embeddings from another backbone ({mismatch}); "
            "pass --overwrite to replace it, or choose another --out",
            param="out",
        )


def _fill_from_complete(prev: Previous, out: Path, attrs: dict[str, Any]) -> None:
    """Read a complete store's rows (without embeddings) and failures, once per run."""
    stamp = file_stamp(out)
    table = read_rows_file(out, with_features=False)
    prev.complete_attrs = attrs
    prev.rows = RowIndex(table.paths, table.keys, table.labels, table.split, stamp)
    failed = table.failed
    prev.failed = {
        p: (k, e) for p, k, e in zip(failed.paths, failed.keys, failed.errors, strict=True)
    }


def _read_previous(out: Path, recipe: EmbeddingRecipe, known: Previous | None = None) -> Previous:
    """What ``out`` holds; ``known``: what the warm check already read from it (used when
    ``out`` is still that file)."""
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
            if known is not None and known.complete_attrs and known.rows.stamp == file_stamp(out):
                prev = known
            else:
                _fill_from_complete(prev, out, attrs)
            # Left over from a run killed after its final merge; an appended store's rows
            # live there.
            if parts_dir(out).exists() and not is_appended(attrs):
                shutil.rmtree(parts_dir(out))
            return prev
    done: dict[str, str] = {}  # path -> key; a later part's row of a path wins
    for part in list_parts(out):
        table = read_rows_file(part, with_features=False)
        _check_recipe(part, table.attrs, recipe)
        done.update(zip(table.paths, table.keys, strict=True))
        prev.failed.update(
            (p, (k, e))
            for p, k, e in zip(
                table.failed.paths, table.failed.keys, table.failed.errors, strict=True
            )
        )
    prev.rows = RowIndex.of(list(done), list(done.values()))
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


def versions(backend: str | None = None, model: str = "") -> dict[str, str]:
    """Provenance: installed versions, read from package metadata (no imports)."""

    versions = {"pipeline": __version__, "python": sys.version.split()[0]}
    for package in (
        "torch",
        "torchvision",
        "h5py",
        *([backend] if backend == "onnxruntime" else []),
        *(["timm"] if is_timm(model) else []),
    ):
        versions[package] = installed_version(package)
    return versions


@dataclasses.dataclass(frozen=True)
class ExtractionPlan:
    """What a run has to do, worked out before any embedding: the resolved backbone and device,
    the current inputs with their content keys, what ``--out`` already holds, and ``todo``
    (indices into ``records``) still to embed. Picklable, so Dask tasks can take it.

    A value: the steps that follow derive new plans from it (``dataclasses.replace``), as
    :func:`~pipeline.extract.parts.begin_parts` does, and never change it."""

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
    inputs: Inputs | None = None  # records, keys and todo as planned (None in a Dask shard's copy)
    n_pruned: int = 0  # stored rows of inputs not in --data, removed by this run (--prune)

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
        inputs = self.inputs
        if inputs is None:
            inputs = _survey(self.source, self.prev, self.records, self.keys)
        return _is_current(inputs, self.source.class_names)

    def input_rows(self) -> RowIndex:
        """The records as columns: path, current content key, label, split."""
        if self.inputs is not None:
            return self.inputs.rows
        return _as_rows(self.records, self.keys)


def _is_current(inputs: Inputs, class_names: list[str]) -> bool:
    """``--out`` is complete and holds exactly the inputs, each with its current content,
    label and split (or as a failure not to retry), and nothing else."""
    prev, rows, held = inputs.prev, inputs.rows, inputs.held
    if prev.complete_attrs is None or inputs.todo or inputs.reuse:
        return False
    if prev.complete_attrs.get("class_names") != class_names:
        return False
    found = held >= 0
    if int(found.sum()) != len(prev.rows):  # a stored row of an input gone
        return False
    failed = prev.failed
    if failed and sum(p in failed for p in rows.paths.tolist()) != len(failed):
        return False  # a failure recorded for an input gone
    at = held[found]
    return np.array_equal(prev.rows.labels[at], rows.labels[found]) and bool(
        (prev.rows.split[at] == rows.split[found]).all()
    )


def _as_rows(records: list[Any], keys: list[str]) -> RowIndex:
    return RowIndex.of(
        [r.path for r in records], keys, [r.label for r in records], [r.split for r in records]
    )


def _survey(
    source: Any, prev: Previous, records: list[Any] | None = None, keys: list[str] | None = None
) -> Inputs:
    """The current inputs set against ``prev``: every input's content key, where ``prev``
    holds it, and what is left to embed or to copy. Array operations: this runs over every
    input on every run, a million of them for a large folder; files are read (hashed) only
    when their stat fields differ from the stored row's, or they have none."""
    if records is None:
        records = _unique_records(source)
    if keys is None:
        keys = _keys_of(source, records)
    rows = _as_rows(records, keys)
    index = PathIndex(rows.paths)
    prev_at = index.find(prev.rows.paths)
    held = np.full(len(rows), -1, dtype=np.int64)
    held[prev_at[prev_at >= 0]] = np.flatnonzero(prev_at >= 0)
    same = _unchanged(rows, held, prev)
    keep = np.flatnonzero(same)
    if keep.size:  # an unchanged input keeps its stored key, with the hash it was embedded from
        rows.keys[keep] = prev.rows.keys[held[keep]]
    todo = _todo(rows, same, prev)
    reuse: dict[int, int] = {}
    if todo and getattr(source, "hashes_files", False):
        todo, reuse = _hash_todo(source, rows, held, prev, todo)
    gone = prev_at < 0
    if reuse and gone.any():
        gone[list(set(reuse.values()))] = False  # their embedding moves to another input
    inputs = Inputs(prev, records, rows.keys.tolist(), rows, index, prev_at, held, todo)
    inputs.reuse, inputs.n_gone = reuse, int(np.count_nonzero(gone))
    return inputs


def _unchanged(rows: RowIndex, held: np.ndarray, prev: Previous) -> np.ndarray:
    """Which inputs ``prev`` holds a row of with the same stat fields (or the same key)."""
    same = np.zeros(len(rows), dtype=bool)
    found = np.flatnonzero(held >= 0)
    if found.size:
        stored = prev.rows.keys[held[found]]
        current = rows.keys[found]
        equal = stored == current  # keys without hash (built-in data), failures
        hashed = np.flatnonzero(~equal)
        if hashed.size:
            stat = np.asarray([stat_part(k) for k in stored[hashed].tolist()], dtype=object)
            equal[hashed] = stat == current[hashed]
        same[found] = equal
    return same


def _hash_todo(
    source: Any, rows: RowIndex, held: np.ndarray, prev: Previous, todo: list[int]
) -> tuple[list[int], dict[int, int]]:
    """Hash the files in ``todo`` (their keys get the hash); those whose bytes a row of a
    complete ``prev`` holds are copied from it instead: (still to embed, record -> row)."""
    paths = rows.paths[todo].tolist()
    failures = source.walk_failures
    hashes = _hash_files([None if p in failures else p for p in paths])
    by_hash: dict[str, int] = {}
    if prev.complete_attrs is not None:  # rows with a place in a file to copy from
        for r, key in enumerate(prev.rows.keys.tolist()):
            digest = _hash_part(key)
            if digest is not None:
                by_hash.setdefault(digest, r)
    embed, reuse = [], {}
    for i, digest in zip(todo, hashes, strict=True):
        if digest is None:  # unreadable now: decoding records why
            embed.append(i)
            continue
        current = rows.keys[i]
        rows.keys[i] = f"{current}{_HASH_SEP}{digest}"
        r = int(held[i])
        if prev.complete_attrs is not None and r >= 0:
            stored = prev.rows.keys[r]
            if _hash_part(stored) == digest or _legacy_match(stored, current):
                reuse[i] = r
                continue
        r = by_hash.get(digest, -1)
        if r >= 0:
            reuse[i] = r
        else:
            embed.append(i)
    if reuse:
        logger.info(
            "%d inputs changed status (chmod, touch, moved) but not content: their embeddings "
            "are kept",
            len(reuse),
        )
    return embed, reuse


def _hash_files(paths: list[str | None]) -> list[str | None]:
    """:func:`~pipeline.engine.sources.content_hash` of each path (None stays None), on a few
    threads (hashlib releases the GIL on large buffers)."""

    def one(path: str | None) -> str | None:
        return None if path is None else content_hash(path)

    if len(paths) < 64:
        return [one(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, paths, chunksize=64))


def _keys_of(source: Any, records: list[Any]) -> list[str]:
    if isinstance(source, ImageSource):
        return source.keys(records)
    return [source.key(r) for r in records]


def _unique_records(source: Any) -> list[Any]:
    records = list(source.records)
    if len(set([r.path for r in records])) == len(records):  # noqa: C403 (a list is faster)
        return records
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


def _todo(rows: RowIndex, same: np.ndarray, prev: Previous) -> list[int]:
    """Indices of inputs neither embedded (``same``) nor failed with their current stat
    fields; a failure whose cause was outside the file (``TRANSIENT_PREFIX``) is retried."""
    todo = np.flatnonzero(~same)
    if prev.failed and todo.size:

        def settled_failure(path: str, key: str) -> bool:
            entry = prev.failed.get(path)
            return entry is not None and entry[0] == key and not is_transient(entry[1])

        retry = [
            not settled_failure(p, k)
            for p, k in zip(rows.paths[todo], rows.keys[todo], strict=True)
        ]
        todo = todo[np.asarray(retry, dtype=bool)]
    return todo.tolist()


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
        **backbone_request(config.model, config.weights, config.preprocess),
    }


def unchanged_store(config: ExtractConfig, source: Any) -> ExtractSummary | None:
    """The warm path: a complete store made for the same request over unchanged inputs is
    reported without importing torch or rebuilding the fingerprint; None when there is work."""
    return warm_check(config, source)[0]


def warm_check(config: ExtractConfig, source: Any) -> tuple[ExtractSummary | None, Inputs | None]:
    """:func:`unchanged_store`, and what it read: when there is work, the inputs set against
    the store (pass them to :func:`plan_extraction`, so nothing is read or listed twice);
    None when it read nothing.

    A store records :func:`inputs_digest` of the inputs it was finished for; when the current
    inputs have the same digest and no failure is to be retried, the store is up to date
    without reading its rows. Otherwise (or for a store without the digest) its row columns
    are read and compared with the inputs."""
    out = Path(config.out)
    attrs = _warm_candidate(config, out)
    if attrs is None:
        return None, None
    started = time.perf_counter()
    records = _unique_records(source)
    keys = _keys_of(source, records)
    digest = inputs_digest(records, keys, source.class_names)
    if attrs.get("inputs_digest") == digest:
        failed = read_rows_file(out, with_features=False, with_rows=False).failed
        n_rows = int(attrs.get("n_rows", -1))
        if n_rows + len(failed) == len(records) and not any(map(is_transient, failed.errors)):
            seconds = time.perf_counter() - started
            logger.debug("warm check: the inputs' digest is the store's (%.2f s)", seconds)
            return ExtractSummary(
                out, n_rows, int(attrs["feature_dim"]), len(failed), 0, seconds
            ), None
    prev = Previous()
    _fill_from_complete(prev, out, attrs)
    inputs = _survey(source, prev, records, keys)
    inputs.digest = digest
    logger.debug(
        "warm check: %d inputs, %d rows held, %d to embed (%.2f s)",
        len(inputs.records),
        len(prev.rows),
        len(inputs.todo),
        time.perf_counter() - started,
    )
    if not _is_current(inputs, source.class_names):
        return None, inputs
    summary = ExtractSummary(
        out,
        len(prev.rows),
        int(attrs["feature_dim"]),
        len(prev.failed),
        0,
        time.perf_counter() - started,
    )
    return summary, None


def _warm_candidate(config: ExtractConfig, out: Path) -> dict[str, Any] | None:
    """The attributes of a complete store at ``out`` made for this very request (so its
    fingerprint need not be rebuilt), in the layout the run wants; else None."""
    if config.overwrite or not out.is_file():
        return None
    try:
        attrs = read_attrs(out)
    except StoreError:
        return None
    if not attrs.get("complete") or attrs.get("request") != _request(config):
        return None
    if is_appended(attrs) == (config.compact or not parts_dir(out).exists()):
        return None  # leftover parts of a merged store, or an appended store to compact
    return attrs


def inputs_digest(records: list[Any], keys: list[str], class_names: list[str]) -> str:
    """A digest of a run's inputs, in order: each one's path, content key, label and split,
    and the class names. :func:`~pipeline.extract.parts.finish_store` records it in the store
    (attribute ``inputs_digest``), so that a later run over the same inputs knows the store
    is current from one pass over its listing, without reading a million stored rows."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps(class_names).encode() + len(records).to_bytes(8, "little"))
    # No path, key or split holds a NUL byte: joined with NULs, the columns read back
    # unambiguously.
    text = "\0".join([*(r.path for r in records), *keys, *(r.split for r in records)])
    digest.update(text.encode("utf-8", "surrogateescape"))
    digest.update(np.asarray([r.label for r in records], dtype=np.int64).tobytes())
    return digest.hexdigest()


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
    return load_verified(
        request_key(config.model, config.weights, config.auto_weights, config.preprocess)
    )


def _stored_attrs(out: Path) -> dict[str, Any]:
    """The attributes of what ``--out`` holds (the store, else its first part), or {}."""
    for path in [out, *list_parts(out)]:
        if path.is_file():
            try:
                return read_attrs(path)
            except StoreError:
                return {}
    return {}


def calibration_crops(
    source: Any, recipe: EmbeddingRecipe, n: int = CALIBRATION_IMAGES
) -> np.ndarray:
    """The first ``n`` readable inputs in content-key order, as the graph's uint8 crops: a
    sample fixed by the images themselves, not by their names or listing order."""
    records = _unique_records(source)
    keys = _keys_of(source, records)
    crops = []
    for i in np.argsort(np.asarray(keys), kind="stable"):
        try:
            image = source.load(records[i], recipe.draft_size)
            crops.append(recipe.preprocessing.crop(image))
        except Exception as exc:  # a bad input is recorded by the run itself, not here
            logger.debug("int8 calibration skips %s (%s)", records[i].path, exc)
            continue
        if len(crops) == n:
            break
    if not crops:
        raise ConfigError("int8 calibration found no readable image in --data", param="precision")
    return np.stack(crops)


def _int8_graph(
    config: ExtractConfig, source: Any, spec: BackboneSpec, options: DecodeOptions, out: Path
) -> tuple[str, str]:
    """(int8 graph sha256, precision) of a ``--precision int8`` run: the graph ``--out`` was
    made with, so an update adds comparable rows; else a new one calibrated on this run's
    images. ``("", "fp32")``, with one warning line, where int8 is not faster on this CPU."""
    if config.backend == "torch":
        raise ConfigError(
            "int8 runs on ONNX Runtime only; leave out --backend torch", param="backend"
        )
    held = {} if config.overwrite else _stored_attrs(out)
    if held.get("precision") == "int8" and held.get("int8_graph"):
        return str(held["int8_graph"]), "int8"
    from ..engine.quantize import MIN_SPEEDUP, prepare_int8, recorded_speedup
    from ..engine.runners import make_runner

    threads = inference_threads()
    fp32 = make_runner(spec, "cpu", "fp32", "onnxruntime", threads=threads)
    if fp32.backend != "onnxruntime":
        raise BackboneError(
            f"int8 needs {spec.model}'s ONNX graph, which ONNX Runtime cannot run here (see "
            "the warning above); use --precision fp32",
            param="precision",
        )
    ratio = recorded_speedup(fp32.path)
    if ratio is None or ratio >= MIN_SPEEDUP:
        if held.get("precision"):  # a store of another precision: refused by the recipe check
            return "", "int8"
        recipe = EmbeddingRecipe(spec, "fp32", options)
        sha256, ratio = prepare_int8(fp32, lambda: calibration_crops(source, recipe), threads)
        if sha256 is not None:
            return sha256, "int8"
    logger.warning(
        "--precision int8: int8 runs %.2fx fp32 on this CPU (measured once, below %.1fx): "
        "not faster here, so this run embeds in fp32",
        ratio,
        MIN_SPEEDUP,
    )
    return "", "fp32"


def plan_extraction(
    config: ExtractConfig, source: Any = None, verified: Any = None, known: Inputs | None = None
) -> ExtractionPlan:
    """Validate every input and option, read what ``--out`` holds, and list the work left.

    ``verified`` (a :class:`~pipeline.onnx_backend.VerifiedGraph` for this request) supplies
    the resolved backbone without torch, for a CPU fp32 run. ``known``: what
    :func:`warm_check` read for ``source``, used when ``--out`` has not changed since.

    Raises :class:`~pipeline.exceptions.PipelineError` (a one-line message naming the flag or
    file) before anything is written when an input or option is unusable.
    """

    source = source if source is not None else open_source(config.data)
    check_backend(config.backend)
    if verified is not None:
        spec, device, precision = verified.spec, "cpu", "fp32"
    else:
        spec = resolve_backbone(
            config.model, config.weights, config.auto_weights, preprocess=config.preprocess
        )
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device)
    options = DecodeOptions(config.jpeg_draft, config.gpu_decode, config.crop_mode, config.views)
    _check_gpu_decode(config, str(device))
    if config.batch_size < 0:
        raise ConfigError(f"must be positive, got {config.batch_size}", param="batch_size")
    out = Path(config.out)
    _check_writable(out)
    int8_graph = ""
    if precision == "int8":
        int8_graph, precision = _int8_graph(config, source, spec, options, out)
    recipe = EmbeddingRecipe(spec, precision, options, int8_graph)
    attrs: dict[str, Any] = {
        **recipe.to_attrs(),
        "class_names": source.class_names,
        "source": source.description,
        "versions": versions(model=spec.model),
        "format_version": FORMAT_VERSION,
        "request": _request(config),
        "complete": False,
    }
    if config.overwrite:
        if out.exists():
            out.unlink()
        shutil.rmtree(parts_dir(out), ignore_errors=True)
    prev = _read_previous(out, recipe, known.prev if known is not None else None)
    inputs = known if known is not None and known.prev is prev else _survey(source, prev)
    n_pruned = _check_prune(config, out, source, inputs)
    return ExtractionPlan(
        config,
        source,
        recipe,
        str(device),
        out,
        attrs,
        inputs.records,
        inputs.keys,
        inputs.todo,
        prev,
        inputs,
        n_pruned,
    )


def _check_prune(config: ExtractConfig, out: Path, source: Any, inputs: Inputs) -> int:
    """How many stored rows this run removes (their input is not in ``--data``); refuse with
    one line, before anything is written, unless ``--prune`` is given: embeddings are never
    dropped silently (a narrower folder or a typo in ``--data`` would cost all the others)."""
    n_gone = inputs.n_gone
    if n_gone and not config.prune:
        stored = (inputs.prev.complete_attrs or {}).get("source")
        if stored is None:
            try:
                stored = read_attrs(out).get("source")
            except StoreError:
                stored = None
        raise StoreError(
            f"{out} holds {len(inputs.prev.rows)} rows, {n_gone} of them of inputs not in this "
            f"--data (stored source: {stored or 'unknown'}; this one: {source.description}); "
            "this run would remove them: pass --prune to do so, or --overwrite to start over, "
            "or choose another --out",
            param="data",
        )
    return n_gone
