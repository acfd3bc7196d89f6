"""The exceptions pipeline raises; each message says what is wrong and what to do."""

from __future__ import annotations

__all__ = [
    "BackboneError",
    "CacheMismatchError",
    "ImageDecodeError",
    "PipelineError",
    "SourceError",
    "StoreError",
    "TRANSIENT_PREFIX",
]

# A recorded input failure whose cause is outside the file (permission denied, I/O error, out
# of memory) starts with this: it is retried on the next run, while content failures are
# remembered until the file changes.
TRANSIENT_PREFIX = "transient: "


class PipelineError(Exception):
    """Base class of every error pipeline raises on purpose."""


class SourceError(PipelineError, ValueError):
    """The image source (folder, CSV manifest or built-in name) cannot be used."""


class ImageDecodeError(PipelineError, ValueError):
    """One image could not be read or decoded."""


class StoreError(PipelineError, ValueError):
    """An HDF5 feature store is missing, unreadable, incomplete or unusable."""


class CacheMismatchError(StoreError):
    """A store or cache was made by another backbone, weights, preprocessing or precision."""


class BackboneError(PipelineError, ValueError):
    """The model or weights name is unknown, or the weights cannot be loaded."""
