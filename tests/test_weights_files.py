"""Backbones people bring: checkpoint files (--weights PATH) and --preprocess overrides."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline import ImageEmbedder
from pipeline.engine.backbones import resolve_backbone
from pipeline.engine.checkpoints import OFFICIAL_SHA256, _is_file_of, official_weights
from pipeline.exceptions import BackboneError, BackboneMismatchError, ConfigError
from pipeline.extract import main as extract_main
from pipeline.fit import main as fit_main
from pipeline.predict import run_predict
from pipeline.recipe import EmbeddingRecipe
from pipeline.store import read_store

from .conftest import MOBILENET_CHECKPOINT, write_images

QUIET = ["--no-progress", "-q"]


def _extract(data: Path, out: Path, *flags: str) -> int:
    return extract_main(["--data", str(data), "--out", str(out), *flags, *QUIET])


def _fit(store: Path, out: Path) -> int:
    return fit_main(
        ["--features", str(store), "--clf", "logreg", "--out", str(out), "--no-audit", "-q"]
    )


@pytest.fixture
def small_data(tmp_path) -> Path:
    root = tmp_path / "data"
    write_images(root / "train", {"a": 5, "b": 5}, size=(24, 24))
    write_images(root / "test", {"a": 2, "b": 2}, size=(24, 24), seed=1)
    return root


def _finetuned_resnet18(path: Path, seed: int = 1) -> torch.nn.Module:
    """A seed-style checkpoint of a "fine-tuned" resnet18: random weights, a 2-class head,
    saved under DataParallel's ``module.`` prefix beside an optimizer state."""
    torch.manual_seed(seed)
    network = torchvision.models.resnet18(num_classes=2).eval()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    state = {f"module.{k}": v for k, v in network.state_dict().items()}
    torch.save({"state_dict": state, "optimizer": optimizer.state_dict(), "epoch": 3}, path)
    return network


# ---------------------------------------------------------------------------- official files


@pytest.mark.slow
def test_official_file_gives_the_named_weights_rows_and_fingerprint(
    real_weights, small_data, tmp_path, monkeypatch
):
    """An air-gapped user's copy of the official file, under another name and with an empty
    torch hub cache, gives exactly the rows and fingerprint of --weights IMAGENET1K_V1."""
    hub = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_CHECKPOINT
    copy = tmp_path / "given" / "my_mobilenet.pth"
    copy.parent.mkdir()
    shutil.copyfile(hub, copy)
    flags = ["--model", "mobilenet_v2", "--backend", "torch"]
    named, given = tmp_path / "named.h5", tmp_path / "given.h5"
    assert _extract(small_data, named, *flags, "--weights", "IMAGENET1K_V1") == 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    assert _extract(small_data, given, *flags, "--weights", str(copy)) == 0
    a, b = read_store(named), read_store(given)
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
    assert b.attrs["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert b.attrs["weights_file"] == str(copy.resolve())
    assert list(a.paths) == list(b.paths) and np.array_equal(a.features, b.features)


def test_official_files_are_recognised_by_their_hash(tmp_path):
    sha = OFFICIAL_SHA256[MOBILENET_CHECKPOINT]
    assert official_weights(sha, "mobilenet_v2")[1] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert official_weights(sha)[0] == "mobilenet_v2"  # whatever model was asked for
    assert (
        official_weights("b0353104" + "0" * 56) is None
    )  # the full hash is known: prefix alone is not enough
    # Files whose full hash is not listed: torch.hub's convention, the URL's hash prefix.
    assert _is_file_of("d63eafa0" + "1" * 56, "resnet18_a1_0-d63eafa0.pth")
    assert not _is_file_of("d63eafa1" + "1" * 56, "resnet18_a1_0-d63eafa0.pth")
    random_file = hashlib.sha256(b"not torchvision's").hexdigest()
    assert official_weights(random_file) is None


# ---------------------------------------------------------------------------- fine-tuned files


def test_finetuned_checkpoint_extracts_fits_and_predicts(small_data, tmp_path, caplog):
    ckpt = tmp_path / "my_checkpoint.pth.tar"
    network = _finetuned_resnet18(ckpt)
    store = tmp_path / "f.h5"
    caplog.set_level("INFO")
    flags = ["--model", "resnet18", "--weights", str(ckpt), "--backend", "torch"]
    assert _extract(small_data, store, *flags) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "using the state dict under 'state_dict'" in said
    assert "stripped the 'module.' prefix" in said
    assert "classifier head dropped (fc.weight (2, 512)" in said
    table = read_store(store)
    assert table.attrs["weights"] == str(ckpt.resolve())
    assert table.attrs["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    random_init = EmbeddingRecipe(resolve_backbone("resnet18", "none"), "fp32").fingerprint()
    assert table.attrs["fingerprint"] != random_init
    # The rows are the file's network (its head cut off), on the default weights' preset.
    preset = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    network.fc = torch.nn.Identity()
    first = Path(table.paths[0])
    with torch.inference_mode():
        expected = network(preset(Image.open(first).convert("RGB"))[None])[0].numpy()
    np.testing.assert_allclose(table.features[0], expected, rtol=1e-4, atol=1e-5)

    out = tmp_path / "run"
    assert _fit(store, out) == 0
    predictions = run_predict(out / "models" / "logreg.joblib", [str(small_data / "test")])
    assert len(predictions) == 4 and all(p.label in {"a", "b"} for p in predictions)

    # Another file at the same path is another recipe: never mixed into the same store, and
    # the model fitted on the first file's rows refuses to predict with it.
    _finetuned_resnet18(ckpt, seed=2)
    assert _extract(small_data, store, *flags) == 2
    with pytest.raises(BackboneMismatchError, match="fingerprint differs"):
        run_predict(out / "models" / "logreg.joblib", [str(small_data / "test")])


def test_state_dict_files_in_other_forms(tmp_path):
    """A bare state dict (.pt), safetensors, and torch.compile's prefix load alike."""
    from safetensors.torch import save_file

    torch.manual_seed(5)  # not the random-init seed: other weights than "none"
    network = torchvision.models.squeezenet1_1().eval()
    bare, compiled, safe = tmp_path / "a.pt", tmp_path / "b.pth", tmp_path / "c.safetensors"
    torch.save(network.state_dict(), bare)
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in network.state_dict().items()}}, compiled)
    save_file(network.state_dict(), str(safe))
    images = [np.full((20, 20, 3), v, dtype=np.uint8) for v in (10, 200)]
    rows = [
        ImageEmbedder("squeezenet1_1", str(f), backend="torch").transform(images)
        for f in (bare, compiled, safe)
    ]
    assert np.array_equal(rows[0], rows[1]) and np.array_equal(rows[0], rows[2])
    none = ImageEmbedder("squeezenet1_1", "none", backend="torch").transform(images)
    assert not np.allclose(rows[0], none)
    # The CLI's default CPU backend exports, verifies and remembers the graph of the file's
    # network; the second run starts from that record (no torch) and gives the same rows.
    data = tmp_path / "data"
    write_images(data, {"a": 2, "b": 2}, size=(20, 20))
    for out in ("first.h5", "second.h5"):
        flags = ["--model", "squeezenet1_1", "--weights", str(safe), "--device", "cpu"]
        assert _extract(data, tmp_path / out, *flags) == 0
    first, second = read_store(tmp_path / "first.h5"), read_store(tmp_path / "second.h5")
    assert first.attrs["backend"] == second.attrs["backend"] == "onnxruntime"
    assert first.attrs["fingerprint"] == second.attrs["fingerprint"]
    np.testing.assert_array_equal(first.features, second.features)
    direct = ImageEmbedder("squeezenet1_1", str(safe), backend="torch").transform(
        [str(p) for p in first.paths]
    )
    np.testing.assert_allclose(first.features, direct, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- bad input


def _bad_files(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    resnet = tmp_path / "resnet18.pth"
    _finetuned_resnet18(resnet)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is no checkpoint")
    whole = tmp_path / "whole.pt"
    torch.save(torchvision.models.squeezenet1_1(), whole)
    no_state = tmp_path / "optimizer_only.pth"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, no_state)
    empty_safe = tmp_path / "bad.safetensors"
    empty_safe.write_bytes(b"xx")
    return {
        "not a checkpoint": (["--weights", str(junk)], "is not a checkpoint file"),
        "bad safetensors": (["--weights", str(empty_safe)], "is not a safetensors checkpoint"),
        "missing": (["--weights", str(tmp_path / "absent.pth")], "no such checkpoint file"),
        "pickled model": (["--weights", str(whole)], "save model.state_dict() instead"),
        "no state dict": (["--weights", str(no_state)], "holds no state dict"),
        "other architecture": (
            ["--model", "mobilenet_v2", "--weights", str(resnet)],
            "is not a checkpoint of mobilenet_v2: missing features.0.0.weight",
        ),
        "bad preset": (["--preprocess", "IMAGENET9K"], "is not a preset of squeezenet1_1"),
        "bad values": (["--preprocess", "crop=big"], "bad value crop='big'"),
        "unknown value": (["--preprocess", "size=3"], "unknown key(s) ['size']"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not a checkpoint",
        "bad safetensors",
        "missing",
        "pickled model",
        "no state dict",
        "other architecture",
        "bad preset",
        "bad values",
        "unknown value",
    ],
)
def test_bad_weights_files_are_one_line_errors_before_any_image(
    case, small_data, tmp_path, capsys, monkeypatch
):
    flags, message = _bad_files(tmp_path)[case]
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or 1 / 0)
    out = tmp_path / "out.h5"
    capsys.readouterr()
    argv = ["--model", "squeezenet1_1", "--weights", "none", *flags]
    assert _extract(small_data, out, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not opened and not out.exists()


@pytest.mark.slow
def test_official_file_of_another_architecture(real_weights, small_data, tmp_path, capsys):
    hub = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_CHECKPOINT
    capsys.readouterr()
    assert (
        _extract(small_data, tmp_path / "o.h5", "--model", "resnet18", "--weights", str(hub)) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "official MobileNet_V2_Weights.IMAGENET1K_V1 checkpoint (of mobilenet_v2)" in err


# ---------------------------------------------------------------------------- --preprocess


def test_preprocess_presets_and_values_enter_the_recipe(small_data, tmp_path):
    default = resolve_backbone("resnet50", "none")  # DEFAULT weights' preset: resize 232
    assert default.preprocessing_fields["resize_size"] == [232]
    v1 = resolve_backbone("resnet50", "none", preprocess="IMAGENET1K_V1")
    assert v1.preprocess == "ResNet50_Weights.IMAGENET1K_V1"
    assert v1.preprocessing_fields["resize_size"] == [256]
    values = resolve_backbone(
        "resnet50", "none", preprocess="resize=160;crop=128 mean=0.5,0.5,0.5 interpolation=bicubic"
    )
    fields = values.preprocessing_fields
    assert fields["resize_size"] == [160] and fields["crop_size"] == [128]
    assert (
        fields["mean"] == [0.5, 0.5, 0.5] and fields["std"] == default.preprocessing_fields["std"]
    )
    assert fields["interpolation"] == "bicubic" and values.input_size == 128
    same = resolve_backbone("resnet50", "none", preprocess={"resize": 232, "crop": 224})
    prints = {EmbeddingRecipe(s, "fp32").fingerprint() for s in (default, v1, values, same)}
    assert len(prints) == 3  # values equal to the preset's leave the fingerprint as it was
    assert (
        EmbeddingRecipe(same, "fp32").fingerprint()
        == EmbeddingRecipe(default, "fp32").fingerprint()
    )

    # Recorded in the store; ImageEmbedder takes the same and gives the same rows; predict
    # rebuilds it from the model file.
    store = tmp_path / "p.h5"
    spec = "resize=40 crop=32 mean=0.5,0.5,0.5 std=0.25,0.25,0.25 interpolation=bicubic"
    flags = ["--model", "squeezenet1_1", "--weights", "none", "--preprocess", spec]
    assert _extract(small_data, store, *flags, "--backend", "torch") == 0
    table = read_store(store)
    assert table.attrs["preprocess"] == (
        "crop=32 interpolation=bicubic mean=0.5,0.5,0.5 resize=40 std=0.25,0.25,0.25"
    )
    assert "crop_size=[32]" in table.attrs["preprocessing"]
    embedder = ImageEmbedder("squeezenet1_1", None, backend="torch", preprocess=spec)
    rows = embedder.transform(list(table.paths[:3]))
    np.testing.assert_allclose(rows, table.features[:3], rtol=1e-5, atol=1e-6)
    out = tmp_path / "run"
    assert _fit(store, out) == 0
    assert len(run_predict(out / "models" / "logreg.joblib", [str(small_data / "test")])) == 4


def test_preprocess_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="preprocess"):
        resolve_backbone("resnet18", "none", preprocess="interpolation=sharp")
    with pytest.raises(BackboneError, match="not a preset of resnet18; valid: DEFAULT"):
        resolve_backbone("resnet18", "none", preprocess="IMAGENET1K_V9")
    with pytest.raises(ValueError, match="ImageEmbedder: .*std"):
        ImageEmbedder("squeezenet1_1", None, preprocess="std=0,1,1").fit()


def test_timm_not_installed(small_data, tmp_path, capsys, monkeypatch):
    """Runs with or without timm: without it, the same one line."""
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    # no verified ONNX graph of timm:resnet18 from an earlier test (that one runs without timm)
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "o.h5"
    capsys.readouterr()
    assert _extract(small_data, out, "--model", "timm:resnet18", "--weights", "none") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'pipeline[timm]'" in err
    with pytest.raises(ValueError, match="need timm, which is not installed"):
        ImageEmbedder("timm:resnet18", None).fit()
