"""The exported graph: pixels -> crops -> views -> backbone -> head -> probabilities, label.

:func:`build_model` assembles it from a model file's payload: the crops (:mod:`.crops`), the
backbone exported from torch exactly as the CPU backend exports it
(:func:`pipeline.engine.runners.export_onnx`, at opset 18), the head (:mod:`.heads`), the
views averaged as ``predict`` averages them, and the metadata. What the graph cannot express
is refused here, before anything is computed.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from ..exceptions import ConfigError
from ..fit.model_file import library_versions
from ..recipe import EmbeddingRecipe
from .crops import add_crops, add_view, preprocessing_record
from .graph import GraphBuilder, tensor
from .heads import HEADS, head_model

__all__ = ["EXPORTED_DISTRIBUTIONS", "add_head", "build_model", "check_exportable"]

#: Versions recorded in the ``versions`` metadata besides the model file's.
EXPORTED_DISTRIBUTIONS = ("torchvision", "onnx", "onnxruntime", "skl2onnx", "onnxmltools")


def check_exportable(payload: Mapping[str, Any], recipe: EmbeddingRecipe, model_path: Any) -> None:
    """One-line errors for what the graph cannot express (nothing is built before this)."""
    if recipe.decode.gpu_decode:
        raise ConfigError(
            f"{model_path} was trained on GPU-decoded embeddings (--gpu-decode, nvJPEG "
            "resize); the exported graph resizes like PIL and cannot reproduce them. "
            "Re-extract without --gpu-decode to export",
            param="model_path",
        )
    if recipe.decode.jpeg_draft:
        raise ConfigError(
            f"{model_path} was trained on --jpeg-draft embeddings (reduced-scale JPEG "
            "decoding), which happens in the decoder, outside the graph; re-extract without "
            "--jpeg-draft to export",
            param="model_path",
        )
    clf = payload["clf"]
    if clf not in HEADS:
        raise ConfigError(
            f"classifier {clf!r} of {model_path} has no ONNX converter (exported: "
            f"{', '.join(HEADS)})",
            param="model_path",
        )


def _backbone_model(recipe: EmbeddingRecipe) -> onnx.ModelProto:
    """The backbone as the CPU backend exports it (uint8 crops in, normalisation inside)."""
    return onnx.load_from_string(_backbone_bytes(recipe.spec))


@functools.lru_cache(maxsize=2)
def _backbone_bytes(spec: Any) -> bytes:
    from ..engine.backbones import build_backbone
    from ..engine.runners import TorchRunner, export_onnx

    runner = TorchRunner(build_backbone(spec), "cpu", "fp32")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "backbone.onnx"
        export_onnx(runner, path, opset=18)
        return path.read_bytes()


def add_head(g: GraphBuilder, clf: str, estimator: Any, features: str, dim: int) -> str:
    """The head of ``clf`` on ``features``; returns its probabilities. An ensemble would
    call this per member and average the results (``Mean``)."""
    (proba,) = g.embed(head_model(clf, estimator, dim), {"features": features}, f"{clf}_")
    return proba


def build_model(
    payload: Mapping[str, Any],
    recipe: EmbeddingRecipe,
    metadata: Mapping[str, str],
    *,
    from_crops: bool = False,
) -> onnx.ModelProto:
    """The whole graph; ``from_crops`` starts at the crops (input ``crops`` [N, c, c, 3]),
    which separates the resize's differences from the rest's (benchmarks)."""
    estimator = payload["estimator"]
    views = tuple(payload.get("views") or ())
    dim = int(payload["backbone"]["feature_dim"])
    class_names = [str(c) for c in estimator.classes_]
    g = GraphBuilder()
    pre = recipe.preprocessing
    if from_crops:
        name, crops = "crops", "crops"
        shape: list[Any] = ["N", pre.crop_size, pre.crop_size, 3]
    else:
        name, shape = "image", ["N", "H", "W", 3]
        crops = add_crops(g, "image", pre)
    batch = crops
    if views:
        batch = g.op("Concat", crops, *(add_view(g, crops, v) for v in views), axis=0)
    (features,) = g.embed(_backbone_model(recipe), {"crops": batch}, "backbone_")
    proba = add_head(g, payload["clf"], estimator, features, dim)
    if views:
        stacked = g.op(
            "Reshape", proba, g.const([1 + len(views), -1, len(class_names)], "vnc", np.int64)
        )
        proba = g.op("ReduceMean", stacked, g.const([0], "axis", np.int64), keepdims=0)
    index = g.op("ArgMax", proba, axis=1, keepdims=0)
    g.nodes.append(onnx.helper.make_node("Identity", [proba], ["probabilities"]))
    g.nodes.append(
        onnx.helper.make_node(
            "Gather", [g.const(np.array(class_names, object), "names"), index], ["label"]
        )
    )
    return g.finish(
        [tensor(name, TensorProto.UINT8, shape)],
        [
            tensor("probabilities", TensorProto.FLOAT, ["N", len(class_names)]),
            tensor("label", TensorProto.STRING, ["N"]),
        ],
        metadata,
    )


def export_metadata(
    payload: Mapping[str, Any], recipe: EmbeddingRecipe, model_path: Path
) -> dict[str, str]:
    """``metadata_props`` (all strings; JSON where structured), verification aside."""
    versions = dict(library_versions())
    for name in EXPORTED_DISTRIBUTIONS:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "absent"
    attrs = recipe.to_attrs()
    views = tuple(payload.get("views") or ())
    return {
        "class_names": json.dumps([str(c) for c in payload["estimator"].classes_]),
        "recipe": json.dumps(attrs, sort_keys=True),
        "fingerprint": str(attrs["fingerprint"]),
        "preprocessing": json.dumps(preprocessing_record(recipe.preprocessing, views)),
        "versions": json.dumps(versions, sort_keys=True),
        "source_run": json.dumps(
            {
                "model_file": str(model_path.resolve()),
                "clf": str(payload["clf"]),
                "store": str(payload.get("store", "")),
                "model_versions": payload.get("versions") or {},
            }
        ),
    }
