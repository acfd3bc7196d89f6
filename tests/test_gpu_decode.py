"""--gpu-decode: JPEG batches through torchvision.io.decode_jpeg on the inference device.

No GPU here: the same code runs with device="cpu" (libjpeg-turbo instead of nvJPEG), which
checks the batching, the fallbacks, the crop and the fingerprint plumbing.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pipeline.extract.plan as extract_module
from pipeline.engine.backbones import resolve_backbone
from pipeline.engine.decoding import iter_batches, iter_device_batches
from pipeline.engine.sources import decode_image
from pipeline.extract import main as extract_main
from pipeline.fit import main as fit_main
from pipeline.predict import main as predict_main
from pipeline.store import read_store

from .conftest import TINY_MODEL

PRE = resolve_backbone("squeezenet1_1", "none").preprocessing


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour fields with mild noise: JPEG-friendly, like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(xx / 23 + seed), np.cos(yy / 17), np.sin((xx + yy) / 31)], axis=-1)
    pixels = (base * 0.4 + 0.5 + rng.normal(0, 0.03, base.shape)) * 255
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def mixed_files(tmp_path):
    """JPEGs (one EXIF-rotated), a PNG, a truncated JPEG and a non-image called .jpg."""
    paths = []
    for i, size in enumerate([(300, 200), (200, 300), (500, 375)]):
        paths.append(tmp_path / f"photo{i}.jpg")
        _photo(*size, seed=i).save(paths[-1], quality=95)
    rotated = _photo(320, 240, seed=9)
    exif = rotated.getexif()
    exif[0x0112] = 6
    paths.append(tmp_path / "rotated.jpg")
    rotated.save(paths[-1], exif=exif.tobytes(), quality=95)
    paths.append(tmp_path / "image.png")
    _photo(64, 48, seed=4).save(paths[-1])
    paths.append(tmp_path / "truncated.jpg")
    paths[-1].write_bytes(paths[0].read_bytes()[:300])
    paths.append(tmp_path / "text.jpg")
    paths[-1].write_text("not a jpeg")
    return [str(p) for p in paths]


@pytest.mark.parametrize("workers", [0, 2])
def test_device_decoding_matches_the_pil_path_closely(mixed_files, workers):
    def load(i):
        return decode_image(mixed_files[i])

    ours = list(iter_device_batches(load, mixed_files, PRE, "cpu", batch_size=3, workers=workers))
    reference = list(iter_batches(load, len(mixed_files), PRE, batch_size=3, workers=0))
    assert [b.indices for b in ours] == [b.indices for b in reference]
    images = np.concatenate([b.images.numpy() for b in ours]).astype(np.int16)
    expected = np.concatenate([b.images for b in reference]).astype(np.int16)
    errors = [e for b in ours for e in b.errors]
    assert errors[:5] == [""] * 5
    assert "truncated.jpg" in errors[5] and "text.jpg" in errors[6]
    # JPEGs, EXIF rotation included: another decoder and resize, within a few grey levels.
    for j in range(4):
        assert np.abs(images[j] - expected[j]).mean() < 2.0, mixed_files[j]
    np.testing.assert_array_equal(images[4], expected[4])  # the PNG takes the PIL path


def test_gpu_decode_needs_a_cuda_device(tmp_path, mixed_files, capsys):
    out = tmp_path / "f.h5"
    argv = ["--data", str(tmp_path), "--out", str(out), *TINY_MODEL, "--device", "cpu", "-q"]
    assert extract_main([*argv, "--gpu-decode"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --gpu-decode") and "\n" not in err
    assert not out.exists()


def test_gpu_decode_run_is_fingerprinted_and_its_models_need_cuda(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(4):
            _photo(120, 90, seed=i + (10 if label == "b" else 0)).save(data / label / f"{i}.jpg")
    # Let the device path run on the CPU, as it would on a GPU.
    monkeypatch.setattr(extract_module, "_check_gpu_decode", lambda config, device: None)
    base = ["--data", str(data), *TINY_MODEL, "--device", "cpu", "--no-progress", "-q"]
    assert extract_main([*base, "--out", str(tmp_path / "gpu.h5"), "--gpu-decode"]) == 0
    assert extract_main([*base, "--out", str(tmp_path / "pil.h5")]) == 0
    gpu, pil = read_store(tmp_path / "gpu.h5"), read_store(tmp_path / "pil.h5")
    assert gpu.attrs["gpu_decode"] and not pil.attrs["gpu_decode"]
    assert gpu.attrs["fingerprint"] != pil.attrs["fingerprint"]
    cos = (gpu.features * pil.features).sum(1) / (
        np.linalg.norm(gpu.features, axis=1) * np.linalg.norm(pil.features, axis=1)
    )
    assert (cos > 0.99).all()
    capsys.readouterr()
    assert extract_main([*base, "--out", str(tmp_path / "gpu.h5")]) == 2  # never mixed
    assert "gpu_decode" in capsys.readouterr().err
    run = tmp_path / "run"
    assert (
        fit_main(
            ["--features", str(tmp_path / "gpu.h5"), "--clf", "logreg", "--out", str(run), "-q"]
        )
        == 0
    )
    model = run / "models" / "logreg.joblib"
    assert predict_main(["--model", str(model), str(data), "--device", "cpu", "-q"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
