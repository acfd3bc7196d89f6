"""``python -m pipeline.extract``: flags -> :class:`~pipeline.config.ExtractConfig` -> a run."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from .._cli import ArgumentParser, add_verbosity, examples, run_command, show_defaults, validated
from .._runtime import BACKENDS, PRECISIONS, check_device
from ..config import ExtractConfig, default_values
from ..engine.preprocess import CROP_MODES
from ..exceptions import ConfigError
from .executors import run_extraction

__all__ = ["build_parser", "main"]


def _add_recipe_flags(add: Callable[..., Any]) -> None:
    """Decode and preprocessing options: each is part of the embedding recipe (fingerprint)."""
    add(
        "--jpeg-draft",
        action="store_true",
        default=None,
        help="decode large JPEGs at a reduced scale (faster; part of the fingerprint)",
    )
    add(
        "--gpu-decode",
        action="store_true",
        default=None,
        help="decode JPEG batches on the GPU with torchvision.io.decode_jpeg (nvJPEG), resize "
        "and crop there (CUDA runs; part of the fingerprint)",
    )
    add(
        "--crop-mode",
        choices=CROP_MODES,
        help="fit images to the crop: center (the weights' preset), squash (whole image, "
        "aspect ignored), border (aspect kept, padded); part of the fingerprint",
    )
    add(
        "--preprocess",
        help="the weights' preprocessing (default), another preset's (IMAGENET1K_V1), or values "
        "\"resize=256 crop=224 mean=0.485,0.456,0.406 std=0.229,0.224,0.225 "
        "interpolation=bilinear\" (any subset; part of the fingerprint)",
    )
    add(
        "--views",
        help="augmented views embedded besides the plain one, comma-separated: flip "
        "(stored under /views/<name>/features; part of the fingerprint)",
    )


def _add_store_flags(add: Callable[..., Any]) -> None:
    """What a run may do to an existing store, and how it shows progress."""
    add("--overwrite", action="store_true", default=None, help="replace an existing store at --out")
    add(
        "--prune",
        action="store_true",
        default=None,
        help="remove the stored rows of inputs this --data no longer has (without it, such a "
        "run is refused and the store left untouched)",
    )
    add(
        "--compact",
        action="store_true",
        default=None,
        help="rewrite the store as one self-contained file in source order (updates otherwise "
        "append new rows to part files in <out>.parts/)",
    )
    add(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (terminal) or progress lines (redirected)",
    )


def build_parser(prog: str = "python -m pipeline.extract") -> argparse.ArgumentParser:
    fit = prog.replace("extract", "fit")
    parser = ArgumentParser(
        prog=prog,
        description="Embed images with a pretrained torchvision CNN into an HDF5 feature store "
        f"for `{fit}`. Defaults come from the shipped pipeline/default.toml ([extract]; "
        "configs/default.toml in a checkout).",
        epilog=examples(
            prog,
            [
                ("", "the built-in digits -> artifacts/features.h5"),
                ("--data photos/ --out artifacts/photos.h5", "a folder of class folders"),
                ("--data labels.csv --out artifacts/labels.h5", "a CSV of path,label[,split]"),
                ("--data photos/ --model resnet50 --out r50.h5", "another backbone"),
            ],
        ),
    )
    add = parser.add_argument
    add("--config", help="TOML config file; keys it lacks keep the shipped defaults")
    add(
        "--data",
        help="ImageFolder dir, dir with train/val/test, CSV path,label[,split], or sklearn:digits",
    )
    add(
        "--model",
        help="torchvision model name (mobilenet_v2, resnet50, convnext_tiny) or timm:NAME "
        "(timm:convnext_tiny; needs pipeline[timm])",
    )
    add(
        "--weights",
        help="auto | DEFAULT | none | a weights name such as IMAGENET1K_V1 | a checkpoint file "
        "(.pth, .pt, .pth.tar, .safetensors)",
    )
    add("--out", help="output HDF5 store")
    add("--batch-size", type=int, help="images per forward pass (0: automatic)")
    add(
        "--workers",
        type=int,
        help="decoding threads on CPU, processes with a GPU (-1: automatic, 0: main thread)",
    )
    add("--device", type=validated(check_device, "device"), help="auto | cpu | cuda | cuda:N")
    add(
        "--precision",
        choices=PRECISIONS,
        help="auto: bf16/fp16 on GPU, fp32 on CPU; int8: quantised graph on the CPU (ONNX Runtime)",
    )
    add("--backend", choices=BACKENDS, help="auto: ONNX Runtime for fp32 on CPU, else torch")
    add("--dask", help="run on Dask: local[:N] or tcp://HOST:PORT")
    add("--checkpoint-seconds", type=float, help="how often finished rows are made durable")
    _add_recipe_flags(add)
    _add_store_flags(add)
    add_verbosity(parser)
    show_defaults(parser, default_values("extract"))
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m pipeline.extract") -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad usage or input)."""
    return run_command(
        build_parser(prog),
        argv,
        _extract,
        interrupted="interrupted; run the same command to resume (part files already written are kept)",
    )


def _extract(args: argparse.Namespace) -> int:
    """The command: flags over the config file, run, print the summary line."""
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k not in ("config", "verbose", "quiet") and v is not None
    }
    config = ExtractConfig.from_file(args.config, **overrides)
    summary = run_extraction(config)
    print(summary.line())
    if summary.n_rows == 0 and summary.n_failed > 0:
        # The store, with its /failed records, is written all the same.
        raise ConfigError(
            f"every input failed ({summary.n_failed}); the reasons are in /failed of {summary.out}",
            param="data",
        )
    return 0
