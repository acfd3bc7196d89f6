"""Publishing a ``fit`` run's outputs as a whole: the output folder always holds one complete run.

The output folder (``--out``, by default ``artifacts/``) is shared: it also holds the feature
store (``features.h5``, its ``.lock`` and ``.parts/``) and perhaps files of the user's. So the
folder is never swapped as a whole; ``fit`` owns only the entries it published, listed in the
manifest ``<out>/.fit-run.json``. A folder written before the manifest existed is read as owning
the names fit has always written (:data:`LEGACY_PATTERNS`). Nothing else in ``out`` is touched.

:func:`publish_run` yields a staging folder ``<out>/.fit-staging-<random>/`` (same filesystem,
so every move is a rename) into which the run writes everything. An exception (Ctrl-C
included) removes the staging folder and leaves the previous run as it was. On success the
commit runs these steps:

1. write the journal ``<out>/.fit-commit.json`` (atomically) naming the staging folder, the
   folder ``<out>/.fit-retired-<random>/``, the entries to retire (the previous manifest's, plus
   any new name already present) and the new entries;
2. move every entry to retire into the retired folder;
3. rename every new entry from the staging folder into ``out``;
4. write the new manifest (atomically);
5. delete the journal, then the retired and staging folders.

**Recovery rolls forward.** A run killed during the commit leaves the journal; the next
:func:`publish_run` (or :func:`recover`) finds it and replays steps 2-5, each of which is
idempotent (an entry already moved is skipped), so the folder ends as the new run, never a
mix. Killed before the journal exists, the old run is untouched and the stale staging folder
is removed. A killed run's ``.fit-staging-*``/``.fit-retired-*`` folders and temporary files
are removed only while holding ``<out>/.fit.lock``, which :func:`publish_run` holds throughout:
a second ``fit`` into the same folder fails at once with one line.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._io import LockedError, atomic_path, exclusive_run, remove_stale_temps
from ..exceptions import ConfigError

__all__ = [
    "JOURNAL",
    "LEGACY_PATTERNS",
    "MANIFEST",
    "check_out_dir",
    "owned_names",
    "publish_run",
    "recover",
]

logger = logging.getLogger(__name__)

MANIFEST = ".fit-run.json"
JOURNAL = ".fit-commit.json"
STAGING_PREFIX = ".fit-staging-"
RETIRED_PREFIX = ".fit-retired-"
#: ``<out>/.fit.lock`` is the lock file of this (never created) path.
_LOCK_NAME = ".fit"
#: What fit wrote before the manifest existed (folders written by older versions).
LEGACY_PATTERNS = (
    "report.json",
    "report.md",
    "report.html",
    "predictions.csv",
    "predictions.npz",
    "comparison.png",
    "confusion_*.png",
    "confusion_*.csv",
    "label_issues.csv",
    "duplicates.csv",
    "models",
    "thumbs",
)


def check_out_dir(out: Path) -> None:
    """Fail early, in one line (``ConfigError`` with ``param="out"``), when ``fit`` could not
    publish into ``out``: it is a file, it (or the folder it would be created in) is not a
    writable folder. Creates nothing; call it before any training."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder; choose another --out", param="out")
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create {out}: {existing} is not a folder", param="out")
    probe = existing / f".fit-probe-{secrets.token_hex(6)}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise ConfigError(
            f"cannot write to {existing} ({exc.strerror or exc}); choose another --out",
            param="out",
        ) from None


def owned_names(out: Path) -> list[str]:
    """The entries of ``out`` the last published run owns: the manifest's names, or for a
    folder without manifest those matching :data:`LEGACY_PATTERNS`."""
    out = Path(out)
    manifest = out / MANIFEST
    if manifest.exists():
        return list(_read_json(manifest)["names"])
    if not out.is_dir():
        return []
    return sorted(
        entry.name
        for entry in out.iterdir()
        if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in LEGACY_PATTERNS)
    )


@contextlib.contextmanager
def publish_run(out: Path) -> Iterator[Path]:
    """Yield a staging folder for a run's outputs; on success replace the previous run in
    ``out`` by its entries (see the module docstring), on an exception remove it.

    Holds ``<out>/.fit.lock`` throughout; another fit holding it raises ``ConfigError``
    (``param="out"``) at once. A commit interrupted by an earlier kill is finished first.
    """
    out = Path(out)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    with _holding_lock(out):
        recover(out)
        staging = out / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _commit(out, staging)


@contextlib.contextmanager
def _holding_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.fit.lock``; another holder is a one-line ``ConfigError``."""
    hold = contextlib.ExitStack()
    try:
        hold.enter_context(exclusive_run(out / _LOCK_NAME))
    except LockedError as exc:
        raise ConfigError(
            f"another fit (process {exc.holder or '?'}) is writing to {out}; wait for it to "
            "finish, or choose another --out",
            param="out",
        ) from None
    with hold:
        yield


def _commit(out: Path, staging: Path) -> None:
    """Replace the previous run's entries in ``out`` by those of ``staging`` (steps 1-5)."""
    new = sorted(e.name for e in staging.iterdir() if not e.name.startswith("."))
    old = owned_names(out)
    retire = sorted(set(old) | {name for name in new if _exists(out / name)})
    journal = {
        "staging": staging.name,
        "retired": f"{RETIRED_PREFIX}{secrets.token_hex(6)}",
        "retire": retire,
        "publish": new,
    }
    _write_json(out / JOURNAL, journal)
    _replay(out, journal)
    logger.info("published %d output(s) to %s (replacing %d)", len(new), out, len(retire))


def _replay(out: Path, journal: dict[str, Any]) -> None:
    """Steps 2-5 of the commit; idempotent, so a journal left by a kill can be replayed."""
    staging, retired = out / journal["staging"], out / journal["retired"]
    retired.mkdir(exist_ok=True)
    publish = set(journal["publish"])
    for name in journal["retire"]:
        already_new = name in publish and not _exists(staging / name)
        if _exists(out / name) and not already_new:
            os.replace(out / name, retired / name)
    for name in journal["publish"]:
        if _exists(staging / name):
            os.replace(staging / name, out / name)
    names = [name for name in journal["publish"] if _exists(out / name)]
    _write_json(out / MANIFEST, {"version": 1, "names": names})
    (out / JOURNAL).unlink()
    shutil.rmtree(retired, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def recover(out: Path) -> None:
    """Finish a commit a kill interrupted (roll forward from ``<out>/.fit-commit.json``) and
    remove a killed run's staging/retired folders and temporary files. Call it only while
    holding ``<out>/.fit.lock`` (:func:`publish_run` does)."""
    out = Path(out)
    remove_stale_temps(out / JOURNAL)
    remove_stale_temps(out / MANIFEST)
    journal_path = out / JOURNAL
    if journal_path.exists():
        logger.warning("finishing the publication of a fit run interrupted in %s", out)
        _replay(out, _read_json(journal_path))
    stale = [e for e in out.glob(".fit-*-*") if e.name.startswith((STAGING_PREFIX, RETIRED_PREFIX))]
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True)
    if stale:
        logger.info("removed %d folder(s) left by an interrupted fit in %s", len(stale), out)


def _exists(path: Path) -> bool:
    """Whether ``path`` exists, a dangling symbolic link included."""
    return os.path.lexists(path)


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
