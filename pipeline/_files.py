"""Atomic file output with the user's umask (the store's temp files are created 0600)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ._io import atomic_path

__all__ = ["atomic_output", "current_umask"]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success give it the mode a plainly created
    file would have (``0o666 & ~umask``) and rename it over ``target``."""
    with atomic_path(target) as tmp:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
