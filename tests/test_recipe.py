"""EmbeddingRecipe: the fingerprint of files written before the recipe existed, the attrs round
trip, and the mismatch message."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.engine.backbones import BackboneSpec
from pipeline.exceptions import ConfigError
from pipeline.recipe import DECODE_FIELDS, RECIPE_ATTRS, DecodeOptions, EmbeddingRecipe

from ._fit_helpers import SPEC_RECORD

PRETRAINED = BackboneSpec.from_record(
    {
        **SPEC_RECORD,
        "model": "squeezenet1_1",
        "weights": "SqueezeNet1_1_Weights.IMAGENET1K_V1",
        "weights_url": "https://example.invalid/squeezenet1_1-b8a52dc0.pth",
    }
)


@pytest.mark.parametrize(
    ("precision", "decode", "expected"),
    [
        # Written by BackboneSpec.fingerprint at 3abd660 for the same spec: stores and model
        # files of that version must keep matching.
        ("fp32", DecodeOptions(), "865e7b564a61824b4e58d7f2d581b071"),
        ("fp16", DecodeOptions(jpeg_draft=True), "53712472b8f03ee14fc058e45fc28baf"),
        ("fp32", DecodeOptions(gpu_decode=True), "1c37eeedfcc66f5ff5a0bed847a8c64f"),
        ("bf16", DecodeOptions(True, True), "2302b33893ae490e1d669f1ab4cdfb1e"),
    ],
)
def test_fingerprint_equals_the_one_earlier_versions_wrote(precision, decode, expected):
    assert EmbeddingRecipe(PRETRAINED, precision, decode).fingerprint() == expected


def test_every_field_changes_the_fingerprint():
    base = EmbeddingRecipe(PRETRAINED, "fp32")
    random_init = BackboneSpec.from_record({**SPEC_RECORD, "model": "squeezenet1_1"})
    variants = [
        base,
        dataclasses.replace(base, precision="bf16"),
        dataclasses.replace(base, spec=random_init),
        *(
            dataclasses.replace(base, decode=DecodeOptions(**{f: True}))
            for f in ("jpeg_draft", "gpu_decode")
        ),
        dataclasses.replace(base, decode=DecodeOptions(crop_mode="squash")),
        dataclasses.replace(base, decode=DecodeOptions(crop_mode="border")),
        dataclasses.replace(base, decode=DecodeOptions(views=("flip",))),
    ]
    assert set(DECODE_FIELDS) == {"jpeg_draft", "gpu_decode", "crop_mode", "views"}
    assert len({v.fingerprint() for v in variants}) == len(variants)


def test_attrs_name_every_recipe_attribute():
    recipe = EmbeddingRecipe(PRETRAINED, "fp16", DecodeOptions(jpeg_draft=True))
    attrs = recipe.to_attrs()
    assert tuple(attrs) == RECIPE_ATTRS
    assert attrs["weights"] == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert attrs["jpeg_draft"] is True and attrs["gpu_decode"] is False
    assert recipe.mismatch(attrs) is None
    assert recipe.draft_size == 256
    random_init = EmbeddingRecipe(BackboneSpec.from_record(SPEC_RECORD), "fp32")
    assert random_init.to_attrs()["weights"] == "none" and random_init.draft_size is None


def test_mismatch_says_what_differs():
    recipe = EmbeddingRecipe(PRETRAINED, "fp32")
    found = {**recipe.to_attrs(), "precision": "bf16", "fingerprint": "other"}
    assert recipe.mismatch(found) == "precision 'bf16' -> 'fp32'"
    old = {k: v for k, v in recipe.to_attrs().items() if k not in DECODE_FIELDS}
    old["fingerprint"] = "other"  # a file from before the decode options: they read as off
    assert recipe.mismatch(old) == "backbone weights or preprocessing details"
    drafted = EmbeddingRecipe(PRETRAINED, "fp32", DecodeOptions(jpeg_draft=True))
    assert drafted.mismatch(old) == "jpeg_draft False -> True"


def test_from_attrs_resolves_with_torchvision():
    recipe = EmbeddingRecipe.from_attrs(
        {"model": "squeezenet1_1", "weights": "none", "precision": "fp32", "jpeg_draft": True}
    )
    assert recipe.spec.weights is None and recipe.precision == "fp32"
    assert recipe.decode == DecodeOptions(jpeg_draft=True, gpu_decode=False)
    assert recipe.decode.crop_mode == "center" and recipe.views == ()  # absent: old files
    assert EmbeddingRecipe.from_attrs(recipe.to_attrs()) == recipe


def test_crop_mode_and_views_round_trip_and_are_named_in_mismatches():
    options = DecodeOptions(crop_mode="border", views="flip")
    recipe = EmbeddingRecipe(PRETRAINED, "fp32", options)
    attrs = recipe.to_attrs()
    assert attrs["crop_mode"] == "border" and attrs["views"] == ["flip"]
    assert EmbeddingRecipe.from_attrs(attrs) == recipe
    assert EmbeddingRecipe.from_attrs({**attrs, "views": '["flip"]'}) == recipe  # JSON attr
    assert recipe.preprocessing.crop_mode == "border"
    plain = EmbeddingRecipe(PRETRAINED, "fp32")
    assert plain.mismatch(attrs) == "crop_mode 'border' -> 'center'; views ['flip'] -> []"


@pytest.mark.parametrize(("field", "value"), [("crop_mode", "zoom"), ("views", "flip,rotate")])
def test_unknown_crop_mode_or_view_is_an_error_naming_it(field, value):
    with pytest.raises(ConfigError, match=value.split(",")[-1]) as info:
        DecodeOptions(**{field: value})
    assert info.value.param == field
