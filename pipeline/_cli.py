"""Shared CLI plumbing: verbosity flags and logging set-up (only CLIs configure logging)."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_verbosity", "setup_logging"]


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.INFO - 10 * args.verbose + 10 * args.quiet
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
