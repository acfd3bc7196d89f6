"""Model files: the format stage two writes and predict reads, including files written before
the decode options existed."""

from __future__ import annotations

import joblib
import pytest
from sklearn.dummy import DummyClassifier

from pipeline.exceptions import ModelFileError
from pipeline.fit.model_file import BACKBONE_KEYS, MODEL_FORMAT_VERSION, load_model_file, save_model
from pipeline.recipe import BACKBONE_EXTRA_ATTRS, DECODE_FIELDS, RECIPE_ATTRS

from ._fit_helpers import RECIPE


def _payload(backbone: dict) -> dict:
    return {
        "format_version": MODEL_FORMAT_VERSION,
        "pipeline_version": "0.1.0",
        "clf": "logreg",
        "estimator": DummyClassifier().fit([[0], [1]], ["a", "b"]),
        "class_names": ["a", "b"],
        "backbone": backbone,
        "store": "features.h5",
    }


def test_backbone_keys_are_the_recipe_plus_feature_dim():
    assert (*RECIPE_ATTRS, "feature_dim") == BACKBONE_KEYS


def test_round_trip(tmp_path):
    path = tmp_path / "models" / "logreg.joblib"
    save_model(path, _payload({**RECIPE.to_attrs(), "feature_dim": 4}))
    loaded = load_model_file(path)
    assert loaded["backbone"]["fingerprint"] == RECIPE.fingerprint()
    assert RECIPE.mismatch(loaded["backbone"]) is None


def test_files_from_before_the_decode_options_still_load(tmp_path):
    older = (*DECODE_FIELDS, *BACKBONE_EXTRA_ATTRS)  # and before weights files, --preprocess
    old = {k: v for k, v in RECIPE.to_attrs().items() if k not in older}
    path = tmp_path / "old.joblib"
    joblib.dump(_payload({**old, "feature_dim": 4}), path)
    backbone = load_model_file(path)["backbone"]
    assert RECIPE.mismatch(backbone) is None  # absent decode options mean "off"


def test_other_format_versions_ask_for_a_refit(tmp_path):
    path = tmp_path / "v2.joblib"
    joblib.dump({**_payload({}), "format_version": MODEL_FORMAT_VERSION + 1}, path)
    with pytest.raises(ModelFileError, match="retrain with `python -m pipeline.fit`"):
        load_model_file(path)
