"""Shared CLI plumbing: the argument parser (one-line usage errors, ``--version``), verbosity
flags, logging set-up (only CLIs configure logging), and :func:`run_cli`, the one place where
library errors become a one-line message and exit code 2; :func:`run_command` is a CLI's
``main``: parse, set up logging, run."""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from . import __version__
from .exceptions import PipelineError

__all__ = [
    "ArgumentParser",
    "UsageError",
    "add_verbosity",
    "error_line",
    "run_cli",
    "run_command",
    "setup_logging",
    "validated",
]

#: Every log line: time, level, logger name, message.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(ValueError):
    """Bad command-line usage (an unknown flag, a value outside a flag's choices)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with ``--version``, whose errors are :class:`UsageError` (so that
    :func:`run_cli` prints them as one line, exit code 2) instead of usage text and an exit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"pipeline {__version__}")

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --precision: invalid choice: ..."; the CLIs say "--precision: ..."
        if message.startswith("argument "):
            message = message[len("argument ") :]
        raise UsageError(f"{message} (see {self.prog} --help)")


def validated(check: Callable[[str], Any], metavar: str | None = None) -> Callable[[str], str]:
    """An argparse ``type=`` that runs a library validator on the value (a
    :class:`PipelineError` becomes argparse's error naming the flag) and keeps the string."""

    def convert(value: str) -> str:
        try:
            check(value)
        except PipelineError as exc:
            raise argparse.ArgumentTypeError(exc.message) from exc
        return value

    convert.__name__ = metavar or check.__name__
    return convert


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")


def setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr, each line with time and logger name; ``-v``/``-q`` set the level of the
    ``pipeline`` loggers only (INFO by default), third-party libraries stay at WARNING (or
    quieter with ``-q``). Nothing is changed when logging is already configured (the CLI called
    from an application, or from pytest)."""
    root = logging.getLogger()
    if root.handlers:
        return
    level = logging.INFO - 10 * args.verbose + 10 * args.quiet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("pipeline").setLevel(level)
    logging.captureWarnings(True)  # warnings.warn from libraries: same format, on the log


def error_line(exc: BaseException, flags: Mapping[str, str] | None = None) -> str:
    """One line for ``exc``; an error about parameter ``p`` starts with its flag: ``flags[p]``,
    else ``--p`` with dashes (``batch_size`` -> ``--batch-size``)."""
    param = getattr(exc, "param", None)
    if isinstance(exc, PipelineError) and param:
        flag = (flags or {}).get(param, "--" + param.replace("_", "-"))
        text = f"{flag}: {exc.message}"
    else:
        text = str(exc)
    return " ".join(text.split())


def run_cli(
    body: Callable[[], int],
    *,
    flags: Mapping[str, str] | None = None,
    interrupted: str = "interrupted",
) -> int:
    """Run a CLI's ``body``: bad input -> ``error: <one line>`` on stderr and exit code 2;
    Ctrl-C -> ``interrupted`` and 130; else ``body``'s exit code."""
    try:
        return body()
    except (PipelineError, ValueError, NotImplementedError) as exc:
        print(f"error: {error_line(exc, flags)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {_disk_full_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a library may say what it saved before it stopped
        print(exc.args[0] if exc.args else interrupted, file=sys.stderr)
        return 130


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    command: Callable[[argparse.Namespace], int],
    *,
    flags: Mapping[str, str] | None = None,
    interrupted: str = "interrupted",
) -> int:
    """A CLI's ``main``: parse ``argv`` with ``parser``, set up logging, and return
    ``command(args)``'s exit code, all under :func:`run_cli` (so a usage error too is one line
    and exit code 2)."""

    def body() -> int:
        args = parser.parse_args(argv)
        setup_logging(args)
        return command(args)

    return run_cli(body, flags=flags, interrupted=interrupted)


def _disk_full_line(exc: OSError) -> str:
    """``<file>: no space left on device ...`` for an ENOSPC from Python or from h5py (whose
    message carries the file as ``filename = '...'``)."""
    found = re.search(r"filename = '([^']*)'", str(exc))
    path = exc.filename or (found.group(1) if found else "a file")
    reason = exc.strerror if exc.strerror and "\n" not in exc.strerror else "No space left"
    return " ".join(
        f"{path}: {reason} (disk full); free some space and run the same command again: "
        "finished work is kept".split()
    )
