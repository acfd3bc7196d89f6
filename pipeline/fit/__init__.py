"""Stage two: fit and compare classifiers on a feature store (``python -m pipeline.fit``).

:mod:`.evaluation` checks the store's labels, splits, fits and scores each classifier and
assembles the report; :mod:`.streaming` fits and predicts them on the store's rows read in
blocks, and :mod:`.memory` checks beforehand that the run fits in memory; :mod:`.report` holds the metrics, plots and report files;
:mod:`.model_file` the ``models/<clf>.joblib`` format that ``predict`` reads; :mod:`.dask`
XGBoost on a Dask cluster; :mod:`.cli` the command line. Stage two never touches images.
"""

from __future__ import annotations

from ..exceptions import ModelFileError
from .cli import build_parser, main
from .evaluation import parse_clf, run_fit
from .model_file import BACKBONE_KEYS, MODEL_FORMAT_VERSION, load_model_file

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
