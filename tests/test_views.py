"""--views in stage one: the flip view, its store layout, and its alignment with the rows through
resume after kill -9, incremental runs, Dask, /failed and the warm path."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pipeline import ImageEmbedder
from pipeline.engine.backbones import resolve_backbone
from pipeline.engine.preprocess import make_view
from pipeline.extract import main as extract_main
from pipeline.store import parts_dir, read_store

from ._precision import assert_embeddings_match
from .conftest import TINY_MODEL, write_images
from .test_extract import _wait_for_parts

REPO = Path(__file__).resolve().parent.parent


def extract(data: Path, out: Path, *extra: str) -> int:
    argv = ["--data", str(data), "--out", str(out), *TINY_MODEL, "--no-progress", "-q"]
    return extract_main([*argv, "--views", "flip", *extra])


def _mirrored_pairs(root: Path, n: int = 3) -> list[tuple[Path, Path]]:
    """``n`` images in class ``a`` and their mirror images in class ``m``."""
    pairs = []
    for path in write_images(root, {"a": n}, seed=3):
        mirror = root / "m" / path.name
        mirror.parent.mkdir(exist_ok=True)
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)
        pairs.append((path, mirror))
    return pairs


def assert_views_aligned(got_path: Path, want_path: Path) -> None:
    """Same rows, same plain and flip embeddings, by path."""
    got, want = read_store(got_path), read_store(want_path)
    assert sorted(got.paths) == sorted(want.paths)
    assert got.attrs["views"] == ["flip"] and set(got.views) == {"flip"}
    order = {p: i for i, p in enumerate(want.paths)}
    rows = [order[p] for p in got.paths]
    precision = want.attrs["precision"]
    assert got.attrs["precision"] == precision
    assert_embeddings_match(got.features, want.features[rows], precision)
    assert_embeddings_match(got.views["flip"], want.views["flip"][rows], precision)


def test_flip_of_the_crop_is_the_crop_of_the_mirrored_image():
    pre = resolve_backbone("mobilenet_v2", "IMAGENET1K_V1").preprocessing
    rng = np.random.default_rng(0)
    # Resized widths 298, 256, 296: the crop window is centred exactly -> bit-exact.
    for width, height in [(350, 300), (32, 32), (37, 32)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        flipped = make_view("flip", pre.crop(image)[None])[0]
        assert np.array_equal(flipped, pre.crop(mirrored))
    for mode in ("squash", "border"):  # no window to be off by one: always exact
        crop = pre.__class__(**{**pre.__dict__, "crop_mode": mode}).crop
        image = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
        mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        assert np.array_equal(make_view("flip", crop(image)[None])[0], crop(mirrored))


def test_store_layout_and_the_flip_view_is_the_mirrored_image(tmp_path):
    data = tmp_path / "images"
    pairs = _mirrored_pairs(data)
    (data / "a" / "corrupt.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "f.h5"
    assert extract(data, out) == 0
    with h5py.File(out, "r") as fh:
        assert fh["views/flip/features"].shape == fh["features"].shape
        assert fh["views/flip/features"].chunks == fh["features"].chunks
    table = read_store(out)
    assert table.attrs["views"] == ["flip"] and len(table.failed.paths) == 1
    row = {p: i for i, p in enumerate(table.paths)}
    for image, mirror in pairs:
        np.testing.assert_allclose(
            table.views["flip"][row[str(image)]], table.features[row[str(mirror)]], rtol=1e-4,
            atol=1e-5,
        )  # fmt: skip
    # The warm path: an unchanged re-run does nothing; other views are another recipe.
    assert extract(data, out) == 0
    assert extract_main(["--data", str(data), "--out", str(out), *TINY_MODEL, "-q"]) == 2


def test_views_stay_aligned_after_kill_9_resume_and_incremental_runs(tmp_path):
    data = tmp_path / "images"
    write_images(data, {"a": 12, "b": 12})
    out = tmp_path / "killed.h5"
    argv = [sys.executable, "-m", "pipeline.extract", "--data", str(data), "--out", str(out),
            *TINY_MODEL, "--views", "flip", "--batch-size", "2", "--workers", "0",
            "--checkpoint-seconds", "0", "--no-progress", "-q"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    _wait_for_parts(out, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with h5py.File(out, "r") as fh:  # the unfinished store's index carries the views
        assert not fh.attrs["complete"]
        assert fh["views/flip/features"].shape == fh["features"].shape
        assert np.isfinite(fh["views/flip/features"][:]).all()
    assert extract(data, out, "--batch-size", "3") == 0
    assert not parts_dir(out).exists()
    assert extract(data, tmp_path / "clean.h5") == 0
    assert_views_aligned(out, tmp_path / "clean.h5")
    # Incremental: remove two images, add three; kept rows keep their views.
    for path in sorted((data / "a").iterdir())[:2]:
        path.unlink()
    write_images(data, {"c": 3}, seed=7)
    assert extract(data, out, "--prune") == 0
    assert extract(data, tmp_path / "clean2.h5") == 0
    assert_views_aligned(out, tmp_path / "clean2.h5")
    assert len(read_store(out).paths) == 25


def test_dask_shards_carry_the_views(tmp_path):
    pytest.importorskip("distributed")
    data = tmp_path / "images"
    write_images(data, {"a": 5, "b": 5})
    (data / "a" / "corrupt.jpg").write_bytes(b"not a jpeg")
    assert extract(data, tmp_path / "dask.h5", "--dask", "local:1", "--batch-size", "4") == 0
    assert extract(data, tmp_path / "local.h5") == 0
    assert_views_aligned(tmp_path / "dask.h5", tmp_path / "local.h5")
    assert len(read_store(tmp_path / "dask.h5").failed.paths) == 1


def test_image_embedder_views_return_the_mean_over_views(tmp_path):
    data = tmp_path / "images"
    paths = [str(p) for p in write_images(data, {"a": 2, "b": 2})]
    assert extract(data, tmp_path / "f.h5") == 0
    table = read_store(tmp_path / "f.h5")
    row = {p: i for i, p in enumerate(table.paths)}
    rows = [row[p] for p in paths]
    want = (table.features[rows] + table.views["flip"][rows]) / 2
    embedder = ImageEmbedder(model="squeezenet1_1", weights=None, views="flip")
    assert_embeddings_match(embedder.fit_transform(paths), want, table.attrs["precision"])
    with pytest.raises(ValueError, match="views"):
        ImageEmbedder(views=["rotate"]).fit()


def test_an_appended_update_maps_the_views_and_compact_copies_them(tmp_path):
    data = tmp_path / "images"
    write_images(data, {"a": 4, "b": 4})
    out = tmp_path / "f.h5"
    assert extract(data, out) == 0
    (data / "a" / sorted(p.name for p in (data / "a").iterdir())[0]).unlink()
    write_images(data, {"c": 3}, seed=7)  # sorts last: labels unchanged, the update appends
    assert extract(data, out, "--batch-size", "2", "--checkpoint-seconds", "0", "--prune") == 0
    assert (parts_dir(out) / "base.h5").is_file()
    with h5py.File(out, "r") as fh:  # plain h5py: the view is virtual over base + parts too
        assert fh.attrs["layout"] == "parts"
        assert fh["views/flip/features"].is_virtual and fh["features"].is_virtual
        assert fh["views/flip/features"].shape == fh["features"].shape
        assert fh["features"].shape[0] == 4 - 1 + 4 + 3
        files = {vs.file_name for vs in fh["views/flip/features"].virtual_sources()}
        assert files == {vs.file_name for vs in fh["features"].virtual_sources()}
        assert len(files) >= 2
    assert extract(data, tmp_path / "fresh.h5") == 0
    assert_views_aligned(out, tmp_path / "fresh.h5")
    assert extract(data, out, "--compact") == 0
    assert not parts_dir(out).exists()
    with h5py.File(out, "r") as fh:
        assert "layout" not in fh.attrs and not fh["views/flip/features"].is_virtual
        assert fh["views/flip/features"].fletcher32
    assert read_store(out).paths.tolist() == read_store(tmp_path / "fresh.h5").paths.tolist()
    assert_views_aligned(out, tmp_path / "fresh.h5")
