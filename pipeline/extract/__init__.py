"""Stage one: images -> embeddings in a resumable HDF5 store (``python -m pipeline.extract``)."""

from __future__ import annotations

from .plan import (
    ExtractionPlan,
    ExtractSummary,
    begin_parts,
    build_parser,
    embed_into_parts,
    finish_store,
    main,
    plan_extraction,
    run_extraction,
)

__all__ = [
    "ExtractSummary",
    "ExtractionPlan",
    "begin_parts",
    "build_parser",
    "embed_into_parts",
    "finish_store",
    "main",
    "plan_extraction",
    "run_extraction",
]
