"""Runtime choices, resolved in one place: device, precision, batch size, workers, backend.

Like timm's ``resolve_data_config``, :func:`resolve_runtime` turns the requested values
(``"auto"``, ``0``, ``-1``) into concrete ones once; extract, predict and ``ImageEmbedder`` all
call it. None of these choices changes the numbers of an embedding beyond the precision, which
is why precision alone is part of the :class:`~pipeline.recipe.EmbeddingRecipe`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from .exceptions import ConfigError

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Runtime",
    "auto_batch_size",
    "auto_device",
    "auto_workers",
    "check_backend",
    "check_device",
    "cpu_cores",
    "inference_threads",
    "resolve_device",
    "resolve_precision",
    "resolve_runtime",
]

BACKENDS = ("auto", "torch", "onnxruntime")


#: ``int8``: a quantised ONNX Runtime graph on the CPU (:mod:`pipeline.engine.quantize`);
#: ``auto`` never picks it (it changes the numbers).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")

_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device(device: str) -> str:
    """``device`` must be ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked without torch)."""
    if not isinstance(device, str) or not _DEVICE_NAME.fullmatch(device):
        raise ConfigError(f"{device!r} is not auto, cpu, cuda or cuda:N", param="device")
    return device


def resolve_device(device: str = "auto") -> Any:
    """``auto`` -> CUDA when available, else CPU; explicit CUDA without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device(auto_device())
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"{device!r} is not auto, cpu, cuda or cuda:N", param="device") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no CUDA GPU is available", param="device")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"{device!r} is not auto, cpu, cuda or cuda:N", param="device")
    return resolved


def resolve_precision(precision: str, device: Any) -> str:
    """``auto`` -> bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{precision!r} is not one of {', '.join(PRECISIONS)}", param="precision")
    if precision == "int8" and _device_type(device) != "cpu":
        raise ConfigError(
            f"int8 runs on the CPU (ONNX Runtime), not on {device}; use device cpu",
            param="precision",
        )
    if precision != "auto":
        return precision
    if _device_type(device) == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _device_type(device: Any) -> str:
    return getattr(device, "type", None) or str(device).split(":", 1)[0]


def auto_batch_size(device: Any) -> int:
    return 256 if _device_type(device) == "cuda" else 32


def auto_workers(device: Any) -> int:
    """Decoding workers: processes on most cores of a GPU machine; on CPU, threads, one per
    core (PIL releases the GIL; measured in benchmarks/extract_throughput.py)."""
    cores = cpu_cores()
    if _device_type(device) == "cuda":
        return max(1, min(cores - 1, 16))
    return min(cores, 8)


def inference_threads() -> int:
    """Threads for the forward pass: every core, whatever the number of decoding workers; they
    do not spin, so decoding threads get the cores whenever the forward pass waits (measured in
    benchmarks/extract_throughput.py: non-spinning threads on all cores beat spinning ones
    beside two decoding threads)."""
    return cpu_cores()


def cpu_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def auto_device() -> str:
    """``"cuda"`` when a CUDA GPU is available, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"{backend!r} is not one of {', '.join(BACKENDS)}", param="backend")
    return backend


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Concrete runtime choices. ``backend`` is still the request (``auto`` picks per run)."""

    device: Any  # torch.device
    precision: str
    batch_size: int
    workers: int
    threads: int
    backend: str


def resolve_runtime(
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 0,
    workers: int = -1,
    backend: str = "auto",
) -> Runtime:
    """Resolve ``auto`` device and precision, batch size 0 and workers -1 for this machine."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ConfigError(f"must be positive, got {batch_size}", param="batch_size")
    check_backend(backend)
    resolved = resolve_device(device)
    workers = workers if workers >= 0 else auto_workers(resolved)
    return Runtime(
        device=resolved,
        precision=resolve_precision(precision, resolved),
        batch_size=batch_size or auto_batch_size(resolved),
        workers=workers,
        threads=inference_threads(),
        backend=backend,
    )
