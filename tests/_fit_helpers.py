"""Helpers for stage-two tests: tiny synthetic feature stores written with the real store code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engine.backbones import BackboneSpec
from pipeline.recipe import EmbeddingRecipe
from pipeline.store import FORMAT_VERSION, FailedInputs, Rows, write_rows_file

CLASS_NAMES = ["cat", "dog", "owl"]

#: A backbone described without torchvision (what ``BackboneSpec.to_record`` gives).
SPEC_RECORD = {
    "model": "mobilenet_v3_small",
    "weights": None,
    "weights_url": None,
    "preprocessing_fields": {
        "class": "ImageClassification",
        "crop_size": [224],
        "resize_size": [256],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
        "antialias": True,
    },
    "preprocessing_repr": "ImageClassification( crop_size=[224] resize_size=[256] )",
}
RECIPE = EmbeddingRecipe(BackboneSpec.from_record(SPEC_RECORD), "fp32")


def store_attrs(class_names: Sequence[str], dim: int, **extra: Any) -> dict[str, Any]:
    """Attributes of a complete store, as stage one writes them."""
    attrs = {
        **RECIPE.to_attrs(),
        "complete": True,
        "class_names": list(class_names),
        "feature_dim": dim,
        "versions": {"torch": "test", "torchvision": "test", "pipeline": "test"},
        "format_version": FORMAT_VERSION,
    }
    attrs.update(extra)
    return attrs


def blobs(
    n_per_class: int = 30, n_classes: int = 3, dim: int = 16, seed: int = 0, spread: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian blobs: features (n, dim) float32 and integer labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, spread, size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + rng.normal(0.0, 1.0, size=(len(labels), dim))
    return features.astype(np.float32), labels.astype(np.int64)


def write_store(
    path: Path,
    *,
    n_per_class: int = 30,
    class_names: Sequence[str] = CLASS_NAMES,
    dim: int = 16,
    seed: int = 0,
    split: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    features: np.ndarray | None = None,
    **attrs: Any,
) -> Path:
    """Write a small store of separable blobs at ``path`` and return ``path``."""
    X, y = blobs(n_per_class, len(class_names), dim, seed)
    if features is not None:
        X = features
    if labels is not None:
        y = labels
    n = len(y)
    rows = Rows(
        features=X,
        labels=y,
        paths=[f"img/{i:04d}.png" for i in range(n)],
        split=list(split) if split is not None else [""] * n,
        keys=[f"k{i}" for i in range(n)],
    )
    write_rows_file(path, rows, FailedInputs(), store_attrs(class_names, X.shape[1], **attrs))
    return path


def flip_a_feature_bit(path: Path) -> None:
    """Flip one bit inside the first chunk of ``/features`` on disk (the checksum must catch it)."""
    import h5py

    with h5py.File(path, "r") as fh:
        assert fh["features"].fletcher32
        offset = fh["features"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 10)
        byte = fh.read(1)
        fh.seek(offset + 10)
        fh.write(bytes([byte[0] ^ 0x01]))
