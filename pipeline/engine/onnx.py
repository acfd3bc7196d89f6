"""ONNX Runtime on the CPU: export once, verify once against torch, then run without torch.

The exported graph takes the decoders' uint8 (N, H, W, 3) crops and holds the weights'
normalisation, so the CPU path moves bytes, not floats. Each graph is verified against torch
when it is made (:func:`pipeline.embedding.make_runner`); the result is remembered per request
in a small JSON record beside the graph. A later run of the same request on a CPU-only machine
(:func:`load_verified`) then starts without importing torch or torchvision at all: importing
them takes longer than embedding a few hundred images.

A record is used only while everything it was made from is unchanged: the request (model,
weights, auto-weights choice), the installed torch, torchvision, ONNX Runtime and pipeline
versions, ``TORCH_HOME``/``XDG_CACHE_HOME``, and the size and mtime of the graph and of the
weights checkpoint. Anything else takes the full path, which re-exports and re-verifies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_path
from .._metadata import installed_version
from .backbones import BackboneSpec

__all__ = [
    "GRAPH_FORMAT",
    "ONNX_TOLERANCE",
    "backbone_request",
    "OnnxRunner",
    "VerifiedGraph",
    "graph_path",
    "load_verified",
    "no_gpu_present",
    "onnx_cache_dir",
    "request_key",
    "save_verified",
]

logger = logging.getLogger(__name__)

#: Max relative difference to torch's embeddings for ONNX Runtime to be used.
ONNX_TOLERANCE = 1e-4
#: What the graph takes and holds; part of every cache key.
GRAPH_FORMAT = "uint8-nhwc-normalized-v1"
# Device nodes of GPU drivers torch can use (NVIDIA, ROCm, WSL's CUDA).
_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def onnx_cache_dir() -> Path:
    """``$PIPELINE_CACHE_DIR/onnx``, else ``$XDG_CACHE_HOME/pipeline/onnx`` or
    ``~/.cache/pipeline/onnx``."""
    root = os.environ.get("PIPELINE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pipeline"
    )
    return Path(root) / "onnx"


def no_gpu_present() -> bool:
    """True when this (Linux) machine has no GPU device node, so torch would pick the CPU."""
    return os.name == "posix" and os.path.isdir("/dev") and not any(map(os.path.exists, _GPU_NODES))


def graph_path(spec: Any) -> Path:
    """The cached graph for a resolved backbone (model, weights, preprocessing, torch)."""
    key = json.dumps(
        [
            spec.model,
            spec.weights_id,
            spec.preprocessing_fields,
            installed_version("torch"),
            GRAPH_FORMAT,
            *([installed_version("timm")] if spec.model.startswith("timm:") else []),
        ],
        sort_keys=True,
    )
    name = spec.model.replace(":", "-")  # timm:NAME
    return onnx_cache_dir() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def backbone_request(model: str, weights: Any, preprocess: Any = None) -> dict[str, Any]:
    """What a request for a checkpoint file, a timm model or a ``--preprocess`` override
    depends on besides its names (the file's sha256, timm's version, the override); empty
    for a plain torchvision request, so its keys stay as they were. Needs no torch."""
    from .checkpoints import file_sha256, is_weights_file
    from .preprocess import parse_preprocess

    extra: dict[str, Any] = {}
    if is_weights_file(weights):
        extra["weights_sha256"] = file_sha256(weights)
    if str(model).startswith("timm:"):
        extra["timm"] = installed_version("timm")
    canonical = parse_preprocess(preprocess)
    if canonical is not None:
        extra["preprocess"] = canonical
    return extra


def request_key(
    model: str, weights: Any, auto_weights: Mapping[str, str], preprocess: Any = None
) -> str:
    """Identifies an unresolved request with everything its resolution depends on."""
    payload = {
        "model": model,
        "weights": str(weights),
        "auto": auto_weights.get(model) if str(weights) == "auto" else None,
        "versions": [installed_version(p) for p in ("torch", "torchvision", "onnxruntime")]
        + [__version__],
        "env": [os.environ.get("TORCH_HOME"), os.environ.get("XDG_CACHE_HOME")],
        "format": GRAPH_FORMAT,
        **backbone_request(model, weights, preprocess),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _stat(path: str | None) -> list[int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


@dataclasses.dataclass
class VerifiedGraph:
    """A graph checked against torch, and what it was made from."""

    spec_record: dict[str, Any]
    feature_dim: int
    graph: str
    difference: float
    checkpoint: str | None
    graph_stat: list[int] | None = None
    checkpoint_stat: list[int] | None = None

    @property
    def spec(self) -> Any:
        return BackboneSpec.from_record(self.spec_record)

    def is_current(self) -> bool:
        """The graph and the checkpoint are still the files that were verified."""
        return (
            self.graph_stat is not None
            and _stat(self.graph) == self.graph_stat
            and _stat(self.checkpoint) == self.checkpoint_stat
        )

    def runner(self, threads: int) -> OnnxRunner:
        return OnnxRunner(Path(self.graph), self.feature_dim, threads, difference=self.difference)


def _record_path(key: str) -> Path:
    return onnx_cache_dir() / "verified" / f"{key}.json"


def save_verified(key: str, graph: VerifiedGraph) -> None:
    """Remember a verified graph for the request ``key`` (written atomically)."""
    graph = dataclasses.replace(
        graph, graph_stat=_stat(graph.graph), checkpoint_stat=_stat(graph.checkpoint)
    )
    path = _record_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(graph), indent=1, sort_keys=True))


def load_verified(key: str) -> VerifiedGraph | None:
    """The verified graph remembered for ``key`` if its files are unchanged, else None."""
    try:
        graph = VerifiedGraph(**json.loads(_record_path(key).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if graph.difference > ONNX_TOLERANCE or not graph.is_current():
        return None
    return graph


#: Batches an :class:`OnnxRunner` runs at once by default, each on ``threads // streams``
#: threads (at most ``threads``). One: on a quiet 2-core machine one 2-thread session ran
#: MobileNetV2 end to end at 180 images/s against 166 with two 1-thread streams (500x375
#: JPEGs, medians of 3; two streams only won on a heavily loaded machine: docs/benchmarks.md,
#: issue 31). ``OnnxRunner(streams=2)`` keeps the other layout, with bit-identical rows.
DEFAULT_STREAMS = 1


class OnnxRunner:
    """Runs an exported backbone with ONNX Runtime on the CPU (fp32, or a quantised int8
    graph): uint8 (N, H, W, 3) crops in, float32 (N, D) embeddings out.

    ``streams``: how many batches callers may run at once (ONNX Runtime sessions are
    thread-safe); the session then uses ``threads // streams`` threads per batch. The rows do
    not depend on it: a convolution's output element is computed by one thread whatever
    their number (``tests/test_int8.py`` checks it)."""

    backend = "onnxruntime"
    device = "cpu"

    def __init__(
        self,
        path: Path,
        feature_dim: int,
        threads: int,
        spin: bool = False,
        difference: float | None = None,
        streams: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.streams = max(1, min(threads, DEFAULT_STREAMS if streams is None else streams))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads // self.streams)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would take the cores the decoding threads need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.feature_dim = int(feature_dim)
        self.difference = difference

    def __call__(self, images: Any) -> np.ndarray:
        if not isinstance(images, np.ndarray):
            images = images.numpy()
        batch = np.ascontiguousarray(images, dtype=np.uint8)
        return self.session.run(None, {self.input_name: batch})[0].reshape(len(batch), -1)
