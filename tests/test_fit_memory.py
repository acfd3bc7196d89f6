"""``fit`` checks the memory it will need before reading the store, and says what to do."""

from __future__ import annotations

import pytest

from pipeline.fit import main as fit_main
from pipeline.fit import memory

from ._fit_helpers import write_store


def test_estimate_grows_with_rows_and_the_hungriest_classifier():
    small = memory.estimate_fit_bytes(100_000, 1280, ["logreg"])
    big = memory.estimate_fit_bytes(1_000_000, 1280, ["logreg"])
    matrix = 1_000_000 * 1280 * 4
    assert big - small == pytest.approx(0.9 * matrix * 5.2, rel=1e-6)
    assert memory.estimate_fit_bytes(10, 4, ["logreg", "nn"]) == memory.estimate_fit_bytes(
        10, 4, ["logreg"]
    )
    assert memory.estimate_fit_bytes(1000, 16, ["nn"]) < memory.estimate_fit_bytes(
        1000, 16, ["logreg"]
    )


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
