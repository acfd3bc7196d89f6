"""``python -m pipeline.fit``: flags -> :class:`~pipeline.config.FitConfig` -> :func:`run_fit`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .._cli import ArgumentParser, add_verbosity, run_command, validated
from ..classifiers import ALL_CLASSIFIERS, CLASSIFIER_NAMES
from ..config import FitConfig, parse_set_overrides
from .evaluation import parse_clf, run_fit
from .report import format_table

__all__ = ["build_parser", "main"]


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


def build_parser(prog: str = "python -m pipeline.fit") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description=f"Fit and compare classifiers ({', '.join(ALL_CLASSIFIERS)}) on a feature store "
        "from `python -m pipeline.extract`. Defaults come from the shipped pipeline/default.toml ([fit]; configs/default.toml in a checkout).",
    )
    add = parser.add_argument
    add("--config", help="TOML config file; keys it lacks keep the shipped defaults")
    add("--features", help="HDF5 feature store (default artifacts/features.h5)")
    add(
        "--clf",
        type=validated(parse_clf, "clf"),
        help=f"{' | '.join(CLASSIFIER_NAMES)} | all, or a comma list such as svc,xgboost",
    )
    add("--cv", type=int, help="K >= 2: stratified K-fold cross-validation; 0: split or holdout")
    add("--test-size", type=float, help="holdout fraction when the store has no split (0.2)")
    add("--out", help="output folder for report.json, report.md, plots and models/ (artifacts)")
    add("--seed", type=int, help="random seed for splits and classifiers (0)")
    add("--dask", help="train xgboost on Dask: local[:N] or tcp://HOST:PORT")
    add("--tta", type=_on_off, metavar="on|off", help="average over the store's views (on)")
    add("--augment", action="store_true", default=None, help="train on the views too")
    add(
        "--search",
        action="store_true",
        default=None,
        help="choose each classifier's hyperparameters from its [fit.search.<clf>] space by "
        "inner stratified CV on the training rows, then refit on all of them",
    )
    add("--search-cv", type=int, help="inner folds of --search (3)")
    add(
        "--no-audit",
        dest="audit",
        action="store_false",
        default=None,
        help="skip the label-issue and duplicate audit of report.html (its cost is logged)",
    )
    add(
        "--set",
        dest="sets",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set svc.C=10 --set nn.hidden_layer_sizes=[512]",
    )
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m pipeline.fit") -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad usage or input)."""
    return run_command(build_parser(prog), argv, _fit)


def _fit(args: argparse.Namespace) -> int:
    """The command: flags and ``--set`` over the config file, run, print the results."""
    skip = ("config", "verbose", "quiet", "sets", "search", "search_cv")
    overrides = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    sets = parse_set_overrides(args.sets)
    if args.search or args.search_cv is not None:
        search = sets.setdefault("search", {})
        if args.search:
            search["enabled"] = True
        if args.search_cv is not None:
            search["cv"] = args.search_cv
    config = FitConfig.from_file(args.config, sets=sets, **overrides)
    report = run_fit(config)
    print(format_table(report["results"]))
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {Path(config.out) / 'report.json'}, {Path(config.out) / 'report.html'}")
    return 0
