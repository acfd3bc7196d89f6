"""Hostile folders and files, end to end through the CLI: links and loops, special files,
unreadable and over-long paths, non-UTF-8 names, split layouts, elongated and float images,
transient failures, all-fail runs and ``predict --out``. Every test has a timeout, so a
regression to hanging fails instead of hanging the suite."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pipeline import predict
from pipeline.engine.sources import decode_image, walk_images
from pipeline.predict import collect_images
from pipeline.store import read_store

from .conftest import TINY_MODEL, write_images
from .test_extract import extract
from .test_predict import trained  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(180)  # a hang fails; generous for a loaded machine


def stored(out: Path) -> tuple[list[str], dict[str, str]]:
    """(row paths, failed path -> error) of a complete store."""
    table = read_store(out)
    failed = dict(zip(table.failed.paths, table.failed.errors, strict=True))
    return list(table.paths), failed


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error line"
    return err[-1]


def run_cli(args: list[str], *, drop_dac: bool = False) -> subprocess.CompletedProcess:
    """``python -m pipeline.extract ARGS`` in a subprocess, optionally without root's
    permission bypass (so that chmod 000 means something when the tests run as root)."""
    command = [sys.executable, "-m", "pipeline.extract", *TINY_MODEL, "--no-progress", *args]
    if drop_dac and os.geteuid() == 0:
        capsh = shutil.which("capsh")
        if capsh is None:
            pytest.skip("running as root and capsh is missing: cannot drop the DAC override")
        quoted = " ".join(f"'{a}'" for a in command)
        command = [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", quoted]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


# The folder walk ---------------------------------------------------------------------------


def test_symlink_loops_and_ancestor_links_visit_each_file_once(tmp_path, caplog):
    root = tmp_path / "images"
    write_images(root, {"cat": 2, "dog": 2})
    (root / "cat" / "self").symlink_to(".")  # a loop
    (root / "dog" / "up").symlink_to("..")  # the root itself
    (root / "dog" / "again").symlink_to("../dog")
    (root / "cat" / "sub").mkdir()
    (root / "cat" / "sub" / "back").symlink_to("../..")
    out = tmp_path / "f.h5"
    assert extract(root, out) == 0
    paths, failed = stored(out)
    assert len(paths) == 4 and len(set(paths)) == 4 and not failed
    assert "ancestor" in caplog.text
    # predict expands folders with the same walk
    assert sorted(collect_images([root])) == sorted(paths)


def test_a_file_reached_by_two_names_is_embedded_once_under_the_first(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"cat": 2, "dog": 2})
    os.link(root / "cat" / "cat_000.png", root / "dog" / "hardlink.png")
    (root / "dog" / "softlink.png").symlink_to(root / "cat" / "cat_001.png")
    out = tmp_path / "f.h5"
    assert extract(root, out) == 0
    paths, _ = stored(out)
    assert len(paths) == 4
    assert not any(p.endswith(("hardlink.png", "softlink.png")) for p in paths)


def test_fifo_socket_and_device_are_recorded_never_opened(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_images(root, {"cat": 2, "dog": 2})
    os.mkfifo(root / "cat" / "pipe.jpg")
    monkeypatch.chdir(root / "dog")  # AF_UNIX paths are limited to ~100 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.png")
        (root / "dog" / "null.png").symlink_to("/dev/null")
        out = tmp_path / "f.h5"
        assert extract(root, out) == 0
    paths, failed = stored(out)
    assert len(paths) == 4
    reasons = {Path(p).name: e for p, e in failed.items()}
    assert "not a regular file (FIFO)" in reasons["pipe.jpg"]
    assert "not a regular file (socket)" in reasons["sock.png"]
    assert "not a regular file (character device)" in reasons["null.png"]


def test_a_file_swapped_for_a_fifo_after_listing_does_not_hang(tmp_path):
    path = tmp_path / "late.png"
    os.mkfifo(path)
    from pipeline.engine.sources import open_regular_file
    from pipeline.exceptions import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="FIFO"):
        open_regular_file(path)
    with pytest.raises(ImageDecodeError, match="FIFO"):
        decode_image(path)


def test_unreadable_subfolder_is_recorded_and_retried_later(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"cat": 2, "dog": 2})
    locked = root / "cat" / "locked"
    write_images(locked, {"x": 1})
    locked.chmod(0)
    out = tmp_path / "f.h5"
    try:
        result = run_cli(["--data", str(root), "--out", str(out)], drop_dac=True)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 0, result.stderr
    paths, failed = stored(out)
    assert len(paths) == 4
    assert "Permission denied" in failed[str(locked)]
    assert failed[str(locked)].startswith("transient: ")
    # now readable: the transient failure is retried and the image inside is embedded
    assert extract(root, out) == 0
    paths, failed = stored(out)
    assert len(paths) == 5 and not failed


def test_over_long_path_is_recorded(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"cat": 2, "dog": 2})
    fd = os.open(root / "cat", os.O_RDONLY)
    try:
        for _ in range(22):  # 22 x 201 bytes > PATH_MAX (4096)
            os.mkdir("d" * 200, dir_fd=fd)
            deeper = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        image_fd = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        with os.fdopen(image_fd, "wb") as fh:
            Image.new("RGB", (8, 8)).save(fh, "PNG")
    finally:
        os.close(fd)
    out = tmp_path / "f.h5"
    assert extract(root, out) == 0
    paths, failed = stored(out)
    assert len(paths) == 4
    assert len(failed) == 1 and "File name too long" in next(iter(failed.values()))


def test_non_utf8_file_name_round_trips(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"cat": 2, "dog": 2})
    raw = os.fsencode(root / "cat") + b"/caf\xe9.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(raw.decode("utf-8", "surrogateescape"))
    out = tmp_path / "f.h5"
    assert extract(root, out) == 0
    paths, failed = stored(out)
    assert len(paths) == 5 and not failed
    odd = [p for p in paths if os.fsencode(p) == raw]
    assert len(odd) == 1
    assert decode_image(odd[0]).getpixel((0, 0)) == (200, 30, 30)  # reopens that very file
    with h5py.File(out) as fh:
        assert raw in list(fh["paths"][...])  # the original bytes, for any h5py reader
    assert extract(root, out) == 0  # a re-run over the same folder keeps it as it is
    assert stored(out)[0] == paths


def test_non_utf8_class_folder_gets_a_printable_class_name(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"dog": 2})
    folder = os.fsencode(root) + b"/caf\xe9"
    os.mkdir(folder)
    Image.new("RGB", (16, 16)).save(folder + b"/a.png")
    out = tmp_path / "f.h5"
    assert extract(root, out) == 0
    table = read_store(out)
    assert table.class_names == ["caf\\xe9", "dog"] and sorted(table.labels) == [0, 1, 1]
    assert os.fsencode(table.paths[0]) == folder + b"/a.png"


def test_split_folders_next_to_other_folders_or_images_are_an_error(tmp_path, capsys):
    root = tmp_path / "images"
    write_images(root / "train", {"cat": 1, "dog": 1})
    write_images(root / "test", {"cat": 1, "dog": 1})
    write_images(root, {"extra": 1})
    Image.new("RGB", (8, 8)).save(root / "loose.png")
    assert extract(root, tmp_path / "f.h5") == 2
    line = last_error_line(capsys)
    assert "extra/" in line and "loose.png" in line and str(root) in line
    assert not (tmp_path / "f.h5").exists()


def test_a_class_named_test_in_a_plain_imagefolder_is_not_silently_a_split(tmp_path, capsys):
    root = tmp_path / "images"
    write_images(root, {"cat": 2, "test": 2})
    assert extract(root, tmp_path / "f.h5") == 2
    line = last_error_line(capsys)
    assert "cat/" in line and "CSV manifest" in line


def test_split_folder_with_only_images_warns(tmp_path, caplog):
    root = tmp_path / "images"
    write_images(root, {"train": 2, "test": 2})  # train/ and test/ hold images directly
    out = tmp_path / "f.h5"
    assert extract(root, out) == 0
    assert "no class folders" in caplog.text and "test" in caplog.text
    assert len(stored(out)[0]) == 4


# Decoding ------------------------------------------------------------------------------------


def _extract_peak_mib(root: Path, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run extract in a fresh process; its result and its peak RSS in MiB."""
    code = (
        "import resource, sys; from pipeline.extract.cli import main; "
        f"rc = main({['--data', str(root), '--out', str(out), *TINY_MODEL, '--no-progress']!r});"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=150
    )
    assert result.returncode == 0, result.stderr
    return result, int(result.stdout.strip().splitlines()[-1]) / 1024


def test_elongated_image_is_recorded_with_bounded_memory(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"cat": 1, "dog": 1})
    _, baseline_mib = _extract_peak_mib(root, tmp_path / "baseline.h5")  # torch, export, ...
    Image.new("RGB", (1, 8000), (9, 9, 9)).save(root / "cat" / "strip.png")
    out = tmp_path / "f.h5"
    result, peak_mib = _extract_peak_mib(root, out)
    # the same run without the strip is the baseline; uncapped, the strip alone took 5.3 GB
    assert peak_mib - baseline_mib < 512, f"peak RSS {peak_mib:.0f} vs {baseline_mib:.0f} MiB"
    paths, failed = stored(out)
    assert len(paths) == 2
    (error,) = failed.values()
    assert "too elongated" in error and "64:1" in error
    assert f"skipped {root / 'cat' / 'strip.png'}" in result.stderr  # the log names the file


def test_float_and_32bit_images_are_scaled_not_black_or_white(tmp_path):
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, "F").save(tmp_path / "f01.tif")
    decoded = np.asarray(decode_image(tmp_path / "f01.tif"))[..., 0]
    assert np.array_equal(decoded, np.rint(ramp * 255).astype(np.uint8))
    wide = (ramp * 1000 - 500).astype(np.float32)  # other float ranges: min..max
    Image.fromarray(wide, "F").save(tmp_path / "fwide.tif")
    decoded = np.asarray(decode_image(tmp_path / "fwide.tif"))[..., 0]
    assert decoded.min() == 0 and decoded.max() == 255 and len(np.unique(decoded)) > 50
    big = (ramp.astype(np.float64) * 4e9 - 2e9).astype(np.int32)  # 32-bit integers
    Image.fromarray(big, "I").save(tmp_path / "i32.tif")
    decoded = np.asarray(decode_image(tmp_path / "i32.tif"))[..., 0]
    assert decoded.min() == 0 and decoded.max() == 255 and len(np.unique(decoded)) > 50
    Image.fromarray(np.full((8, 8), 1_500_000_000, np.int32), "I").save(tmp_path / "flat.tif")
    assert decode_image(tmp_path / "flat.tif").getpixel((0, 0)) == (128,) * 3  # no scale: grey
    Image.fromarray((ramp * 60000).astype(np.int32), "I").save(tmp_path / "i16.tif")
    decoded = np.asarray(decode_image(tmp_path / "i16.tif"))[..., 0]
    assert np.array_equal(decoded, np.rint(np.rint(ramp * 60000) / 257).astype(np.uint8))


def test_transient_failures_are_retried_content_failures_are_not(
    image_dir, tmp_path, monkeypatch, capsys
):
    from pipeline.engine import sources

    victim = str(image_dir / "dog" / "dog_000.png")
    real_open = sources.open_regular_file

    def flaky_open(path):
        if os.fspath(path) == victim:
            raise PermissionError(13, "Permission denied", victim)
        return real_open(path)

    monkeypatch.setattr(sources, "open_regular_file", flaky_open)
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    paths, failed = stored(out)
    assert len(paths) == 7 and failed[victim].startswith("transient: ")
    assert "corrupt.jpg" in "".join(failed)
    monkeypatch.setattr(sources, "open_regular_file", real_open)
    capsys.readouterr()
    assert extract(image_dir, out) == 0
    assert "embedded 1 new" in capsys.readouterr().out  # the corrupt file was not retried
    paths, failed = stored(out)
    assert victim in paths and list(failed) == [str(image_dir / "cat" / "corrupt.jpg")]


def test_every_decoder_exception_is_recorded_with_path_and_type(image_dir, tmp_path, monkeypatch):
    from PIL import ImageOps

    def broken(image, in_place=False):  # dog images are green (conftest.write_images)
        if image.getpixel((0, 0))[1] >= 180:
            raise ZeroDivisionError("division by zero")
        return None

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    _, failed = stored(out)
    errors = [e for p, e in failed.items() if "dog" in p]
    assert errors and all(e.startswith(p) for p, e in failed.items() if "dog" in p)
    assert all("ZeroDivisionError: division by zero" in e for e in errors)


# Whole-run outcomes ------------------------------------------------------------------------


def test_a_run_where_every_image_fails_exits_2_and_keeps_the_records(tmp_path, capsys):
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    for name in ("a.jpg", "b.png"):
        (root / "cat" / name).write_bytes(b"not an image")
    out = tmp_path / "f.h5"
    assert extract(root, out) == 2
    line = last_error_line(capsys)
    assert line.startswith("error:") and "every input failed (2)" in line
    paths, failed = stored(out)
    assert paths == [] and len(failed) == 2
    assert all(f"cannot identify image file {p!r}" in e for p, e in failed.items())


def test_predict_out_that_is_a_folder_fails_before_embedding(tmp_path, capsys):
    model = tmp_path / "model.joblib"
    model.write_bytes(b"never loaded")
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert predict.main(["--model", str(model), str(image), "--out", str(tmp_path)]) == 2
    line = last_error_line(capsys)
    assert line.startswith("error: --out:") and "directory" in line
    missing = tmp_path / "no" / "such" / "p.csv"
    assert predict.main(["--model", str(model), str(image), "--out", str(missing)]) == 2
    assert "does not exist" in last_error_line(capsys)


def test_walk_reports_what_it_cannot_use(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"cat": 1})
    os.mkfifo(root / "cat" / "p.png")
    (root / "cat" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    found = walk_images(root)
    assert len(found.images) == 1
    assert set(found.failed) == {str(root / "cat" / "p.png"), str(root / "cat" / "dangling.jpg")}


def test_gpu_decode_reader_never_opens_a_fifo(tmp_path):
    from pipeline.engine.decoding import _CropItem, _EncodedItem
    from pipeline.engine.preprocess import Preprocessing

    fifo = str(tmp_path / "x.jpg")
    os.mkfifo(fifo)
    pre = Preprocessing(crop_size=8, resize_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    item = _EncodedItem([fifo], _CropItem(lambda i: decode_image(fifo), pre))
    encoded, pixels, error = item(0)
    assert encoded is None and pixels.shape == (8, 8, 3)
    assert error == f"{fifo}: not a regular file (FIFO)"


def test_predict_walks_folders_safely_and_keeps_odd_names(trained, tmp_path):  # noqa: F811
    model, _ = trained
    new = tmp_path / "new"
    write_images(new, {"red": 2}, size=(40, 40), seed=7)
    (new / "red" / "loop").symlink_to("..")
    os.mkfifo(new / "red" / "pipe.png")
    raw = os.fsencode(new / "red") + b"/\xff.png"
    Image.new("RGB", (40, 40), (220, 20, 20)).save(raw)
    out_csv = tmp_path / "pred.csv"
    assert predict.main(["--model", str(model), str(new), "--out", str(out_csv), "-q"]) == 0
    lines = out_csv.read_bytes().splitlines()[1:]
    by_path = {line.rsplit(b",", 3)[0]: line.rsplit(b",", 3)[1:] for line in lines}
    assert len(lines) == 4 and len(by_path) == 4  # 3 images once each, and the FIFO
    assert raw in by_path and by_path[raw][2] == b""  # the original bytes, predicted
    assert b"not a regular file (FIFO)" in by_path[os.fsencode(new / "red" / "pipe.png")][2]
