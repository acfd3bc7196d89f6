"""The ``ImageEmbedder`` cache: an HDF5 file of embeddings keyed by content hash.

Layout (readable with plain ``h5py``)::

    /keys       utf-8 (N,)   content hash of the input ("file:<sha256>" or "pixels:<sha256>")
    /features   float32 (N, D)
    attrs: format ("pipeline.ImageEmbedder cache"), format_version, feature_dim, and the
           embedding recipe's attributes (fingerprint, model, weights, preprocessing, ...)

A file at the cache path that is not such a cache (not HDF5, another HDF5 file, a damaged
cache) raises :class:`~pipeline.exceptions.StoreError` naming it: it is never overwritten nor
silently ignored. Only a cache that cannot be written (a read-only folder, a full disk) or read
(permission denied) gives one warning, and the embeddings are computed and returned uncached.

The file is never modified in place: new entries are merged into a temporary file that is
renamed over the old one (under an advisory lock where the OS has ``fcntl``), so a crash or a
concurrent writer leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from ._io import locked
from .exceptions import CacheMismatchError, StoreError
from .recipe import EmbeddingRecipe
from .store import STRING_DTYPE, check_format_version, decode_attrs, encode_attrs, h5_atomic

__all__ = ["CACHE_FORMAT", "CACHE_FORMAT_VERSION", "EmbeddingCache"]

CACHE_FORMAT = "pipeline.ImageEmbedder cache"
CACHE_FORMAT_VERSION = 1


class EmbeddingCache:
    """An HDF5 file of embeddings keyed by content hash, for one backbone fingerprint.

    Parameters
    ----------
    path : str or Path
        The cache file; created on the first :meth:`add`.
    recipe : EmbeddingRecipe, optional
        What made the embeddings. A file with another fingerprint raises
        :class:`~pipeline.exceptions.CacheMismatchError`; None reads any cache (to count rows).
    """

    def __init__(self, path: str | os.PathLike[str], recipe: EmbeddingRecipe | None = None) -> None:
        self.path = Path(path)
        self.recipe = recipe
        self._warned = False

    def _warn(self, what: str, exc: BaseException) -> None:
        """One warning line per cache object: the embeddings computed are returned all the same."""
        if not self._warned:
            self._warned = True
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            warnings.warn(f"cache {self.path}: {what} ({detail})", RuntimeWarning, stacklevel=3)

    def _check(self, found: dict[str, Any]) -> None:
        check_format_version(self.path, found, CACHE_FORMAT_VERSION, "or pass another cache= file")
        if found.get("format") != CACHE_FORMAT:
            raise StoreError(
                f"{self.path} is not an ImageEmbedder cache (no format={CACHE_FORMAT!r} "
                "attribute; a pipeline.extract store cannot be used as one); pass another cache="
            )
        mismatch = None if self.recipe is None else self.recipe.mismatch(found)
        if mismatch is not None:
            raise CacheMismatchError(
                f"cache {self.path} holds embeddings made by another backbone than this "
                f"ImageEmbedder's ({mismatch}). Pass another cache= file, or delete this one"
            )

    def _not_a_cache(self, exc: BaseException) -> StoreError:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        return StoreError(
            f"{self.path} is not a readable ImageEmbedder cache ({detail}); delete it (it is "
            "rebuilt on the next call) or pass another cache="
        )

    @contextlib.contextmanager
    def _opened(self) -> Iterator[Any]:
        """The file, open for reading. A file that can be read but is no cache, or a damaged
        one, raises :class:`StoreError`; one that cannot be read (permissions) raises OSError."""
        try:
            fh = h5py.File(self.path, "r")
        except OSError as exc:
            if not os.access(self.path, os.R_OK):
                raise
            raise self._not_a_cache(exc) from exc
        with fh:
            try:
                yield fh
            except (OSError, KeyError, ValueError) as exc:
                if isinstance(exc, StoreError):  # another backbone, a newer format, no cache
                    raise
                raise self._not_a_cache(exc) from exc

    def _read(self, fh: Any) -> tuple[np.ndarray, Any]:

        self._check(decode_attrs(fh.attrs))
        keys = fh["keys"].asstr()[...] if fh["keys"].shape[0] else np.array([], dtype=object)
        features = fh["features"]
        if features.ndim != 2 or features.shape[0] != len(keys):
            raise OSError(f"inconsistent lengths: {len(keys)} keys, features {features.shape}")
        return keys, features

    def check(self) -> None:
        """Raise if the file exists and was made by another backbone, by a newer pipeline, or
        is no cache (or a damaged one); warn if it cannot be read (permissions)."""

        if self.path.exists():
            try:
                with self._opened() as fh:
                    attrs = decode_attrs(fh.attrs)
                    self._check(attrs)
                    keys, features = fh["keys"], fh["features"]  # shapes only: no rows read
                    if features.ndim != 2 or features.shape[0] != keys.shape[0]:
                        raise OSError(
                            f"inconsistent lengths: {keys.shape[0]} keys, features {features.shape}"
                        )
            except OSError as exc:
                self._warn("cannot be read; embeddings will be computed and not cached", exc)

    def __len__(self) -> int:

        if not self.path.exists():
            return 0
        with h5py.File(self.path, "r") as fh:
            return int(fh["keys"].shape[0])

    def lookup(self, keys: Sequence[str]) -> dict[str, NDArray[np.float32]]:
        """The cached embeddings of those ``keys`` that the file holds."""

        if not self.path.exists() or not keys:
            return {}
        try:
            with self._opened() as fh:
                stored, features = self._read(fh)
                row_of = {k: r for r, k in enumerate(stored)}
                wanted = sorted({row_of[k] for k in keys if k in row_of})
                if not wanted:
                    return {}
                if len(wanted) > len(stored) // 4:
                    block = features[...][wanted]
                else:  # h5py reads increasing fancy indices
                    block = features[np.asarray(wanted)]
        except OSError as exc:  # cannot be read (permissions); no cache raises StoreError
            self._warn("cannot be read, so nothing is taken from it", exc)
            return {}
        return {
            stored[r]: np.asarray(row, dtype=np.float32)
            for r, row in zip(wanted, block, strict=True)
        }

    def add(self, keys: Sequence[str], features: NDArray[np.float32]) -> int:
        """Merge new rows into the file atomically; returns how many rows were new.

        A cache that cannot be written or read (a read-only folder, a full disk, permissions)
        is left as it is, with one warning; 0 is returned. A file that is no cache (or a
        damaged one) raises :class:`StoreError`."""

        try:
            return self._add(keys, features)
        except OSError as exc:
            self._warn("not updated; the embeddings are returned uncached", exc)
            return 0

    def _add(self, keys: Sequence[str], features: NDArray[np.float32]) -> int:
        features = np.ascontiguousarray(features, dtype=np.float32)
        with locked(self.path):  # re-read under the lock: another writer may have added rows
            old_keys, old_features = np.array([], dtype=object), None
            if self.path.exists():
                with self._opened() as fh:
                    old_keys, dset = self._read(fh)
                    old_features = dset[...]
            seen = set(old_keys.tolist())
            new = [i for i, k in enumerate(keys) if k not in seen and not seen.add(k)]
            if not new:
                return 0
            all_keys = np.concatenate([old_keys, np.asarray([keys[i] for i in new], dtype=object)])
            parts = [features[new]] if old_features is None else [old_features, features[new]]
            all_features = np.concatenate(parts)
            size = all_features.nbytes + 1024 * len(all_keys) + (64 << 10)
            with h5_atomic(self.path, size) as fh:
                fh.create_dataset("keys", data=all_keys, dtype=STRING_DTYPE)
                fh.create_dataset("features", data=all_features, dtype=np.float32)
                fh.attrs.update(
                    encode_attrs(
                        {
                            **(self.recipe.to_attrs() if self.recipe else {}),
                            "format": CACHE_FORMAT,
                            "format_version": CACHE_FORMAT_VERSION,
                            "feature_dim": int(all_features.shape[1]),
                        }
                    )
                )
        return len(new)
