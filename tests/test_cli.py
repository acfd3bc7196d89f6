"""Errors: library code names the parameter; the CLIs turn it into the flag, in one place."""

from __future__ import annotations

import pickle

import pytest

from pipeline._cli import ArgumentParser, add_verbosity, error_line, run_cli, run_command
from pipeline._cluster import parse_dask_spec
from pipeline.config import FitConfig, parse_set_overrides
from pipeline.exceptions import ConfigError, PipelineError, StoreError
from pipeline.fit import parse_clf
from pipeline.predict import collect_images


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda: parse_clf("kmeans"), "clf"),
        (lambda: parse_dask_spec("local:0"), "dask"),
        (lambda: parse_set_overrides(["nokey"]), "set"),
        (lambda: FitConfig.from_file("/nonexistent/config.toml"), "config"),
    ],
)
def test_library_errors_are_value_errors_naming_the_parameter(call, param):
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, PipelineError) and info.value.param == param
    assert str(info.value).startswith(f"{param}: ")
    assert not str(info.value).startswith("--")


def test_error_line_maps_parameters_to_flags():
    exc = ConfigError("must be positive,\n  got -1", param="batch_size")
    assert error_line(exc) == "--batch-size: must be positive, got -1"
    assert error_line(exc, {"batch_size": "-b"}) == "-b: must be positive, got -1"
    assert error_line(StoreError("x.h5: no such feature store")) == "x.h5: no such feature store"
    assert error_line(ValueError("plain")) == "plain"


def test_predict_names_its_positional_argument(tmp_path):
    with pytest.raises(ConfigError) as info:
        collect_images([tmp_path])
    assert error_line(info.value, {"inputs": "IMAGE_OR_DIR"}).startswith("IMAGE_OR_DIR: no images")


def test_run_cli_exit_codes(capsys):
    def bad() -> int:
        raise ConfigError("is not one of auto, torch", param="backend")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_cli(bad) == 2
    assert capsys.readouterr().err == "error: --backend: is not one of auto, torch\n"
    assert run_cli(interrupted, interrupted="stopped") == 130
    assert capsys.readouterr().err == "stopped\n"
    assert run_cli(lambda: 0) == 0


def test_run_command_parses_then_runs_under_run_cli(capsys):
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--n", type=int, required=True)
    add_verbosity(parser)
    seen = []

    def command(args) -> int:
        seen.append(args.n)
        if args.n < 0:
            raise ConfigError("must be positive", param="n")
        return 0

    assert run_command(parser, ["--n", "3", "-q"], command) == 0 and seen == [3]
    # a usage error and a library error alike: one line, exit code 2, the flag named
    assert run_command(parser, ["--n", "x"], command) == 2
    assert capsys.readouterr().err.startswith("error: --n: invalid int value: 'x'")
    assert run_command(parser, ["--n", "-1"], command, flags={"n": "-N"}) == 2
    assert capsys.readouterr().err == "error: -N: must be positive\n" and seen == [3, -1]


def test_errors_pickle_with_their_parameter():  # Dask ships them between processes
    again = pickle.loads(pickle.dumps(ConfigError("bad", param="dask")))
    assert type(again) is ConfigError and again.param == "dask" and str(again) == "dask: bad"
