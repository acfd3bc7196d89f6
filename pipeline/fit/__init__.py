"""Stage two: classifiers on stored embeddings, compared in a report (``python -m pipeline.fit``)."""

from __future__ import annotations

from .evaluation import (
    BACKBONE_KEYS,
    MODEL_FORMAT_VERSION,
    ModelFileError,
    build_parser,
    load_model_file,
    main,
    parse_clf,
    run_fit,
)

__all__ = [
    "BACKBONE_KEYS",
    "MODEL_FORMAT_VERSION",
    "ModelFileError",
    "build_parser",
    "load_model_file",
    "main",
    "parse_clf",
    "run_fit",
]
