"""CPU backends: ONNX Runtime must equal torch, and fall back to torch with a logged reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.engine import runners as embedding
from pipeline.engine.backbones import resolve_backbone
from pipeline.engine.runners import OnnxRunner, TorchRunner, make_runner, max_relative_difference
from pipeline.engine.sources import decode_image
from pipeline.extract import main
from pipeline.store import read_store

from .conftest import TINY_MODEL, write_images

CPU = torch.device("cpu")


@pytest.mark.slow
@pytest.mark.usefixtures("real_weights")
def test_onnxruntime_equals_torch_on_real_mobilenet_v2(tmp_path):
    spec = resolve_backbone("mobilenet_v2", "IMAGENET1K_V1")
    paths = write_images(tmp_path, {"a": 3}, size=(500, 375), ext=".jpg")
    crops = np.stack([spec.preprocessing.crop(decode_image(p)) for p in paths])
    onnx = make_runner(spec, CPU, "fp32", "onnxruntime")
    torch_runner = make_runner(spec, CPU, "fp32", "torch")
    assert isinstance(onnx, OnnxRunner) and isinstance(torch_runner, TorchRunner)
    assert max_relative_difference(onnx(crops), torch_runner(crops)) < 1e-4
    # ... and torch on the split preprocessing equals the full model on weights.transforms().
    preset = spec.transforms()
    reference = torch.stack([preset(decode_image(p)) for p in paths])
    model = torch_runner.module.features
    with torch.inference_mode():
        np.testing.assert_allclose(
            torch_runner(crops), model(reference).numpy(), rtol=1e-5, atol=1e-6
        )


def test_auto_backend_is_onnxruntime_on_cpu_fp32_and_torch_otherwise():
    spec = resolve_backbone("mobilenet_v3_small", "none")
    assert make_runner(spec, CPU, "fp32", "auto").backend == "onnxruntime"
    assert make_runner(spec, CPU, "bf16", "auto").backend == "torch"
    assert make_runner(spec, CPU, "fp32", "torch").backend == "torch"


def test_export_failure_falls_back_to_torch_with_reason(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path))  # nothing exported yet

    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::magic")

    monkeypatch.setattr(embedding, "export_onnx", broken_export)
    spec = resolve_backbone("squeezenet1_1", "none")
    runner = make_runner(spec, CPU, "fp32", "onnxruntime")
    assert runner.backend == "torch"
    assert "unsupported operator aten::magic" in caplog.text and "using torch" in caplog.text


def test_output_mismatch_falls_back_to_torch(monkeypatch, caplog):
    monkeypatch.setattr(embedding, "ONNX_TOLERANCE", -1.0)
    runner = make_runner(resolve_backbone("mobilenet_v3_small", "none"), CPU, "fp32", "auto")
    assert runner.backend == "torch" and "differs from torch" in caplog.text


def test_stores_from_either_backend_are_interchangeable(image_dir, tmp_path):
    # --device cpu: ONNX Runtime runs fp32 on CPU only (on a GPU machine auto is CUDA + bf16).
    base = ["--data", str(image_dir), *TINY_MODEL, "--device", "cpu", "--no-progress", "-q"]
    assert main([*base, "--out", str(tmp_path / "t.h5"), "--backend", "torch"]) == 0
    assert main([*base, "--out", str(tmp_path / "o.h5"), "--backend", "onnxruntime"]) == 0
    t, o = read_store(tmp_path / "t.h5"), read_store(tmp_path / "o.h5")
    assert (t.attrs["backend"], o.attrs["backend"]) == ("torch", "onnxruntime")
    assert t.attrs["fingerprint"] == o.attrs["fingerprint"]
    assert max_relative_difference(o.features, t.features) < 1e-4
    # A store made with torch is extended by an onnxruntime run without a fingerprint error.
    write_images(image_dir, {"cat": 6}, seed=3)
    assert main([*base, "--out", str(tmp_path / "t.h5"), "--backend", "onnxruntime"]) == 0
    assert len(read_store(tmp_path / "t.h5").paths) == 10


def test_several_model_families_build_and_export(tmp_path):
    for name, dim in [("resnet18", 512), ("efficientnet_b0", 1280), ("regnet_x_400mf", 400)]:
        spec = resolve_backbone(name, "none")
        runner = make_runner(spec, CPU, "fp32", "auto")
        out = runner(np.zeros((1, spec.input_size, spec.input_size, 3), np.uint8))
        assert out.shape == (1, dim) and np.isfinite(out).all(), name


@pytest.mark.parametrize(("precision", "tf32_inside"), [("fp32", False), ("bf16", True)])
def test_fp32_means_fp32_on_a_gpu_too(monkeypatch, precision, tf32_inside):
    """torch lets cuDNN run fp32 convolutions in TF32 by default (10-bit mantissa, kernels
    chosen per batch shape): an fp32 run turns that off while the network runs, and back."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    runner = make_runner(resolve_backbone("squeezenet1_1", "none"), CPU, precision, "torch")
    seen = []
    runner.module.register_forward_pre_hook(
        lambda module, args: seen.append(torch.backends.cudnn.allow_tf32)
    )
    runner(np.zeros((1, 224, 224, 3), np.uint8))
    assert seen == [tf32_inside] and torch.backends.cudnn.allow_tf32
