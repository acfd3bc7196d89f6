"""--crop-mode: the geometry of center / squash / border, its place in the recipe, and that
extract, ImageEmbedder and predict all apply the recorded mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from pipeline import ImageEmbedder
from pipeline.engine.backbones import resolve_backbone
from pipeline.extract import main as extract_main
from pipeline.recipe import DecodeOptions, EmbeddingRecipe
from pipeline.store import read_store

from ._precision import assert_embeddings_match
from .conftest import TINY_MODEL, write_images

PRESET = resolve_backbone("mobilenet_v2", "IMAGENET1K_V1").preprocessing  # 256 -> 224, bilinear


def _two_halves(width: int = 400, height: int = 200) -> Image.Image:
    """A 2:1 image: red left quarter, green middle half, blue right quarter."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 4, 0] = 255
    pixels[:, width // 4 : 3 * width // 4, 1] = 255
    pixels[:, 3 * width // 4 :, 2] = 255
    return Image.fromarray(pixels)


def _mode(name: str):
    return dataclasses.replace(PRESET, crop_mode=name)


def test_center_crops_the_sides_away():
    crop = _mode("center").crop(_two_halves())
    assert crop.shape == (224, 224, 3)
    assert (crop[..., 1] > 200).all()  # only the green middle is left


def test_squash_keeps_the_whole_image_and_border_pads():
    squash = _mode("squash").crop(_two_halves())
    assert squash.shape == (224, 224, 3)
    assert squash[:, 5, 0].min() > 200 and squash[:, -5, 2].min() > 200  # red and blue kept
    border = _mode("border").crop(_two_halves())
    assert border.shape == (224, 224, 3)
    # Long side resized to 224, short side 112 centred: 56 black rows above and below.
    assert not border[:56].any() and not border[-56:].any()
    assert border[60:-60, 5, 0].min() > 200 and border[60:-60, -5, 2].min() > 200
    tall = _mode("border").crop(_two_halves().transpose(Image.Transpose.ROTATE_90))
    assert not tall[:, :56].any() and not tall[:, -56:].any()


def test_center_stays_the_preset_and_modes_refuse_empty_images():
    image = _two_halves(300, 170)
    assert np.array_equal(_mode("center").crop(image), PRESET.crop(image))
    assert PRESET.crop_mode == "center"
    with pytest.raises(ValueError, match="GPU-decode"):
        _mode("squash").crop_tensor(None)


def test_crop_mode_is_part_of_the_fingerprint():
    spec = resolve_backbone("squeezenet1_1", "none")
    prints = {
        EmbeddingRecipe(spec, "fp32", DecodeOptions(crop_mode=m)).fingerprint()
        for m in ("center", "squash", "border")
    }
    assert len(prints) == 3
    # The default keeps the fingerprint every earlier store and model file holds.
    assert EmbeddingRecipe(spec, "fp32").fingerprint() in prints


def test_extract_embedder_and_predict_apply_the_crop_mode(tmp_path, capsys):
    data = tmp_path / "images"
    paths = write_images(data, {"a": 3, "b": 3}, size=(48, 24))
    args = ["--data", str(data), *TINY_MODEL, "--no-progress", "-q"]
    assert extract_main([*args, "--out", str(tmp_path / "c.h5")]) == 0
    assert extract_main([*args, "--out", str(tmp_path / "s.h5"), "--crop-mode", "squash"]) == 0
    center, squash = read_store(tmp_path / "c.h5"), read_store(tmp_path / "s.h5")
    assert squash.attrs["crop_mode"] == "squash" and center.attrs["crop_mode"] == "center"
    assert squash.attrs["fingerprint"] != center.attrs["fingerprint"]
    assert not np.allclose(squash.features, center.features)
    # A store of one crop mode refuses another's rows, naming the difference.
    code = extract_main([*args, "--out", str(tmp_path / "s.h5"), "--crop-mode", "border"])
    assert code == 2 and "crop_mode 'squash' -> 'border'" in capsys.readouterr().err
    embedder = ImageEmbedder(model="squeezenet1_1", weights=None, crop_mode="squash")
    by_path = dict(zip(squash.paths, squash.features, strict=True))
    got = embedder.fit_transform([str(p) for p in paths])
    want = np.stack([by_path[str(p)] for p in paths])
    assert_embeddings_match(got, want, squash.attrs["precision"])
    with pytest.raises(ValueError, match="crop_mode"):
        ImageEmbedder(crop_mode="zoom").fit()


def test_gpu_decode_refuses_other_crop_modes(tmp_path, capsys):
    data = tmp_path / "images"
    write_images(data, {"a": 1, "b": 1})
    code = extract_main(
        [
            "--data",
            str(data),
            "--out",
            str(tmp_path / "f.h5"),
            *TINY_MODEL,
            "-q",
            "--crop-mode",
            "border",
            "--gpu-decode",
        ]  # fmt: skip
    )
    assert code == 2
    assert "error: --gpu-decode: has only the center crop mode" in capsys.readouterr().err
