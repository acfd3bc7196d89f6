"""Real pretrained MobileNetV2 (IMAGENET1K_V1): the stored embedding is exactly the network's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.engine.backbones import build_backbone, resolve_backbone
from pipeline.engine.sources import decode_image
from pipeline.extract import main
from pipeline.store import read_store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("real_weights")]


def test_auto_weights_resolve_to_v1_not_torchvisions_default():
    spec = resolve_backbone("mobilenet_v2", "auto", {"mobilenet_v2": "IMAGENET1K_V1"})
    assert spec.weights == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert resolve_backbone("mobilenet_v2", "DEFAULT").weights.endswith("IMAGENET1K_V2")


def test_head_on_stored_embedding_reproduces_torchvision_logits(tmp_path):
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "thing"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(
            folder / f"{i}.jpg"
        )
    out = tmp_path / "f.h5"
    # --device cpu: the reference below is torchvision's fp32 model on the CPU; a GPU's bf16
    # default would be within bf16 rounding of it, not 1e-4.
    argv = ["--data", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--no-progress", "-q"]) == 0
    table = read_store(out)
    assert table.attrs["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert table.features.shape == (3, 1280)

    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    reference = mobilenet_v2(weights=weights).eval()
    preprocess = weights.transforms()
    batch = torch.stack([preprocess(decode_image(p)) for p in table.paths])
    with torch.inference_mode():
        expected = reference(batch).numpy()
    head = build_backbone(resolve_backbone("mobilenet_v2", "IMAGENET1K_V1")).head
    with torch.inference_mode():
        got = head(torch.from_numpy(table.features)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()
