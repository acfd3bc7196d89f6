"""Running an exported model with ONNX Runtime: decoded pixels in, probabilities and labels out.

Used by ``predict --model x.onnx``, by the check ``export`` runs before it writes a file, and
by the benchmarks. Needs only onnxruntime and numpy (no torch, no scikit-learn): an exported
model is data, not code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExportedModel", "is_exported_model"]


def is_exported_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an exported model (by its ``.onnx`` suffix)."""
    return Path(path).suffix.lower() == ".onnx"


class ExportedModel:
    """An exported model (a path or its bytes) in an ONNX Runtime CPU session."""

    def __init__(self, model: str | os.PathLike[str] | bytes, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else os.fspath(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(meta)
        self.class_names: list[str] = json.loads(meta["class_names"])

    def json(self, key: str) -> Any:
        """Metadata entry ``key``, decoded from JSON (None when absent)."""
        value = self.metadata.get(key)
        return None if value is None else json.loads(value)

    def run(
        self, images: Sequence[np.ndarray], batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [N, C] float32, labels [N])`` of uint8 RGB images (H, W, 3);
        images of the same size go through together, ``batch_size`` at a time."""
        proba = np.zeros((len(images), len(self.class_names)), dtype=np.float32)
        labels = np.empty(len(images), dtype=object)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(np.shape(image), []).append(i)
        for rows in by_shape.values():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                batch = np.stack([np.asarray(images[i], dtype=np.uint8) for i in chunk])
                p, lab = self.session.run(["probabilities", "label"], {"image": batch})
                proba[chunk], labels[chunk] = p, [str(v) for v in lab]
        return proba, labels
