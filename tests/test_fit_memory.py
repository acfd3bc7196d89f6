"""``fit`` checks the memory it will need before reading the store, and says what to do."""

from __future__ import annotations

import pytest

from pipeline.fit import main as fit_main
from pipeline.fit import memory

from ._fit_helpers import write_store


def test_estimate_grows_with_rows_and_the_hungriest_part():
    matrix = 1_000_000 * 1280 * 4
    fill = memory._READ_BLOCKS * 8192 * 1280 * 4  # fit reading rows into a matrix
    blocks = memory._READ_BLOCKS * 32768 * 1280 * 4  # a streaming estimator's own blocks
    base = memory._BASE_BYTES
    # logreg: the blocks while its scaled matrix fills, then the matrix alone
    logreg = memory.estimate_fit_bytes(1_000_000, 1280, {"logreg": "scaled"}, audit=False)
    assert logreg == pytest.approx(base + fill + matrix, rel=1e-6)
    small = memory.estimate_fit_bytes(200_000, 1280, {"logreg": "scaled"}, audit=False)
    assert logreg - small == pytest.approx(0.8 * matrix, rel=1e-6)
    # a classifier that streams holds no matrix: the blocks and its runtime, whatever the rows
    stream = memory.estimate_fit_bytes(1_000_000, 1280, {"nn": "stream"}, audit=False)
    fixed = memory._STREAM_FIXED["nn"]
    assert stream == pytest.approx(base + blocks + fixed, rel=1e-6) and stream < 2 << 30
    assert memory.estimate_fit_bytes(10_000_000, 1280, {"nn": "stream"}, audit=False) == stream
    # the same classifier read into a matrix: the matrix and its copies
    in_memory = memory.estimate_fit_bytes(1_000_000, 1280, {"nn": "matrix"}, audit=False)
    assert in_memory == pytest.approx(base + matrix * memory._PLAN_MULTIPLE["matrix"], rel=1e-6)
    # phases run one after another: the hungriest counts, not the sum
    both = {"logreg": "scaled", "nn": "stream"}
    assert memory.estimate_fit_bytes(1_000_000, 1280, both, audit=False) == logreg
    # the audit holds the labelled rows' plain view only; --no-audit drops it
    parts = memory.fit_memory_parts(1_000_000, 1280, {"nn": "stream"}, n_views=1)
    audit = matrix * memory._AUDIT_MULTIPLE + memory._AUDIT_FIXED
    assert parts["audit"] == pytest.approx(audit, rel=1e-6)
    assert "audit" not in memory.fit_memory_parts(1000, 16, {"nn": "stream"}, audit=False)
    # views widen the classifiers' matrices; knn's model keeps its rows for the rest of the run
    one = memory.fit_memory_parts(10**6, 16, {"svc": "matrix"})["svc"]
    assert memory.fit_memory_parts(10**6, 16, {"svc": "matrix"}, n_views=1)["svc"] == 2 * one
    assert memory.fit_memory_parts(1000, 16, {"knn": "matrix"})["retained"] == 1000 * 16 * 4


def test_a_fit_that_cannot_fit_in_memory_is_refused_before_reading(tmp_path, monkeypatch, capsys):
    store = write_store(tmp_path / "f.h5", n_per_class=20, dim=16)
    out = tmp_path / "report"
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)
    assert fit_main(["--features", str(store), "--clf", "logreg", "--out", str(out), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --features: ")
    assert "needs about" in err[0] and "60 rows x 16 features" in err[0]
    assert "GiB is available" in err[0] and "extract a subset" in err[0]
    assert not out.exists()
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 << 30)
    assert fit_main(["--features", str(store), "--clf", "logreg", "--out", str(out), "-q"]) == 0


def _refusal(capsys, store, tmp_path, *flags: str) -> str:
    out = tmp_path / "report"
    assert fit_main(["--features", str(store), "--out", str(out), "-q", *flags]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --features: ") and not out.exists()
    return err[0]


def test_the_refusal_names_what_needs_the_most_and_what_to_do(tmp_path, monkeypatch, capsys):
    from pipeline.estimators import TorchMLPClassifier

    store = write_store(tmp_path / "f.h5", n_per_class=20, dim=16)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)
    monkeypatch.setattr(memory, "_AUDIT_MULTIPLE", 100.0)  # the audit needs the most
    assert "pass --no-audit" in _refusal(capsys, store, tmp_path, "--clf", "logreg")
    err = _refusal(capsys, store, tmp_path, "--clf", "logreg", "--no-audit")
    assert "--no-audit" not in err and "logreg holds its training rows in memory" in err
    # with the nn head declaring that it reads row sources, the advice names it
    monkeypatch.setattr(TorchMLPClassifier, "accepts_row_source", True, raising=False)
    err = _refusal(capsys, store, tmp_path, "--clf", "logreg", "--no-audit")
    assert "use --clf nn" in err and "which read the store in blocks" in err
