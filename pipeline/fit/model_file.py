"""Model files: ``<out>/models/<clf>.joblib``, written by stage two and read by ``predict``.

A model file is a joblib dict: the fitted estimator, its class names, and the backbone
metadata copied from the feature store, so predictions rebuild the same embedding.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from .. import __version__
from .._io import atomic_path
from ..exceptions import ModelFileError
from ..recipe import BACKBONE_EXTRA_ATTRS, DECODE_FIELDS, RECIPE_ATTRS

__all__ = [
    "BACKBONE_KEYS",
    "MODEL_FORMAT_VERSION",
    "RECORDED_DISTRIBUTIONS",
    "ModelFileError",
    "library_versions",
    "load_model_file",
    "save_model",
]


MODEL_FORMAT_VERSION = 1

logger = logging.getLogger(__name__)

#: Distributions whose versions a model file records: unpickling under other versions may fail
#: or, worse, silently behave differently.
RECORDED_DISTRIBUTIONS = ("scikit-learn", "xgboost", "torch", "numpy", "joblib")
_warned_about: set[tuple[str, str]] = set()


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`RECORDED_DISTRIBUTIONS` and pipeline (from metadata)."""
    found = {"pipeline": __version__}
    for name in RECORDED_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _warn_other_versions(path: Path, recorded: Any) -> None:
    """One warning line (once per file and difference) when libraries changed since fitting."""
    if not isinstance(recorded, dict):
        return
    now = library_versions()
    changed = [
        f"{name} {recorded[name]} -> {now.get(name, 'absent')}"
        for name in sorted(recorded)
        if recorded[name] != now.get(name, "absent")
    ]
    key = (str(path), ", ".join(changed))
    if changed and key not in _warned_about:
        _warned_about.add(key)
        logger.warning(
            "%s was made with other library versions (%s); predictions may differ, retrain "
            "with `python -m pipeline.fit` if in doubt",
            path,
            key[1],
        )


#: Store attributes copied into every model file, so predictions can rebuild the same embedding.
BACKBONE_KEYS = (*RECIPE_ATTRS, "feature_dim")
_MODEL_KEYS = ("clf", "estimator", "class_names", "backbone")


def save_model(path: Path, payload: Mapping[str, Any]) -> None:
    """Write a model file atomically, recording the library versions it was made with."""
    with atomic_path(path) as tmp:
        joblib.dump({**payload, "versions": library_versions()}, tmp)


# long: a numpydoc docstring; the code is one check per way a model file can be unusable.
def load_model_file(path: str | Path) -> dict[str, Any]:
    """Load and validate a ``models/<clf>.joblib`` file written by ``python -m pipeline.fit``.

    .. warning:: joblib files are pickles: loading one runs code from it. Load only model
       files from sources you trust.

    Parameters
    ----------
    path : str or Path
        The model file.

    Returns
    -------
    dict
        ``format_version``, ``pipeline_version``, ``clf``, ``estimator`` (a fitted sklearn
        Pipeline predicting class names), ``class_names``, ``backbone`` (``model``,
        ``weights``, ``preprocessing``, ``preprocessing_fields``, ``precision``,
        ``fingerprint``, ``feature_dim``), ``store`` and ``versions`` (scikit-learn, xgboost,
        torch, numpy, joblib and pipeline when it was written; other versions now give one
        warning line).

    Raises
    ------
    ModelFileError
        The file is missing, not a joblib dict, of another ``format_version``, lacks keys,
        or its estimator cannot predict one row under the installed libraries (the message
        names the versions recorded in the file and those installed).
    """

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file; train one with `python -m pipeline.fit`")
    try:
        payload = joblib.load(path)
    except Exception as exc:  # unpickling fails in many ways; all mean "not a model file"
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ModelFileError(
            f"{path}: not a readable pipeline model file ({detail}); use a "
            "models/<clf>.joblib written by `python -m pipeline.fit`"
        ) from exc
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ModelFileError(
            f"{path}: not a pipeline model file (holds a {type(payload).__name__}, expected the "
            "dict written by `python -m pipeline.fit`)"
        )
    if payload["format_version"] != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format_version {payload['format_version']!r}, but this pipeline "
            f"{__version__} reads format_version {MODEL_FORMAT_VERSION}; retrain with "
            "`python -m pipeline.fit`"
        )
    missing = [k for k in _MODEL_KEYS if k not in payload]
    if missing:
        raise ModelFileError(
            f"{path}: model file lacks {missing}; retrain with `python -m pipeline.fit`"
        )
    backbone = payload["backbone"]
    if not isinstance(backbone, dict):
        raise ModelFileError(f"{path}: model file's backbone metadata is not a dict; retrain it")
    # absent from older files: defaults
    optional = {*DECODE_FIELDS, *BACKBONE_EXTRA_ATTRS, "int8_graph"}
    missing = [k for k in BACKBONE_KEYS if k not in backbone and k not in optional]
    if missing:
        raise ModelFileError(
            f"{path}: model file's backbone metadata lacks {missing}; retrain with "
            "`python -m pipeline.fit` on a current feature store"
        )
    if not hasattr(payload["estimator"], "predict"):
        raise ModelFileError(f"{path}: model file's estimator has no predict(); retrain it")
    _check_runs(path, payload)
    _warn_other_versions(path, payload.get("versions"))
    return payload


def _check_runs(path: Path, payload: dict[str, Any]) -> None:
    """Predict one row, so that a model the installed libraries cannot run (an attribute that
    another scikit-learn or xgboost no longer has, say) is refused here, in one line naming the
    versions, rather than as a traceback in whatever consumer uses it."""
    try:
        dim = int(payload["backbone"]["feature_dim"])
    except (TypeError, ValueError):
        raise ModelFileError(
            f"{path}: model file's feature_dim is not a number; retrain it"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload["estimator"].predict(np.ones((1, dim), dtype=np.float32))
    except Exception as exc:  # any failure here means: these libraries cannot run it
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ModelFileError(
            f"{path}: the installed libraries cannot run this model ({detail}); "
            f"{_versions_line(payload.get('versions'))}; refit it with `python -m pipeline.fit`, "
            "or install the recorded versions"
        ) from exc


def _versions_line(recorded: Any) -> str:
    """'made with X, installed Y' over the libraries that differ (all when none does)."""
    now = library_versions()
    if not isinstance(recorded, dict) or not recorded:
        installed = ", ".join(f"{k} {v}" for k, v in sorted(now.items()))
        return f"the file records no library versions; installed: {installed}"
    names = [n for n in sorted(recorded) if recorded[n] != now.get(n, "absent")]
    names = names or sorted(recorded)
    made = ", ".join(f"{n} {recorded[n]}" for n in names)
    installed = ", ".join(f"{n} {now.get(n, 'absent')}" for n in names)
    return f"made with {made}; installed: {installed}"
