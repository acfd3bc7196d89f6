"""The embedding engine: decode in DataLoader workers, run the backbone, yield embeddings.

One implementation serves ``pipeline.extract``, ``pipeline.predict`` and ``ImageEmbedder``.
On CUDA it uses pinned memory, non-blocking copies, channels-last and bf16/fp16 autocast; on
CPU it runs fp32 (autocast on CPU is much slower on AVX2 machines), channels-last.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    "embed_loaded",
    "make_runner",
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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if device.type == "cuda":
        return max(1, min(cores - 1, 16))
    return 1 if cores >= 2 else 0


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


def make_runner(
    spec: BackboneSpec, device: torch.device, precision: str, backend: str = "torch"
) -> Any:
    """Build the backbone and the runner for it."""
    return TorchRunner(build_backbone(spec), device, precision)


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
