"""The split preprocessing (uint8 crop + on-device normalisation) equals the weights' preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.engine.backbones import resolve_backbone
from pipeline.engine.preprocess import Preprocessing
from pipeline.recipe import EmbeddingRecipe

# Presets that differ: bilinear 256/224, bicubic 232/224 (swin), bilinear 342/299 (inception),
# bicubic 256/224 (efficientnet), 518/518 bicubic (vit_h_14 SWAG: no resize margin).
MODELS = [
    ("mobilenet_v2", "IMAGENET1K_V1"),
    ("swin_t", "DEFAULT"),
    ("inception_v3", "DEFAULT"),
    ("efficientnet_b0", "DEFAULT"),
    ("resnet50", "IMAGENET1K_V2"),
    ("regnet_y_16gf", "IMAGENET1K_SWAG_E2E_V1"),
]
SIZES = [(500, 375), (375, 500), (224, 224), (256, 256), (31, 17), (1, 1), (300, 100), (257, 999)]


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(("model", "weights"), MODELS)
def test_split_preprocessing_equals_the_weights_transform_bit_for_bit(model, weights):
    spec = resolve_backbone(model, weights)
    preset = spec.transforms()
    ours = Preprocessing.from_transform(preset)
    assert ours == spec.preprocessing
    for seed, (w, h) in enumerate(SIZES):
        image = _photo(w, h, seed)
        crop = ours.crop(image)
        assert crop.dtype == np.uint8 and crop.shape == (ours.crop_size, ours.crop_size, 3)
        torch.testing.assert_close(ours(image), preset(image), rtol=0, atol=0)


def test_crop_keeps_the_bytes_small_and_normalize_runs_on_batches():
    pre = resolve_backbone("mobilenet_v2", "IMAGENET1K_V1").preprocessing
    crops = np.stack([pre.crop(_photo(400, 300, i)) for i in range(3)])
    batch = torch.from_numpy(crops).permute(0, 3, 1, 2)
    out = pre.normalize(batch)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 224, 224)
    assert crops.nbytes * 4 == out.numel() * out.element_size()


def test_unsupported_preset_is_refused():
    with pytest.raises(ValueError, match="unsupported preprocessing"):
        Preprocessing.from_fields({"class": "SomethingElse"})


def test_spec_record_round_trip_needs_no_torchvision_lookups():
    spec = resolve_backbone("mobilenet_v2", "IMAGENET1K_V1")
    again = type(spec).from_record(spec.to_record())
    assert again == spec
    assert EmbeddingRecipe(again, "fp32").to_attrs() == EmbeddingRecipe(spec, "fp32").to_attrs()
    assert "weights_enum" not in again.__dict__
