"""The CPU path: threaded decoding, verified ONNX graphs remembered, later runs without torch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ExtractConfig
from pipeline.engine import onnx as onnx_backend
from pipeline.engine.decoding import iter_batches
from pipeline.engine.onnx import load_verified, request_key
from pipeline.engine.preprocess import Preprocessing
from pipeline.exceptions import ImageDecodeError
from pipeline.extract import main
from pipeline.extract.plan import verified_cpu_graph
from pipeline.store import read_store

from .conftest import TINY_MODEL

REPO = Path(__file__).resolve().parent.parent
PRE = Preprocessing(crop_size=8, resize_size=10, mean=(0.5,) * 3, std=(0.25,) * 3)


def _load(i: int) -> Image.Image:
    """Item i: a 12x9 image of value i; 3 is undecodable, 5 hits a decoder bug."""
    if i == 3:
        raise ImageDecodeError("item3.jpg: truncated")
    if i == 5:
        raise RuntimeError("decoder bug")
    return Image.new("RGB", (12, 9), (i, i, i))


@pytest.mark.parametrize(("workers", "processes"), [(2, False), (3, False), (1, True)])
def test_decoding_engines_keep_order_and_report_failures(workers, processes):
    inline = list(iter_batches(_load, 11, PRE, batch_size=4, workers=0))
    batches = list(iter_batches(_load, 11, PRE, batch_size=4, workers=workers, processes=processes))
    assert [b.indices for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    for ours, ref in zip(batches, inline, strict=True):
        np.testing.assert_array_equal(np.asarray(ours.images), ref.images)
        assert ours.errors == ref.errors
    errors = [e for b in inline for e in b.errors]
    assert errors[3] == "item3.jpg: truncated" and errors[5] == "RuntimeError: decoder bug"
    assert inline[0].images.dtype == np.uint8 and inline[0].images.shape == (4, 8, 8, 3)
    assert (inline[0].images[3] == 0).all() and (inline[2].images[0] == 8).all()


def test_threaded_decoding_stays_ahead_but_bounded():
    requested: list[int] = []

    def load(i: int) -> Image.Image:
        requested.append(i)
        return Image.new("RGB", (10, 10))

    batches = iter_batches(load, 1000, PRE, batch_size=4, workers=2)
    next(batches)
    assert len(requested) <= 4 + 4 * 4 + 2  # one batch consumed, four batches + workers ahead
    batches.close()


def _extract(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), *TINY_MODEL, "--device", "cpu", *extra]


def test_a_cpu_run_records_its_verified_graph_and_the_next_skips_torch(image_dir, tmp_path):
    args = ["--no-progress", "-q"]
    assert main([*_extract(image_dir, tmp_path / "first.h5"), *args]) == 0
    key = request_key("squeezenet1_1", "none", {})
    graph = load_verified(key)
    assert graph is not None and graph.difference < 1e-4
    assert Path(graph.graph).exists() and graph.spec.model == "squeezenet1_1"
    code = (
        "import sys\n"
        "from pipeline.extract import main\n"
        f"assert main({_extract(image_dir, tmp_path / 'second.h5') + args!r}) == 0\n"
        "assert 'torch' not in sys.modules, 'the CPU path imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    first, second = read_store(tmp_path / "first.h5"), read_store(tmp_path / "second.h5")
    np.testing.assert_array_equal(first.features, second.features)
    for attr in ("fingerprint", "backend", "preprocessing", "weights", "feature_dim"):
        assert first.attrs[attr] == second.attrs[attr], attr
    assert second.attrs["versions"]["torch"]  # provenance still names torch, read from metadata


def test_a_changed_graph_is_not_trusted_and_is_made_again(image_dir, tmp_path, caplog):
    assert main([*_extract(image_dir, tmp_path / "a.h5"), "--no-progress", "-q"]) == 0
    key = request_key("squeezenet1_1", "none", {})
    path = Path(load_verified(key).graph)
    path.write_bytes(b"not an onnx graph")
    assert load_verified(key) is None  # size and mtime changed
    assert main([*_extract(image_dir, tmp_path / "b.h5"), "--no-progress", "-q"]) == 0
    assert "exporting it again" in caplog.text
    assert read_store(tmp_path / "b.h5").attrs["backend"] == "onnxruntime"
    assert load_verified(key) is not None


def test_a_changed_checkpoint_invalidates_the_record(tmp_path, monkeypatch):
    checkpoint, graph = tmp_path / "w.pth", tmp_path / "g.onnx"
    checkpoint.write_bytes(b"1" * 10)
    graph.write_bytes(b"g")
    record = onnx_backend.VerifiedGraph({}, 4, str(graph), 1e-6, str(checkpoint))
    onnx_backend.save_verified("k", record)
    assert load_verified("k") is not None
    checkpoint.write_bytes(b"2" * 11)
    assert load_verified("k") is None
    onnx_backend.save_verified("k", dataclasses.replace(record, difference=1.0))
    assert load_verified("k") is None  # never trusted above the tolerance


def test_request_key_covers_what_resolution_depends_on(monkeypatch):
    base = request_key("mobilenet_v2", "auto", {"mobilenet_v2": "IMAGENET1K_V1"})
    assert base != request_key("mobilenet_v2", "auto", {"mobilenet_v2": "DEFAULT"})
    assert base != request_key("mobilenet_v2", "DEFAULT", {"mobilenet_v2": "IMAGENET1K_V1"})
    assert request_key("resnet18", "auto", {}) == request_key("resnet18", "auto", {"x": "y"})
    monkeypatch.setenv("TORCH_HOME", "/elsewhere")
    assert base != request_key("mobilenet_v2", "auto", {"mobilenet_v2": "IMAGENET1K_V1"})


@pytest.mark.parametrize(
    "changes",
    [{"device": "cuda"}, {"precision": "bf16"}, {"backend": "torch"}],
)
def test_only_cpu_fp32_onnx_requests_take_the_torch_free_path(image_dir, tmp_path, changes):
    assert main([*_extract(image_dir, tmp_path / "a.h5"), "--no-progress", "-q"]) == 0
    config = ExtractConfig(model="squeezenet1_1", weights="none", device="cpu")
    assert verified_cpu_graph(config) is not None
    assert verified_cpu_graph(dataclasses.replace(config, **changes)) is None


def test_record_file_is_plain_json(image_dir, tmp_path):
    assert main([*_extract(image_dir, tmp_path / "a.h5"), "--no-progress", "-q"]) == 0
    folder = onnx_backend.onnx_cache_dir() / "verified"
    record = json.loads(next(folder.glob("*.json")).read_text())
    assert {"spec_record", "feature_dim", "graph", "difference", "graph_stat"} <= set(record)
    assert os.path.isabs(record["graph"])


def test_rows_are_flushed_by_size_as_well_as_by_time(image_dir, tmp_path, monkeypatch):
    import pipeline.extract.parts as parts_module

    written = []
    real = parts_module.write_rows_file

    def counting(path, rows, *args, **kwargs):
        written.append(len(rows.paths))
        return real(path, rows, *args, **kwargs)

    monkeypatch.setattr(parts_module, "write_rows_file", counting)
    monkeypatch.setattr(parts_module, "_FLUSH_BYTES", 1)
    argv = [*_extract(image_dir, tmp_path / "f.h5"), "--batch-size", "2", "--no-progress", "-q"]
    assert main([*argv, "--checkpoint-seconds", "3600"]) == 0
    # One part per batch of 2 (9 files, one corrupt), though no checkpoint was due.
    assert len(written) == 5 and sum(written) == 8
    assert len(read_store(tmp_path / "f.h5").paths) == 8


def test_installed_version_agrees_with_importlib_metadata():
    from importlib.metadata import version

    from pipeline._metadata import installed_version

    for package in ("torch", "torchvision", "onnxruntime", "h5py", "numpy"):
        assert installed_version(package) == version(package), package
    assert installed_version("no_such_package_here") == "absent"
