"""pipeline.fit.outputs: a fit run's outputs are published as a whole, kills included."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.exceptions import ConfigError
from pipeline.fit.outputs import JOURNAL, MANIFEST, check_out_dir, owned_names, publish_run

REPO = Path(__file__).resolve().parents[1]
OLD = {"report.json": "old", "models/a.joblib": "old-a", "confusion_a.png": "old-a"}
NEW = {"report.json": "new", "models/b.joblib": "new-b", "confusion_b.png": "new-b"}
FOREIGN = {"features.h5": "store", "features.h5.lock": "", "notes.txt": "mine"}


def write_run(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def publish(out: Path, files: dict[str, str]) -> None:
    with publish_run(out) as staging:
        write_run(staging, files)


def fit_files(out: Path) -> dict[str, str]:
    """Every file under ``out`` that is neither foreign nor fit's bookkeeping."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and rel not in FOREIGN and not rel.startswith(".fit"):
            found[rel] = path.read_text()
    return found


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "artifacts"
    folder.mkdir()
    write_run(folder, FOREIGN)
    (folder / "features.h5.parts").mkdir()
    return folder


def assert_clean(out: Path) -> None:
    """No staging, retired or journal left; the foreign files untouched."""
    leftovers = [
        p.name for p in out.iterdir() if p.name.startswith((".fit-staging-", ".fit-retired-"))
    ]
    assert leftovers == [] and not (out / JOURNAL).exists()
    assert [p.name for p in out.glob(".*.tmp")] == []
    assert {name: (out / name).read_text() for name in FOREIGN} == FOREIGN
    assert (out / "features.h5.parts").is_dir()


def test_a_narrower_run_replaces_the_previous_one_and_keeps_foreign_files(out):
    publish(out, OLD)
    assert fit_files(out) == OLD
    publish(out, NEW)
    assert fit_files(out) == NEW
    assert sorted(owned_names(out)) == ["confusion_b.png", "models", "report.json"]
    assert json.loads((out / MANIFEST).read_text())["names"] == sorted(owned_names(out))
    assert_clean(out)


def test_a_folder_without_manifest_is_read_by_the_known_names(out):
    write_run(out, {**OLD, "predictions.csv": "old", "thumbs/x.png": "old"})
    assert "models" in owned_names(out) and "notes.txt" not in owned_names(out)
    publish(out, NEW)
    assert fit_files(out) == NEW
    assert_clean(out)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_inside_the_run_leaves_the_previous_run(out, error):
    publish(out, OLD)
    with pytest.raises(error), publish_run(out) as staging:
        write_run(staging, NEW)
        raise error("boom")
    assert fit_files(out) == OLD
    assert_clean(out)


def _crash_on_call(monkeypatch, target, name: str, n: int) -> None:
    """Make the ``n``-th call of ``target.name`` raise SystemExit (a kill at that point)."""
    real = getattr(target, name)
    calls = {"count": 0}

    def crashing(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == n:
            raise SystemExit(f"killed at call {n}")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, crashing)


# os.replace calls of a commit OLD -> NEW: journal, 3 retirements, 3 publications, manifest.
COMMIT_REPLACES = 8


@pytest.mark.parametrize("n", range(1, COMMIT_REPLACES + 2))
def test_a_kill_at_any_rename_of_the_commit_ends_as_one_complete_run(out, monkeypatch, n):
    publish(out, OLD)
    _crash_on_call(monkeypatch, os, "replace", n)
    if n <= COMMIT_REPLACES:
        with pytest.raises(SystemExit):
            publish(out, NEW)
    else:  # the commit has exactly that many renames: the run completes
        publish(out, NEW)
    monkeypatch.undo()
    expected = OLD if n == 1 else NEW  # after the journal is written the commit rolls forward
    with publish_run(out) as staging:  # recovery happens on entry; then an aborted run
        assert fit_files(out) == expected
        write_run(staging, {"report.json": "never"})
        shutil.rmtree(staging)
        staging.mkdir()
        write_run(staging, expected)
    assert fit_files(out) == expected
    assert_clean(out)


@pytest.mark.parametrize("step", ["journal", "rmtree"])
def test_a_kill_after_the_manifest_ends_as_the_new_run(out, monkeypatch, step):
    publish(out, OLD)
    if step == "journal":
        _crash_on_call(monkeypatch, Path, "unlink", 1)
    else:
        _crash_on_call(monkeypatch, shutil, "rmtree", 1)
    with pytest.raises(SystemExit):
        publish(out, NEW)
    monkeypatch.undo()
    with publish_run(out) as staging:
        assert fit_files(out) == NEW
        write_run(staging, NEW)
    assert fit_files(out) == NEW
    assert_clean(out)


KILLER = """
import os, signal, sys
from pathlib import Path
from pipeline.fit.outputs import publish_run
real, n, calls = os.replace, int(sys.argv[2]), [0]
def replace(*args):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
os.replace = replace
with publish_run(Path(sys.argv[1])) as staging:
    for name, text in {"report.json": "new", "models/b.joblib": "new-b"}.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(text)
"""


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_sigkill_during_the_commit_then_recovery(out, n):
    publish(out, {"report.json": "old", "models/a.joblib": "old-a"})
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLER), str(out), str(n)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    with publish_run(out) as staging:
        after = fit_files(out)
        write_run(staging, after)
    assert after in (
        {"report.json": "old", "models/a.joblib": "old-a"},
        {"report.json": "new", "models/b.joblib": "new-b"},
    )
    assert (after["report.json"] == "old") == (n == 1)
    assert_clean(out)


def test_modes_follow_the_umask(out):
    old = os.umask(0o027)
    try:
        publish(out, NEW)
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "models").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / MANIFEST).stat().st_mode) == 0o640


def test_check_out_dir_refuses_a_file(tmp_path):
    (tmp_path / "report").write_text("x")
    for bad in (tmp_path / "report", tmp_path / "report" / "sub"):
        with pytest.raises(ConfigError) as info:
            check_out_dir(bad)
        assert info.value.param == "out" and "\n" not in str(info.value)
    check_out_dir(tmp_path / "new" / "deeper")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()


def test_check_out_dir_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nfrom pipeline.fit.outputs import check_out_dir\n"
        "from pipeline.exceptions import ConfigError\n"
        "try:\n    check_out_dir(Path(sys.argv[1]))\n"
        "except ConfigError as e:\n    print(e.param, '|', e)\n    raise SystemExit(2)\n"
    )
    command = [sys.executable, str(script), str(folder)]
    if os.geteuid() == 0:
        capsh = shutil.which("capsh")
        if capsh is None:
            pytest.skip("running as root and capsh is missing: cannot drop the DAC override")
        quoted = " ".join(shlex.quote(a) for a in command)
        command = [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", quoted]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    folder.chmod(0o755)
    assert done.returncode == 2, done.stderr
    line = done.stdout.strip()
    assert line.startswith("out | out: cannot write to") and "\n" not in line


def test_a_second_concurrent_fit_is_refused(out):
    publish(out, OLD)
    with publish_run(out) as staging:
        write_run(staging, NEW)
        with pytest.raises(ConfigError) as info, publish_run(out):
            pass
        assert info.value.param == "out" and "another fit" in str(info.value)
    assert fit_files(out) == NEW
    assert_clean(out)
