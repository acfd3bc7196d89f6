"""Speaking to a person (issue 26), through the CLIs: hints that are commands which run, runs
that do not silently replace others, ``--refit``, library defaults equal to the CLI's, plain
console lines each said once, no lock files left by rejected runs, ``--help``."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pytest

from pipeline import _progress, console, make_classifier
from pipeline.config import FitConfig
from pipeline.extract import main as extract_main
from pipeline.fit import evaluation
from pipeline.fit import main as fit_main
from pipeline.fit.summary import plain_summary
from pipeline.store import load_features

from ._fit_helpers import write_store
from .conftest import TINY_MODEL, write_images

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _hint_commands(message: str) -> list[list[str]]:
    """The backticked commands of an error line, as argument lists."""
    return [shlex.split(c) for c in re.findall(r"`([^`]+)`", message)]


def _run_hint(words: list[str], images: Path) -> int:
    """Run a hint command in-process, its placeholder filled; extract on the tiny model."""
    words = [str(images) if w == "YOUR_IMAGES" else w for w in words]
    if words[:3] == ["python", "-m", "pipeline.extract"]:
        return extract_main([*words[3:], *TINY_MODEL, "-q"])
    if words[:3] == ["python", "-m", "pipeline.fit"]:
        return fit_main([*words[3:], "--clf", "logreg", "--no-audit", "-q"])
    raise AssertionError(f"not a pipeline command: {words}")


def test_hints_are_commands_that_do_what_the_user_meant(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "photos"
    write_images(images, {"bees": 5, "wasps": 5})
    # A missing store: the hint embeds YOUR images into it, then fit reads it.
    assert fit_main(["--features", "bees.h5", "--out", "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "YOUR_IMAGES" in err, err
    hints = _hint_commands(err)
    assert hints and "--data" in hints[0], err
    assert _run_hint(hints[0], images) == 0
    store = load_features(tmp_path / "bees.h5")
    assert sorted(store[4]) == ["bees", "wasps"]  # the user's classes, not the digits
    assert fit_main(["--features", "bees.h5", "--clf", "logreg", "--out", "run", "-q"]) == 0
    # --features naming the image folder: embed it beside, then fit that store.
    capsys.readouterr()
    assert fit_main(["--features", "photos", "--out", "run2"]) == 2
    err = capsys.readouterr().err.strip()
    first, second = _hint_commands(err)
    assert first[first.index("--data") + 1] == "photos"
    assert first[first.index("--out") + 1] != "photos"
    assert _run_hint(first, images) == 0 and _run_hint(second, images) == 0
    # The console command's hints name the console command.
    assert console.main(["fit", "--features", "missing.h5"]) == 2
    assert "`pipeline extract --data YOUR_IMAGES --out missing.h5`" in capsys.readouterr().err


def _fit(store: Path, out: Path, *flags: str) -> int:
    return fit_main(["--features", str(store), "--out", str(out), "--no-audit", "-q", *flags])


def test_a_second_fit_does_not_silently_replace_another_runs_models(tmp_path, capsys):
    store = write_store(tmp_path / "f.h5")
    out = tmp_path / "run"
    assert _fit(store, out, "--clf", "logreg,knn") == 0
    knn = (out / "models" / "knn.joblib").read_bytes()
    capsys.readouterr()
    started = time.perf_counter()
    assert _fit(store, out, "--clf", "logreg") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--replace" in err[0] and "knn" in err[0], err
    assert "clf: logreg,knn -> logreg" in err[0]
    assert time.perf_counter() - started < 10  # refused before training
    assert (out / "models" / "knn.joblib").read_bytes() == knn
    assert _fit(store, out, "--clf", "logreg,knn") == 0  # the same command again: allowed
    report = json.loads((out / "report.json").read_text())
    del report["config"]["refit"]  # written by a version without --refit: its default
    (out / "report.json").write_text(json.dumps(report))
    assert _fit(store, out, "--clf", "logreg,knn") == 0
    assert _fit(store, out, "--clf", "logreg", "--replace") == 0
    assert sorted(p.name for p in (out / "models").iterdir()) == ["logreg.joblib"]


def test_refit_trains_the_saved_models_on_every_labelled_row(tmp_path, capsys):
    split = ["test" if i % 5 == 0 else "train" for i in range(90)]
    store = write_store(tmp_path / "f.h5", split=split, spread=1.0)
    X_train, y_train, X_test, y_test, names = load_features(store)
    names = np.asarray(names)
    assert _fit(store, tmp_path / "a", "--clf", "logreg") == 0
    assert _fit(store, tmp_path / "b", "--clf", "logreg", "--refit") == 0
    kept = joblib.load(tmp_path / "a" / "models" / "logreg.joblib")
    refit = joblib.load(tmp_path / "b" / "models" / "logreg.joblib")
    assert kept["trained_on"]["rows"] == "train" and kept["trained_on"]["n_rows"] == 72
    assert refit["trained_on"]["rows"] == "all" and refit["trained_on"]["n_rows"] == 90
    X, y = np.vstack([X_train, X_test]), names[np.concatenate([y_train, y_test])]
    expected = make_classifier("logreg").fit(X, y)  # the library's defaults, on every row
    got = refit["estimator"].predict_proba(X)
    np.testing.assert_allclose(got, expected.predict_proba(X), atol=1e-5)  # row order differs
    assert np.abs(kept["estimator"].predict_proba(X) - got).max() > 1e-3  # not the train model
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["results"][0]["accuracy"] == a["results"][0]["accuracy"]  # scores unchanged
    assert report["results"][0]["trained_on"]["n_rows"] == 90
    assert "trained on all 90 labelled rows" in (tmp_path / "b" / "report.md").read_text()
    assert "trained on the 72 training rows only" in (tmp_path / "a" / "report.md").read_text()
    assert "trained on all 90 labelled rows" in (tmp_path / "b" / "report.html").read_text()


def _plain_params(estimator) -> dict:
    """get_params without the (unequal by identity) estimator objects."""
    return {
        k: v
        for k, v in estimator.get_params().items()
        if k != "steps" and not hasattr(v, "get_params")
    }


@pytest.mark.parametrize("name", ["nn", "svc", "xgboost", "logreg", "knn", "svc_approx"])
def test_make_classifier_equals_what_fit_builds(name):
    cli = evaluation._build(name, FitConfig())[0]
    assert _plain_params(make_classifier(name)) == _plain_params(cli)


def test_models_fit_saves_have_the_library_defaults(tmp_path):
    store = write_store(tmp_path / "f.h5")
    assert _fit(store, tmp_path / "run", "--clf", "logreg,svc,knn") == 0
    for name, expected in (("logreg", "balanced"), ("svc", "balanced"), ("knn", None)):
        saved = joblib.load(tmp_path / "run" / "models" / f"{name}.joblib")["estimator"]
        library = make_classifier(name)
        assert _plain_params(saved) == _plain_params(library), name
        params = library.get_params()
        weight = params.get("clf__class_weight", params.get("clf__estimator__class_weight"))
        assert weight == expected and params.get("clf__random_state", 0) in (0, None)


# -- console ------------------------------------------------------------------------------------


def _on_terminal(argv: list[str], env: dict[str, str]) -> tuple[str, str, int]:
    """Run ``argv`` with standard error on a pseudo-terminal: (stdout, terminal text, code)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    done = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=slave, env=env, timeout=300, text=True
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return done.stdout, b"".join(chunks).decode().replace("\r\n", "\n"), done.returncode


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_terminal_lines_are_plain_and_each_said_once(tmp_path):
    split = ["test" if i % 4 == 0 else "train" for i in range(60)]
    X = write_store(tmp_path / "f.h5", n_per_class=20, split=split, spread=0.8)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "pipeline", "fit", "--features", str(X), "--clf", "logreg,knn",
            "--out", str(out)]  # fmt: skip
    stdout, terminal, code = _on_terminal(argv, _env())
    assert code == 0, terminal
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert lines and not any(TIMESTAMP.match(line) for line in lines), terminal
    assert not re.search(r"\b(INFO|WARNING) pipeline\.", terminal)
    assert ".fit-staging" not in terminal + stdout
    warnings = [ANSI.sub("", line) for line in lines if "warning:" in line]
    assert warnings and all(
        line.startswith("\x1b[1;33mwarning:") for line in lines if "warning:" in line
    )
    assert len(warnings) == len(set(warnings)), terminal
    report = json.loads((out / "report.json").read_text())
    assert report["warnings"], "the store was meant to be too small to rank them"
    for warning in report["warnings"]:  # each warning once, over both streams
        assert (terminal + stdout).count(warning) == 1, warning
    assert report["summary"] in stdout and stdout.count(report["summary"]) == 1
    # NO_COLOR: the same lines without colour codes; -v: time and logger name on each line.
    _, plain, _ = _on_terminal([*argv, "--replace"], _env(NO_COLOR="1"))
    assert "warning:" in plain and "\x1b[" not in plain
    _, verbose, _ = _on_terminal([*argv, "-v"], _env())
    records = [line for line in verbose.splitlines() if " pipeline." in line]  # tables span lines
    assert records and all(TIMESTAMP.match(line) for line in records), verbose
    assert any(" WARNING pipeline.fit." in line for line in records)


def test_extract_summary_is_said_once(tmp_path, capsys, caplog):
    write_images(tmp_path / "img", {"a": 3, "b": 3})
    caplog.set_level(logging.INFO)
    argv = ["--data", str(tmp_path / "img"), "--out", str(tmp_path / "f.h5"), *TINY_MODEL]
    assert extract_main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert "6 rows x" in out
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not [m for m in logged if out in m], logged


def test_slow_steps_say_what_they_are_doing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_progress, "SLOW_STEP_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    split = ["test" if i % 4 == 0 else "train" for i in range(90)]
    store = write_store(tmp_path / "f.h5", split=split)
    assert (
        fit_main(["--features", str(store), "--clf", "logreg", "--out", str(tmp_path / "r")]) == 0
    )
    said = [r.getMessage() for r in caplog.records]
    for step in ("logreg: training on 67 rows", "audit: looking for wrong labels",
                 "audit: looking for test images that copy", "report: drawing"):  # fmt: skip
        assert any(m.startswith(step) for m in said), (step, said)
    monkeypatch.setattr(_progress, "SLOW_STEP_SECONDS", 30.0)  # quick steps add no line
    caplog.clear()
    with _progress.slow_step(logging.getLogger("pipeline.test"), "never said"):
        pass
    time.sleep(0.05)
    assert not [r for r in caplog.records if r.getMessage() == "never said"]


# -- leftovers ----------------------------------------------------------------------------------


def _listing(*folders: Path) -> dict[str, list[str]]:
    return {str(f): sorted(p.name for p in f.iterdir()) for f in folders}


def test_rejected_runs_leave_no_lock_files(tmp_path, monkeypatch, capsys):
    work = tmp_path / "scratch"
    images = tmp_path / "photos"
    write_images(images, {"a": 3, "b": 3})
    work.mkdir()
    (work / "notes.txt").write_text("my notes\n")
    (work / "bad.csv").write_text("file,label\nx.png,a\n")  # no `path` column
    monkeypatch.chdir(work)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no weights there
    before = _listing(work, images)
    runs = {
        "manifest error": ["--data", "bad.csv", "--out", "f.h5", *TINY_MODEL],
        "missing weights": [
            "--data",
            str(images),
            "--out",
            "g.h5",
            "--model",
            "squeezenet1_1",
            "--weights",
            "DEFAULT",
        ],  # fmt: skip
        "--out notes.txt": ["--data", str(images), "--out", "notes.txt", *TINY_MODEL],
    }
    for what, argv in runs.items():
        assert extract_main([*argv, "-q"]) == 2, what
        assert _listing(work, images) == before, what
    assert fit_main(["--features", "notes.txt", "--out", "notes.txt", "-q"]) == 2
    assert fit_main(["--features", "missing.h5", "--out", "run", "-q"]) == 2
    assert _listing(work, images) == before
    assert (work / "notes.txt").read_text() == "my notes\n"
    # A run that succeeds leaves none either (in the store's folder or the output folder).
    store = write_store(work / "s.h5")
    assert extract_main(["--data", str(images), "--out", "e.h5", *TINY_MODEL, "-q"]) == 0
    assert _fit(store, work / "run", "--clf", "logreg") == 0
    assert not list(work.rglob("*.lock")), sorted(work.rglob("*"))


# -- --help -------------------------------------------------------------------------------------


def test_help_shows_defaults_examples_and_the_program_as_typed(capsys):
    with pytest.raises(SystemExit):
        console.main(["extract", "--help"])
    text = capsys.readouterr().out
    words = " ".join(text.split())  # argparse wraps to the terminal's width
    assert "usage: pipeline extract" in text and "(default: artifacts/features.h5)" in words
    assert "(default: sklearn:digits)" in words and "(default: mobilenet_v2)" in words
    assert "examples:\n  pipeline extract " in text and "  pipeline extract --data photos/" in text
    assert "python -m" not in text  # the program as typed, everywhere in the text
    with pytest.raises(SystemExit):
        fit_main(["--help"])
    text = capsys.readouterr().out
    words = " ".join(text.split())
    assert "usage: python -m pipeline.fit" in text and "(default: all)" in words
    assert "examples:\n  python -m pipeline.fit" in text and "--replace" in text
    assert "--refit" in text and "(default: artifacts)" in words


def test_weights_error_names_each_choice_once(capsys):
    assert extract_main(["--model", "squeezenet1_1", "--weights", "NOPE", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("DEFAULT") == 1 and "IMAGENET1K_V1" in err, err


# -- the plain sentence -------------------------------------------------------------------------


def _result(clf, accuracy, tied, seconds, log_loss=0.1):
    return {"clf": clf, "accuracy": accuracy, "tied_with_best": tied, "fit_seconds": seconds,
            "log_loss": log_loss, "ci": {"accuracy": [accuracy - 0.02, accuracy + 0.02]}}  # fmt: skip


def test_plain_summary_follows_the_evidence():
    tied = [_result("nn", 0.97, True, 3.0, 0.2), _result("logreg", 0.96, True, 0.2, 0.1),
            _result("knn", 0.95, True, 0.1, 0.5)]  # fmt: skip
    text = plain_summary({"results": tied, "n_test": 153})
    assert text.startswith("These three cannot be told apart on 153 test images")
    assert "knn is the fastest to train, logreg the best calibrated" in text
    assert text.endswith("more test images or --cv would separate them.")
    alone = [_result("svc", 0.99, True, 1.0), _result("knn", 0.80, False, 0.1)]
    text = plain_summary({"results": alone, "n_test": 500, "cv": 5})
    assert (
        text.startswith("svc is the most accurate (99.0 % of 500 images (5-fold")
        and "clearly ahead of the other" in text
    )
    mixed = [_result("svc", 0.97, True, 2.0), _result("logreg", 0.96, True, 0.2, 0.05),
             _result("knn", 0.80, False, 0.1)]  # fmt: skip
    text = plain_summary({"results": mixed, "n_test": 300})
    assert text.startswith("svc and logreg are the most accurate") and "knn is clearly less" in text
    assert "of the leading two, logreg is the fastest to train and best calibrated" in text
    assert text.endswith("more test images or --cv would separate the leaders.")
