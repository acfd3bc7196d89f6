"""Backbones from torchvision's registry: any family, the embedding found generically."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.backbones import build_backbone, resolve_backbone
from pipeline.exceptions import BackboneError
from pipeline.recipe import EmbeddingRecipe


@pytest.mark.parametrize(
    "name, dim",
    [
        ("convnext_tiny", 768),
        ("densenet121", 1024),
        ("vit_b_16", 768),
        ("squeezenet1_1", 512),
        ("googlenet", 1024),
        ("swin_t", 768),
    ],
)
def test_embedding_is_the_input_of_the_classifier(name, dim):
    backbone = build_backbone(resolve_backbone(name, "none"))
    size = backbone.spec.input_size
    assert backbone.feature_dim == dim and not backbone.module.training
    with torch.inference_mode():
        out = backbone.module(torch.zeros(2, 3, size, size))
    assert out.shape == (2, dim)
    if backbone.head is not None:  # the cut-off classifier turns embeddings into logits
        assert backbone.head(out).shape == (2, 1000)


def test_random_init_is_seeded_so_runs_agree():
    a = build_backbone(resolve_backbone("mobilenet_v3_small", None)).module
    b = build_backbone(resolve_backbone("mobilenet_v3_small", "none")).module
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_weights_names_and_fingerprints():
    full = resolve_backbone("resnet50", "ResNet50_Weights.IMAGENET1K_V1")
    assert resolve_backbone("resnet50", "IMAGENET1K_V1") == full
    assert resolve_backbone("resnet50", "DEFAULT").weights == "ResNet50_Weights.IMAGENET1K_V2"
    assert resolve_backbone("resnet50", "auto", {}).weights.endswith("IMAGENET1K_V2")
    v2 = resolve_backbone("resnet50", "IMAGENET1K_V2")
    # V2 evaluates at resize 232: preprocessing comes from the weights, not constants.
    assert v2.preprocessing_fields["resize_size"] == [232]
    assert full.preprocessing_fields["resize_size"] == [256]
    prints = {
        EmbeddingRecipe(s, p).fingerprint()
        for s, p in [(full, "fp32"), (v2, "fp32"), (full, "bf16")]
    }
    assert len(prints) == 3
    assert resolve_backbone("resnet50", "none").transforms().crop_size == [224]


def test_unknown_names_suggest_alternatives():
    with pytest.raises(BackboneError, match="did you mean .*resnet50"):
        resolve_backbone("resnet05")
    with pytest.raises(BackboneError, match="valid: auto, DEFAULT, none, IMAGENET1K_V1, IMAGENET1K_V2$"):
        resolve_backbone("resnet50", "IMAGENET")
