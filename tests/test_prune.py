"""Embeddings are never thrown away silently: a ``--data`` that lacks inputs the store holds
rows of (a narrower folder, a typo, deleted files) is refused unless ``--prune``."""

from __future__ import annotations

import pytest

from pipeline.config import ExtractConfig
from pipeline.exceptions import StoreError
from pipeline.extract import main, run_extraction
from pipeline.store import parts_dir, read_store

from .conftest import TINY_MODEL, write_images


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    write_images(root / "train", {"cat": 5, "dog": 5}, size=(32, 32))
    write_images(root / "val", {"cat": 2, "dog": 2}, size=(32, 32), seed=1)
    return root


def _extract(data, out, *extra) -> int:
    return main(["--data", str(data), "--out", str(out), *TINY_MODEL, "--no-progress", "-q",
                 *extra])  # fmt: skip


def test_a_narrower_data_is_refused_and_the_store_left_untouched(photos, tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert _extract(photos, out) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert _extract(photos / "val", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("error: --data: ") and "14 rows, 10 of them" in line
    assert f"stored source: {photos};" in line and f"this one: {photos / 'val'}" in line
    assert "--prune" in line and "--overwrite" in line
    assert out.read_bytes() == before and not parts_dir(out).exists()
    assert len(read_store(out).paths) == 14
    # The library refuses alike.
    config = ExtractConfig(data=str(photos / "val"), out=str(out), model="squeezenet1_1",
                           weights="none", progress=False)  # fmt: skip
    with pytest.raises(StoreError, match="10 of them of inputs not in this --data"):
        run_extraction(config)
    assert out.read_bytes() == before
    # So does a Dask run: it shares the plan, refused before any cluster starts.
    capsys.readouterr()
    assert _extract(photos / "val", out, "--dask", "local:1") == 2
    assert "10 of them of inputs not in this --data" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_prune_removes_them_and_says_how_many(photos, tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert _extract(photos, out) == 0
    kept = dict(zip(*[getattr(read_store(out), a) for a in ("paths", "features")], strict=True))
    capsys.readouterr()
    assert _extract(photos / "val", out, "--prune") == 0
    summary = capsys.readouterr().out.strip()
    assert "pruned 10 rows of inputs not in --data" in summary and "embedded 0 new" in summary
    after = read_store(out)
    assert sorted(after.paths) == sorted(str(p) for p in (photos / "val").rglob("*.png"))
    for path, row in zip(after.paths, after.features, strict=True):
        assert (row == kept[path]).all()  # kept rows are copied, not recomputed
    # Nothing to prune: no pruned count in the line, and --prune is harmless.
    assert _extract(photos / "val", out, "--prune") == 0
    assert "pruned" not in capsys.readouterr().out


def test_deleted_files_need_prune_too_and_overwrite_starts_over(photos, tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert _extract(photos, out) == 0
    (photos / "train" / "cat" / "cat_000.png").unlink()
    capsys.readouterr()
    assert _extract(photos, out) == 2
    assert "14 rows, 1 of them" in capsys.readouterr().err
    assert _extract(photos, out, "--overwrite") == 0
    assert "pruned" not in capsys.readouterr().out  # a fresh store: nothing pruned
    assert len(read_store(out).paths) == 13


def test_prune_from_the_config_file(photos, tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert _extract(photos, out) == 0
    config = tmp_path / "c.toml"
    config.write_text("[extract]\nprune = true\n")
    capsys.readouterr()
    assert _extract(photos / "val", out, "--config", str(config)) == 0
    assert "pruned 10 rows" in capsys.readouterr().out
