"""The exceptions pipeline raises; each message says what is wrong and what to do.

An error about one parameter carries its name in ``param`` (``"model"``, ``"batch_size"``);
``str(exc)`` then starts with ``"<param>: "``. The CLIs turn ``param`` into the flag
(``--batch-size``) in one place, :func:`pipeline._cli.run_cli`. Every error about a bad value
is a :class:`ValueError`, so library callers may catch that.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackboneError",
    "ConfigError",
    "BackboneMismatchError",
    "CacheMismatchError",
    "ImageDecodeError",
    "ModelFileError",
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
    """Base class of every error pipeline raises on purpose.

    Parameters
    ----------
    message : str
        What is wrong and what to do, without the parameter's name.
    param : str, optional
        The parameter (config field or function argument) at fault.
    """

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Dask) with its param
        return (_rebuild, (type(self), self.message, self.param))


def _rebuild(cls: type[PipelineError], message: str, param: str | None) -> PipelineError:
    return cls(message, param=param)


class ConfigError(PipelineError, ValueError):
    """An option or argument has a value pipeline cannot use."""


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


class ModelFileError(PipelineError, ValueError):
    """A model file is missing, unreadable, of another format version, or lacks metadata."""


class BackboneMismatchError(PipelineError, ValueError):
    """The backbone available here does not reproduce the one the model was trained on."""
