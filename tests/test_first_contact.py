"""First contact (issue 11): files follow the umask, logs read well when redirected, bad flags
fail before torch is imported, and the ``pipeline`` console command."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from pipeline import console
from pipeline._progress import Progress
from pipeline.extract import executors
from pipeline.extract import main as extract_main
from pipeline.fit import main as fit_main
from pipeline.predict import main as predict_main
from pipeline.store import parts_dir

from .conftest import TINY_MODEL, write_images

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything below it, by path relative to its parent."""
    found = {root.name: stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root.parent))] = stat.S_IMODE(path.stat().st_mode)
    return found


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_every_output_follows_the_umask(tmp_path, monkeypatch, umask):
    data = tmp_path / "images"
    write_images(data / "train", {"a": 6, "b": 6})
    write_images(data / "test", {"a": 2, "b": 2}, seed=1)
    out = tmp_path / "out"
    store, run, csv = out / "f.h5", out / "run", out / "predictions.csv"
    extract = ["--data", str(data), "--out", str(store), *TINY_MODEL, "--no-progress", "-q"]
    files, folders = 0o666 & ~umask, 0o777 & ~umask
    previous = os.umask(umask)
    try:
        with monkeypatch.context() as patch:  # stopped before the merge: an unfinished store
            patch.setattr(executors, "finish_store", _interrupt)
            assert extract_main([*extract, "--batch-size", "4", "--checkpoint-seconds", "0"]) == 130
        unfinished = {**_modes(parts_dir(store)), store.name: stat.S_IMODE(store.stat().st_mode)}
        assert len(unfinished) >= 3  # the store, its parts folder, part files
        assert extract_main(extract) == 0
        assert fit_main(["--features", str(store), "--clf", "logreg", "--out", str(run), "-q"]) == 0
        model = run / "models" / "logreg.joblib"
        assert (
            predict_main(["--model", str(model), str(data / "test"), "--out", str(csv), "-q"]) == 0
        )
        written = _modes(out)
    finally:
        os.umask(previous)
    assert {"out/f.h5", "out/run/report.json", "out/run/report.md", "out/predictions.csv"} <= set(
        written
    )
    assert any(p.endswith(".png") for p in written) and "out/run/models/logreg.joblib" in written
    for path, mode in {**unfinished, **written}.items():
        folder = path in ("out", "f.h5.parts", "out/run", "out/run/models", "out/run/thumbs")
        assert mode == (folders if folder else files), f"{path}: {oct(mode)}"


def test_redirected_extract_logs_progress_lines_not_a_bar(tmp_path):
    data = tmp_path / "images"
    write_images(data, {"a": 6, "b": 6})
    log = tmp_path / "stderr.log"
    argv = [sys.executable, "-m", "pipeline.extract", "--data", str(data),
            "--out", str(tmp_path / "f.h5"), *TINY_MODEL, "--batch-size", "4", "--workers", "0",
            "-v"]  # fmt: skip
    env = {**os.environ, "PIPELINE_PROGRESS_SECONDS": "0"}
    with log.open("w") as stderr:
        done = subprocess.run(argv, stderr=stderr, stdout=subprocess.PIPE, env=env, timeout=240)
    text = log.read_bytes().decode()  # not read_text(): it would turn "\r" into "\n"
    assert done.returncode == 0, text
    assert "\r" not in text
    lines = text.splitlines()
    progress = [line for line in lines if "extract: " in line and "images/s" in line]
    assert len(progress) >= 4, text  # 3 batches of 4 images, and the end
    assert "extract: 12/12 images (100%)" in progress[-1] and " in " in progress[-1]
    assert all(TIMESTAMP.match(line) for line in lines), text
    assert not [line for line in lines if " DEBUG " in line and " pipeline." not in line]


def test_progress_is_a_bar_on_a_terminal(monkeypatch, caplog):
    class Terminal:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    caplog.set_level("INFO")
    with Progress(3, unit="images", desc="extract", enabled=True, logger=executors.logger) as bar:
        for _ in range(3):
            bar.update()
    assert "\r" in terminal.text and "3/3" in terminal.text
    assert not [r for r in caplog.records if "images/s" in r.getMessage()]


def test_verbose_shows_project_debug_lines_not_third_party_ones(tmp_path):
    data = tmp_path / "images"
    write_images(data, {"a": 8, "b": 8})
    store = tmp_path / "f.h5"
    assert extract_main(["--data", str(data), "--out", str(store), *TINY_MODEL, "-q"]) == 0
    argv = [sys.executable, "-m", "pipeline.fit", "--features", str(store), "--clf", "logreg",
            "--out", str(tmp_path / "run"), "-v"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    records = [line for line in done.stderr.splitlines() if TIMESTAMP.match(line)]
    assert done.stderr.splitlines()[0] in records
    assert any(" DEBUG pipeline." in line for line in records), done.stderr
    assert any(" INFO pipeline.fit." in line for line in records)
    assert not re.search(r"DEBUG (matplotlib|PIL)", done.stderr), done.stderr
    # Every level word in the output belongs to a timestamped record.
    assert all(TIMESTAMP.match(line) for line in done.stderr.splitlines() if " DEBUG " in line)


BAD_FLAGS = """
import json, sys
from pipeline.extract.cli import main as extract
from pipeline.fit.cli import main as fit
from pipeline.predict import main as predict
codes = [
    extract(["--precision", "fp64"]),
    extract(["--device", "gpu"]),
    extract(["--backend", "tensorrt"]),
    fit(["--clf", "svc,svm"]),
    predict(["--model", "m.joblib", "a.png", "--device", "cuda:x"]),
    predict(["--model", "m.joblib", "a.png", "--backend", "tensorrt"]),
    predict(["--model", "missing.joblib", "no/such/photo.jpg"]),
]
print(json.dumps({"codes": codes, "heavy": sorted({"torch", "sklearn"} & set(sys.modules))}))
"""


def test_bad_flags_and_missing_inputs_fail_before_torch(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", BAD_FLAGS], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"codes": [2] * 7, "heavy": []}
    errors = done.stderr.splitlines()
    expected = ["--precision", "--device", "--backend", "--clf", "--device", "--backend",
                "IMAGE_OR_DIR: no/such/photo.jpg does not exist"]  # fmt: skip
    assert len(errors) == len(expected), done.stderr
    for line, flag in zip(errors, expected, strict=True):
        assert line.startswith(f"error: {flag}"), line
    assert "'fp64'" in errors[0] and "fp32" in errors[0]  # the value, and the choices


def test_predict_on_a_missing_path_is_bad_usage(tmp_path, capsys):
    """Checked before the model is even opened; a file that exists but is not an image gets
    an error row instead (tests/test_predict.py)."""
    (tmp_path / "here.png").write_bytes(b"not a png")
    argv = ["--model", str(tmp_path / "m.joblib"), str(tmp_path / "here.png")]
    assert predict_main([*argv, str(tmp_path / "gone.png"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: IMAGE_OR_DIR: {tmp_path / 'gone.png'} does not exist\n"
    assert predict_main([*argv, "-q"]) == 2  # now the model file is what is missing
    assert "m.joblib" in capsys.readouterr().err


def test_console_command_reuses_each_cli(capsys):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["pipeline"] == "pipeline.console:main"
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pipeline.__version__"}
    for command in console.COMMANDS:
        with pytest.raises(SystemExit) as info:
            console.main([command, "--help"])
        assert info.value.code == 0
        via_console = capsys.readouterr().out
        with pytest.raises(SystemExit):
            __import__(console.COMMANDS[command][0], fromlist=["main"]).main(["--help"])
        direct = capsys.readouterr().out
        assert via_console.startswith(f"usage: pipeline {command} ")
        for name in console.COMMANDS:  # other commands are named the way this one was typed
            via_console = via_console.replace(f"pipeline {name}", f"python -m pipeline.{name}")
        assert via_console.split() == direct.split()
    assert console.main([]) == 2 and console.main(["train"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "COMMAND" in err[0]
    assert err[1].startswith("error: COMMAND: invalid choice: 'train'")


def test_console_help_and_versions_load_no_torch():
    code = (
        "import sys\n"
        "from pipeline.console import main\n"
        "for argv in (['--help'], ['--version'], ['fit', '--version'], ['extract', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (argv, exc.code)\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "extract" in done.stdout and "predict" in done.stdout
    assert done.stdout.count(f"pipeline {pipeline.__version__}") == 2
    for module in ("pipeline", "pipeline.extract", "pipeline.fit", "pipeline.predict"):
        shown = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0 and shown.stdout == f"pipeline {pipeline.__version__}\n"
