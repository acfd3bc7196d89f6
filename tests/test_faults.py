"""Concurrency and faults: a second extract on the same store, Ctrl-C, a full disk, temporary
files of a killed run, newer formats, damaged stores, model files and ImageEmbedder caches."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import joblib
import numpy as np
import pytest

from pipeline._io import exclusive_run
from pipeline.embedder import ImageEmbedder
from pipeline.exceptions import StoreError
from pipeline.fit import main as fit_main
from pipeline.fit.model_file import MODEL_FORMAT_VERSION, save_model
from pipeline.predict import main as predict_main
from pipeline.store import list_parts, parts_dir, read_rows_file, read_store

from ._fit_helpers import RECIPE, flip_a_feature_bit, write_store
from .conftest import TINY_MODEL, write_images
from .test_extract import REPO, extract

TINY = {"model": "squeezenet1_1", "weights": None, "backend": "torch"}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _extract_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.extract", "--data", str(data), "--out", str(out),
            *TINY_MODEL, "--workers", "0", "--no-progress", "-q", *extra]  # fmt: skip


# -- one writer per store -------------------------------------------------------------------------


def test_second_extract_on_the_same_out_exits_2_at_once(image_dir, tmp_path, capsys, monkeypatch):
    """At once: every attempt on the lock is non-blocking (timeout 0), so the run never
    waits for the holder; checked on the calls, not with a clock (a busy machine is slow)."""
    import filelock

    out = tmp_path / "f.h5"
    attempts: list[float] = []
    acquire = filelock.FileLock.acquire

    def recorded(self, timeout=None, *args, blocking=None, **kwargs):
        waits = blocking is not False and (timeout if timeout is not None else self.timeout) != 0
        attempts.append(waits)
        return acquire(self, timeout, *args, blocking=blocking, **kwargs)

    with exclusive_run(out):  # stands for a running extract
        monkeypatch.setattr(filelock.FileLock, "acquire", recorded)
        assert extract(image_dir, out) == 2
        monkeypatch.undo()
        assert attempts and not any(attempts), attempts  # tried the lock, never waited on it
        line = _one_error_line(capsys.readouterr().err)
        assert f"--out: another extract (process {os.getpid()}) is writing {out}" in line
        assert not out.exists() and not parts_dir(out).exists()
    assert extract(image_dir, out) == 0  # the lock is free again
    assert len(read_store(out).paths) == 8


def test_fit_on_a_store_being_written_says_so(tmp_path, capsys):
    store = write_store(tmp_path / "f.h5", complete=False)
    with exclusive_run(store):
        assert fit_main(["--features", str(store), "--out", str(tmp_path / "r"), "-q"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{store} is being written by a running extract; wait for it to finish" in line
    assert "run the same" not in line
    # Not locked: the resume advice.
    assert fit_main(["--features", str(store), "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "run the same `python -m pipeline.extract` command" in capsys.readouterr().err


# -- Ctrl-C ---------------------------------------------------------------------------------------


_MARK_BATCHES = """
import pathlib, sys, time
import pipeline.extract.parts as parts
from pipeline.extract.cli import main
marker, plain_add = pathlib.Path(sys.argv.pop(1)), parts.PartWriter.add

def marked_add(self, *args, **kwargs):
    if marker.exists():  # slowed before adding: an interrupt here leaves the count exact
        time.sleep(0.2)
    plain_add(self, *args, **kwargs)
    marker.touch()

parts.PartWriter.add = marked_add
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_saves_the_rows_embedded_so_far(tmp_path):
    data = tmp_path / "images"
    write_images(data, {"a": 300, "b": 300}, size=(8, 8))
    out = tmp_path / "f.h5"
    # No checkpoint would fall due before the end: only the interrupt handler can save rows.
    argv = _extract_argv(data, out, "--batch-size", "2", "--checkpoint-seconds", "100000")
    # Interrupted once a batch is embedded (a marker file says so), whatever the machine's
    # speed; later batches are slowed so that the run cannot end first.
    embedded = tmp_path / "embedded"
    argv = [sys.executable, "-c", _MARK_BATCHES, str(embedded), *argv[3:]]
    # Ctrl-C's default action, even where the suite itself was started with SIGINT ignored
    # (`nohup ... &`, a background job): Python then keeps ignoring it, as a user would want.
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not embedded.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert embedded.exists() and proc.poll() is None, "no batch embedded before the end"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "Traceback" not in err, err
    saved = int(last.split()[1])
    assert 0 < saved < 600, last
    with h5py.File(out, "r") as fh:
        assert not fh.attrs["complete"] and fh["features"].shape[0] == saved
        assert np.isfinite(fh["features"][:]).all()
    assert extract(data, out) == 0
    assert len(read_store(out).paths) == 600


# -- full disk --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# 1 MiB fills up while part files are written; 2 MiB during the final merge (parts of 50 rows
# take ~1.3 MB, the merged store ~1.2 MB; there h5py used to crash with SIGSEGV).
@pytest.mark.parametrize(("size", "batch"), [("1m", "8"), ("2m", "50")])
def test_disk_full_is_one_line_exit_2_and_a_rerun_keeps_finished_rows(size, batch, tmp_path):
    data = tmp_path / "images"
    write_images(data, {"a": 250, "b": 250}, size=(8, 8))
    with _tmpfs(tmp_path / "small", size) as small:
        out = small / "f.h5"
        argv = _extract_argv(data, out, "--batch-size", batch, "--checkpoint-seconds", "0")
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr  # never 139 (SIGSEGV) or 1 (a traceback)
        line = _one_error_line(done.stderr)
        assert f"{small}/" in line and "No space left" in line and "(disk full)" in line
        assert not list(small.glob(".*.tmp")) and not list(parts_dir(out).glob(".*.tmp"))
        kept = sum(len(read_rows_file(p, with_features=False).paths) for p in list_parts(out))
        assert kept == 500 if size == "2m" else 0 < kept < 500
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"embedded {500 - kept} new" in done.stdout  # nothing finished was recomputed
        assert len(read_store(out).paths) == 500


# -- temporary files of a killed run ------------------------------------------------------------------


def test_a_run_removes_temporary_files_a_killed_run_left(image_dir, tmp_path):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    # What kill -9 leaves: the final merge's full-size copy, an index and a part being written.
    merge_copy = tmp_path / ".f.h5.k1ll3d.tmp"
    shutil.copy(out, merge_copy)
    parts_dir(out).mkdir()
    part_tmp = parts_dir(out) / ".part-000003.h5.x9.tmp"
    part_tmp.write_bytes(b"\0" * 4096)
    unrelated = tmp_path / ".other.h5.abc.tmp"
    unrelated.write_bytes(b"x")
    write_images(image_dir, {"new": 2}, seed=5)
    assert extract(image_dir, out) == 0
    assert not merge_copy.exists() and not part_tmp.exists()
    assert not list(parts_dir(out).glob(".*.tmp"))  # the update appended: its parts stay
    assert unrelated.exists()  # another target's temporary file is left alone
    assert len(read_store(out).paths) == 10


_SLOW_MERGE = """
import contextlib, sys, time
import pipeline.extract.parts as parts, pipeline.store as store
from pipeline.extract.cli import main
merging, plain_atomic, plain_merge = [], store.atomic_path, parts.merge_store

@contextlib.contextmanager
def slow_atomic(target):
    with plain_atomic(target) as tmp:
        yield tmp
        if merging:  # the merged copy is complete on disk: hold it there to be killed
            time.sleep(120)

def flagged_merge(*args, **kwargs):
    merging.append(True)
    return plain_merge(*args, **kwargs)

store.atomic_path, parts.merge_store = slow_atomic, flagged_merge
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_during_the_final_merge_leaves_a_copy_the_next_run_removes(tmp_path):
    data = tmp_path / "images"
    write_images(data, {"a": 30, "b": 30}, size=(8, 8))
    out = tmp_path / "f.h5"
    argv = [sys.executable, "-c", _SLOW_MERGE, *_extract_argv(data, out)[3:]]
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline, copies = time.monotonic() + 120, []
    while not copies and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        copies = [p for p in tmp_path.glob(".f.h5.*.tmp") if p.stat().st_size > 60 * 512 * 4]
    assert copies, proc.stderr.read() if proc.poll() is not None else "no merge seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert copies[0].exists() and parts_dir(out).exists()  # what kill -9 leaves
    assert extract(data, out) == 0
    assert not list(tmp_path.glob(".f.h5.*")) and not parts_dir(out).exists()
    assert len(read_store(out).paths) == 60


# -- formats and damage -----------------------------------------------------------------------------


def test_a_store_of_a_newer_format_is_refused(image_dir, tmp_path, capsys):
    out = tmp_path / "f.h5"
    assert extract(image_dir, out) == 0
    with h5py.File(out, "r+") as fh:
        fh.attrs["format_version"] = 99
    capsys.readouterr()
    for run in (
        lambda: extract(image_dir, out),
        lambda: extract(image_dir, out, "--model", "squeezenet1_0"),
    ):
        assert run() == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"{out}: made by a newer pipeline (format 99 > 1)" in line
    with h5py.File(out, "r") as fh:
        assert fh.attrs["format_version"] == 99  # never rewritten as version 1
    assert fit_main(["--features", str(out), "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "made by a newer pipeline" in _one_error_line(capsys.readouterr().err)


def test_a_flipped_bit_in_features_is_a_checksum_error(tmp_path, capsys):
    store = write_store(tmp_path / "f.h5")
    flip_a_feature_bit(store)
    with pytest.raises(StoreError, match="checksum mismatch"):
        read_store(store)
    assert fit_main(["--features", str(store), "--out", str(tmp_path / "r"), "-q"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(store) in line and "checksum mismatch" in line and "re-extract" in line


def test_a_store_without_checksums_stays_readable(tmp_path):
    store = write_store(tmp_path / "f.h5")
    old = tmp_path / "old.h5"
    with h5py.File(store, "r") as src, h5py.File(old, "w") as dst:
        for name in src:
            if name != "features":
                src.copy(name, dst)
        dst.create_dataset("features", data=src["features"][...], chunks=True)
        dst.attrs.update(src.attrs)
    assert not h5py.File(old, "r")["features"].fletcher32
    np.testing.assert_array_equal(read_store(old).features, read_store(store).features)


# -- model files --------------------------------------------------------------------------------------


def _model_payload() -> dict:
    from sklearn.dummy import DummyClassifier

    return {
        "format_version": MODEL_FORMAT_VERSION,
        "pipeline_version": "0.1.0",
        "clf": "dummy",
        "estimator": DummyClassifier().fit([[0], [1]], ["a", "b"]),
        "class_names": ["a", "b"],
        "backbone": {**RECIPE.to_attrs(), "feature_dim": 1},
        "store": "features.h5",
    }


def test_a_truncated_model_file_is_one_line(tmp_path, image_dir, capsys):
    model = tmp_path / "m.joblib"
    save_model(model, _model_payload())
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    assert predict_main(["--model", str(model), str(image_dir), "-q"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(model) in line and "not a readable pipeline model file" in line


def test_other_library_versions_warn_once_in_one_line(tmp_path, caplog):
    from pipeline.fit import load_model_file

    model = tmp_path / "m.joblib"
    save_model(model, _model_payload())
    payload = joblib.load(model)
    assert {"scikit-learn", "xgboost", "torch", "numpy", "pipeline"} <= set(payload["versions"])
    load_model_file(model)
    assert not caplog.records  # same versions: silent
    payload["versions"]["scikit-learn"] = "0.24.0"
    joblib.dump(payload, model)
    for _ in range(2):
        load_model_file(model)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "scikit-learn 0.24.0 -> " in warnings[0]


# -- ImageEmbedder cache ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def few_images(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("faults") / "images"
    return [str(p) for p in write_images(root, {"x": 3})]


@pytest.fixture(scope="module")
def few_reference(few_images) -> np.ndarray:
    return ImageEmbedder(**TINY).transform(few_images)


@pytest.mark.parametrize("damage", ["random bytes", "inconsistent lengths", "another HDF5 file"])
def test_a_file_that_is_no_cache_is_refused_and_left_alone(damage, few_images, tmp_path):
    """As strict as ``extract --out``: a foreign or damaged file at cache= is an error naming
    it and what to do, on fit and on transform; it is neither overwritten nor ignored."""
    cache = tmp_path / "cache.h5"
    if damage == "random bytes":
        cache.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "another HDF5 file":
        with h5py.File(cache, "w") as fh:
            fh["data"] = np.arange(3)
    else:
        ImageEmbedder(**TINY, cache=cache).transform(few_images[:1])
        with h5py.File(cache, "r+") as fh:
            del fh["keys"]
            fh.create_dataset("keys", data=np.array(["a", "b"], dtype=object),
                              dtype=h5py.string_dtype())  # fmt: skip
    before = cache.read_bytes()
    embedder = ImageEmbedder(**TINY, cache=cache)
    for call in (embedder.fit, embedder.transform):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no warn-and-compute
            with pytest.raises(StoreError) as caught:
                call(few_images)
        message = str(caught.value)
        assert "\n" not in message and str(cache) in message
        assert "ImageEmbedder cache" in message
        assert "pass another cache=" in message
    assert cache.read_bytes() == before  # left alone


def test_a_read_only_cache_folder_never_loses_the_embeddings(few_images, few_reference, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    code = (
        "import warnings, numpy as np; from pipeline.embedder import ImageEmbedder\n"
        f"X = ImageEmbedder(model='squeezenet1_1', weights=None, backend='torch', "
        f"cache={str(folder / 'c.h5')!r}).transform({few_images!r})\n"
        f"np.save({str(tmp_path / 'X.npy')!r}, X)\n"
    )
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # root writes anywhere unless it drops this capability
        if not shutil.which("capsh"):
            pytest.skip("needs capsh to drop cap_dac_override as root")
        argv = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
                shlex.join(argv)]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "X.npy"), few_reference, rtol=1e-5, atol=1e-6)
    warned = [line for line in done.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 1 and str(folder / "c.h5") in warned[0], done.stderr
    assert not (folder / "c.h5").exists()


def test_a_cache_of_a_newer_format_is_refused(few_images, tmp_path):
    cache = tmp_path / "cache.h5"
    ImageEmbedder(**TINY, cache=cache).transform(few_images[:1])
    with h5py.File(cache, "r+") as fh:
        fh.attrs["format_version"] = 7
    with pytest.raises(StoreError, match=r"made by a newer pipeline \(format 7 > 1\)"):
        ImageEmbedder(**TINY, cache=cache).transform(few_images)
    with h5py.File(cache, "r") as fh:
        assert fh.attrs["format_version"] == 7 and fh["keys"].shape == (1,)
