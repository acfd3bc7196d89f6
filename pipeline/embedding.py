"""The embedding engine: decode in DataLoader workers, run the backbone, yield embeddings.

One implementation serves ``pipeline.extract``, ``pipeline.predict`` and ``ImageEmbedder``.
On CUDA it uses pinned memory, non-blocking copies, channels-last and bf16/fp16 autocast; on
CPU it runs fp32 (autocast on CPU is much slower on AVX2 machines), channels-last.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbones import Backbone, BackboneSpec, build_backbone
from .exceptions import ImageDecodeError, PipelineError

__all__ = [
    "Batch",
    "TorchRunner",
    "auto_batch_size",
    "auto_workers",
    "embed_images",
    "inference_threads",
    "embed_loaded",
    "make_runner",
    "max_relative_difference",
    "OnnxRunner",
    "onnx_cache_dir",
    "verify_runner",
    "iter_batches",
    "resolve_device",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; explicit CUDA without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise PipelineError(f"--device: {device!r} is not auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device: CUDA was asked for but no CUDA GPU is available")
    if resolved.type not in ("cpu", "cuda"):
        raise PipelineError(f"--device: {device!r} is not auto, cpu, cuda or cuda:N")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise PipelineError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def auto_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 32


def auto_workers(device: torch.device) -> int:
    """Decoding processes: most cores on GPU machines; on CPU, leave the cores to the model."""
    cores = _cores()
    if device.type == "cuda":
        return max(1, min(cores - 1, 16))
    return 1 if cores >= 2 else 0


def inference_threads(workers: int) -> int:
    """Threads for the forward pass: every core; decoding workers mostly wait on I/O and the
    forward pass dominates on CPU (measured in benchmarks/extract_throughput.py)."""
    return _cores()


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


class TorchRunner:
    """Runs a backbone on batches of preprocessed images; returns float32 numpy embeddings."""

    backend = "torch"

    def __init__(self, backbone: Backbone, device: torch.device, precision: str) -> None:
        self.device = device
        self.precision = precision
        self.feature_dim = backbone.feature_dim
        self.module = backbone.module.to(device, memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.to(self.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last
        )
        with torch.inference_mode():
            if self.precision in _DTYPES:
                with torch.autocast(self.device.type, dtype=_DTYPES[self.precision]):
                    out = self.module(images)
            else:
                out = self.module(images)
        return torch.flatten(out, 1).float().cpu().numpy()


@dataclass
class Batch:
    """A decoded batch: ``images[i]`` is input ``indices[i]`` when ``errors[i]`` is empty."""

    images: torch.Tensor
    indices: list[int]
    errors: list[str]


class _DecodeDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses item ``i``; a failure becomes an error string, not an exception."""

    def __init__(self, load: Callable[[int], Any], n: int, transform: Any, size: int) -> None:
        self.load, self.n, self.transform, self.size = load, n, transform, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(self.load(i)), i, ""
        except ImageDecodeError as exc:
            return torch.zeros(3, self.size, self.size), i, str(exc)
        except Exception as exc:  # a decoder bug on one file must not end the run
            return torch.zeros(3, self.size, self.size), i, f"{type(exc).__name__}: {exc}"


def iter_batches(
    load: Callable[[int], Any],
    n: int,
    spec: BackboneSpec,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Decode items ``0..n-1`` with ``load(i) -> PIL image`` in worker processes, in order."""
    dataset = _DecodeDataset(load, n, spec.transforms(), spec.input_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        shuffle=False,
    )
    for images, indices, errors in loader:
        yield Batch(images, [int(i) for i in indices], list(errors))


def embed_loaded(
    runner: Any, batches: Iterator[Batch], n: int, on_error: str = "raise"
) -> tuple[np.ndarray, list[str]]:
    """Run ``runner`` over ``batches``; returns (n, D) embeddings (NaN rows for failures) and
    the per-item error strings ('' when fine)."""
    out = np.full((n, runner.feature_dim), np.nan, dtype=np.float32)
    errors = [""] * n
    for batch in batches:
        ok = [j for j, e in enumerate(batch.errors) if not e]
        for j, e in enumerate(batch.errors):
            if e:
                if on_error == "raise":
                    raise ImageDecodeError(e)
                errors[batch.indices[j]] = e
        if ok:
            rows = [batch.indices[j] for j in ok]
            out[rows] = runner(batch.images[ok] if len(ok) < len(batch.indices) else batch.images)
    return out, errors


ONNX_TOLERANCE = 1e-4


def onnx_cache_dir() -> Path:
    """Where exported ONNX graphs are cached: ``$PIPELINE_CACHE_DIR/onnx`` or ``~/.cache/pipeline/onnx``."""
    root = os.environ.get("PIPELINE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pipeline"
    )
    return Path(root) / "onnx"


class OnnxRunner:
    """Runs an exported backbone with ONNX Runtime on the CPU (fp32).

    The graph is exported once per (model, weights, input size, torch version) and cached.
    """

    backend = "onnxruntime"

    def __init__(
        self, backbone: Backbone, threads: int, spin: bool = False, cache_dir: Path | None = None
    ) -> None:
        import onnxruntime as ort

        spec = backbone.spec
        tag = hashlib.sha256(
            f"{spec.model}|{spec.weights_id}|{spec.input_size}|{torch.__version__}".encode()
        ).hexdigest()[:16]
        self.path = (cache_dir or onnx_cache_dir()) / f"{spec.model}-{tag}.onnx"
        if not self.path.exists():
            _export_onnx(backbone, self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would take the cores the decoding workers need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.feature_dim = backbone.feature_dim
        self.device = torch.device("cpu")

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        batch = np.ascontiguousarray(images.numpy(), dtype=np.float32)
        return self.session.run(None, {self.input_name: batch})[0].reshape(len(batch), -1)


def _export_onnx(backbone: Backbone, path: Path) -> None:
    from .store import atomic_path

    size = backbone.spec.input_size
    probe = torch.zeros(2, 3, size, size)
    module = backbone.module.eval()
    # The TorchScript exporter needs no extra packages (the dynamo one needs onnxscript).
    with (
        atomic_path(path) as tmp,
        torch.inference_mode(False),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (probe,),
            str(tmp),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )
    module.eval()


def max_relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| / max |expected|: the tolerance measure for backend equivalence."""
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(got - expected).max()) / scale


def verify_runner(candidate: Any, reference: TorchRunner, size: int) -> float:
    """Run both on a fixed probe batch; return their max relative difference."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(4, 3, size, size, generator=generator)
    return max_relative_difference(candidate(probe), reference(probe))


def make_runner(
    spec: BackboneSpec,
    device: torch.device,
    precision: str,
    backend: str = "auto",
    threads: int | None = None,
) -> Any:
    """Build the backbone and the fastest runner whose output matches torch's.

    ``auto`` uses ONNX Runtime for fp32 on CPU and torch otherwise. ONNX Runtime is only used
    when its embeddings match torch's within ``ONNX_TOLERANCE`` (max relative difference on a
    probe batch); when export fails or the outputs differ, it falls back to torch and logs why.
    """
    if backend not in ("auto", "torch", "onnxruntime"):
        raise PipelineError(f"--backend: {backend!r} is not one of auto, torch, onnxruntime")
    backbone = build_backbone(spec)
    reference = TorchRunner(backbone, device, precision)
    want_onnx = backend == "onnxruntime" or (
        backend == "auto" and device.type == "cpu" and precision == "fp32"
    )
    if not want_onnx:
        return reference
    if device.type != "cpu" or precision != "fp32":
        logger.warning(
            "--backend onnxruntime runs fp32 on CPU only; using torch on %s with %s",
            device,
            precision,
        )
        return reference
    try:
        runner = OnnxRunner(backbone, threads or torch.get_num_threads())
        difference = verify_runner(runner, reference, spec.input_size)
    except Exception as exc:  # exporters and runtimes fail in many ways; torch still works
        logger.warning(
            "ONNX Runtime unavailable for %s (%s: %s); using torch",
            spec.model,
            type(exc).__name__,
            exc,
        )
        return reference
    if difference > ONNX_TOLERANCE:
        logger.warning(
            "ONNX Runtime output for %s differs from torch by %.2e (> %.0e); using torch",
            spec.model,
            difference,
            ONNX_TOLERANCE,
        )
        return reference
    logger.info("backend: onnxruntime (max relative difference to torch %.1e)", difference)
    return runner


def embed_images(
    load: Callable[[int], Any],
    n: int,
    spec: BackboneSpec,
    runner: Any,
    *,
    batch_size: int,
    workers: int,
    on_error: str = "raise",
) -> tuple[np.ndarray, list[str]]:
    """Embed ``n`` items given by ``load(i)``; see :func:`embed_loaded`."""
    batches = iter_batches(
        load,
        n,
        spec,
        batch_size=batch_size,
        workers=workers,
        pin_memory=getattr(runner, "device", torch.device("cpu")).type == "cuda",
    )
    return embed_loaded(runner, batches, n, on_error)
