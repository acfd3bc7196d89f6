"""Stage two: `python -m pipeline.fit` end to end, its report, model files and every error path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from pipeline.fit import ModelFileError, load_model_file, main, parse_clf, run_fit
from tests._fit_helpers import CLASS_NAMES, RECIPE, blobs, write_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = [
    "--set", "nn.max_iter=15",
    "--set", "nn.device=cpu",
    "--set", "xgboost.n_estimators=15",
    "--set", "xgboost.device=cpu",
    "--set", "svc.calibration_cv=3",
]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "features.h5")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "-q"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _without_timings(report: dict) -> dict:
    """``report`` without wall-clock values (which differ between identical runs)."""

    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if "seconds" not in k}

    results = [
        {**strip(r), "fold_scores": [strip(f) for f in r.get("fold_scores", [])]}
        for r in report["results"]
    ]
    config = {k: v for k, v in report["config"].items() if k != "out"}  # differs on purpose
    # the summary names the fastest classifier when clearly fastest: a wall-clock value too
    return {**report, "results": results, "config": config, "summary": None}


def test_help_is_instant_and_torch_free(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--clf" in capsys.readouterr().out
    code = "import sys, pipeline.fit; sys.exit('torch' in sys.modules or 'sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_parse_clf():
    assert parse_clf("all") == ["nn", "svc", "xgboost", "logreg", "knn", "ensemble"]
    assert parse_clf("svc, xgboost,svc") == ["svc", "xgboost"]
    with pytest.raises(ValueError, match="clf: unknown classifier 'kmeans'"):
        parse_clf("svc,kmeans")


def test_end_to_end_all_classifiers(store, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys, "--features", str(store), "--out", str(out), "--clf", "all", *FAST
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    for key in ("features", "fingerprint", "n_train", "n_test", "evaluation", "results"):
        assert key in report
    assert report["evaluation"] == "holdout"
    assert report["fingerprint"] == RECIPE.fingerprint()
    assert (report["n_train"], report["n_test"]) == (72, 18)
    assert [r["clf"] for r in report["results"]] != []
    assert {r["clf"] for r in report["results"]} == {
        "nn", "svc", "xgboost", "logreg", "knn", "ensemble"
    }  # fmt: skip
    accuracies = [r["accuracy"] for r in report["results"]]
    assert accuracies == sorted(accuracies, reverse=True)
    for r in report["results"]:
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "fit_seconds", "predict_seconds"):
            assert isinstance(r[key], float)
        assert r["accuracy"] > 0.9
        assert r["log_loss"] is not None
        assert "roc_auc" not in r  # multiclass
        assert set(r["per_class"]) == set(CLASS_NAMES)
        assert np.asarray(r["confusion_matrix"]).sum() == 18
        assert (out / r["confusion_png"]).read_bytes()[:8] == PNG_MAGIC
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "report.md").read_text()
    assert "confusion_svc.png" in md and "| clf |" in md

    # the printed table: header, rule, then best first
    lines = stdout.splitlines()
    assert lines[0].split()[:2] == ["clf", "accuracy"]
    assert [line.split()[0] for line in lines[2:8]] == [r["clf"] for r in report["results"]]

    X, y = blobs(seed=0)
    for name in ("nn", "svc", "xgboost", "logreg", "knn", "ensemble"):
        model = load_model_file(out / "models" / f"{name}.joblib")
        assert model["clf"] == name and model["format_version"] == 1
        assert model["class_names"] == CLASS_NAMES
        assert model["backbone"]["model"] == "mobilenet_v3_small"
        assert model["backbone"] == {**RECIPE.to_attrs(), "feature_dim": 16}
        assert model["backbone"]["feature_dim"] == 16
        assert model["store"] == str(store)
        pred = model["estimator"].predict(X)
        assert (pred == np.asarray(CLASS_NAMES)[y]).mean() > 0.9
    assert not list(out.rglob("*.tmp"))


def test_given_split_and_comma_list(tmp_path, capsys):
    split = (["train"] * 24 + ["test"] * 6) * 3
    store = write_store(tmp_path / "s.h5", split=split)
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys, "--features", str(store), "--out", str(out), "--clf", "logreg,svc", *FAST
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"] == "given split"
    assert (report["n_train"], report["n_test"]) == (72, 18)
    assert sorted(r["clf"] for r in report["results"]) == ["logreg", "svc"]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["logreg.joblib", "svc.joblib"]


def test_binary_reports_roc_auc(tmp_path, capsys):
    store = write_store(tmp_path / "b.h5", class_names=["neg", "pos"])
    out = tmp_path / "out"
    code, _, err = _run(capsys, "--features", str(store), "--out", str(out), "--clf", "logreg")
    assert code == 0, err
    result = json.loads((out / "report.json").read_text())["results"][0]
    assert 0.9 < result["roc_auc"] <= 1.0


def test_cv(store, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(
        capsys,
        "--features",
        str(store),
        "--out",
        str(out),
        "--clf",
        "logreg,nn",
        "--cv",
        "3",
        *FAST,
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"] == "cv" and report["cv"] == 3
    assert report["n_train"] == 90
    for r in report["results"]:
        assert len(r["fold_scores"]) == 3
        assert r["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in r["fold_scores"]]))
        assert r["accuracy_std"] >= 0 and r["macro_f1_std"] >= 0 and "fit_seconds_std" in r
        assert np.asarray(r["confusion_matrix"]).sum() == 90  # out-of-fold, every row once
        assert r["refit_seconds"] >= 0
    # the saved model is refit on every labelled row
    model = load_model_file(out / "models" / "logreg.joblib")
    scaler = model["estimator"].named_steps["scale"]
    assert scaler.n_samples_seen_ == 90


def test_set_overrides_take_effect(store, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(
        capsys,
        "--features", str(store), "--out", str(out), "--clf", "svc,nn", *FAST,
        "--set", "svc.C=10",
        "--set", "svc.class_weight=none",
        "--set", "nn.hidden_layer_sizes=[8]",
        "--set", "nn.dropout=0.0",
    )  # fmt: skip
    assert code == 0, err
    svc = load_model_file(out / "models" / "svc.joblib")["estimator"].named_steps["clf"]
    assert svc.estimator.C == 10 and svc.estimator.class_weight is None
    nn = load_model_file(out / "models" / "nn.joblib")["estimator"].named_steps["clf"]
    assert nn.hidden_layer_sizes == (8,) and nn.dropout == 0.0 and nn.max_iter == 15
    assert nn.module_[0].out_features == 8
    report = json.loads((out / "report.json").read_text())
    params = {r["clf"]: r["params"] for r in report["results"]}
    assert params["svc"]["C"] == 10 and params["nn"]["hidden_layer_sizes"] == [8]


def test_config_file_and_seed(store, tmp_path):
    cfg = tmp_path / "my.toml"
    cfg.write_text(
        f'[fit]\nfeatures = "{store}"\nclf = "logreg"\nout = "{tmp_path / "o"}"\nseed = 7\n'
        "[fit.logreg]\nC = 0.25\n"
    )
    assert main(["--config", str(cfg), "-q"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["seed"] == 7 and report["results"][0]["params"]["C"] == 0.25
    assert report["results"][0]["params"]["max_iter"] == 1000  # default file fills the rest


def test_same_seed_same_report(store, tmp_path):
    from pipeline.config import FitConfig

    def run(out: str, seed: int) -> dict:
        config = FitConfig.from_file(
            None,
            sets={
                "nn": {"max_iter": 15, "device": "cpu", "dropout": 0.3},
                "xgboost": {"n_estimators": 15, "device": "cpu"},
            },
            features=str(store),
            out=str(tmp_path / out),
            seed=seed,
            clf="all",
        )
        return _without_timings(run_fit(config))

    first, second = run("a", 3), run("b", 3)
    assert first == second  # every score, to the last bit; only timings differ


# -- errors: exit code 2 and one line naming the problem -------------------------------------


def _assert_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_error_one_class(tmp_path, capsys):
    store = write_store(tmp_path / "one.h5", class_names=["cat"])
    code, _, err = _run(capsys, "--features", str(store), "--clf", "logreg", "--out", str(tmp_path))
    _assert_error(code, err, "only 1 class", "more classes")


def test_error_empty_train(tmp_path, capsys):
    store = write_store(tmp_path / "t.h5", split=["test"] * 90)
    code, _, err = _run(capsys, "--features", str(store), "--clf", "logreg", "--out", str(tmp_path))
    _assert_error(code, err, "no training rows")


def test_error_class_missing_from_train(tmp_path, capsys):
    _, y = blobs()
    split = np.where(y == 2, "test", np.where(np.arange(len(y)) % 5 == 0, "test", "train"))
    store = write_store(tmp_path / "m.h5", split=split.tolist())
    code, _, err = _run(capsys, "--features", str(store), "--clf", "logreg", "--out", str(tmp_path))
    _assert_error(code, err, "['owl']", "not in train")


def test_error_nan_features(tmp_path, capsys):
    X, _ = blobs()
    X[5, 3] = np.nan
    store = write_store(tmp_path / "nan.h5", features=X)
    code, _, err = _run(capsys, "--features", str(store), "--clf", "logreg", "--out", str(tmp_path))
    _assert_error(code, err, "NaN", "re-extract")


def test_error_incomplete_store(tmp_path, capsys):
    store = write_store(tmp_path / "inc.h5", complete=False)
    code, _, err = _run(capsys, "--features", str(store), "--clf", "logreg", "--out", str(tmp_path))
    _assert_error(code, err, "incomplete", "pipeline.extract")


def test_error_unknown_clf(store, tmp_path, capsys):
    code, _, err = _run(
        capsys, "--features", str(store), "--clf", "svc,kmeans", "--out", str(tmp_path)
    )
    _assert_error(code, err, "--clf", "kmeans", "nn, svc, xgboost, logreg, knn")


def test_error_missing_features(tmp_path, capsys):
    code, _, err = _run(capsys, "--features", str(tmp_path / "nope.h5"), "--out", str(tmp_path))
    _assert_error(code, err, "--features", "nope.h5", "pipeline.extract")
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--cv", "1"], ["--cv"]),
        (["--cv", "40"], ["--cv 40", "--cv 30 or fewer"]),
        (["--test-size", "1.5"], ["--test-size"]),
        (["--set", "svc.Cx=1"], ["--set svc", "'Cx'"]),
        (["--set", "oops"], ["--set", "KEY=VALUE"]),
        (["--set", "bogus=1"], ["unknown key", "bogus"]),
        (["--clf", "xgboost", "--dask", "nowhere"], ["--dask", "'nowhere'", "tcp://"]),
    ],
)
def test_error_bad_options(store, tmp_path, capsys, argv, needles):
    base = ["--features", str(store), "--clf", "logreg", "--out", str(tmp_path / "o")]
    code, _, err = _run(capsys, *base, *argv)
    _assert_error(code, err, *needles)


# -- model files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("model")
    store = write_store(tmp / "f.h5")
    assert main(["--features", str(store), "--out", str(tmp), "--clf", "logreg", "-q"]) == 0
    return tmp / "models" / "logreg.joblib"


def test_load_model_file_ok(model_file):
    model = load_model_file(model_file)
    keys = {"format_version", "pipeline_version", "clf", "estimator", "class_names", "store"}
    assert set(model) >= keys | {"backbone"}


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: {**m, "format_version": 2}, "format_version 2"),
        (lambda m: {**m, "backbone": {"model": "x"}}, "backbone metadata lacks"),
        (lambda m: [1, 2, 3], "not a pipeline model file"),
        (lambda m: {k: v for k, v in m.items() if k != "estimator"}, "lacks"),
    ],
)
def test_load_model_file_rejects(model_file, tmp_path, mutate, match):
    bad = tmp_path / "bad.joblib"
    joblib.dump(mutate(joblib.load(model_file)), bad)
    with pytest.raises(ModelFileError, match=match) as exc:
        load_model_file(bad)
    assert "\n" not in str(exc.value)


def test_load_model_file_missing_or_garbage(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model_file(tmp_path / "none.joblib")
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"definitely not a pickle\n\x00\x01")
    with pytest.raises(ModelFileError, match="not a readable pipeline model file") as exc:
        load_model_file(garbage)
    assert "\n" not in str(exc.value)


def test_library_defaults_match_the_config_file():
    """make_classifier(name) with no parameters is the CLI's default classifier."""
    import tomllib

    from pipeline.classifiers import make_classifier
    from pipeline.config import DEFAULT_CONFIG_PATH

    # Where the library keeps scikit-learn's own default on purpose, and the CLI differs.
    intentional = {
        ("nn", "early_stopping"): "off like MLPClassifier; the CLI holds out 10 % to stop early",
        ("svc", "class_weight"): "None like SVC; the CLI balances classes",
        ("logreg", "class_weight"): "None like LogisticRegression; the CLI balances classes",
        ("svc", "probability"): "consumed by the factory (calibrated SVC)",
        ("xgboost", "xgb_params"): "xgboost's own max_bin in the library; the CLI uses 64 (speed)",
    }
    with DEFAULT_CONFIG_PATH.open("rb") as fh:
        fit_section = tomllib.load(fh)["fit"]
    for name in ("nn", "svc", "xgboost", "logreg"):
        params = make_classifier(name).get_params(deep=True)
        for key, value in fit_section[name].items():
            if (name, key) in intentional:
                continue
            found = [v for k, v in params.items() if k.endswith(f"__{key}")]
            if not found:
                continue  # a key the factory consumes itself (e.g. probability, calibration_cv)
            expected = None if value == "none" else value
            if isinstance(expected, list):
                expected = tuple(expected)
            got = tuple(found[0]) if isinstance(found[0], list) else found[0]
            assert got == expected, f"{name}.{key}: library {got!r} != config {expected!r}"


def test_svc_warns_past_the_row_threshold_and_svc_approx_runs(tmp_path, caplog):
    from pipeline.fit import main

    from ._fit_helpers import write_store

    store = write_store(tmp_path / "f.h5")
    caplog.set_level("WARNING")
    code = main(
        [
            "--features",
            str(store),
            "--clf",
            "svc,svc_approx",
            "--out",
            str(tmp_path / "o"),
            "--set",
            "svc_warn_rows=10",
            "--set",
            "svc_approx.n_components=32",
            "-q",
        ]
    )
    assert code == 0
    assert "svc_approx" in caplog.text and "quadratically" in caplog.text
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert {r["clf"] for r in report["results"]} == {"svc", "svc_approx"}
