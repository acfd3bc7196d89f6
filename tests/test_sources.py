"""Sources and decoding: layouts, CSV manifests, odd image modes, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.engine.sources import DigitsSource, decode_image, open_source, to_rgb
from pipeline.exceptions import ImageDecodeError, SourceError

from .conftest import write_images


def _rgb(path) -> np.ndarray:
    return np.asarray(decode_image(path))


def test_imagefolder_classes_extensions_and_order(tmp_path):
    write_images(tmp_path, {"b": 2, "a": 1})
    (tmp_path / "a" / "UPPER.JPG").write_bytes((tmp_path / "a" / "a_000.png").read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    source = open_source(tmp_path)
    assert source.class_names == ["a", "b"]
    names = [r.path.rsplit("/", 1)[1] for r in source.records]
    assert names == ["UPPER.JPG", "a_000.png", "b_000.png", "b_001.png"]
    assert [r.label for r in source.records] == [0, 0, 1, 1]
    assert {r.split for r in source.records} == {""}


def test_split_folders_become_splits(tmp_path):
    write_images(tmp_path / "train", {"x": 2, "y": 2})
    write_images(tmp_path / "test", {"x": 1, "z": 1})
    source = open_source(tmp_path)
    assert source.class_names == ["x", "y", "z"]
    assert [r.split for r in source.records].count("train") == 4
    z = [r for r in source.records if "/test/z/" in r.path]
    assert z[0].label == 2 and z[0].split == "test"


def test_csv_manifest_relative_paths_splits_and_unlabelled(tmp_path):
    write_images(tmp_path / "img", {"a": 2})
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\nimg/a/a_000.png,cat,train\nimg/a/a_001.png,,test\n")
    source = open_source(manifest)
    assert source.class_names == ["cat"]
    assert [(r.label, r.split) for r in source.records] == [(0, "train"), (-1, "test")]
    assert source.records[0].path == str(tmp_path / "img" / "a" / "a_000.png")


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,label\nx,1\n", "columns path,label"),
        ("path,label,split\nx.png,1,dev\n", "split 'dev'"),
    ],
)
def test_csv_manifest_errors_name_the_problem(tmp_path, content, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(SourceError, match=message):
        open_source(manifest)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(SourceError, match="no such file or directory"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="available: sklearn:digits"):
        open_source("sklearn:mnist")


def test_digits_builtin():
    source = DigitsSource()
    assert len(source.records) == 1797 and source.class_names == [str(i) for i in range(10)]
    image = source.load(source.records[0])
    assert image.mode == "RGB" and image.size == (8, 8)
    assert source.key(source.records[0]) == DigitsSource().key(source.records[0])


def test_grayscale_palette_rgba_cmyk_decode_like_their_rgb(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    assert np.array_equal(_rgb(tmp_path / "l.png"), np.stack([grey] * 3, axis=-1))
    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(_rgb(tmp_path / "rgba.png"), rgb)
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(_rgb(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(_rgb(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 8


def test_16bit_grey_is_rescaled_not_clipped(tmp_path):
    grey8 = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(grey8 * 257).save(tmp_path / "g16.png")  # 16-bit PNG
    decoded = _rgb(tmp_path / "g16.png")
    assert np.array_equal(decoded[..., 0], grey8.astype(np.uint8))
    assert (
        to_rgb(Image.fromarray(grey8.astype(np.int32) * 257, "I")).getpixel((15, 15)) == (255,) * 3
    )


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 40, 3), np.uint8)  # wide
    pixels[:, :20] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert decode_image(tmp_path / "rot.jpg").size == (10, 40)


def test_tiny_and_huge_images(tmp_path):
    Image.new("RGB", (2, 2), (1, 2, 3)).save(tmp_path / "tiny.png")
    assert decode_image(tmp_path / "tiny.png").size == (2, 2)
    Image.new("RGB", (4000, 3000), (9, 9, 9)).save(tmp_path / "big.jpg")
    assert decode_image(tmp_path / "big.jpg").size == (4000, 3000)
    # Draft mode decodes large JPEGs at a reduced scale that still covers the target size.
    assert min(decode_image(tmp_path / "big.jpg", draft_size=256).size) >= 256


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"GIF89a not really", "cannot identify"), (None, "(?i)truncated")],
)
def test_bad_files_raise_a_named_error(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "JPEG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_image(path)
    assert str(path) in str(info.value)
