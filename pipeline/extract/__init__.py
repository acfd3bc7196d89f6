"""Stage one: embed every image of a source once, into a resumable HDF5 feature store.

``python -m pipeline.extract`` (:mod:`.cli`) parses flags into an
:class:`~pipeline.config.ExtractConfig` and calls :func:`run_extraction`, which is also what
library users call. :mod:`.plan` works out what is left to do, :mod:`.parts` writes and merges
part files, and :mod:`.executors` runs the work in-process or on Dask.
"""

from __future__ import annotations

from .cli import build_parser, main
from .executors import DaskExecutor, Embedded, InProcessExecutor, run_extraction
from .parts import begin_parts, embed_into_parts, finish_store
from .plan import ExtractionPlan, ExtractSummary, plan_extraction

__all__ = [
    "DaskExecutor",
    "Embedded",
    "ExtractSummary",
    "ExtractionPlan",
    "InProcessExecutor",
    "begin_parts",
    "build_parser",
    "embed_into_parts",
    "finish_store",
    "main",
    "plan_extraction",
    "run_extraction",
]
