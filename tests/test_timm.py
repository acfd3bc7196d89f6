"""timm models as backbones (the pipeline[timm] extra): timm:NAME end to end, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import ImageEmbedder
from pipeline.engine.backbones import build_backbone, resolve_backbone
from pipeline.extract import main as extract_main
from pipeline.fit import main as fit_main
from pipeline.predict import run_predict
from pipeline.recipe import EmbeddingRecipe
from pipeline.store import read_store

from .conftest import write_images

timm = pytest.importorskip("timm")

QUIET = ["--no-progress", "-q"]
# resnet18: a convnet (ONNX export), test_vit: timm's smallest ViT (160 px input, 64-d).
MODELS = {"resnet18": 512, "test_vit": 64}


@pytest.fixture
def small_data(tmp_path) -> Path:
    root = tmp_path / "data"
    write_images(root / "train", {"a": 4, "b": 4}, size=(24, 24))
    write_images(root / "test", {"a": 1, "b": 1}, size=(24, 24), seed=1)
    return root


@pytest.mark.parametrize("name", sorted(MODELS))
def test_preprocessing_is_timms_own_transform(name):
    from timm.data import create_transform, resolve_data_config

    spec = resolve_backbone(f"timm:{name}", "none")
    config = resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    reference = create_transform(**config)
    rng = np.random.default_rng(0)
    for shape in [(97, 131, 3), (300, 200, 3), (50, 50, 3)]:
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        assert torch.equal(spec.preprocessing(image), reference(image))
    assert "interpolation=InterpolationMode.BICUBIC" in spec.preprocessing_repr


@pytest.mark.parametrize("name", sorted(MODELS))
def test_timm_models_extract_fit_and_predict_on_both_backends(name, small_data, tmp_path, caplog):
    caplog.set_level("INFO")
    flags = ["--model", f"timm:{name}", "--weights", "none"]
    stores = {}
    for backend in ("torch", "onnxruntime"):
        stores[backend] = tmp_path / f"{backend}.h5"
        argv = ["--data", str(small_data), "--out", str(stores[backend]), *flags]
        assert extract_main([*argv, "--backend", backend, *QUIET]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    if name == "resnet18":  # a timm convnet exports and verifies like torchvision's
        assert "backend: onnxruntime (max relative difference to torch" in said
    a, b = read_store(stores["torch"]), read_store(stores["onnxruntime"])
    assert a.features.shape == (10, MODELS[name]) and np.isfinite(a.features).all()
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
    assert a.attrs["model"] == f"timm:{name}" and "timm" in a.attrs["versions"]
    scale = np.abs(a.features).max()
    assert np.abs(a.features - b.features).max() <= 1e-4 * scale
    # Pooled pre-logits, not class scores: the rows are timm's forward with num_classes=0.
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=0).eval()
    spec = resolve_backbone(f"timm:{name}", "none")
    first = spec.preprocessing(Image.open(a.paths[0]).convert("RGB"))[None]
    with torch.inference_mode():
        np.testing.assert_allclose(a.features[0], reference(first)[0].numpy(), rtol=1e-4, atol=1e-5)

    out = tmp_path / "run"
    fit = ["--features", str(stores["onnxruntime"]), "--clf", "logreg", "--no-audit", "-q"]
    assert fit_main([*fit, "--out", str(out)]) == 0
    for backend in ("torch", "onnxruntime"):
        got = run_predict(
            out / "models" / "logreg.joblib", [str(small_data / "test")], backend=backend
        )
        assert len(got) == 2 and all(p.label in {"a", "b"} for p in got)


def test_timm_checkpoint_file_and_cached_pretrained_weights(tmp_path, monkeypatch, caplog):
    """A fine-tuned timm checkpoint (3-class head dropped), and timm's pretrained weights found
    in a (here: made-up) Hugging Face cache, never downloaded."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    torch.manual_seed(3)
    network = timm.create_model("test_vit", num_classes=3).eval()
    ckpt = tmp_path / "vit.pth"
    torch.save({"model": network.state_dict(), "optimizer": {}}, ckpt)
    images = [np.full((30, 30, 3), v, dtype=np.uint8) for v in (20, 220)]
    caplog.set_level("INFO")
    from_file = ImageEmbedder("timm:test_vit", str(ckpt), backend="torch").transform(images)
    assert "classifier head dropped (head.weight (3, 64)" in caplog.text
    network.reset_classifier(0)
    spec = resolve_backbone("timm:test_vit", str(ckpt))
    crops = torch.stack([spec.preprocessing(Image.fromarray(i)) for i in images])
    with torch.inference_mode():
        np.testing.assert_allclose(from_file, network(crops).numpy(), rtol=1e-4, atol=1e-5)

    cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(ValueError, match="not in the local cache .* never downloaded"):
        resolve_backbone("timm:test_vit", "auto")
    repo = cache / "models--timm--test_vit.r160_in1k"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file(network.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    pretrained = resolve_backbone("timm:test_vit", "auto")
    assert pretrained.weights == "test_vit.r160_in1k"
    assert pretrained.weights_id.startswith("test_vit.r160_in1k@sha256:")
    rows = ImageEmbedder("timm:test_vit", "pretrained", backend="torch").transform(images)
    np.testing.assert_allclose(rows, from_file, rtol=1e-5, atol=1e-6)
    recipes = {EmbeddingRecipe(s, "fp32").fingerprint() for s in (spec, pretrained)}
    assert len(recipes) == 2  # other weights names: the tensors are equal here by construction


def test_timm_preprocess_values_and_the_torchvision_counterpart():
    spec = resolve_backbone("timm:resnet18", "none", preprocess="resize=256 interpolation=bilinear")
    assert spec.preprocessing_fields["resize_size"] == [256]
    assert spec.preprocessing_fields["crop_size"] == [224]
    assert build_backbone(spec).feature_dim == 512
    with pytest.raises(ValueError, match="timm models take values"):
        resolve_backbone("timm:resnet18", "none", preprocess="IMAGENET1K_V1")


@pytest.mark.parametrize(
    "model, message",
    [
        ("timm:resnet81", "unknown timm model 'resnet81'; did you mean timm:resnet18"),
        ("timm:vit_tiny_patch16_22", "did you mean timm:vit_tiny_patch16_224"),
        ("timm:resnet18.nonexistent_tag", "resnet18 has no pretrained tag 'nonexistent_tag'"),
    ],
)
def test_bad_timm_names_are_one_line_errors(model, message, small_data, tmp_path, capsys):
    out = tmp_path / "o.h5"
    argv = ["--data", str(small_data), "--out", str(out), "--model", model, "--weights", "none"]
    capsys.readouterr()
    assert extract_main([*argv, *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_failed_export_falls_back_to_torch_and_says_so(tmp_path, monkeypatch, caplog):
    import pipeline.engine.runners as runners

    def broken(*args, **kwargs):
        raise RuntimeError("exporter cannot trace this model")

    monkeypatch.setattr(runners, "export_onnx", broken)
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path))  # no graph exported before
    caplog.set_level("INFO")
    images = [np.full((20, 20, 3), 90, dtype=np.uint8)]
    embedder = ImageEmbedder("timm:test_vit", None, backend="onnxruntime", device="cpu")
    rows = embedder.transform(images)
    assert rows.shape == (1, 64) and np.isfinite(rows).all()
    assert (
        "ONNX Runtime unavailable for timm:test_vit (RuntimeError: exporter cannot trace"
        in caplog.text
    )
    assert embedder._runner.backend == "torch"


def test_checkpoint_of_another_timm_architecture(small_data, tmp_path, capsys):
    ckpt = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), ckpt)
    out = tmp_path / "o.h5"
    argv = ["--data", str(small_data), "--out", str(out), "--model", "timm:test_vit"]
    capsys.readouterr()
    assert extract_main([*argv, "--weights", str(ckpt), *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a checkpoint of timm:test_vit: missing" in err
    assert not out.exists()
