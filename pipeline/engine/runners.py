"""The embedding engine: decode in parallel, run the backbone, yield embeddings.

One implementation serves ``pipeline.extract``, ``pipeline.predict`` and ``ImageEmbedder``.
Decoders hand over uint8 crops (:mod:`pipeline.decoding`); the runner normalises them on the
inference device and runs the network. On CUDA: pinned memory, non-blocking copies of uint8
(a quarter of the bytes of floats), channels-last and bf16/fp16 autocast. On CPU: fp32, with
ONNX Runtime when its output matches torch's (:mod:`pipeline.onnx_backend`), else torch
channels-last. torch is imported only when a function here needs it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from .._runtime import (
    auto_batch_size,
    auto_workers,
    check_backend,
    cpu_cores,
    inference_threads,
    resolve_device,
    resolve_precision,
)
from ..exceptions import ConfigError, ImageDecodeError
from .backbones import Backbone, BackboneSpec, build_backbone
from .decoding import Batch, decode_batches, iter_batches
from .onnx import (
    ONNX_TOLERANCE,
    OnnxRunner,
    VerifiedGraph,
    graph_path,
    onnx_cache_dir,
    save_verified,
)
from .preprocess import Preprocessing, make_view

__all__ = [
    "Batch",
    "OnnxRunner",
    "TorchRunner",
    "ViewsRunner",
    "auto_batch_size",
    "auto_workers",
    "checkpoint_path",
    "embed_images",
    "embed_loaded",
    "export_onnx",
    "inference_threads",
    "iter_batches",
    "make_runner",
    "max_relative_difference",
    "ordered_map",
    "onnx_cache_dir",
    "resolve_device",
    "resolve_precision",
    "verify_runner",
]

logger = logging.getLogger(__name__)


def _crops_module(backbone: Backbone) -> Any:
    """The backbone behind the weights' normalisation: uint8 (N, H, W, 3) crops in."""
    import torch

    pre = backbone.spec.preprocessing

    class FromCrops(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = backbone.module
            self.register_buffer("mean", torch.tensor(pre.mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(pre.std).view(1, -1, 1, 1))

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            # Same operations as the preset: float, / 255, - mean, / std (NCHW view).
            images = crops.permute(0, 3, 1, 2).float() / 255
            return torch.flatten(self.features((images - self.mean) / self.std), 1)

    return FromCrops().eval().requires_grad_(False)


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """cuDNN convolutions in fp32 rather than TF32 (torch's default for them on a GPU, with a
    10-bit mantissa): an fp32 store's rows then agree to fp32 rounding whatever the batch or
    device that computed them. No effect on a CPU."""
    import torch

    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32 = before


class TorchRunner:
    """Runs a backbone on uint8 (N, H, W, 3) crops; returns float32 numpy embeddings."""

    backend = "torch"

    def __init__(self, backbone: Backbone, device: Any, precision: str) -> None:
        import torch

        self.device = torch.device(device)
        self.precision = precision
        self.feature_dim = backbone.feature_dim
        self.input_size = backbone.spec.input_size
        self.module = _crops_module(backbone).to(self.device, memory_format=torch.channels_last)

    def __call__(self, images: Any) -> np.ndarray:
        import torch

        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        # NHWC bytes, viewed as NCHW inside the module: channels-last without a copy.
        images = images.to(self.device, non_blocking=True)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode():
            if dtype is not None:
                with torch.autocast(self.device.type, dtype=dtype):
                    out = self.module(images)
            else:
                with full_fp32():
                    out = self.module(images)
        return out.float().cpu().numpy()


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], streams: int) -> Iterator[Any]:
    """``map(fn, items)``, with up to ``streams`` calls running at once in threads (for a
    runner whose ``streams`` > 1), results in order."""
    if streams <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(streams, thread_name_prefix="infer") as pool:
        pending: collections.deque[Future[Any]] = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= streams:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def embed_loaded(
    runner: Any, batches: Iterator[Batch], n: int, on_error: str = "raise"
) -> tuple[np.ndarray, list[str]]:
    """Run ``runner`` over ``batches``; returns (n, D) embeddings (NaN rows for failures) and
    the per-item error strings ('' when fine)."""
    out = np.full((n, runner.feature_dim), np.nan, dtype=np.float32)
    errors = [""] * n

    def embed(batch: Batch) -> tuple[Batch, list[int], np.ndarray | None]:
        ok = [j for j, e in enumerate(batch.errors) if not e]
        if not ok:
            return batch, ok, None
        images = batch.images[ok] if len(ok) < len(batch.indices) else batch.images
        return batch, ok, runner(images)

    for batch, ok, rows in ordered_map(embed, batches, getattr(runner, "streams", 1)):
        for j, e in enumerate(batch.errors):
            if e:
                if on_error == "raise":
                    raise ImageDecodeError(e)
                errors[batch.indices[j]] = e
        if ok:
            out[[batch.indices[j] for j in ok]] = rows
    return out, errors


def export_onnx(runner: TorchRunner, path: Path, opset: int = 17) -> None:
    """Export the CPU runner's module (normalisation included) to ``path``, atomically:
    uint8 ``crops`` (N, H, W, 3) in, float32 ``embeddings`` out (``pipeline export`` asks
    for opset 18)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    probe = torch.zeros(2, runner.input_size, runner.input_size, 3, dtype=torch.uint8)
    # The TorchScript exporter needs no extra packages (the dynamo one needs onnxscript).
    with (
        atomic_path(path) as tmp,
        torch.inference_mode(False),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            runner.module,
            (probe,),
            str(tmp),
            input_names=["crops"],
            output_names=["embeddings"],
            dynamic_axes={"crops": {0: "batch"}, "embeddings": {0: "batch"}},
            dynamo=False,
            opset_version=opset,
        )
    runner.module.eval()


def _load_or_export(reference: TorchRunner, path: Path, threads: int) -> OnnxRunner:
    """The cached graph at ``path``; exported first when missing, again when unloadable."""
    if path.exists():
        try:
            return OnnxRunner(path, reference.feature_dim, threads)
        except Exception as exc:  # a truncated or foreign file: make it anew
            logger.warning("cached ONNX graph %s unusable (%s); exporting it again", path, exc)
    export_onnx(reference, path)
    return OnnxRunner(path, reference.feature_dim, threads)


def max_relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| / max |expected|: the tolerance measure for backend equivalence."""
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(got - expected).max()) / scale


def verify_runner(candidate: Any, reference: TorchRunner, size: int) -> float:
    """Run both on a fixed batch of random crops; return their max relative difference."""
    probe = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    return max_relative_difference(candidate(probe), reference(probe))


def checkpoint_path(spec: BackboneSpec) -> str | None:
    """Where torchvision's weight loading keeps (or would download) the spec's checkpoint
    (the file itself for weights given as a file, or timm's cached file)."""
    if spec.weights_file is not None:
        return spec.weights_file
    if spec.weights_url is None:
        return None
    import torch

    return str(Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_url.rsplit("/", 1)[-1])


def _int8_runner(backend: str, int8_graph: str, threads: int) -> Any:
    """The cached int8 graph ``int8_graph`` on ONNX Runtime (no torch)."""
    if backend == "torch":
        raise ConfigError(
            "int8 runs on ONNX Runtime only; leave out --backend torch", param="backend"
        )
    if not int8_graph:
        raise ConfigError("int8 needs the sha256 of its quantised graph", param="precision")
    from .quantize import int8_runner

    return int8_runner(int8_graph, threads)


def make_runner(
    spec: BackboneSpec,
    device: Any,
    precision: str,
    backend: str = "auto",
    threads: int | None = None,
    remember_as: str | None = None,
    int8_graph: str = "",
) -> Any:
    """Build the backbone and the fastest runner whose output matches torch's.

    ``auto`` uses ONNX Runtime for fp32 on CPU and torch otherwise. ONNX Runtime is only used
    when its embeddings match torch's within ``ONNX_TOLERANCE`` (max relative difference on a
    probe batch); when export fails or the outputs differ, it falls back to torch and logs why.
    With ``remember_as`` (a :func:`pipeline.onnx_backend.request_key`), a verified graph is
    recorded so that later runs of that request skip torch (:func:`~pipeline.onnx_backend.load_verified`).

    ``int8``: the cached quantised graph ``int8_graph`` (a sha256, see
    :mod:`pipeline.engine.quantize`) on ONNX Runtime, on the CPU whatever ``device``; no torch.
    """
    check_backend(backend)
    if precision == "int8":
        return _int8_runner(backend, int8_graph, threads or cpu_cores())
    backbone = build_backbone(spec)
    reference = TorchRunner(backbone, device, precision)
    cpu_fp32 = reference.device.type == "cpu" and precision == "fp32"
    if backend == "torch" or (backend == "auto" and not cpu_fp32):
        return reference
    if not cpu_fp32:
        logger.warning(
            "--backend onnxruntime runs fp32 on CPU only; using torch on %s with %s",
            reference.device,
            precision,
        )
        return reference
    path = graph_path(spec)
    try:
        runner = _load_or_export(reference, path, threads or cpu_cores())
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
    runner.difference = difference
    logger.info("backend: onnxruntime (max relative difference to torch %.1e)", difference)
    if remember_as is not None:
        record = VerifiedGraph(
            spec.to_record(), backbone.feature_dim, str(path), difference, checkpoint_path(spec)
        )
        try:
            save_verified(remember_as, record)
        except OSError as exc:  # a read-only cache only costs the next run its start-up
            logger.info("could not record the verified graph (%s)", exc)
    return runner


def embed_images(
    load: Callable[[int], Any],
    n: int,
    preprocessing: Preprocessing,
    runner: Any,
    *,
    batch_size: int,
    workers: int,
    on_error: str = "raise",
    paths: Sequence[str] | None = None,
    views: Sequence[str] = (),
) -> tuple[np.ndarray, list[str]]:
    """Embed ``n`` items given by ``load(i)``; see :func:`embed_loaded`. With ``paths`` (the
    files behind the items), JPEGs are decoded on the runner's device (``--gpu-decode``).

    With ``views`` the result is (1 + len(views), n, D): the plain embeddings, then each
    view's (:func:`~pipeline.engine.preprocess.make_view`); else (n, D)."""
    batches = decode_batches(
        load,
        n,
        preprocessing,
        getattr(runner, "device", "cpu"),
        batch_size=batch_size,
        workers=workers,
        paths=paths,
    )
    if not views:
        return embed_loaded(runner, batches, n, on_error)
    stacked, errors = embed_loaded(ViewsRunner(runner, views), batches, n, on_error)
    return stacked.reshape(n, 1 + len(views), -1).transpose(1, 0, 2), errors


class ViewsRunner:
    """A runner that embeds the plain crops and each view of them, side by side:
    (N, (1 + len(views)) * D) out, the plain embedding first."""

    def __init__(self, runner: Any, views: Sequence[str]) -> None:
        self.runner, self.views = runner, tuple(views)
        self.feature_dim = (1 + len(self.views)) * runner.feature_dim
        self.device = getattr(runner, "device", "cpu")

    def __call__(self, crops: Any) -> np.ndarray:
        outs = [self.runner(crops), *(self.runner(make_view(v, crops)) for v in self.views)]
        return np.concatenate(outs, axis=1)
