"""Hostile CSV manifests through the CLI: malformed CSV, bad encodings, huge fields, and
several rows naming one file. Each error is one line naming the file and line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipeline.store import read_store

from .test_extract import extract

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name, colour in (("a", (200, 0, 0)), ("b", (0, 200, 0))):
        Image.new("RGB", (16, 16), colour).save(tmp_path / "img" / f"{name}.png")
    return tmp_path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: --data: ")
    return err[0]


@pytest.mark.parametrize(
    "content, where",
    [
        (b'path,label\nimg/a.png,x\n"img/b.png,y\n', "line 3"),  # unterminated quote
        (b"path,label\nimg/a.png,x\nimg/b.png,caf\xe9\n", "line 3: not UTF-8"),
        (b"path,label\nimg/a.png," + b"x" * 200_000 + b"\n", "line 2"),  # over csv's limit
    ],
    ids=["unterminated-quote", "not-utf8", "over-long-field"],
)
def test_malformed_manifest_is_one_line_naming_file_and_line(folder, capsys, content, where):
    manifest = folder / "m.csv"
    manifest.write_bytes(content)
    assert extract(manifest, folder / "f.h5") == 2
    line = one_error_line(capsys)
    assert str(manifest) in line and where in line
    assert not (folder / "f.h5").exists()


def test_aliases_of_one_file_with_one_label_are_one_row(folder, caplog):
    (folder / "link.png").symlink_to(folder / "img" / "a.png")
    manifest = folder / "m.csv"
    manifest.write_text(
        "path,label\nimg/a.png,x\n./img/a.png,x\nimg/../img/a.png,x\nlink.png,x\nimg/b.png,y\n"
    )
    out = folder / "f.h5"
    assert extract(manifest, out) == 0
    table = read_store(out)
    assert list(table.paths) == [str(folder / "img" / "a.png"), str(folder / "img" / "b.png")]
    assert "line 3 names the same file as line 2" in caplog.text


@pytest.mark.parametrize("alias", ["./img/a.png", "img//a.png", "link.png"])
def test_aliases_with_conflicting_labels_are_an_error_naming_both_rows(folder, capsys, alias):
    (folder / "link.png").symlink_to(folder / "img" / "a.png")
    manifest = folder / "m.csv"
    manifest.write_text(f"path,label\nimg/a.png,x\nimg/b.png,y\n{alias},y\n")
    assert extract(manifest, folder / "f.h5") == 2
    line = one_error_line(capsys)
    assert "lines 2 and 4" in line and "img/a.png" in line and alias in line


def test_unusable_paths_in_a_manifest(folder, capsys):
    manifest = folder / "m.csv"
    long_path = "/".join(["d" * 200] * 25) + "/a.png"
    manifest.write_text(f"path,label\nimg/a.png,x\nimg/b.png,y\n{long_path},x\n")
    out = folder / "f.h5"
    assert extract(manifest, out) == 0  # an over-long path is recorded, the run goes on
    table = read_store(out)
    assert len(table.paths) == 2
    (reason,) = table.failed.errors
    assert "File name too long" in reason
    capsys.readouterr()
    manifest.write_text("path,label\nimg/a.png,x\nimg/b\0.png,y\n")
    assert extract(manifest, out) == 2
    assert "line 3: path contains a NUL byte" in one_error_line(capsys)
