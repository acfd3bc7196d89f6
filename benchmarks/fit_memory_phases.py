"""Peak RSS of one ``python -m pipeline.fit`` run, by phase: what the memory check must cover.

Usage (any ``fit`` flags; ``-v`` is added)::

    cd /tmp && PYTHONPATH=<checkout> python <checkout>/benchmarks/fit_memory_phases.py \
        --features store-200000.h5 --clf nn --no-audit --set nn.max_iter=1 \
        --out /tmp/run

The run is in this process. A thread samples its resident memory (``/proc/self/statm``) every
20 ms and tags each sample with the phase the run is in: the last log line of pipeline's
loggers, or entering / leaving the steps wrapped here (the leading steps' ``partial_fit``, the
``nn`` head's validation rows, epochs and logits, ``predict_rows``). Printed: ``ru_maxrss``,
then each phase's peak RSS in GiB, in order. Linux only. Made to find what the memory model
(:mod:`pipeline.fit.memory`) missed for ``nn`` at 1M rows (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_GIB = 1 << 30


class _Phases(logging.Handler):
    """The current phase, and the RSS samples tagged with it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.phase = "start"
        self.samples: list[tuple[int, str]] = []
        self.running = True

    def emit(self, record: logging.LogRecord) -> None:
        self.phase = f"{record.name}: {record.getMessage()[:100]}"

    def sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while self.running:
            with open("/proc/self/statm") as fh:
                self.samples.append((int(fh.read().split()[1]) * page, self.phase))
            time.sleep(0.02)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        """Tag the samples taken inside ``owner.name`` (a function or method)."""
        function: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(function)
        def tagged(*args: Any, **kwargs: Any) -> Any:
            self.phase = f"enter {label}"
            try:
                return function(*args, **kwargs)
            finally:
                self.phase = f"leave {label}"

        setattr(owner, name, tagged)

    def peaks(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rss, phase in self.samples:
            out[phase] = max(out.get(phase, 0), rss)
        return out


def main(argv: list[str]) -> int:
    from pipeline import estimators
    from pipeline.fit import main as fit_main
    from pipeline.fit import streaming

    phases = _Phases()
    logging.getLogger("pipeline").addHandler(phases)
    for method in ("_validation_rows", "_run_epochs", "_logits"):
        phases.wrap(estimators.TorchMLPClassifier, method, f"nn.{method}")
    for function in ("_partial_fit_leading", "predict_rows"):
        phases.wrap(streaming, function, function)
    sampler = threading.Thread(target=phases.sample, daemon=True)
    sampler.start()
    code = fit_main([*argv, "-v"])
    phases.running = False
    sampler.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"exit code {code}; ru_maxrss {peak / _GIB:.3f} GiB; peak RSS by phase (GiB):")
    for phase, rss in phases.peaks().items():
        print(f"{rss / _GIB:.3f}  {phase}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
