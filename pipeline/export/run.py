"""``run_export``: a model file in, one verified ONNX file out (or nothing, and why)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from .._io import atomic_path
from ..exceptions import ConfigError

__all__ = ["ExportResult", "run_export"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ExportResult:
    """What :func:`run_export` wrote and what its check found."""

    path: Path
    size_bytes: int
    verification: Any  # pipeline.export.verify.Verification


def check_out(out: str | os.PathLike[str]) -> Path:
    """``out`` must be a file path in a writable folder (checked before any work)."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(
            f"{out} is a directory; give a file path such as {out}/model.onnx", param="out"
        )
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"{out}: an exported model's name ends in .onnx", param="out")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise ConfigError(f"folder {folder} does not exist", param="out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {folder} (permission denied)", param="out")
    return out


def run_export(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n_images: int = 32,
    tolerance: float | None = None,
) -> ExportResult:
    """Export the model file ``model_path`` to ``out`` after checking it against ``predict``.

    Raises :class:`~pipeline.exceptions.ConfigError` (nothing written) when the recipe or the
    classifier cannot be exported, or when the graph's probabilities differ from
    ``predict``'s by more than ``tolerance`` on the sample images."""
    from ..fit.model_file import load_model_file
    from ..predict import _load_recipe
    from .build import build_model, check_exportable, export_metadata
    from .verify import PROBABILITY_TOLERANCE, sample_images, verify

    tolerance = PROBABILITY_TOLERANCE if tolerance is None else float(tolerance)
    if not tolerance >= 0:
        raise ConfigError(f"must be >= 0, got {tolerance}", param="tolerance")
    if n_images < 1:
        raise ConfigError(f"must be >= 1, got {n_images}", param="images")
    out = check_out(out)
    model_path = Path(model_path)
    payload = load_model_file(model_path)  # format and library-version checks, as predict
    recipe = _load_recipe(payload, model_path)  # the fingerprint check, as predict
    check_exportable(payload, recipe, model_path)
    metadata = export_metadata(payload, recipe, model_path)
    model = build_model(payload, recipe, metadata)
    from_crops = build_model(payload, recipe, metadata, from_crops=True)
    images, source = sample_images(payload, model_path, n_images)
    result = verify(
        model.SerializeToString(),
        from_crops.SerializeToString(),
        payload,
        recipe,
        images,
        source,
        tolerance,
    )
    logger.info("check against predict: %s", result.line())
    if not result.passed:
        raise ConfigError(
            f"the exported graph does not reproduce predict: {result.line()}; nothing written",
            param="model_path",
        )
    record = {**dataclasses.asdict(result), "reference": "pipeline predict (CPU)"}
    model.metadata_props.add(key="verification", value=json.dumps(record))
    data = model.SerializeToString()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return ExportResult(out, len(data), result)
