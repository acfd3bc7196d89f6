"""Stage one end to end through the CLI: store contents, resume, incremental, guards, errors."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomllib
from PIL import Image

from pipeline.config import DEFAULT_CONFIG_PATH, ExtractConfig
from pipeline.engine.backbones import AUTO_WEIGHTS
from pipeline.extract import main
from pipeline.store import parts_dir, read_store

from ._precision import assert_embeddings_match, default_precision, other_precision
from .conftest import TINY_MODEL, write_images

REPO = Path(__file__).resolve().parent.parent


def extract(data, out, *extra) -> int:
    return main(
        ["--data", str(data), "--out", str(out), *TINY_MODEL, "--no-progress", "-q", *extra]
    )


def features_by_path(path) -> dict[str, np.ndarray]:
    table = read_store(path)
    return dict(zip(table.paths, table.features, strict=True))


def test_help_is_instant_and_imports_no_torch():
    code = "import sys, pipeline.extract, pipeline; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0


def test_default_config_file_matches_library_defaults():
    with DEFAULT_CONFIG_PATH.open("rb") as fh:
        section = tomllib.load(fh)["extract"]
    defaults = ExtractConfig()
    for field in dataclasses.fields(ExtractConfig):
        assert section[field.name] == getattr(defaults, field.name), field.name
    assert section["auto_weights"]["mobilenet_v2"] == "IMAGENET1K_V1"
    assert dict(defaults.auto_weights) == AUTO_WEIGHTS  # the library's "auto" (ImageEmbedder)


def test_store_layout_follows_the_contract(image_dir, tmp_path, capsys):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "8 rows x 512 dims, 1 failed" in summary and str(out) in summary
    with h5py.File(out, "r") as fh:
        assert fh["features"].dtype == np.float32 and fh["features"].shape == (8, 512)
        assert fh["features"].chunks is not None
        assert fh["labels"].dtype == np.int64
        assert list(fh["labels"][:]) == [0] * 4 + [1] * 4
        paths = fh["paths"].asstr()[:]
        assert paths[0].endswith("cat/cat_000.png") and list(fh["split"].asstr()[:]) == [""] * 8
        assert fh["failed/paths"].asstr()[0].endswith("corrupt.jpg")
        assert "cannot identify image" in fh["failed/errors"].asstr()[0]
        attrs = dict(fh.attrs)
    for key in (
        "class_names",
        "model",
        "weights",
        "feature_dim",
        "preprocessing",
        "precision",
        "fingerprint",
        "versions",
        "complete",
    ):
        assert key in attrs, key
    assert attrs["complete"] and attrs["model"] == "squeezenet1_1" and attrs["weights"] == "none"
    assert attrs["precision"] == default_precision() and attrs["feature_dim"] == 512
    assert "crop_size=[224]" in attrs["preprocessing"]
    table = read_store(out)
    assert table.class_names == ["cat", "dog"] and table.attrs["versions"]["torch"]
    assert np.isfinite(table.features).all() and not parts_dir(out).exists()


def test_batch_size_one_equals_batched(image_dir, tmp_path):
    assert extract(image_dir, tmp_path / "a.h5", "--batch-size", "1", "--workers", "0") == 0
    assert extract(image_dir, tmp_path / "b.h5", "--batch-size", "5", "--workers", "1") == 0
    a, b = read_store(tmp_path / "a.h5"), read_store(tmp_path / "b.h5")
    assert list(a.paths) == list(b.paths)
    assert_embeddings_match(a.features, b.features, a.attrs["precision"])


def test_incremental_run_embeds_only_new_changed_and_drops_removed(image_dir, tmp_path, caplog):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    before = features_by_path(out)
    # Unchanged folder: nothing recomputed, the file is not even rewritten.
    mtime = out.stat().st_mtime_ns
    assert extract(image_dir, out) == 0
    assert out.stat().st_mtime_ns == mtime
    # New images, a new class, one changed image and one removed image.
    write_images(image_dir, {"dog": 6}, seed=5)  # overwrites dog_000..003, adds dog_004..005
    write_images(image_dir, {"emu": 2}, seed=6)
    os.remove(image_dir / "cat" / "cat_003.png")
    os.utime(image_dir / "dog" / "dog_001.png", ns=(1, 1))  # "changed": new key
    caplog.set_level("DEBUG", logger="pipeline.extract.executors")
    argv = ["--data", str(image_dir), "--out", str(out), *TINY_MODEL, "--no-progress"]
    assert main(argv) == 2  # a row would go: refused without --prune (tests/test_prune.py)
    assert main([*argv, "--prune"]) == 0
    after = read_store(out)
    assert after.class_names == ["cat", "dog", "emu"]
    assert len(after.paths) == len(set(after.paths)) == 3 + 6 + 2
    assert not any(p.endswith("cat_003.png") for p in after.paths)
    rows = dict(zip(after.paths, after.features, strict=True))
    for name in ("cat_000", "cat_001", "cat_002"):  # kept rows are copied, not recomputed
        path = str(image_dir / "cat" / f"{name}.png")
        assert np.array_equal(rows[path], before[path])
    labels = dict(zip(after.paths, after.labels, strict=True))
    assert labels[str(image_dir / "emu" / "emu_000.png")] == 2
    # Dog images 0, 2, 3 were rewritten by write_images (new mtime) and 1 touched: 4 + 2 new dogs
    # + 2 emus = 8 embedded; the summary says so.
    # logged at DEBUG (the CLI prints the summary line once, on standard output)
    done = [r.message for r in caplog.records if "extraction done" in r.message][-1]
    assert "embedded 8 new" in done and "pruned 1 rows" in done


def test_fingerprint_guard_refuses_to_mix_and_overwrite_replaces(image_dir, tmp_path, capsys):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    digest = out.read_bytes()
    capsys.readouterr()
    other_model = ["--model", "shufflenet_v2_x0_5"]  # the last --model wins
    code = extract(image_dir, out, *other_model)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "another backbone" in err and "--overwrite" in err and "shufflenet_v2_x0_5" in err
    assert out.read_bytes() == digest
    other = other_precision(read_store(out).attrs["precision"])
    assert extract(image_dir, out, "--precision", other) == 2  # precision is part of it too
    assert out.read_bytes() == digest
    assert extract(image_dir, out, *other_model, "--overwrite") == 0
    assert read_store(out).attrs["model"] == "shufflenet_v2_x0_5"
    assert read_store(out).features.shape[1] == 1024


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/missing"], "--data: no such file or directory"),
        (["--data", "{tmp}/empty"], "--data: no images"),
        (["--model", "resnet5"], "--model: unknown model 'resnet5'; did you mean"),
        (["--weights", "IMAGENET9K"], "--weights: 'IMAGENET9K' is not a weight"),
        (["--out", "{tmp}/afile/f.h5"], "--out: cannot write"),
        (["--device", "tpu"], "--device"),
        (["--precision", "fp8"], "--precision"),
    ],
)
def test_bad_usage_is_one_line_exit_2_and_writes_nothing(
    image_dir, tmp_path, capsys, args, message
):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    base = {
        "--data": str(image_dir),
        "--out": str(tmp_path / "out" / "f.h5"),
        "--model": "squeezenet1_1",
        "--weights": "none",
    }
    given = [a.format(tmp=tmp_path) for a in args]
    for flag, value in zip(given[::2], given[1::2], strict=True):
        base[flag] = value
    argv = [x for kv in base.items() for x in kv] + ["--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert message in err
    assert not (tmp_path / "out" / "f.h5").exists()


def test_bad_and_odd_images_in_one_run(tmp_path):
    root = tmp_path / "odd" / "x"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(rgb).convert("L").save(root / "grey.png")
    Image.fromarray(rgb).convert("L").convert("RGB").save(root / "grey_as_rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(rgb).quantize(32).save(root / "palette.gif")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257).save(
        root / "grey16.png"
    )
    Image.new("RGB", (2, 2), (10, 200, 30)).save(root / "tiny.bmp")
    Image.new("RGB", (4000, 3000), (90, 30, 30)).save(root / "huge.jpg", quality=70)
    wide = Image.fromarray(rgb)
    exif = wide.getexif()
    exif[0x0112] = 8
    wide.save(root / "rotated.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(rgb).rotate(90, expand=True).save(root / "rotated_ref.jpg", quality=95)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    full = tmp_path / "full.jpg"
    Image.fromarray(rgb).save(full)
    (root / "truncated.jpg").write_bytes(full.read_bytes()[:300])
    out = tmp_path / "f.h5"
    assert extract(tmp_path / "odd", out) == 0
    table = read_store(out)
    failed = dict(zip(table.failed.paths, table.failed.errors, strict=True))
    assert sorted(Path(p).name for p in failed) == ["empty.jpg", "text.jpg", "truncated.jpg"]
    assert "empty file" in failed[str(root / "empty.jpg")]
    rows = {Path(p).name: f for p, f in zip(table.paths, table.features, strict=True)}
    assert len(rows) == 11 and np.isfinite(table.features).all()
    np.testing.assert_allclose(rows["grey.png"], rows["grey_as_rgb.png"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows["grey16.png"], rows["grey_as_rgb.png"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows["rgba.png"], rows["rgb.png"], rtol=1e-5, atol=1e-5)
    # EXIF orientation applied: equal to the upright reference up to JPEG noise.
    cos = (
        rows["rotated.jpg"]
        @ rows["rotated_ref.jpg"]
        / (np.linalg.norm(rows["rotated.jpg"]) * np.linalg.norm(rows["rotated_ref.jpg"]))
    )
    assert cos > 0.99


def _wait_for_parts(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(parts_dir(out).glob("part-*.h5"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"extraction ended before it could be killed: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("no part files appeared")


def _kill_after_parts(data: Path, out: Path, parts: int, *extra: str) -> None:
    """Run the CLI in a subprocess, checkpointing every batch; SIGKILL it once ``parts``
    part files exist."""
    argv = [sys.executable, "-m", "pipeline.extract", "--data", str(data), "--out", str(out),
            *TINY_MODEL, "--batch-size", "2", "--workers", "0", "--checkpoint-seconds", "0",
            "--no-progress", "-q", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    _wait_for_parts(out, parts, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize(("precision", "per_class"), [("auto", 20), ("bf16", 6)])
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, precision, per_class):
    """``auto`` is fp32 on CPU and bf16 on a GPU; ``bf16`` runs the half-precision path here
    too (torch autocast on CPU, slow there: fewer images). Batches of 2, then 3, then the
    default size: equal to the precision's rounding (see ``assert_embeddings_match``)."""
    data = tmp_path / "images"
    n_images = 2 * per_class
    write_images(data, {"a": per_class, "b": per_class})
    (data / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    out = tmp_path / "killed.h5"
    chosen = ["--precision", precision]
    _kill_after_parts(data, out, 3, *chosen)
    # The interrupted store is a readable, incomplete store holding the rows done so far.
    with h5py.File(out, "r") as fh:
        assert not fh.attrs["complete"]
        n_partial = fh["features"].shape[0]
        assert 4 <= n_partial < n_images and np.isfinite(fh["features"][:]).all()
    assert extract(data, out, "--batch-size", "3", *chosen) == 0
    resumed = read_store(out)
    assert extract(data, tmp_path / "clean.h5", *chosen) == 0
    clean = read_store(tmp_path / "clean.h5")
    expected = default_precision() if precision == "auto" else precision
    assert resumed.attrs["precision"] == clean.attrs["precision"] == expected
    assert list(resumed.paths) == list(clean.paths) and len(set(resumed.paths)) == n_images
    assert (
        list(resumed.failed.paths) == list(clean.failed.paths) == [str(data / "a" / "broken.jpg")]
    )
    assert_embeddings_match(resumed.features, clean.features, expected)
    assert not parts_dir(out).exists()


def test_interrupted_update_of_a_complete_store_keeps_its_rows(image_dir, tmp_path):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    before = features_by_path(out)
    write_images(image_dir, {"new": 30}, seed=9)
    _kill_after_parts(image_dir, out, 2)
    assert (parts_dir(out) / "base.h5").exists()
    assert extract(image_dir, out) == 0
    after = features_by_path(out)
    assert len(after) == 38
    for path, row in before.items():
        assert np.array_equal(after[path], row)


def test_overwrite_clears_leftover_parts(image_dir, tmp_path):
    out = tmp_path / "f.h5"
    parts_dir(out).mkdir(parents=True)
    (parts_dir(out) / "part-000000.h5").write_bytes(b"garbage")
    assert extract(image_dir, out, "--overwrite") == 0
    assert len(read_store(out).paths) == 8
    shutil.rmtree(tmp_path)


def test_jpeg_draft_decoding_is_part_of_the_fingerprint(tmp_path, capsys):
    data = tmp_path / "big"
    write_images(data, {"a": 2}, size=(1200, 900), ext=".jpg")
    draft, full = tmp_path / "draft.h5", tmp_path / "full.h5"
    assert extract(data, draft, "--jpeg-draft") == 0
    assert extract(data, full) == 0
    a, b = read_store(draft), read_store(full)
    assert a.attrs["jpeg_draft"] and not b.attrs["jpeg_draft"]
    assert a.attrs["fingerprint"] != b.attrs["fingerprint"]
    cos = (a.features * b.features).sum(1) / (
        np.linalg.norm(a.features, axis=1) * np.linalg.norm(b.features, axis=1)
    )
    assert (cos > 0.9).all() and not np.allclose(a.features, b.features)
    capsys.readouterr()
    assert extract(data, draft) == 2  # the same store without draft decoding: refused
    assert "jpeg_draft" in capsys.readouterr().err


def test_warm_rerun_over_an_unchanged_folder_does_not_import_torch(image_dir, tmp_path):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    code = (
        "import sys\n"
        "from pipeline.extract import main\n"
        f"assert main(['--data', {str(image_dir)!r}, '--out', {str(out)!r}, "
        "'--model', 'squeezenet1_1', '--weights', 'none', '--no-progress', '-q']) == 0\n"
        "assert 'torch' not in sys.modules, 'warm path imported torch'\n"
        "assert 'onnxruntime' not in sys.modules, 'warm path imported onnxruntime'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    # Another request (here: precision) goes the full way, and is refused as another backbone.
    other = other_precision(read_store(out).attrs["precision"])
    assert extract(image_dir, out, "--precision", other) == 2
