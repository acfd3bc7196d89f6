"""STAND-IN (branch fitA only) for fitB's ``pipeline/fit/outputs.py``, same API: the integrator
takes fitB's version (manifest, journal, lock, recovery). Publishes a run's outputs as a whole."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..exceptions import ConfigError

__all__ = ["check_out_dir", "publish_run"]


def check_out_dir(out: Path) -> None:
    """``ConfigError(param="out")`` when ``out`` is a file or its folder is not writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder; choose another --out", param="out")
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{existing} is not a writable folder; choose another --out", param="out")


@contextlib.contextmanager
def publish_run(out: Path) -> Iterator[Path]:
    """Yield a staging folder; on success its entries replace those of ``out``, on an
    exception it is removed and ``out`` is left as it was."""
    out = Path(out)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fit-staging-", dir=out))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for entry in sorted(staging.iterdir()):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
