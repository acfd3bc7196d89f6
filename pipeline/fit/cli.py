"""``python -m pipeline.fit``: flags -> :class:`~pipeline.config.FitConfig` -> :func:`run_fit`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._cli import (
    ArgumentParser,
    add_verbosity,
    examples,
    run_command,
    show_defaults,
    validated,
    with_default,
)
from ..classifiers import ALL_CLASSIFIERS, CLASSIFIER_NAMES
from ..config import FitConfig, default_values, parse_set_overrides
from .evaluation import parse_clf, run_fit
from .report import format_table

__all__ = ["build_parser", "main"]


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


def _examples(prog: str) -> str:
    """The ``examples:`` epilog of ``--help``."""
    return examples(
        prog,
        [
            ("", "compare every classifier on artifacts/features.h5"),
            ("--features photos.h5 --out runs/photos", "another store, another folder"),
            ("--clf logreg,svc --cv 5", "two classifiers, 5-fold cross-validation"),
            ("--clf logreg --refit --out runs/final", "save logreg trained on every image"),
            ("--out runs/photos --replace", "run again into a folder of another run"),
        ],
    )


def _add_run_flags(add: Callable[..., Any]) -> None:
    """``--replace`` and ``--refit``: what happens to the saved models."""
    add(
        "--replace",
        action="store_true",
        default=None,
        help="let this run replace the outputs of a different run in --out (its models "
        "included); without it such a run stops at once and says what it would replace",
    )
    add(
        "--refit",
        action="store_true",
        default=None,
        help="after the comparison, train the saved models on all labelled rows (train + "
        "test); the scores stay those of the models trained on the training rows",
    )


def build_parser(prog: str = "python -m pipeline.fit") -> argparse.ArgumentParser:
    extract = prog.replace("fit", "extract")
    defaults = default_values("fit")
    parser = ArgumentParser(
        prog=prog,
        description=f"Fit and compare classifiers ({', '.join(ALL_CLASSIFIERS)}) on a feature store "
        f"from `{extract}`. Defaults come from the shipped pipeline/default.toml ([fit]; "
        "configs/default.toml in a checkout).",
        epilog=_examples(prog),
    )
    add = parser.add_argument
    add("--config", help="TOML config file; keys it lacks keep the shipped defaults")
    add("--features", help=f"HDF5 feature store written by `{extract}`")
    add(
        "--clf",
        type=validated(parse_clf, "clf"),
        help=f"{' | '.join(CLASSIFIER_NAMES)} | all, or a comma list such as svc,xgboost",
    )
    add("--cv", type=int, help="K >= 2: stratified K-fold cross-validation; 0: split or holdout")
    add("--test-size", type=float, help="holdout fraction when the store has no split")
    add("--out", help="output folder for report.json, report.md, plots and models/")
    _add_run_flags(add)
    add("--seed", type=int, help="random seed for splits and classifiers")
    add("--dask", help="train xgboost on Dask: local[:N] or tcp://HOST:PORT")
    add("--tta", type=_on_off, metavar="on|off", help="average over the store's views")
    add("--augment", action="store_true", default=None, help="train on the views too")
    add(
        "--search",
        action="store_true",
        default=None,
        help="choose each classifier's hyperparameters from its [fit.search.<clf>] space by "
        "inner stratified CV on the training rows, then refit on all of them",
    )
    add(
        "--search-cv",
        type=int,
        help=with_default("inner folds of --search", defaults["search"]["cv"]),
    )
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
    show_defaults(parser, defaults)
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
    if report.get("summary"):
        print(f"\n{report['summary']}")
    out = Path(config.out)
    print(f"report: {out / 'report.html'} (also report.md, report.json)")
    return 0
