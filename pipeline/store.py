"""The HDF5 feature store: atomic files, crash-safe parts, resume, and reading.

Layout of a store (the contract in ``docs/design.md`` / the README)::

    /features   float32 (N, D), chunked; row i <-> image i
    /labels     int64 (N,)  index into attrs["class_names"], -1 when unlabelled
    /paths      utf-8 (N,)  source path, or a stable id for built-in data
    /split      utf-8 (N,)  "train" | "val" | "test" | ""
    /keys       utf-8 (N,)  what identified the input's content when it was embedded
    /views/<name>/features   float32 (N, D), like /features: row i is view <name> of image i
                             (attrs["views"] lists the names; none in stores without views)
    /failed/paths, /failed/errors, /failed/keys   inputs that could not be read, and why
    attrs: class_names, model, weights, feature_dim, preprocessing, precision, fingerprint,
           versions, complete, n_rows, format_version, ...

Durability. A file is never modified in place once written: every file is written to a
temporary name in the same folder and renamed over its target, so a ``kill -9`` at any moment
leaves either the old file or the new one. While extraction runs, finished rows go to *part*
files in ``<out>.parts/``; ``<out>`` is then a small index (``complete = False``) whose datasets
are HDF5 virtual datasets over the parts, readable with plain h5py. The last step merges
everything into one self-contained file with ``complete = True`` and removes the parts.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import rows as rows_module
from ._cli import command
from ._io import atomic_path, is_locked
from .exceptions import StoreError
from .rows import RowSource, StoreRows, iter_blocks, materialize

__all__ = [
    "FORMAT_VERSION",
    "READ_BLOCK_ROWS",
    "STRING_DTYPE",
    "FailedInputs",
    "FeatureTable",
    "PathIndex",
    "RowIndex",
    "Rows",
    "atomic_path",
    "check_finite",
    "check_format_version",
    "check_not_being_written",
    "decode_attrs",
    "encode_attrs",
    "file_stamp",
    "h5_atomic",
    "is_appended",
    "list_parts",
    "load_features",
    "merge_store",
    "parts_dir",
    "read_attrs",
    "read_block_rows",
    "read_row_index",
    "read_rows_file",
    "read_store",
    "reading_store",
    "row_datasets",
    "split_rows",
    "split_table",
    "view_dataset",
    "write_index",
    "write_rows_file",
    "write_view",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STRING_DTYPE = h5py.string_dtype(encoding="utf-8")
_JSON_ATTRS = ("class_names", "versions", "preprocessing_fields", "request", "views")
# HDF5 files up to this size are built in memory and written with plain Python I/O: a full disk
# is then an ordinary OSError. (h5py failing to flush a file on disk leaves objects whose
# release crashes the process with SIGSEGV.) Larger files get a free-space check first.
IN_MEMORY_BYTES = 64 << 20
#: Rows per block when a store's rows are read into memory or checked (8192 x 1280 float32 is
#: 40 MiB): as fast as :data:`pipeline.rows.BLOCK_ROWS` (32768) blocks, measured, with a
#: quarter of the working memory (171 instead of 681 MiB reading 80k x 1280 into one matrix).
READ_BLOCK_ROWS = 8192
# An appended store maps runs of consecutive rows; past this many (removals scattered all over
# the store) reading it gets slow and the update rewrites the store instead.
MAX_VIEW_RUNS = 4096


@dataclass
class FailedInputs:
    """Inputs that could not be embedded, with the reason and the content key seen."""

    paths: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def add(self, path: str, error: str, key: str) -> None:
        self.paths.append(path)
        self.errors.append(error)
        self.keys.append(key)

    def __len__(self) -> int:
        return len(self.paths)


def view_dataset(name: str) -> str:
    """Where view ``name``'s embeddings live in a store: ``views/<name>/features``."""
    return f"views/{name}/features"


@dataclass
class Rows:
    """A block of embedded rows, aligned: ``features[i]`` (and ``views[name][i]``) belong to
    ``paths[i]``."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    split: list[str]
    keys: list[str]
    views: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class FeatureTable:
    """A whole store read into memory."""

    features: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    split: np.ndarray
    keys: np.ndarray
    class_names: list[str]
    attrs: dict[str, Any]
    failed: FailedInputs
    views: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N, D), row-aligned


@dataclass
class RowIndex:
    """The row columns of a store (or of the current inputs) without their embeddings, as
    aligned arrays: row i is ``paths[i]``, with content key ``keys[i]``, ``labels[i]`` and
    ``split[i]``. ``stamp`` is :func:`file_stamp` of the file they were read from, if any."""

    paths: np.ndarray  # object (str)
    keys: np.ndarray  # object (str)
    labels: np.ndarray  # int64
    split: np.ndarray  # object (str)
    stamp: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def of(
        cls,
        paths: Sequence[str],
        keys: Sequence[str],
        labels: Sequence[int] | None = None,
        split: Sequence[str] | None = None,
    ) -> RowIndex:
        """From lists; labels default to -1 (unlabelled) and splits to ``""``."""
        n = len(paths)
        return cls(
            _objects(paths),
            _objects(keys),
            np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64),
            _objects([""] * n if split is None else split),
        )

    def take(self, rows: np.ndarray) -> RowIndex:
        """The rows ``rows`` (indices or a boolean mask), without a stamp."""
        return RowIndex(self.paths[rows], self.keys[rows], self.labels[rows], self.split[rows])


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of ``values`` (strings stay Python strings)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


class PathIndex:
    """Where paths sit in ``paths`` (a unique list, e.g. a store's rows): :meth:`find` maps
    many paths at once. The dictionary behind it is built once, and only when the two lists
    differ: a store compared with the inputs it was made from needs none."""

    def __init__(self, paths: np.ndarray) -> None:
        self.paths = paths
        self._where: dict[str, int] | None = None

    def find(self, query: np.ndarray) -> np.ndarray:
        """Position of each of ``query`` in ``paths`` (its first one), -1 where absent."""
        n = len(self.paths)
        if len(query) == n and bool((query == self.paths).all()):
            return np.arange(n, dtype=np.int64)
        if self._where is None:
            self._where = dict(zip(self.paths[::-1].tolist(), range(n - 1, -1, -1), strict=True))
        found = map(self._where.get, query.tolist(), itertools.repeat(-1))
        return np.fromiter(found, dtype=np.int64, count=len(query))


def file_stamp(path: str | Path) -> tuple[int, int, int]:
    """(inode, size, mtime) of a file. Store and part files are never modified in place (a
    rewrite is a new inode) and a rename keeps all three, so equal stamps mean equal contents."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _check_free_space(target: Path, needed: int) -> None:
    free = shutil.disk_usage(target.parent).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device (about {needed >> 20} MiB needed, {free >> 20} MiB free)",
            str(target),
        )


@contextlib.contextmanager
def h5_atomic(target: str | Path, size_hint: int) -> Iterator[h5py.File]:
    """An HDF5 file opened for writing that replaces ``target`` atomically when the block ends.

    ``size_hint`` (bytes, an upper estimate): a file up to :data:`IN_MEMORY_BYTES` is built in
    memory and then written out; a larger one is written in place after checking that the disk
    has room for it. A full disk raises ``OSError(ENOSPC)`` naming ``target``.
    """
    target = Path(target)
    if size_hint > IN_MEMORY_BYTES:
        target.parent.mkdir(parents=True, exist_ok=True)
        _check_free_space(target, size_hint + (1 << 20))
        with atomic_path(target) as tmp, h5py.File(tmp, "w") as fh:
            yield fh
        return
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as fh:
        yield fh
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(buffer.getbuffer())
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc


def _rows_size(n: int, dim: int, n_failed: int) -> int:
    """A generous estimate of the bytes a store of ``n`` rows takes (strings ~ 1 KiB each)."""
    return n * dim * 4 + (n + n_failed) * 1024 + (64 << 10)


def parts_dir(out: str | Path) -> Path:
    """The folder holding an unfinished store's part files."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def list_parts(out: str | Path) -> list[Path]:
    """Finished part files of ``out``, base store first, then parts in the order written."""
    folder = parts_dir(out)
    if not folder.is_dir():
        return []
    base = [folder / "base.h5"] if (folder / "base.h5").exists() else []
    return base + sorted(folder.glob("part-*.h5"))


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """HDF5-storable attribute values: JSON for nested ones, ``"none"`` for None."""
    encoded = {}
    for key, value in attrs.items():
        if key in _JSON_ATTRS:
            encoded[key] = json.dumps(value)
        elif value is None:
            encoded[key] = "none"
        else:
            encoded[key] = value
    return encoded


def decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode_attrs` (bytes and numpy scalars become Python values)."""
    attrs: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in _JSON_ATTRS and isinstance(value, str):
            value = json.loads(value)
        attrs[key] = value
    return attrs


def _str_array(values: Sequence[str]) -> np.ndarray:
    """UTF-8 bytes; a file name that is not valid UTF-8 (held as ``surrogateescape`` str, as
    ``os.listdir`` gives it) is stored as its original bytes, losslessly."""
    return np.asarray(
        [v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v for v in values],
        dtype=object,
    )


def _write_failed(fh: h5py.File, failed: FailedInputs) -> None:
    grp = fh.create_group("failed")
    grp.create_dataset("paths", data=_str_array(failed.paths), dtype=STRING_DTYPE)
    grp.create_dataset("errors", data=_str_array(failed.errors), dtype=STRING_DTYPE)
    grp.create_dataset("keys", data=_str_array(failed.keys), dtype=STRING_DTYPE)


def _create_row_datasets(fh: h5py.File, n: int, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Create every row dataset of :func:`row_datasets` with ``n`` rows; float ones chunked
    (about 1 MiB) with a ``fletcher32`` checksum per chunk."""
    dsets = {}
    for name, (shape, dtype) in row_datasets(attrs).items():
        if shape:
            chunk_rows = max(1, min(n, (1 << 20) // max(1, shape[0] * dtype.itemsize)))
            dsets[name] = fh.create_dataset(
                name,
                shape=(n, *shape),
                dtype=dtype,
                chunks=(chunk_rows, *shape) if n else None,
                fletcher32=bool(n),  # a checksum per chunk: bit rot is an error, not a wrong row
            )
        else:
            dsets[name] = fh.create_dataset(name, shape=(n,), dtype=dtype)
    return dsets


def write_rows_file(
    path: str | Path, rows: Rows, failed: FailedInputs, attrs: Mapping[str, Any]
) -> None:
    """Write ``rows`` and ``failed`` as one HDF5 file, atomically."""
    features = np.ascontiguousarray(rows.features, dtype=np.float32)
    views = list(attrs.get("views") or [])
    size = _rows_size(len(rows), features.shape[1] * (1 + len(views)), len(failed))
    with h5_atomic(path, size) as fh:
        dsets = _create_row_datasets(fh, len(rows), {**attrs, "feature_dim": features.shape[1]})
        if len(rows):
            dsets["features"][...] = features
            for name in views:
                dsets[view_dataset(name)][...] = rows.views[name]
            dsets["labels"][...] = np.asarray(rows.labels, dtype=np.int64)
            dsets["paths"][...] = _str_array(rows.paths)
            dsets["split"][...] = _str_array(rows.split)
            dsets["keys"][...] = _str_array(rows.keys)
        _write_failed(fh, failed)
        fh.attrs.update(encode_attrs({**attrs, "n_rows": len(rows)}))


def check_format_version(
    path: str | Path,
    attrs: Mapping[str, Any],
    known: int = FORMAT_VERSION,
    remedy: str = "or re-extract with --overwrite",
) -> None:
    """Refuse a file written by a newer pipeline (its ``format_version`` above ``known``)."""
    found = attrs.get("format_version", 1)
    if isinstance(found, int | float) and found > known:
        raise StoreError(
            f"{path}: made by a newer pipeline (format {found} > {known}); upgrade pipeline, "
            + remedy
        )


def _unreadable(path: Path, exc: Exception) -> StoreError:
    """The one-line error for a store h5py cannot read; a failed checksum says so."""
    text = " ".join(str(exc).split())
    if "checksum" in text.lower() or "filter returned failure" in text.lower():
        return StoreError(
            f"{path}: checksum mismatch in its data (the file is damaged: {text}); re-extract "
            "with --overwrite"
        )
    return StoreError(f"{path}: not a readable HDF5 feature store ({text})")


def read_block_rows() -> int:
    """Rows per block for reading a store into memory: :data:`READ_BLOCK_ROWS`, or
    :data:`pipeline.rows.BLOCK_ROWS` when that is smaller (read at call time)."""
    return min(READ_BLOCK_ROWS, rows_module.BLOCK_ROWS)


@contextlib.contextmanager
def reading_store(path: str | Path) -> Iterator[None]:
    """Turn h5py's errors while reading ``path`` (a damaged chunk, a missing part file) into
    the one-line :class:`StoreError` :func:`read_store` gives."""
    try:
        yield
    except FileNotFoundError:
        raise StoreError(f"{path}: no such feature store") from None
    except (OSError, KeyError) as exc:
        raise _unreadable(Path(path), exc) from exc


def read_attrs(path: str | Path) -> dict[str, Any]:
    """Read only a store's attributes (cheap); a newer format is refused."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            attrs = decode_attrs(fh.attrs)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such feature store") from None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    check_format_version(path, attrs)
    return attrs


def _read_strings(ds: h5py.Dataset) -> np.ndarray:
    if not ds.shape[0]:
        return np.array([], dtype=object)
    return ds.asstr(errors="surrogateescape")[...]


def read_rows_file(
    path: str | Path, with_features: bool = True, with_rows: bool = True
) -> FeatureTable:
    """Read a store or part file (``with_features=False`` skips the big array,
    ``with_rows=False`` every row dataset: only attributes and ``/failed`` are read)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            attrs = decode_attrs(fh.attrs)
            check_format_version(path, attrs)
            if "features" not in fh:
                raise StoreError(f"{path}: not a pipeline feature store (no /features)")
            if is_appended(attrs):
                _check_sources(path, fh["features"])
            feats = fh["features"][...] if with_features else np.empty((0, 0), np.float32)
            failed = FailedInputs()
            if "failed" in fh:
                grp = fh["failed"]
                failed = FailedInputs(
                    list(_read_strings(grp["paths"])),
                    list(_read_strings(grp["errors"])),
                    list(_read_strings(grp["keys"])) if "keys" in grp else [],
                )
            labels, paths, split, keys = _read_row_columns(fh, with_rows)
            views = {
                v: fh[view_dataset(v)][...] for v in (attrs.get("views") or []) if with_features
            }
            return FeatureTable(
                features=feats,
                labels=labels,
                paths=paths,
                split=split,
                keys=keys,
                class_names=list(attrs.get("class_names", [])),
                attrs=attrs,
                failed=failed,
                views=views,
            )
    except FileNotFoundError:
        raise StoreError(f"{path}: no such feature store") from None
    except (OSError, KeyError) as exc:
        raise _unreadable(path, exc) from exc


def _read_row_columns(
    fh: h5py.File, with_rows: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """labels, paths, split, keys (all empty without ``with_rows``)."""
    if not with_rows:
        empty = np.array([], dtype=object)
        return np.array([], dtype=np.int64), empty, empty, empty
    n = fh["paths"].shape[0]
    keys = _read_strings(fh["keys"]) if "keys" in fh else np.array([""] * n, dtype=object)
    return fh["labels"][...], _read_strings(fh["paths"]), _read_strings(fh["split"]), keys


def read_row_index(path: str | Path) -> RowIndex:
    """The row columns of a store or part file (no embeddings, no ``/failed``), stamped."""
    path = Path(path)
    stamp = file_stamp(path)
    try:
        with h5py.File(path, "r") as fh:
            labels, paths, split, keys = _read_row_columns(fh, True)
    except (OSError, KeyError) as exc:
        raise _unreadable(path, exc) from exc
    return RowIndex(paths, keys, labels, split, stamp)


def _check_sources(path: Path, features: h5py.Dataset) -> None:
    """An appended store whose part files are missing would read as zeros: refuse it."""
    names = {vs.file_name for vs in features.virtual_sources()}
    missing = sorted(n for n in names if not (path.parent / n).is_file())
    if missing:
        raise StoreError(
            f"{path}: its rows live in {parts_dir(path)}/, which lacks {missing[0]}; copy "
            "that folder along with the store, or make a self-contained store with "
            f"`{command('extract')} --data YOUR_IMAGES --out {path} --compact`"
        )


def read_store(
    path: str | Path, *, require_complete: bool = True, with_features: bool = True
) -> FeatureTable:
    """Read a whole feature store; an unfinished one is an error unless allowed.
    ``with_features=False`` reads every row column but the embeddings (and views), which
    are then read as needed through :class:`~pipeline.rows.StoreRows`."""
    path = Path(path)
    table = read_rows_file(path, with_features=with_features)
    if require_complete and not table.attrs.get("complete", False):
        check_not_being_written(path)
        raise StoreError(
            f"{path}: the store is incomplete (extraction was interrupted); run the same "
            f"`{command('extract')}` command again to finish it"
        )
    return table


def check_not_being_written(path: str | Path) -> None:
    """Raise when a running extract holds the store's lock (its contents are changing)."""
    if is_locked(path):
        raise StoreError(f"{path} is being written by a running extract; wait for it to finish")


def row_datasets(attrs: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The store's row datasets: name -> (shape of one row, dtype); row i of each belongs to
    image i. The float ones are ``features`` and each view's (``attrs["views"]``), each row
    ``attrs["feature_dim"]`` wide. Stores, part files, indexes, appended stores and merges all
    use exactly this list."""
    dim = int(attrs["feature_dim"])
    floats = ["features", *(view_dataset(v) for v in attrs.get("views") or [])]
    return {
        **{name: ((dim,), np.dtype(np.float32)) for name in floats},
        "labels": ((), np.dtype(np.int64)),
        "paths": ((), STRING_DTYPE),
        "split": ((), STRING_DTYPE),
        "keys": ((), STRING_DTYPE),
    }


@functools.lru_cache(maxsize=4096)
def _part_info(path: str, stamp: tuple[int, int, int]) -> tuple[int, FailedInputs]:
    """Rows and failed inputs of one part file. Part files are never modified in place (a
    rewrite is a new inode), so ``stamp`` (inode, size, mtime) keys a valid cache: rewriting
    the index after each flush reads only the new part, not all of them again."""
    with h5py.File(path, "r") as fh:
        grp = fh["failed"]
        failed = FailedInputs(
            list(_read_strings(grp["paths"])),
            list(_read_strings(grp["errors"])),
            list(_read_strings(grp["keys"])),
        )
        return int(fh["paths"].shape[0]), failed


def _cached_part_info(path: Path) -> tuple[int, FailedInputs]:
    st = path.stat()
    return _part_info(str(path), (st.st_ino, st.st_size, st.st_mtime_ns))


def _write_virtual(
    out: Path,
    mapping: Sequence[tuple[Path, int, int]],
    failed: FailedInputs,
    attrs: Mapping[str, Any],
) -> int:
    """Write ``out`` whose row datasets are virtual over ``mapping``: (source file, first row,
    rows) runs, concatenated in order. Returns the number of rows."""
    total, dim = sum(n for _, _, n in mapping), int(attrs["feature_dim"])
    specs = row_datasets(attrs)
    layouts = {
        name: h5py.VirtualLayout((total, *shape), dtype) for name, (shape, dtype) in specs.items()
    }
    start, sources = 0, {}
    for src, first, n in mapping:
        rel = os.path.relpath(src, out.parent)
        for name, layout in layouts.items():
            key = (rel, name)
            if key not in sources:
                shape = (_cached_part_info(src)[0], *specs[name][0])
                sources[key] = h5py.VirtualSource(rel, name, shape=shape)
            layout[start : start + n] = sources[key][first : first + n]
        start += n
    size = _rows_size(0, dim, len(failed)) + 256 * len(mapping) * len(specs)
    with h5_atomic(out, size) as fh:
        for name, layout in layouts.items():
            fh.create_virtual_dataset(name, layout, fillvalue=None)
        _write_failed(fh, failed)
        fh.attrs.update(encode_attrs({**attrs, "n_rows": total}))
    return total


def write_index(out: str | Path, attrs: Mapping[str, Any]) -> None:
    """Write ``out`` as an unfinished store: virtual datasets over all its part files."""
    out = Path(out)
    mapping, failed = [], FailedInputs()
    for src in list_parts(out):
        n, part_failed = _cached_part_info(src)
        failed.paths += part_failed.paths
        failed.errors += part_failed.errors
        failed.keys += part_failed.keys
        if n:
            mapping.append((src, 0, n))
    _write_virtual(out, mapping, failed, {**attrs, "complete": False})


def is_appended(attrs: Mapping[str, Any]) -> bool:
    """True for a complete store whose rows live in its part files (see :func:`write_view`)."""
    return attrs.get("layout") == "parts"


def write_view(
    out: str | Path,
    sources: Sequence[Path],
    current: RowIndex,
    failed: FailedInputs,
    attrs: Mapping[str, Any],
    *,
    index: PathIndex | None = None,
    known: RowIndex | None = None,
    known_at: np.ndarray | None = None,
) -> list[Path] | None:
    """Write ``out`` as a complete *appended* store: virtual datasets over the rows of
    ``sources`` computed from each input's current content, nothing copied. ``current`` lists
    the inputs the store must hold, with their current content keys, labels and splits.

    What the caller already has, so that a million rows are not read or matched twice:
    ``index``, a :class:`PathIndex` of ``current.paths``; ``known``, the row columns of one of
    ``sources`` (matched by its stamp), with ``known_at``, the input each of its rows is.

    Rows keep the order of the sources (the previous store's rows first, then the new ones);
    a path's first matching row is taken. Returns the sources no row was taken from, or None
    (nothing written) when a taken row's stored label or split is not its current one, or the
    rows are scattered over more than :data:`MAX_VIEW_RUNS` runs (a slow view), so the caller
    must rewrite the store instead.
    """
    out, mapping, unused = Path(out), [], []
    index = index if index is not None else PathIndex(current.paths)
    seen = np.zeros(len(current), dtype=bool)  # inputs a row was taken for
    for src in sources:
        if known is not None and known_at is not None and known.stamp == file_stamp(src):
            rows, where = known, known_at
        else:
            rows = read_row_index(src)
            where = index.find(rows.paths)
        take, where = _rows_to_take(rows, current, where, seen)
        if not take.size:
            unused.append(src)
            continue
        if not (
            np.array_equal(rows.labels[take], current.labels[where])
            and bool((rows.split[take] == current.split[where]).all())
        ):
            return None
        seen[where] = True
        mapping += [(src, s, n) for s, _, n in _contiguous_runs(take, take)]
        if len(mapping) > MAX_VIEW_RUNS:
            return None
    if not seen.all():
        missing = current.paths[~seen][:3].tolist()
        raise StoreError(f"{out}: internal error, rows never computed for {missing}")
    _write_virtual(out, mapping, failed, {**attrs, "complete": True, "layout": "parts"})
    return unused


def _rows_to_take(
    rows: RowIndex, current: RowIndex, where: np.ndarray, seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows of a source to take, the input each one is): rows holding an input's current
    content, for inputs no earlier source had; a path twice in one source, its first row.
    ``where``: the input each row is, -1 for none."""
    ok = where >= 0
    ok[ok] = rows.keys[ok] == current.keys[where[ok]]
    ok[ok] = ~seen[where[ok]]
    take = np.flatnonzero(ok)
    if np.count_nonzero(np.bincount(where[take], minlength=1)) < take.size:  # a path twice
        _, first = np.unique(where[take], return_index=True)
        take = take[np.sort(first)]
    return take, where[take]


def _contiguous_runs(
    sources: np.ndarray, targets: np.ndarray, limit: int = 1 << 62
) -> Iterator[tuple[int, int, int]]:
    """Yield (source_start, target_start, length) for runs where both source and target
    positions are consecutive, each at most ``limit`` long."""
    if targets.size == 0:
        return
    breaks = np.flatnonzero((np.diff(targets) != 1) | (np.diff(sources) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [targets.size]])
    for s, e in zip(starts, ends, strict=True):
        for a in range(int(s), int(e), limit):
            b = min(int(e), a + limit)
            yield int(sources[a]), int(targets[a]), b - a


def merge_store(
    out: str | Path,
    sources: Sequence[Path],
    order: Mapping[str, int],
    keys: Mapping[str, str],
    labels: Mapping[str, int],
    splits: Mapping[str, str],
    failed: FailedInputs,
    attrs: Mapping[str, Any],
) -> int:
    """Merge the rows of ``sources`` whose path is in ``order`` into one complete store.

    ``order`` maps a path to its row number in the result, so the merged store lists images
    in source order whatever order they were computed in. Only rows computed from the input's
    current content (``keys``) are taken; ``labels`` and ``splits`` give current values.
    Features are copied in runs of at most 16 MiB, never a whole source in memory.
    Returns the number of rows written.
    """
    n, dim = len(order), int(attrs["feature_dim"])
    out_paths = np.empty(n, dtype=object)
    for path, i in order.items():
        out_paths[i] = path
    written = np.zeros(n, dtype=bool)
    out_keys = np.empty(n, dtype=object)
    floats = [name for name, (shape, _) in row_datasets(attrs).items() if shape]
    limit = max(1, (16 << 20) // (4 * max(1, dim)))
    size = _rows_size(n, dim * len(floats), len(failed))
    with h5_atomic(out, size) as fh:
        dsets = _create_row_datasets(fh, n, attrs)
        for src in sources:
            with h5py.File(src, "r") as part:
                part_paths = _read_strings(part["paths"])
                part_keys = _read_strings(part["keys"])
                take = [
                    j for j, p in enumerate(part_paths) if p in order and part_keys[j] == keys[p]
                ]
                if not take:
                    continue
                target = np.array([order[part_paths[j]] for j in take], dtype=np.int64)
                sort = np.argsort(target, kind="stable")
                take_sorted, target = np.asarray(take)[sort], target[sort]
                for name in floats:
                    data = part[name]
                    for s, t, length in _contiguous_runs(take_sorted, target, limit):
                        dsets[name][t : t + length] = data[s : s + length]
                written[target] = True
                out_keys[target] = part_keys[take_sorted]
        if not written.all():
            missing = out_paths[~written][:3].tolist()
            raise StoreError(f"{out}: internal error, rows never computed for {missing}")
        if n:
            dsets["labels"][...] = np.array([labels[p] for p in out_paths], dtype=np.int64)
            dsets["paths"][...] = _str_array(out_paths)
            dsets["split"][...] = np.array([splits[p] for p in out_paths], dtype=object)
            dsets["keys"][...] = out_keys
        _write_failed(fh, failed)
        fh.attrs.update(encode_attrs({**attrs, "n_rows": n, "complete": True}))
    return n


def load_features(
    path: str | Path = "artifacts/features.h5",
    *,
    test_size: float = 0.2,
    random_state: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Return ``X_train, y_train, X_test, y_test, class_names`` from a complete store.

    The store's own ``test`` rows (else ``val`` rows) are the test set when it has them, and
    every other labelled row trains; otherwise a stratified, seeded holdout of ``test_size``
    is drawn. Labels are indices into ``class_names``; unlabelled rows are left out.
    Rows come in store order. ``X_train`` and ``X_test`` are float32, each read straight from
    the store into its own array, block by block (the store is never held whole in memory:
    the peak is about their size).

    Examples
    --------
    >>> X_train, y_train, X_test, y_test, names = load_features("artifacts/features.h5")  # doctest: +SKIP
    """
    table = read_store(path, with_features=False)
    train, test, _ = split_rows(table, path, test_size=test_size, random_state=random_state)
    # store order: each block is one contiguous read, not a scan of the whole store's span
    train, test = np.sort(train), np.sort(test)
    with reading_store(path):
        X_train, X_test = (
            materialize(StoreRows(path, rows), read_block_rows()) for rows in (train, test)
        )
    check_finite(X_train, path, table.paths[train])
    check_finite(X_test, path, table.paths[test])
    return X_train, table.labels[train], X_test, table.labels[test], table.class_names


def split_rows(
    table: FeatureTable,
    path: str | Path,
    *,
    test_size: float = 0.2,
    random_state: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Store row indices of the train and test rows, as :func:`split_table` cuts them.

    Returns ``train_rows, test_rows, evaluation``: ``evaluation`` is ``"given split"`` (the
    store's ``test``, else ``val``, rows are the test rows; every other labelled row trains) or
    ``"holdout"`` (a stratified, seeded ``test_size`` share of the labelled rows).
    """
    labelled = np.flatnonzero(table.labels >= 0)
    y, split = table.labels[labelled], table.split[labelled]
    eval_name = "test" if (split == "test").any() else "val" if (split == "val").any() else None
    if eval_name is not None:
        test = split == eval_name
        return labelled[~test], labelled[test], "given split"
    from sklearn.model_selection import train_test_split

    if len(y) < 2:
        raise StoreError(f"{path}: needs at least 2 labelled rows, has {len(y)}")
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    try:
        train, test = train_test_split(
            labelled, test_size=test_size, random_state=random_state, stratify=stratify
        )
    except ValueError as exc:
        raise StoreError(
            f"{path}: cannot draw a test_size={test_size} holdout from {len(y)} labelled rows "
            f"({exc}); change test_size or extract more images"
        ) from exc
    return train, test, "holdout"


def split_table(
    table: FeatureTable,
    path: str | Path,
    *,
    test_size: float = 0.2,
    random_state: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Split a store's labelled rows as :func:`load_features` does.

    Returns ``X_train, y_train, X_test, y_test, evaluation`` where ``evaluation`` is
    ``"given split"`` (the store's ``test``, else ``val``, rows) or ``"holdout"``; the rows
    are :func:`split_rows`'.
    """
    train, test, evaluation = split_rows(
        table, path, test_size=test_size, random_state=random_state
    )
    f, y = table.features, table.labels
    return f[train], y[train], f[test], y[test], evaluation


def check_finite(
    X: FeatureTable | RowSource | np.ndarray, path: str | Path, paths: Sequence[str] | None = None
) -> None:
    """Raise a clear one-line error if any row of ``X`` (a table's features, a row source or
    an array, read block by block) holds NaN or infinity, naming up to 3 of ``paths`` (the
    rows' source paths)."""
    if isinstance(X, FeatureTable):
        X, paths = X.features, X.paths
    bad = np.zeros(len(X), dtype=bool)
    with reading_store(path):  # the first pass over a fit's rows: a damaged chunk shows here
        for start, block in iter_blocks(X, read_block_rows()):
            bad[start : start + len(block)] = ~np.isfinite(block).all(axis=1)
    if bad.any():
        examples = np.asarray(paths, dtype=object)[bad][:3].tolist() if paths is not None else []
        raise StoreError(
            f"{path}: {int(bad.sum())} row(s) hold NaN or infinite features (e.g. {examples}); "
            "re-extract with --precision fp32 and --overwrite"
        )
