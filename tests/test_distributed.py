"""Scale-out on Dask: sharded extraction equals in-process, survives worker loss, resumes per
shard; XGBoost on Dask matches in-process accuracy."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ExtractConfig
from pipeline.exceptions import PipelineError
from pipeline.extract import (
    begin_parts,
    embed_into_parts,
    finish_store,
    plan_extraction,
    run_extraction,
)
from pipeline.store import list_parts, parts_dir, read_rows_file, read_store

from ._fit_helpers import write_store
from ._precision import assert_embeddings_match
from .conftest import TINY_MODEL, write_images

distributed = pytest.importorskip("distributed")
from pipeline._cluster import parse_dask_spec  # noqa: E402
from pipeline.extract import executors as pdist  # noqa: E402
from pipeline.fit.dask import fit_xgboost_dask, store_array  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 48  # 2 classes x 24, plus one corrupt file


@pytest.fixture(scope="module")
def cluster():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield cluster, client


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dask") / "images"
    write_images(root, {"cat": N_IMAGES // 2, "dog": N_IMAGES // 2})
    (root / "cat" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    return root


def config(data: Path, out: Path, **changes) -> ExtractConfig:
    base = ExtractConfig(
        data=str(data),
        out=str(out),
        model="squeezenet1_1",
        weights="none",
        batch_size=4,
        workers=0,
        device="cpu",
        progress=False,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    run_extraction(config(images, out))
    return out


def assert_same_store(path: Path, reference: Path) -> None:
    got, want = read_store(path), read_store(reference)
    assert got.paths.tolist() == want.paths.tolist()
    assert got.labels.tolist() == want.labels.tolist()
    assert got.split.tolist() == want.split.tolist()
    assert got.keys.tolist() == want.keys.tolist()
    assert got.failed.paths == want.failed.paths and len(got.failed.paths) == 1
    assert got.attrs["fingerprint"] == want.attrs["fingerprint"]
    assert got.attrs["complete"] is True or got.attrs["complete"] == 1
    assert_embeddings_match(got.features, want.features, want.attrs["precision"])
    assert not parts_dir(path).exists()


def run_sharded(cfg: ExtractConfig, client, shard_size: int) -> tuple[int, float]:
    """What run_extraction does with --dask, with a chosen shard size."""
    plan = plan_extraction(cfg)
    done = pdist.run_dask_extraction(plan, client=client, shard_size=shard_size)
    finish_store(done.plan)
    return done.n_embedded, done.seconds


def test_parse_dask_spec():
    assert parse_dask_spec("local:3") == ("local", 3)
    assert parse_dask_spec("local")[0] == "local"
    assert parse_dask_spec("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    for bad in ("local:0", "local:x", "somewhere", "tcp://"):
        with pytest.raises(ValueError, match="dask: "):
            parse_dask_spec(bad)


def test_shards_are_contiguous_deterministic_and_cover_todo():
    todo = list(range(0, 1000, 3))
    shards = pdist.shard_todo(todo, n_workers=2)
    assert [i for s in shards for i in s] == todo
    assert len(shards[0]) == 64 and shards == pdist.shard_todo(todo, n_workers=2)
    assert [len(s) for s in pdist.shard_todo(range(10), 2, shard_size=4)] == [4, 4, 2]


def test_dask_store_equals_in_process_store(images, reference, cluster, tmp_path):
    _, client = cluster
    out = tmp_path / "dask.h5"
    # Through the CLI's path: run_extraction routes --dask to the scheduler's address.
    summary = run_extraction(config(images, out, dask=cluster[0].scheduler_address))
    assert summary.n_embedded == N_IMAGES and summary.n_failed == 1
    assert_same_store(out, reference)
    # Several shards in flight at once give the same store too.
    out2 = tmp_path / "sharded.h5"
    n, _ = run_sharded(config(images, out2), client, shard_size=7)
    assert n == N_IMAGES
    assert_same_store(out2, reference)


def test_killed_worker_still_gives_complete_equal_store(images, reference, cluster, tmp_path):
    _, client = cluster
    out = tmp_path / "killed.h5"
    cfg = config(images, out, checkpoint_seconds=0.0, batch_size=2)
    pids = client.run(os.getpid)
    result: dict = {}

    def work() -> None:
        try:
            result["n"] = run_sharded(cfg, client, shard_size=12)[0]
        except BaseException as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("part-shard") for p in list_parts(out)):
        assert time.monotonic() < deadline and thread.is_alive(), result
        time.sleep(0.02)
    os.kill(next(iter(pids.values())), signal.SIGKILL)  # a worker dies mid-shard
    killed_mid_run = thread.is_alive()
    thread.join(120)
    assert "error" not in result, result.get("error")
    assert killed_mid_run
    assert result["n"] == N_IMAGES  # no image embedded twice, none lost
    assert_same_store(out, reference)
    client.wait_for_workers(2, timeout=60)


def test_rerun_after_interruption_recomputes_only_unfinished_shards(
    images, reference, cluster, tmp_path
):
    _, client = cluster
    out = tmp_path / "resume.h5"
    cfg = config(images, out, dask="unused")
    # An interrupted run: shard 0 finished, shard 1 half done, the others never started.
    plan = plan_extraction(cfg)
    shards = pdist.shard_todo(plan.todo, 2, shard_size=16)
    from pipeline.engine.runners import make_runner

    runner = make_runner(plan.spec, __import__("torch").device("cpu"), plan.precision)
    plan = begin_parts(plan, runner.feature_dim, runner.backend)
    embed_into_parts(plan, shards[0], runner, prefix="part-shard00000-", update_index=False)
    embed_into_parts(plan, shards[1][:8], runner, prefix="part-shard00001-", update_index=False)
    saved = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in list_parts(out)}
    done = sum(len(read_rows_file(p, with_features=False).paths) for p in saved)
    failed_before = sum(len(read_rows_file(p, with_features=False).failed) for p in saved)
    assert 0 < done < N_IMAGES

    rerun = plan_extraction(cfg)
    assert len(rerun.todo) == N_IMAGES + 1 - done - failed_before
    resumed = pdist.run_dask_extraction(rerun, client=client, shard_size=8)
    assert resumed.n_embedded == N_IMAGES - done  # only the images no part file held
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in saved} == saved  # untouched
    finish_store(resumed.plan)
    assert_same_store(out, reference)


def _no_task_anywhere(client) -> bool:
    """The scheduler knows no task and no worker holds one: none queued, none running, none
    cancelled but still running (a worker keeps a released task until its function returns)."""
    scheduled = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    held = client.run(lambda dask_worker: len(dask_worker.state.tasks))
    return scheduled == 0 and not any(held.values())


def test_killed_client_resumes_without_recomputing_finished_shards(
    images, reference, cluster, tmp_path
):
    """`kill -9` of `pipeline.extract --dask tcp://...`; its tasks may still run; rerun."""
    _, client = cluster
    out = tmp_path / "cli.h5"
    cmd = [sys.executable, "-m", "pipeline.extract", "--data", str(images), "--out", str(out)]
    cmd += [*TINY_MODEL, "--device", "cpu", "--batch-size", "2", "--workers", "0", "-q"]
    cmd += ["--no-progress", "--checkpoint-seconds", "0", "--dask", cluster[0].scheduler_address]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith("part-shard") for p in list_parts(out)):
            assert proc.poll() is None and time.monotonic() < deadline, "finished too early"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert read_store(out, require_complete=False).attrs["complete"] == 0
    # Tasks of the dead client run on to the end of their shard: wait until no task is left
    # anywhere (a state, not a quiet period of the part files, which a busy machine outlasts).
    deadline = time.monotonic() + 120
    while not _no_task_anywhere(client):
        assert time.monotonic() < deadline, "the killed client's tasks never ended"
        time.sleep(0.05)
    saved = {p: p.stat().st_mtime_ns for p in list_parts(out)}
    done = sum(len(read_rows_file(p, with_features=False).paths) for p in saved)
    assert 0 < done < N_IMAGES

    summary = run_extraction(config(images, out, dask=cluster[0].scheduler_address))
    assert summary.n_embedded == N_IMAGES - done  # only what no part file held
    assert_same_store(out, reference)


def test_a_shard_retry_skips_rows_its_first_attempt_saved(images, tmp_path):
    plan = plan_extraction(config(images, tmp_path / "retry.h5"))
    plan = begin_parts(plan, 576, "torch")
    shard = pdist._shard_plan(plan, plan.todo[:10])
    first = pdist._embed_shard(pdist._shard_plan(plan, plan.todo[:4]), 3, "r", "torch")
    again = pdist._embed_shard(shard, 3, "r", "torch")
    assert (first.n_embedded, again.n_resumed, again.n_embedded) == (4, 4, 10)
    rows = sum(len(read_rows_file(p, with_features=False).paths) for p in list_parts(plan.out))
    assert rows == 10  # no row saved twice


def test_workers_must_see_the_parts_folder(images, tmp_path):
    plan = plan_extraction(config(images, tmp_path / "nowhere.h5"))
    with pytest.raises(PipelineError, match="shared by the client and every worker"):
        pdist._embed_shard(pdist._shard_plan(plan, plan.todo[:2]), 0, "r", "torch")


def test_xgboost_on_dask_matches_in_process_accuracy(cluster, tmp_path):
    from pipeline.classifiers import make_classifier
    from pipeline.store import split_table

    _, client = cluster
    path = write_store(tmp_path / "blobs.h5", n_per_class=80, dim=12, seed=3)
    table = read_store(path)
    X_train, y_train, X_test, y_test, _ = split_table(table, path, random_state=0)
    names = np.asarray(table.class_names)
    params = {"n_estimators": 60, "max_depth": 3, "random_state": 0, "device": "cpu"}

    local = make_classifier("xgboost", **params).fit(X_train, names[y_train])
    want = np.mean(local.predict(X_test) == names[y_test])

    # Train rows read lazily from the store, chunk by chunk, by the workers.
    labelled = np.flatnonzero(table.labels >= 0)
    train_rows = np.sort(labelled[np.isin(table.features[labelled], X_train).all(axis=1)])
    X_lazy = store_array(path, train_rows, chunk_rows=50)
    assert X_lazy.npartitions > 1
    fitted = fit_xgboost_dask(
        make_classifier("xgboost", **params), X_lazy, names[table.labels[train_rows]], client
    )
    got = np.mean(fitted.predict(X_test) == names[y_test])
    assert abs(got - want) <= 0.02 and got > 0.9
    # A plain XGBClassifier inside: predicts and pickles without the cluster.
    import pickle

    from xgboost import XGBClassifier

    clone = pickle.loads(pickle.dumps(fitted))
    assert type(clone.named_steps["clf"].estimator_) is XGBClassifier
    assert set(clone.predict(X_test)) <= set(names)
    np.testing.assert_allclose(clone.predict_proba(X_test).sum(axis=1), 1.0, rtol=1e-5)


def test_xgboost_on_dask_from_store_rows_reads_no_feature_on_the_client(
    cluster, tmp_path, monkeypatch
):
    """Given StoreRows, the workers (separate processes) read the store; any read of a dataset
    in this (client) process fails the test."""
    import h5py

    from pipeline.classifiers import make_classifier
    from pipeline.rows import StoreRows
    from pipeline.store import split_rows

    _, client = cluster
    path = write_store(tmp_path / "blobs.h5", n_per_class=80, dim=12, seed=3)
    table = read_store(path)
    train, test, _ = split_rows(table, path, random_state=0)
    names = np.asarray(table.class_names)
    params = {"n_estimators": 60, "max_depth": 3, "random_state": 0, "device": "cpu"}
    local = make_classifier("xgboost", **params).fit(
        table.features[train], names[table.labels[train]]
    )
    want = np.mean(local.predict(table.features[test]) == names[table.labels[test]])

    rows = np.random.default_rng(1).permutation(train)  # unsorted: the labels must follow
    source = StoreRows(path, rows)

    def no_reading(*args, **kwargs):
        raise AssertionError("the client read features")

    for name in ("__getitem__", "__array__", "read_direct"):
        monkeypatch.setattr(h5py.Dataset, name, no_reading)
    monkeypatch.setattr(StoreRows, "take", no_reading)
    monkeypatch.setattr(StoreRows, "read", no_reading)
    with pytest.raises(AssertionError, match="client read features"):
        np.asarray(source)  # what materialising X on the client would hit
    fitted = fit_xgboost_dask(
        make_classifier("xgboost", **params), source, names[table.labels[rows]], client
    )
    monkeypatch.undo()
    clf = fitted.named_steps["clf"]
    assert clf.best_iteration_ is not None and clf.n_features_in_ == 12
    got = np.mean(fitted.predict(table.features[test]) == names[table.labels[test]])
    assert abs(got - want) <= 0.02 and got > 0.9
    with pytest.raises(ValueError, match="one dataset only"):
        views = StoreRows(path, rows, ("features", "features"))
        fit_xgboost_dask(
            make_classifier("xgboost", **params), views, names[table.labels[rows]], client
        )


def test_fit_cli_trains_xgboost_on_a_local_cluster(tmp_path, caplog):
    import joblib

    from pipeline.fit import main as fit_main

    store = write_store(tmp_path / "f.h5", n_per_class=40, dim=8)
    argv = ["--features", str(store), "--out", str(tmp_path / "o"), "--clf", "xgboost,logreg"]
    argv += ["--set", "xgboost.n_estimators=30", "--set", "xgboost.device=cpu", "-q"]
    with caplog.at_level("INFO", logger="pipeline.fit"):
        assert fit_main([*argv, "--dask", "local:2"]) == 0
    assert "logreg is not distributed" in caplog.text
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    accuracy = {r["clf"]: r["accuracy"] for r in report["results"]}
    assert accuracy["xgboost"] > 0.9
    saved = joblib.load(tmp_path / "o" / "models" / "xgboost.joblib")
    assert saved["clf"] == "xgboost"  # a plain model file: loads and predicts with no cluster
    X = read_store(store).features
    assert set(saved["estimator"].predict(X)) <= set(read_store(store).class_names)


def test_dask_int8_store_uses_the_plans_graph(images, cluster, tmp_path):
    """--precision int8 on Dask: the graph made by the plan (on the client) is the one every
    worker loads, and the store equals the in-process int8 store."""
    from pipeline.engine import quantize
    from pipeline.engine.backbones import resolve_backbone
    from pipeline.engine.onnx import graph_path

    # Workers load the graph from their cache: here the test's (they were started before
    # the test set it), as on a cluster whose workers share the client's home folder.
    _, client = cluster
    cache = os.environ["PIPELINE_CACHE_DIR"]
    client.run(lambda: os.environ.update(PIPELINE_CACHE_DIR=cache))
    fp32_graph = graph_path(resolve_backbone("squeezenet1_1", None))
    quantize.save_speedup(fp32_graph, 2.0)  # whatever this CPU's speed: int8 is used
    try:
        in_process = tmp_path / "int8.h5"
        run_extraction(config(images, in_process, precision="int8"))
        sha = read_store(in_process).attrs["int8_graph"]
        out = tmp_path / "dask-int8.h5"
        summary = run_extraction(
            config(images, out, precision="int8", dask=cluster[0].scheduler_address)
        )
    finally:
        quantize._speed_path(fp32_graph).unlink(missing_ok=True)
    assert summary.n_embedded == N_IMAGES
    got, want = read_store(out), read_store(in_process)
    assert got.attrs["precision"] == "int8" and got.attrs["int8_graph"] == sha
    assert got.attrs["fingerprint"] == want.attrs["fingerprint"]
    assert got.paths.tolist() == want.paths.tolist()
    assert_embeddings_match(got.features, want.features, "fp32")
