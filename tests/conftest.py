"""Shared fixtures: tiny generated images, no network, no ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Small, fast, random-init backbone for tests: its preprocessing still comes from torchvision.
# squeezenet1_1 because its random-init embeddings are O(1); those of mobilenet_v2/v3 and
# shufflenet are ~1e-9, which would make absolute tolerances in comparisons meaningless.
TINY_MODEL = ["--model", "squeezenet1_1", "--weights", "none"]
MOBILENET_CHECKPOINT = "mobilenet_v2-b0353104.pth"


def write_images(
    root: Path, classes: dict[str, int], size=(32, 32), seed=0, ext=".png"
) -> list[Path]:
    """Write ``classes[name]`` random images per class folder; distinct colour per class."""
    rng = np.random.default_rng(seed)
    paths = []
    for c, (name, count) in enumerate(sorted(classes.items())):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.zeros((*size[::-1], 3), dtype=np.float64)
            base[..., c % 3] = 180
            noise = rng.integers(0, 75, size=(*size[::-1], 3))
            path = folder / f"{name}_{i:03d}{ext}"
            Image.fromarray((base + noise).astype(np.uint8)).save(path)
            paths.append(path)
    return paths


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """2 classes x 4 PNGs of 32x32, plus one corrupt .jpg."""
    root = tmp_path / "images"
    write_images(root, {"cat": 4, "dog": 4})
    (root / "cat" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    return root


def weights_available() -> bool:
    from torch.hub import get_dir

    return os.path.exists(os.path.join(get_dir(), "checkpoints", MOBILENET_CHECKPOINT))


@pytest.fixture
def real_weights() -> None:
    """Skip unless the official MobileNetV2 checkpoint is in the torch hub cache.

    CI sets PIPELINE_REQUIRE_WEIGHTS=1, which turns the skip into a failure.
    """
    if not weights_available():
        if os.environ.get("PIPELINE_REQUIRE_WEIGHTS") == "1":
            pytest.fail(f"{MOBILENET_CHECKPOINT} missing from the torch hub cache")
        pytest.skip(f"{MOBILENET_CHECKPOINT} not in the torch hub cache (run .ci/setup.sh)")


@pytest.fixture(scope="session")
def _onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(_onnx_cache, monkeypatch) -> None:
    """Exported ONNX graphs go to a per-session folder, never the user's cache."""
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(_onnx_cache))
