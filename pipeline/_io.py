"""Atomic file writes (every artifact is written beside its target and renamed over it), locks
for files that several processes update (:mod:`filelock`), and removal of the temporary files
a killed run left behind."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import filelock

__all__ = ["atomic_path", "exclusive_run", "is_locked", "lock_path", "locked", "remove_stale_temps"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    The temporary file is created with mode 0o666 less the umask, as ``open(target, "w")``
    would create it (``tempfile.mkstemp`` would leave it 0o600, unreadable to a team or to
    Dask workers running as other users). Writers that reopen the path (h5py, joblib,
    matplotlib) keep that mode. Missing parent folders are created with the umask too.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def lock_path(path: str | Path) -> Path:
    """The lock file of ``path``: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the exclusive lock ``<path>.lock``, waiting for another holder to let go."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(lock_path(path)):
        yield


class LockedError(OSError):
    """Another process holds the lock; ``holder`` is its recorded process id (or "")."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by process {holder or '?'}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def exclusive_run(path: str | Path) -> Iterator[None]:
    """Hold ``<path>.lock`` for a whole run without waiting; raise :class:`LockedError` at once
    when another process holds it. The holder's process id is written into the lock file,
    which is removed when the run ends (successful or not; only a killed run leaves it, and the
    next run removes it)."""
    lock_file = lock_path(path)
    lock = filelock.FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockedError(lock_file, _holder(lock_file)) from None
    try:
        with contextlib.suppress(OSError):  # flock is per open file: this write keeps it
            lock_file.write_text(f"{os.getpid()}\n")
        yield
    finally:
        # Removed while still held, so no lock file is left beside the user's files: a
        # waiter that opened it before finds it unlinked once it gets the lock (filelock
        # checks st_nlink) and tries again on a new file.
        with contextlib.suppress(OSError):
            lock_file.unlink()
        lock.release()


def _holder(lock_file: Path) -> str:
    try:
        return lock_file.read_text().strip()
    except OSError:
        return ""


def is_locked(path: str | Path) -> bool:
    """Whether a live process holds ``<path>.lock`` (False when there is none, or it is free)."""
    lock_file = lock_path(path)
    if not lock_file.exists():
        return False
    lock = filelock.FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return True
    except OSError:  # e.g. a read-only folder: nobody can be writing there either
        return False
    lock.release()
    return False


def remove_stale_temps(target: str | Path, folder: str | Path | None = None) -> int:
    """Remove temporary files of ``target`` (``.<name>.*.tmp`` beside it) and every ``.*.tmp``
    in ``folder``, left by a killed run. Call it only while holding the target's lock."""
    target = Path(target)
    stale = list(target.parent.glob(f".{target.name}.*.tmp"))
    if folder is not None and Path(folder).is_dir():
        stale += Path(folder).glob(".*.tmp")
    removed = 0
    for tmp in stale:
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    if removed:
        logger.info(
            "removed %d temporary file(s) left by an interrupted run of %s", removed, target
        )
    return removed
