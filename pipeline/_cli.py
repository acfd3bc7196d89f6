"""Shared CLI plumbing: the argument parser (one-line usage errors, ``--version``, defaults and
examples in ``--help``), verbosity flags, logging set-up (only CLIs configure logging), and
:func:`run_cli`, the one place where library errors become a one-line message and exit code 2;
:func:`run_command` is a CLI's ``main``: parse, set up logging, run.

Console output follows the habits of ``uv``/``ruff``/``pip``: on a terminal, short plain lines,
warnings and errors prefixed ``warning:``/``error:`` (coloured unless ``NO_COLOR`` is set);
with ``-v``, or with standard error redirected (a log file, a batch job), every line carries
its time, level and logger name (:data:`LOG_FORMAT`), since a log read later needs the when.
:func:`command` names a sub-command the way the user typed the running one (``pipeline fit``
or ``python -m pipeline.fit``), for hints in error messages.
"""

from __future__ import annotations

import argparse
import contextvars
import errno
import logging
import os
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
    "command",
    "console_line",
    "error_line",
    "examples",
    "run_cli",
    "run_command",
    "setup_logging",
    "show_defaults",
    "validated",
    "with_default",
]

#: A log line with ``-v`` or when standard error is not a terminal: time, level, logger, message.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: ANSI colours of the console prefixes (bold yellow, bold red).
_COLOURS = {"warning": "\033[1;33m", "error": "\033[1;31m"}

#: How the running CLI was invoked: ``"pipeline "`` (console command) or ``"python -m pipeline."``.
_STYLE: contextvars.ContextVar[str] = contextvars.ContextVar("style", default="python -m pipeline.")


def command(name: str) -> str:
    """Sub-command ``name`` as the user invokes the CLI now: ``pipeline extract`` after
    ``pipeline fit``, else ``python -m pipeline.extract`` (also from the library)."""
    return f"{_STYLE.get()}{name}"


def _remember_style(prog: str) -> None:
    """``pipeline fit`` -> ``pipeline ``, ``python -m pipeline fit`` -> ``python -m pipeline ``;
    ``python -m pipeline.fit`` (one word per command) -> ``python -m pipeline.``."""
    head, _, last = prog.rpartition(" ")
    console = head.endswith("pipeline") and last in ("extract", "fit", "predict")
    _STYLE.set(f"{head} " if console else "python -m pipeline.")


def _on_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _colour(stream: object) -> bool:
    """Colour on a terminal unless ``NO_COLOR`` is set (to anything non-empty; no-color.org)."""
    return _on_terminal(stream) and not os.environ.get("NO_COLOR")


def console_line(kind: str, text: str, stream: object = None) -> str:
    """``"<kind>: <text>"``, the prefix coloured when ``stream`` (default stderr) is a
    terminal and ``NO_COLOR`` is unset."""
    stream = sys.stderr if stream is None else stream
    if kind in _COLOURS and _colour(stream):
        return f"{_COLOURS[kind]}{kind}:\033[0m {text}"
    return f"{kind}: {text}"


class ConsoleFormatter(logging.Formatter):
    """Plain console lines: the message alone, ``warning:``/``error:`` before warnings and errors
    (coloured on a terminal, see :func:`console_line`)."""

    def __init__(self, stream: object) -> None:
        super().__init__("%(message)s")
        self.stream = stream

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return console_line("error", text, self.stream)
        if record.levelno >= logging.WARNING:
            return console_line("warning", text, self.stream)
        return text


class UsageError(ValueError):
    """Bad command-line usage (an unknown flag, a value outside a flag's choices)."""


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, keeping an ``examples:`` epilog's lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with ``--version``, whose errors are :class:`UsageError` (so that
    :func:`run_cli` prints them as one line, exit code 2) instead of usage text and an exit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
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


def with_default(help_text: str, default: Any) -> str:
    """``help_text`` ending in ``(default: X)``, X as the user would type it."""
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, list | tuple):
        shown = ",".join(map(str, default)) or "none"
    elif default == "":
        shown = "off"
    else:
        shown = str(default)
    return f"{help_text} (default: {shown})"


def examples(prog: str, lines: Sequence[tuple[str, str]]) -> str:
    """An ``--help`` epilog: ``examples:`` then one ``  PROG ARGS   # what it does`` per line."""
    width = max(len(f"{prog} {args}".rstrip()) for args, _ in lines)
    body = [f"  {f'{prog} {args}'.rstrip():<{width}}   # {text}" for args, text in lines]
    return "\n".join(["examples:", *body])


def show_defaults(parser: argparse.ArgumentParser, defaults: Mapping[str, Any]) -> None:
    """Append ``(default: X)`` to the help of every flag whose destination has a scalar value
    in ``defaults`` (a section of the shipped config); on/off switches say what they do."""
    for action in parser._actions:
        value = defaults.get(action.dest)
        if (
            action.help
            and action.dest in defaults
            and not isinstance(value, Mapping)
            and not isinstance(action, argparse._StoreFalseAction)
            and "(default" not in action.help
        ):
            action.help = with_default(action.help, value)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more output: debug lines, each line with its time and logger name",
    )
    parser.add_argument(
        "-q", "--quiet", action="count", default=0, help="less output: warnings and errors only"
    )


def setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr: plain lines on a terminal (:class:`ConsoleFormatter`), time, level and
    logger name (:data:`LOG_FORMAT`) with ``-v`` or when stderr is redirected. ``-v``/``-q``
    set the level of the ``pipeline`` loggers only (INFO by default), third-party libraries
    stay at WARNING (or quieter with ``-q``). Nothing is changed when logging is already
    configured (the CLI called from an application, or from pytest)."""
    root = logging.getLogger()
    if root.handlers:
        return
    level = logging.INFO - 10 * args.verbose + 10 * args.quiet
    handler = logging.StreamHandler(sys.stderr)
    plain = _on_terminal(sys.stderr) and args.verbose == 0
    handler.setFormatter(ConsoleFormatter(sys.stderr) if plain else logging.Formatter(LOG_FORMAT))
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
        print(console_line("error", error_line(exc, flags)), file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(console_line("error", _disk_full_line(exc)), file=sys.stderr)
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

    _remember_style(parser.prog)

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
