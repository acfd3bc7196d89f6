"""Configuration: the shipped defaults are the only defaults, and a wheel carries them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.config import (
    DEFAULT_CONFIG_PATH,
    ExtractConfig,
    FitConfig,
    default_values,
    load_section,
)

REPO = Path(__file__).resolve().parent.parent


def test_python_api_and_cli_share_defaults():
    assert FitConfig() == FitConfig.from_file(None)
    assert ExtractConfig() == ExtractConfig.from_file(None)
    # What the CLI trains: early stopping for nn, balanced classes for svc and logreg.
    assert FitConfig().nn["early_stopping"] is True
    assert FitConfig().svc["class_weight"] == "balanced"
    assert FitConfig().logreg["class_weight"] == "balanced"


def test_defaults_are_not_shared_between_instances():
    first = FitConfig()
    first.nn["max_iter"] = 1  # a Mapping field is a fresh copy per instance
    assert FitConfig().nn["max_iter"] == default_values("fit.nn")["max_iter"] != 1


def test_user_file_overrides_only_what_it_names(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text("[fit]\ncv = 3\n[fit.svc]\nC = 10.0\n")
    config = FitConfig.from_file(user)
    assert config.cv == 3 and config.svc["C"] == 10.0
    assert config.svc["class_weight"] == "balanced" and config.seed == FitConfig().seed
    assert load_section("extract", user) == default_values("extract")


def test_repository_config_is_the_shipped_file():
    repo_copy = REPO / "configs" / "default.toml"
    assert repo_copy.read_bytes() == DEFAULT_CONFIG_PATH.read_bytes()
    assert DEFAULT_CONFIG_PATH.parent == REPO / "pipeline"


def test_every_config_field_has_a_shipped_default():
    for cls, section in ((ExtractConfig, "extract"), (FitConfig, "fit")):
        names = {f.name for f in dataclasses.fields(cls)}
        assert names == set(default_values(section)), section


@pytest.mark.slow
def test_wheel_ships_the_defaults(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the source
    shutil.copytree(
        REPO / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=source,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pipeline/default.toml" in names
    assert {"pipeline/engine/runners.py", "pipeline/extract/__main__.py"} <= names
    assert "pipeline/fit/model_file.py" in names
