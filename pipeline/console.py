"""The ``pipeline`` console command: ``pipeline extract|fit|predict|export [flags]``.

Each sub-command is the CLI of ``python -m pipeline.<command>`` (same parser, same flags, same
exit codes), imported only when it is run, so ``pipeline --help`` and ``pipeline --version``
answer without importing torch. ``python -m pipeline`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._cli import ArgumentParser, run_cli

__all__ = ["COMMANDS", "build_parser", "main"]

#: sub-command -> (module with ``main(argv, prog=...)``, one-line help)
COMMANDS = {
    "extract": ("pipeline.extract.cli", "embed images into an HDF5 feature store (stage one)"),
    "fit": ("pipeline.fit.cli", "fit and compare classifiers on a feature store (stage two)"),
    "predict": ("pipeline.predict", "classify new images with a model file from `fit`"),
    "export": ("pipeline.export.cli", "export a model file as one verified ONNX graph"),
}


def build_parser(prog: str = "pipeline") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="Transfer learning for image classification: embed images with a "
        "pretrained CNN once, then compare classifiers on the embeddings.",
        epilog=f"`{prog} COMMAND --help` lists a command's flags.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, text) in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "pipeline") -> int:
    """Run ``pipeline COMMAND ...``; returns the command's exit code (2 on bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return module.main(argv[1:], prog=f"{prog} {argv[0]}")
    parser = build_parser(prog)

    def usage() -> int:  # no command, or an unknown one: --help, --version or a usage error
        parser.parse_args(argv)
        return 2  # pragma: no cover - a known command returns above

    return run_cli(usage)
