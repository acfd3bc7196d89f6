"""pipeline: transfer learning for image classification on cached CNN embeddings.

Public names are imported lazily (as scikit-learn does), so ``import pipeline`` and the
CLIs' ``--help`` answer without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ImageEmbedder": "pipeline.embedder",
    "TorchMLPClassifier": "pipeline.estimators",
    "make_classifier": "pipeline.classifiers",
    "load_features": "pipeline.store",
    "read_store": "pipeline.store",
    "run_extraction": "pipeline.extract",
    "run_fit": "pipeline.fit",
    "ExtractConfig": "pipeline.config",
    "FitConfig": "pipeline.config",
    "run_predict": "pipeline.predict",
    "PipelineError": "pipeline.exceptions",
    "CacheMismatchError": "pipeline.exceptions",
    "StoreError": "pipeline.exceptions",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
