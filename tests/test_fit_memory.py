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
    base = memory._BASE_BYTES + 1_000_000 * memory._ROW_COLUMN_BYTES  # held throughout
    # logreg: the blocks while its scaled matrix fills, then the matrix alone
    logreg = memory.estimate_fit_bytes(1_000_000, 1280, {"logreg": "scaled"}, audit=False)
    assert logreg == pytest.approx(base + fill + matrix, rel=1e-6)
    small = memory.estimate_fit_bytes(200_000, 1280, {"logreg": "scaled"}, audit=False)
    columns = 800_000 * memory._ROW_COLUMN_BYTES
    assert logreg - small == pytest.approx(0.8 * matrix + columns, rel=1e-6)
    # a classifier that streams holds no matrix: the blocks and its runtime, whatever the rows
    # (the rows it holds out whole: test_streaming_nn_holds_its_validation_rows)
    stream = memory.estimate_fit_bytes(1_000_000, 1280, {"nn": "stream"}, audit=False)
    fixed = memory._STREAM_FIXED["nn"]
    assert stream == pytest.approx(base + blocks + fixed, rel=1e-6) and stream < 2 << 30
    ten_million = memory.estimate_fit_bytes(10_000_000, 1280, {"nn": "stream"}, audit=False)
    assert ten_million - stream == 9_000_000 * memory._ROW_COLUMN_BYTES
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


def test_streaming_nn_holds_its_validation_rows():
    """The nn head reads its early-stopping validation rows into one matrix, a block at a time
    (read and scaled: TransformedRows.take), and keeps them while it trains from blocks; fit
    holds the store's row columns throughout. Measured (docs/benchmarks.md, "fit at 1M rows"):
    fit --clf nn --no-audit peaked while training at 1.31 GiB at 200k x 1280, 1.55 GiB at
    600k and 1.82 GiB at 1M (before the validation rows were read block by block, which
    changes only their reading, not the training peak)."""
    gib, dim = 1 << 30, 1280
    blocks = memory._READ_BLOCKS * 32768 * dim * 4

    def nn(n_rows: int, share: float = 0.1) -> dict[str, int]:
        return memory.fit_memory_parts(
            n_rows, dim, {"nn": "stream"}, audit=False, held_out={"nn": share}
        )

    assert memory._ROW_COLUMN_BYTES == 256
    parts = nn(1_000_000)
    held = 0.1 * 1_000_000 * dim * 4
    assert parts["row_columns"] == 256 * 1_000_000
    assert parts["nn"] == pytest.approx(blocks + held + memory._STREAM_FIXED["nn"], rel=1e-6)
    # at any size: reading them holds one copy and a block, no more than training beside them
    for n_rows in (4_000_000, 10_000_000):
        held = 0.1 * n_rows * dim * 4
        expected = blocks + held + memory._STREAM_FIXED["nn"]
        assert nn(n_rows)["nn"] == pytest.approx(expected, rel=1e-6)
    # at 10M x 1280: 4.8 GiB held + 0.7 GiB blocks + 0.25 GiB; the whole estimate 8.6 GiB
    # with the row columns (it was 12.8 GiB when the rows were read and scaled whole)
    assert nn(10_000_000)["nn"] / gib == pytest.approx(5.72, abs=0.01)
    assert memory.peak_bytes(nn(10_000_000)) / gib == pytest.approx(8.61, abs=0.01)
    # without early stopping nothing is held out
    assert nn(1_000_000, 0.0)["nn"] == pytest.approx(blocks + memory._STREAM_FIXED["nn"], rel=1e-6)
    # at or above every measured peak, by at most a quarter
    for n_rows, measured in ((200_000, 1.31), (600_000, 1.55), (1_000_000, 1.82)):
        estimate = memory.estimate_fit_bytes(
            n_rows, dim, {"nn": "stream"}, audit=False, held_out={"nn": 0.1}
        )
        assert measured <= estimate / gib <= 1.25 * measured, n_rows
    # half the rows held out (80,000 validation rows read in three blocks): 1.59 GiB measured
    # at 200k ("The validation rows, a block at a time")
    estimate = memory.estimate_fit_bytes(
        200_000, dim, {"nn": "stream"}, audit=False, held_out={"nn": 0.5}
    )
    assert 1.59 <= estimate / gib <= 1.25 * 1.59


def test_the_held_out_share_comes_from_the_built_classifier():
    from pipeline.classifiers import make_classifier

    assert memory.held_out_share(make_classifier("nn", early_stopping=True)) == 0.1
    nn = make_classifier("nn", early_stopping=True, validation_fraction=0.3)
    assert memory.held_out_share(nn) == 0.3
    assert memory.held_out_share(make_classifier("nn", early_stopping=False)) == 0.0
    assert memory.held_out_share(make_classifier("logreg")) == 0.0


def test_fit_checks_the_nn_validation_rows_it_will_hold(tmp_path, monkeypatch, capsys):
    store = write_store(tmp_path / "f.h5", n_per_class=20, dim=16)
    # exactly what nn needs without holding out rows: early stopping (the default) needs more
    without = memory.estimate_fit_bytes(60, 16, {"nn": "stream"}, audit=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: without)
    flags = ("--clf", "nn", "--no-audit", "--set", "nn.max_iter=1")
    assert "needs about" in _refusal(capsys, store, tmp_path, *flags)
    out = tmp_path / "report"
    argv = ["--features", str(store), "--out", str(out), "-q", *flags]
    assert fit_main([*argv, "--set", "nn.early_stopping=false"]) == 0


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
