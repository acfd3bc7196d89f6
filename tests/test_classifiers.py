"""The classifier registry: one list of names for fit, config, CLI help and docs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.classifiers import (
    ALL_CLASSIFIERS,
    CLASSIFIER_NAMES,
    REGISTRY,
    default_params,
    make_classifier,
)
from pipeline.config import FitConfig, default_values
from pipeline.fit import build_parser, parse_clf


def test_config_tables_follow_the_registry():
    tables = {k for k, v in default_values("fit").items() if isinstance(v, dict)}
    assert tables == set(REGISTRY) | {"search"}
    spaces = {k for k, v in default_values("fit.search").items() if isinstance(v, dict)}
    # one search space per classifier; the ensemble takes its candidates' searched choices
    assert spaces == set(REGISTRY) - {"ensemble"}
    assert {name: getattr(FitConfig(), name) for name in REGISTRY} == {
        name: default_params(name) for name in REGISTRY
    }


def test_fit_takes_its_names_from_the_registry():
    assert parse_clf("all") == list(ALL_CLASSIFIERS)
    assert set(ALL_CLASSIFIERS) < set(CLASSIFIER_NAMES)
    help_text = build_parser().format_help()
    assert all(name in help_text for name in CLASSIFIER_NAMES)
    assert "knn" in ALL_CLASSIFIERS
    with pytest.raises(ValueError, match="svc_approx"):
        parse_clf("kmeans")


@pytest.mark.parametrize("name", CLASSIFIER_NAMES)
def test_every_default_table_builds(name):
    params = {k: (None if v == "none" else v) for k, v in default_params(name).items()}
    if "hidden_layer_sizes" in params:
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    clf = make_classifier(name, **params)
    assert clf.steps[-1][0] == "clf"
    assert (clf.steps[0][0] == "scale") is REGISTRY[name].scaled


def test_registry_imports_neither_sklearn_nor_torch():
    code = (
        "import sys, pipeline.classifiers as c; c.CLASSIFIER_NAMES; "
        "sys.exit(bool({'sklearn', 'torch'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
