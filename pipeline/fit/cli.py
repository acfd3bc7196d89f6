"""``python -m pipeline.fit``: flags -> :class:`~pipeline.config.FitConfig` -> :func:`run_fit`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .._cli import add_verbosity, setup_logging
from ..config import FitConfig, parse_set_overrides
from ..exceptions import PipelineError
from .evaluation import run_fit
from .report import format_table

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.fit",
        description="Fit and compare classifiers (nn, svc, xgboost, logreg) on a feature store "
        "from `python -m pipeline.extract`. Defaults come from the shipped pipeline/default.toml ([fit]; configs/default.toml in a checkout).",
    )
    add = parser.add_argument
    add("--config", help="TOML config file; keys it lacks keep the shipped defaults")
    add("--features", help="HDF5 feature store (default artifacts/features.h5)")
    add("--clf", help="nn | svc | xgboost | logreg | all, or a comma list such as svc,xgboost")
    add("--cv", type=int, help="K >= 2: stratified K-fold cross-validation; 0: split or holdout")
    add("--test-size", type=float, help="holdout fraction when the store has no split (0.2)")
    add("--out", help="output folder for report.json, report.md, plots and models/ (artifacts)")
    add("--seed", type=int, help="random seed for splits and classifiers (0)")
    add("--dask", help="train xgboost on Dask: local[:N] or tcp://HOST:PORT")
    add(
        "--set",
        dest="sets",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set svc.C=10 --set nn.hidden_layer_sizes=[512]",
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad usage or input)."""
    args = build_parser().parse_args(argv)
    setup_logging(args)
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k not in ("config", "verbose", "quiet", "sets") and v is not None
    }
    try:
        sets = parse_set_overrides(args.sets)
        config = FitConfig.from_file(args.config, sets=sets, **overrides)
        report = run_fit(config)
    except (PipelineError, ValueError, NotImplementedError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(format_table(report["results"]))
    print(f"report: {Path(config.out) / 'report.json'}")
    return 0
