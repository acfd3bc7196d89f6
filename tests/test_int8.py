"""--precision int8: the quantised CPU graph, its place in the recipe, reuse, and the speed check.

Nothing here depends on this CPU's speed: every test records the int8 / fp32 speed-up it wants
before the first run (the check reads the record and measures only when there is none), or
replaces the measurement.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline import ImageEmbedder
from pipeline.engine import quantize
from pipeline.engine.backbones import resolve_backbone
from pipeline.engine.onnx import graph_path
from pipeline.extract import main as extract_main
from pipeline.fit import main as fit_main
from pipeline.predict import main as predict_main
from pipeline.recipe import EmbeddingRecipe
from pipeline.store import read_attrs, read_store

from .conftest import TINY_MODEL, write_images

INT8 = [*TINY_MODEL, "--precision", "int8", "--device", "cpu", "--no-progress", "-q"]


@pytest.fixture
def fp32_graph():
    """The fp32 graph the tiny model's int8 graphs are made from (its speed record's key)."""
    return graph_path(resolve_backbone("squeezenet1_1", None))


@pytest.fixture
def int8_is_faster(fp32_graph):
    quantize.save_speedup(fp32_graph, 2.0)
    yield
    quantize._speed_path(fp32_graph).unlink(missing_ok=True)


def _graphs() -> set[str]:
    folder = quantize.int8_cache_dir()
    return {p.name for p in folder.glob("*.onnx")} if folder.is_dir() else set()


def test_recipe_fingerprint_holds_the_int8_graph():
    spec = resolve_backbone("squeezenet1_1", None)
    fp32 = EmbeddingRecipe(spec, "fp32")
    a, b = (
        EmbeddingRecipe(spec, "int8", int8_graph="a" * 64),
        EmbeddingRecipe(spec, "int8", int8_graph="b" * 64),
    )
    assert len({fp32.fingerprint(), a.fingerprint(), b.fingerprint()}) == 3
    assert EmbeddingRecipe.from_attrs(a.to_attrs()) == a
    assert a.mismatch(a.to_attrs()) is None
    assert "int8_graph" in a.mismatch(b.to_attrs())
    # An fp32 store written before int8 existed (no int8_graph attribute) still matches.
    old = {k: v for k, v in fp32.to_attrs().items() if k != "int8_graph"}
    assert fp32.mismatch(old) is None and EmbeddingRecipe.from_attrs(old) == fp32


def test_int8_store_is_its_own_recipe_and_updates_reuse_its_graph(tmp_path, int8_is_faster, capsys):
    data, out = tmp_path / "images", tmp_path / "int8.h5"
    write_images(data, {"cat": 5, "dog": 5})
    before = _graphs()
    assert extract_main(["--data", str(data), "--out", str(out), *INT8]) == 0
    attrs = read_attrs(out)
    sha = attrs["int8_graph"]
    assert attrs["precision"] == "int8" and len(sha) == 64
    assert _graphs() - before == {f"{sha}.onnx"}
    fp32_out = tmp_path / "fp32.h5"
    fp32_args = [*TINY_MODEL, "--device", "cpu", "--no-progress", "-q"]
    assert extract_main(["--data", str(data), "--out", str(fp32_out), *fp32_args]) == 0
    assert read_attrs(fp32_out)["fingerprint"] != attrs["fingerprint"]
    assert not read_attrs(fp32_out).get("int8_graph")

    # New images (which would calibrate another graph) are embedded with the store's graph.
    write_images(data, {"bird": 3}, seed=7)
    made = _graphs()
    assert extract_main(["--data", str(data), "--out", str(out), *INT8]) == 0
    updated = read_store(out)
    assert updated.attrs["int8_graph"] == sha and len(updated.paths) == 13
    assert _graphs() == made
    assert np.isfinite(updated.features).all()

    # int8 and fp32 rows never mix, either way round.
    capsys.readouterr()
    assert extract_main(["--data", str(data), "--out", str(out), *fp32_args]) == 2
    assert "precision 'int8' -> 'fp32'" in capsys.readouterr().err
    assert extract_main(["--data", str(data), "--out", str(fp32_out), *INT8]) == 2
    assert "precision 'fp32' -> 'int8'" in capsys.readouterr().err


def test_int8_not_faster_here_says_so_and_embeds_fp32(tmp_path, fp32_graph, caplog, monkeypatch):
    data = tmp_path / "images"
    write_images(data, {"cat": 3, "dog": 3})
    measured = []

    def slow(*args, **kwargs):
        measured.append(1)
        return 0.8

    monkeypatch.setattr(quantize, "measure_speedup", slow)
    quantize._speed_path(fp32_graph).unlink(missing_ok=True)
    try:
        for run in range(2):
            out = tmp_path / f"run{run}.h5"
            caplog.clear()
            assert extract_main(["--data", str(data), "--out", str(out), *INT8[:-1]]) == 0
            lines = [r.getMessage() for r in caplog.records if "not faster" in r.getMessage()]
            assert len(lines) == 1 and "0.80x" in lines[0]
            attrs = read_attrs(out)
            assert attrs["precision"] == "fp32" and not attrs["int8_graph"]
            if run == 0:
                graphs = _graphs()
        # Measured once per fp32 graph and CPU, recorded: the second run quantised nothing.
        assert measured == [1]
        assert quantize.recorded_speedup(fp32_graph) == 0.8
        assert _graphs() == graphs
    finally:
        quantize._speed_path(fp32_graph).unlink(missing_ok=True)


def test_int8_through_fit_predict_and_image_embedder(tmp_path, int8_is_faster, capsys):
    data, store, fit_out = tmp_path / "images", tmp_path / "int8.h5", tmp_path / "fit"
    write_images(data, {"red": 8, "green": 8}, size=(40, 40))
    assert extract_main(["--data", str(data), "--out", str(store), *INT8]) == 0
    assert fit_main(["--features", str(store), "--clf", "logreg", "--out", str(fit_out), "-q"]) == 0
    model = fit_out / "models" / "logreg.joblib"
    sha = read_attrs(store)["int8_graph"]

    embedder = ImageEmbedder(
        model="squeezenet1_1", weights=None, device="cpu", precision="int8", int8_graph=sha
    )
    rows = read_store(store)
    got = embedder.fit_transform(list(rows.paths[:4]))
    np.testing.assert_array_equal(got, rows.features[:4])
    with pytest.raises(ValueError, match="int8_graph"):
        ImageEmbedder(model="squeezenet1_1", weights=None, device="cpu", precision="int8").fit()

    csv_out = tmp_path / "pred.csv"
    assert predict_main(["--model", str(model), str(data), "--out", str(csv_out), "-q"]) == 0
    assert len(csv_out.read_text().splitlines()) == 17

    # The graph gone from the cache: a one-line error naming it, exit 2.
    quantize.int8_graph_path(sha).rename(tmp_path / "moved.onnx")
    try:
        capsys.readouterr()
        assert predict_main(["--model", str(model), str(data), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert sha[:16] in err and len(err.splitlines()) == 1
    finally:
        (tmp_path / "moved.onnx").rename(quantize.int8_graph_path(sha))


def test_calibration_sample_follows_content_not_names(tmp_path):
    from pipeline.engine.sources import open_source
    from pipeline.extract.plan import calibration_crops

    spec = resolve_backbone("squeezenet1_1", None)
    recipe = EmbeddingRecipe(spec, "fp32")
    write_images(tmp_path / "a" / "x", {"c": 6}, seed=1)
    crops = calibration_crops(open_source(str(tmp_path / "a")), recipe, n=3)
    # The same files under other names and folders: the same sample, in the same order.
    for i, path in enumerate(sorted((tmp_path / "a").rglob("*.png"))):
        target = tmp_path / "b" / f"k{i % 2}" / f"{9 - i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    again = calibration_crops(open_source(str(tmp_path / "b")), recipe, n=3)
    assert crops.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(crops, again)


def test_quantised_graph_keeps_float_where_asked(tmp_path):
    import onnx

    spec = resolve_backbone("squeezenet1_1", None)
    from pipeline.engine.runners import make_runner

    fp32 = make_runner(spec, "cpu", "fp32", "onnxruntime")
    crops = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    quantize.QUANT_VARIANTS["test-keep-first-last"] = dataclasses.replace(
        quantize.QUANT_VARIANTS["minmax"], keep_float=("first", "last")
    )
    try:
        for variant in ("minmax", "test-keep-first-last"):
            quantize.quantize_graph(fp32.path, tmp_path / f"{variant}.onnx", crops, variant)
    finally:
        del quantize.QUANT_VARIANTS["test-keep-first-last"]

    def float_convs(path):
        graph = onnx.load(str(path)).graph
        dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        # A convolution kept in float has float weights (its input may still be dequantised,
        # when the tensor also feeds a quantised node).
        return [n.name for n in graph.node if n.op_type == "Conv" and n.input[1] not in dequantized]

    assert float_convs(tmp_path / "minmax.onnx") == []
    assert len(float_convs(tmp_path / "test-keep-first-last.onnx")) == 2  # first and last


def test_concurrent_streams_give_the_same_rows_in_order(tmp_path):
    """Two batches at once on single-threaded sessions: the rows of one 2-thread session, bit
    for bit, each in its place (failed items NaN, errors kept)."""
    from PIL import Image

    from pipeline.engine.onnx import OnnxRunner
    from pipeline.engine.runners import embed_images, make_runner

    spec = resolve_backbone("squeezenet1_1", None)
    path = make_runner(spec, "cpu", "fp32", "onnxruntime").path
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(11)]

    def load(i):
        if i == 4:
            raise ValueError("broken")
        return images[i]

    results = []
    for threads, streams in ((2, 1), (2, 2), (1, 1)):
        runner = OnnxRunner(path, 512, threads, streams=streams)
        assert runner.streams == streams
        results.append(
            embed_images(
                load, 11, spec.preprocessing, runner, batch_size=3, workers=2, on_error="nan"
            )
        )
    (first, errors), *others = results
    assert np.isnan(first[4]).all() and errors[4] and np.isfinite(np.delete(first, 4, 0)).all()
    for rows, errs in others:
        np.testing.assert_array_equal(rows, first)
        assert errs == errors
