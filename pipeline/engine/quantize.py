"""int8 graphs for the CPU: static quantisation of the exported features graph.

ONNX Runtime's ``quantize_static`` turns the fp32 graph (uint8 crops in, normalisation
inside; :mod:`pipeline.engine.onnx`) into a QDQ graph with int8 weights (per output channel)
and uint8 activations, whose ranges are calibrated on a sample of the user's own crops. Which
calibration and which nodes stay in float was chosen by measurement
(``benchmarks/int8_calibration.py``, docs/benchmarks.md); :data:`QUANT_VARIANTS` keeps every
variant measured so the benchmark can rerun them.

The calibration reads the crops a batch at a time (ONNX Runtime's strided collection), so
memory does not grow with the number of calibration images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from ..exceptions import BackboneError
from .onnx import OnnxRunner, onnx_cache_dir

__all__ = [
    "CALIBRATION_IMAGES",
    "DEFAULT_VARIANT",
    "MIN_SPEEDUP",
    "QUANT_VARIANTS",
    "QuantVariant",
    "int8_cache_dir",
    "int8_graph_path",
    "int8_runner",
    "make_int8_graph",
    "measure_speedup",
    "prepare_int8",
    "quantize_graph",
    "recorded_speedup",
    "save_speedup",
]

logger = logging.getLogger(__name__)

#: How many of the user's images calibrate a new int8 graph (fewer when there are fewer).
CALIBRATION_IMAGES = 256
#: int8 is used only where its forward pass is at least this much faster than fp32's (a
#: margin over timing noise); measured once per fp32 graph and CPU, and recorded.
MIN_SPEEDUP = 1.1
_CALIBRATION_BATCH = 16


@dataclasses.dataclass(frozen=True)
class QuantVariant:
    """One way of quantising: the calibration method, and which convolutions stay in float
    (``first``: the stem, ``last``: the final 1x1 convolution, whose output is the embedding
    before pooling, ``depthwise``: every grouped convolution)."""

    method: str = "minmax"
    percentile: float = 99.999
    keep_float: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: bool = False
    activation_symmetric: bool = False
    qoperator: bool = False


QUANT_VARIANTS: dict[str, QuantVariant] = {
    "minmax": QuantVariant(),
    "percentile": QuantVariant("percentile"),
    "entropy": QuantVariant("entropy"),
    "minmax-keep-last": QuantVariant(keep_float=("last",)),
    "minmax-keep-first-last": QuantVariant(keep_float=("first", "last")),
    "percentile-keep-last": QuantVariant("percentile", keep_float=("last",)),
    "entropy-keep-last": QuantVariant("entropy", keep_float=("last",)),
    "minmax-keep-depthwise": QuantVariant(keep_float=("depthwise",)),
    "minmax-reduce-range": QuantVariant(reduce_range=True),
    "minmax-symmetric": QuantVariant(activation_symmetric=True),
    "minmax-qoperator": QuantVariant(qoperator=True),
}
#: What ``--precision int8`` uses (see docs/benchmarks.md for the measurements behind it).
DEFAULT_VARIANT = "minmax"


class _Crops:
    """ONNX Runtime's calibration reader over uint8 crops, one batch per item, with the
    ``set_range`` its strided collection calls (one batch at a time)."""

    def __init__(self, input_name: str, crops: np.ndarray) -> None:
        self.input_name = input_name
        self.batches = [
            np.ascontiguousarray(crops[i : i + _CALIBRATION_BATCH])
            for i in range(0, len(crops), _CALIBRATION_BATCH)
        ]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._items, None)
        return None if batch is None else {self.input_name: batch}


def _convolutions_kept(model: Any, keep: Sequence[str]) -> list[str]:
    """Names of the nodes that ``keep`` names: ``first`` (the first Conv), ``last`` (the last
    Conv and every node after it: the pooling that makes the embedding), ``depthwise``
    (grouped Convs). Nodes are in topological order, as ONNX requires."""
    nodes = list(model.graph.node)
    convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    kept = []
    for i, node in enumerate(nodes):
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (
            ("first" in keep and i == convs[0])
            or ("last" in keep and i >= convs[-1])
            or ("depthwise" in keep and node.op_type == "Conv" and group > 1)
        ):
            kept.append(node.name)
    return kept


def quantize_graph(
    source: Path, target: Path, crops: np.ndarray, variant: str = DEFAULT_VARIANT
) -> None:
    """Write the int8 version of the fp32 graph ``source`` to ``target`` (atomically),
    calibrated on ``crops`` (uint8 (N, H, W, 3), the graph's input)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(crops) == 0:
        raise ValueError("int8 calibration needs at least one image")
    settings = QUANT_VARIANTS[variant]
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[settings.method]
    # Histogram calibrators print a line per batch: kept off the CLI's output.
    with (
        tempfile.TemporaryDirectory(prefix="pipeline-int8-") as tmp,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        input_name = model.graph.input[0].name
        excluded = _convolutions_kept(model, settings.keep_float)
        reader = _Crops(input_name, crops)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as out:
            quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=QuantFormat.QOperator if settings.qoperator else QuantFormat.QDQ,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                nodes_to_exclude=excluded,
                extra_options={
                    "CalibStridedMinMax": 1,  # one batch at a time, whatever the method
                    "CalibPercentile": settings.percentile,
                    "ActivationSymmetric": settings.activation_symmetric,
                },
            )
    logger.info(
        "quantised %s to int8 (%s, %d calibration images, %d convolutions kept in float)",
        source.name,
        variant,
        len(crops),
        len(excluded),
    )


# -- the cache of int8 graphs ------------------------------------------------------------------


def int8_cache_dir() -> Path:
    """Where int8 graphs live: ``<onnx cache>/int8``, each named by the sha256 of its bytes."""
    return onnx_cache_dir() / "int8"


def int8_graph_path(sha256: str) -> Path:
    """The cached int8 graph whose bytes hash to ``sha256``."""
    return int8_cache_dir() / f"{sha256}.onnx"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_int8_graph(fp32_graph: Path, crops: np.ndarray, variant: str = DEFAULT_VARIANT) -> str:
    """Quantise ``fp32_graph`` calibrated on ``crops`` into the cache; returns its sha256.

    The graph is stored under its own hash, with a JSON record of how it was made beside it."""
    folder = int8_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".making-") as tmp:
        made = Path(tmp) / "int8.onnx"
        quantize_graph(fp32_graph, made, crops, variant)
        sha256 = _file_sha256(made)
        target = int8_graph_path(sha256)
        if not target.exists():
            os.replace(made, target)
    record = {
        "fp32_graph": Path(fp32_graph).name,
        "variant": variant,
        "calibration_images": len(crops),
    }
    with atomic_path(target.with_suffix(".json")) as out:
        out.write_text(json.dumps(record, indent=1, sort_keys=True))
    return sha256


def int8_runner(sha256: str, threads: int) -> OnnxRunner:
    """ONNX Runtime on the cached int8 graph ``sha256``, checked to be those bytes.

    Raises :class:`~pipeline.exceptions.BackboneError` (one line) when it is missing or changed."""
    path = int8_graph_path(sha256)
    if not path.is_file():
        raise BackboneError(
            f"the int8 graph {sha256[:16]} this recipe was made with is not in {path.parent}; "
            "copy it there from the machine that made the store, or re-extract with --overwrite",
            param="precision",
        )
    if _file_sha256(path) != sha256:
        raise BackboneError(
            f"{path} does not hash to its name (changed since it was made); delete it and "
            "re-extract with --overwrite",
            param="precision",
        )
    runner = OnnxRunner(path, 0, threads)
    shape = runner.session.get_outputs()[0].shape
    runner.feature_dim = int(np.prod([int(d) for d in shape[1:]]))
    runner.precision = "int8"
    return runner


# -- is int8 faster here? -----------------------------------------------------------------------


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (VNNI or not decides int8's speed), hashed."""
    text = platform.machine()
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text().splitlines()
        text += "".join(
            line for line in info if line.startswith(("model name", "flags", "Features"))
        )[:100000]
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _speed_path(fp32_graph: Path) -> Path:
    return int8_cache_dir() / "speed" / f"{Path(fp32_graph).stem}-{_cpu_identity()}.json"


def recorded_speedup(fp32_graph: Path) -> float | None:
    """int8 / fp32 images per second recorded for ``fp32_graph`` on this CPU, else None."""
    try:
        return float(json.loads(_speed_path(fp32_graph).read_text())["int8_over_fp32"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_speedup(fp32_graph: Path, ratio: float, detail: dict[str, Any] | None = None) -> None:
    """Record int8 / fp32 images per second of ``fp32_graph`` on this CPU."""
    path = _speed_path(fp32_graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as out:
        out.write_text(json.dumps({"int8_over_fp32": ratio, **(detail or {})}, sort_keys=True))


def measure_speedup(
    fp32: Callable[[np.ndarray], Any],
    int8: Callable[[np.ndarray], Any],
    crops: np.ndarray,
    rounds: int = 5,
) -> float:
    """int8 / fp32 images per second on one batch of ``crops``, alternated, median of
    ``rounds`` (after one warm-up each)."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for i in range(rounds + 1):
        for k, run in enumerate((fp32, int8)):
            started = time.perf_counter()
            run(crops)
            if i:
                times[k].append(time.perf_counter() - started)
    return statistics.median(times[0]) / statistics.median(times[1])


def prepare_int8(
    fp32_runner: Any, calibration: Callable[[], np.ndarray], threads: int
) -> tuple[str | None, float]:
    """The sha256 of a new int8 graph for ``fp32_runner``'s graph, calibrated on
    ``calibration()``'s crops, and int8's recorded speed-up on this CPU; ``(None, speed-up)``
    when int8 is not at least :data:`MIN_SPEEDUP` faster here (then nothing is quantised
    again: the first measurement per fp32 graph and CPU is kept)."""
    fp32_graph = Path(fp32_runner.path)
    ratio = recorded_speedup(fp32_graph)
    if ratio is not None and ratio < MIN_SPEEDUP:
        return None, ratio
    crops = calibration()
    started = time.perf_counter()
    sha256 = make_int8_graph(fp32_graph, crops)
    seconds = time.perf_counter() - started
    if ratio is None:
        batch = np.resize(crops, (16, *crops.shape[1:]))
        ratio = measure_speedup(fp32_runner, int8_runner(sha256, threads), batch)
        save_speedup(fp32_graph, ratio, {"threads": threads, "batch": len(batch)})
    logger.info(
        "int8 graph %s made in %.1f s from %d images; int8 runs %.2fx fp32 here",
        sha256[:16],
        seconds,
        len(crops),
        ratio,
    )
    return (sha256 if ratio >= MIN_SPEEDUP else None), ratio
