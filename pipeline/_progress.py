"""Progress of a long loop: a tqdm bar on a terminal, plain log lines everywhere else.

With standard error redirected to a file (a batch job, ``2> log``), a bar would write each of
its carriage-return states into the file and leave debris before every warning; there an
INFO line reports ``done/total`` and the rate every ``PIPELINE_PROGRESS_SECONDS`` seconds
(default 10) and once at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from .exceptions import ConfigError

__all__ = ["Progress", "progress_interval", "slow_step"]

_INTERVAL_VARIABLE = "PIPELINE_PROGRESS_SECONDS"


def progress_interval() -> float:
    """Seconds between progress lines: ``$PIPELINE_PROGRESS_SECONDS``, default 10."""
    value = os.environ.get(_INTERVAL_VARIABLE, "10")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{_INTERVAL_VARIABLE}={value!r} is not a number of seconds >= 0")
    return seconds


#: Seconds a step runs before :func:`slow_step` says what it is doing.
SLOW_STEP_SECONDS = 3.0


@contextlib.contextmanager
def slow_step(logger: logging.Logger, message: str, *args: object) -> Iterator[None]:
    """Log ``message % args`` (INFO) once the block has run :data:`SLOW_STEP_SECONDS` seconds
    and is still running: every step that takes more than a few seconds says what it is doing,
    and quick ones add no line."""
    if SLOW_STEP_SECONDS <= 0:  # said at once (tests, or a caller wanting every step)
        logger.info(message, *args)
        yield
        return
    timer = threading.Timer(SLOW_STEP_SECONDS, logger.info, (message, *args))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


class Progress(contextlib.AbstractContextManager):
    """Count finished items (:meth:`update`) of ``total``; shown as a bar on a terminal, else
    as log lines on ``logger``; nothing at all when ``enabled`` is false."""

    def __init__(
        self, total: int, *, unit: str, desc: str, enabled: bool, logger: logging.Logger
    ) -> None:
        self.total, self.unit, self.desc, self.logger = total, unit, desc, logger
        self.done = 0
        self._bar = None
        self._stack = contextlib.ExitStack()
        self._lines = enabled and not _on_terminal()
        self._interval = progress_interval() if self._lines else 0.0
        if enabled and not self._lines:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm())
            self._bar = self._stack.enter_context(
                tqdm(total=total, unit=unit, desc=desc, file=sys.stderr)
            )
        self._start = self._last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and time.perf_counter() - self._last >= self._interval:
            self._log()

    def _log(self, end: str = "") -> None:
        self._last = time.perf_counter()
        seconds = self._last - self._start
        rate = self.done / seconds if seconds > 0 else 0.0
        self.logger.info(
            "%s: %d/%d %s (%.0f%%), %.1f %s/s%s",
            self.desc,
            self.done,
            self.total,
            self.unit,
            100.0 * self.done / self.total if self.total else 100.0,
            rate,
            self.unit,
            end,
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lines and exc_type is None:
            self._log(f" in {time.perf_counter() - self._start:.1f} s")
        self._stack.close()
