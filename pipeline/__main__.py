"""``python -m pipeline``: the ``pipeline`` console command (:mod:`pipeline.console`)."""

from .console import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m pipeline"))
