"""``pipeline export`` / ``python -m pipeline.export``: a model file -> one ONNX file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .._cli import ArgumentParser, add_verbosity, examples, run_command
from ..exceptions import ConfigError

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "python -m pipeline.export") -> argparse.ArgumentParser:
    fit, predict = prog.replace("export", "fit"), prog.replace("export", "predict")
    parser = ArgumentParser(
        prog=prog,
        description=f"Export a model file from `{fit}` as one ONNX graph, image pixels "
        "to class probabilities (resize, crop, backbone, views and classifier inside), "
        f"checked against `{predict}` before it is written. See docs/export.md.",
        epilog=examples(
            prog,
            [
                ("--model runs/a/models/svc.joblib --out svc.onnx", "one ONNX file"),
                ("--model runs/a/models/svc.joblib --out svc.onnx --page svc_page", "and a page"),
            ],
        ),
    )
    add = parser.add_argument
    add("--model", required=True, help="a models/<clf>.joblib file written by pipeline.fit")
    add("--out", required=True, help="the .onnx file to write")
    add(
        "--page",
        metavar="DIR",
        help="also write an offline web page that runs the model (index.html, model, "
        "ONNX Runtime Web) into DIR",
    )
    add(
        "--images",
        type=int,
        default=32,
        help="images the check runs through the graph and predict (32)",
    )
    add(
        "--tolerance",
        type=float,
        default=None,
        help="largest |probability difference| to predict allowed where the graph is fed "
        "PIL's crops (0.001); the whole graph must also agree on 90 %% of the labels",
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m pipeline.export") -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad usage, input or failed check)."""
    flags = {"model_path": "--model", "images": "--images"}
    return run_command(build_parser(prog), argv, _export, flags=flags)


def _export(args: argparse.Namespace) -> int:
    from .run import run_export

    write_page = None
    if args.page is not None:
        try:
            from .page import write_page
        except ImportError:
            raise ConfigError(
                "the offline page is not available in this installation (pipeline.export.page "
                "is missing)",
                param="page",
            ) from None
    result = run_export(args.model, args.out, n_images=args.images, tolerance=args.tolerance)
    print(f"check against predict: {result.verification.line()}")
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB)")
    if write_page is not None:
        page = write_page(Path(result.path), Path(args.page))
        print(f"page: {page}")
    return 0
