"""The offline page of an exported model (pipeline.export.page): its files and errors, and end to
end in Chromium from file:// with the network off, against ONNX Runtime in Python."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from pipeline.exceptions import ConfigError, ModelFileError
from pipeline.export import page
from pipeline.export.page import write_page
from tests.test_html_report import _browser_paths

# The page's probabilities against ONNX Runtime's in Python on the same pixels: both run the
# same graph with float32 kernels (WebAssembly SIMD vs this CPU's), so they may differ in
# summation order; 1e-5 absolute is far above that (~1e-7 measured) and far below a change of
# any displayed digit.
TOLERANCE = 1e-5
CLASSES = ["cat", "dog", 'odd "quote" <b>&', "ünïcode"]


def standin_model(
    class_names=CLASSES, hidden: int = 0, seed: int = 0, side: int = 8, metadata=None
) -> onnx.ModelProto:
    """A stand-in with the interface of `pipeline export`'s models: uint8 ``image``
    [N, H, W, 3] at any size -> antialiased Resize (opset 18) -> normalise -> linear ->
    ``probabilities`` [N, C] (Softmax) and ``label`` [N] (ArgMax, Gather on the class names)."""
    rng = np.random.default_rng(seed)
    features = 3 * side * side
    inits = [
        numpy_helper.from_array(np.array([side, side], np.int64), "sizes"),
        numpy_helper.from_array(np.full((1, 3, 1, 1), 127.5, np.float32), "mean"),
        numpy_helper.from_array(np.full((1, 3, 1, 1), 64.0, np.float32), "std"),
        numpy_helper.from_array(np.array(class_names, dtype=object), "names"),
        # unused: ONNX Runtime warns about it while loading; the page must not show that as
        # a console error
        numpy_helper.from_array(np.zeros(2, np.float32), "unused_initializer"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Resize", ["nchw", "", "", "sizes"], ["small"], mode="linear", antialias=1, axes=[2, 3]
        ),
        helper.make_node("Sub", ["small", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normalised"]),
        helper.make_node("Flatten", ["normalised"], ["x"], axis=1),
    ]
    last, width = "x", features
    if hidden:  # a bigger model, for the load-time benchmark
        scale = 1 / np.sqrt(features)
        w1 = (rng.standard_normal((features, hidden)) * scale).astype(np.float32)
        inits.append(numpy_helper.from_array(w1, "W1"))
        nodes += [
            helper.make_node("MatMul", ["x", "W1"], ["h0"]),
            helper.make_node("Relu", ["h0"], ["h"]),
        ]
        last, width = "h", hidden
    n = len(class_names)
    w = (rng.standard_normal((width, n)) * 2 / np.sqrt(width)).astype(np.float32)
    inits += [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"),
    ]
    nodes += [
        helper.make_node("MatMul", [last, "W"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["index"], axis=1, keepdims=0),
        helper.make_node("Gather", ["names", "index"], ["label"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "standin",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n]),
            helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    props = {"class_names": json.dumps(class_names), "fingerprint": "f" * 16}
    helper.set_model_props(model, props if metadata is None else metadata)
    onnx.checker.check_model(model)
    return model


def _runtime_or_skip() -> None:
    """Skip without ONNX Runtime Web (a failure when CI sets PIPELINE_REQUIRE_BROWSER)."""
    try:
        page._runtime_files()
    except ConfigError as exc:
        if os.environ.get("PIPELINE_REQUIRE_BROWSER") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _saved(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _decoded_js(path: Path, variable: str) -> dict:
    text = path.read_text(encoding="ascii")
    prefix = f"globalThis.{variable} = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix) : -2])


# -- files and errors ---------------------------------------------------------------------------


def test_page_files(tmp_path):
    _runtime_or_skip()
    model_file = _saved(standin_model(), tmp_path / "m.onnx")
    index = write_page(model_file, tmp_path / "page")
    assert index == tmp_path / "page" / "index.html"
    names = sorted(str(p.relative_to(index.parent)) for p in index.parent.rglob("*"))
    assert names == ["index.html", "model.js", "ort", "ort/ort-wasm.js", "ort/ort.wasm.min.js"] + [
        "page.js"
    ]
    info = _decoded_js(index.parent / "model.js", "PIPELINE_MODEL")
    assert base64.b64decode(info["bytes"]) == model_file.read_bytes()
    assert info["classNames"] == CLASSES and info["input"] == "image"
    runtime = _decoded_js(index.parent / "ort" / "ort-wasm.js", "PIPELINE_ORT_WASM")
    wasm = base64.b64decode(runtime["wasm"])
    assert wasm[:4] == b"\0asm" and wasm == (page.ORT_WEB_DIR / page.RUNTIME_FILES[2]).read_bytes()
    # No external resource in the page's own files (the runtime's messages quote some URLs).
    for own in ("index.html", "page.js"):
        text = (index.parent / own).read_text(encoding="utf-8")
        assert not re.search(r"https?://|//cdn|@import", text), own
    # Written again over itself: the same files, no temporaries left.
    write_page(model_file, tmp_path / "page")
    assert sorted(str(p.relative_to(index.parent)) for p in index.parent.rglob("*")) == names


def test_bad_models_are_one_line_errors(tmp_path, monkeypatch):
    _runtime_or_skip()
    out = tmp_path / "page"
    with pytest.raises(ModelFileError, match="does not exist"):
        write_page(tmp_path / "missing.onnx", out)
    (tmp_path / "junk.onnx").write_bytes(b"\x12\x34 not a protobuf")
    with pytest.raises(ModelFileError, match="junk.onnx is not an ONNX model"):
        write_page(tmp_path / "junk.onnx", out)
    no_names = _saved(standin_model(metadata={"fingerprint": "x"}), tmp_path / "no_names.onnx")
    with pytest.raises(ModelFileError, match="lacks the metadata class_names"):
        write_page(no_names, out)
    float_input = standin_model()
    float_input.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    with pytest.raises(ModelFileError, match="no input 'image' of uint8"):
        write_page(_saved(float_input, tmp_path / "float.onnx"), out)
    big = _saved(standin_model(), tmp_path / "big.onnx")
    monkeypatch.setattr(page, "MAX_BASE64_CHARS", 4 * (big.stat().st_size // 3) - 4)
    with pytest.raises(ModelFileError, match="big.onnx is too large for the page"):
        write_page(big, out)
    assert not out.exists()  # nothing written


def test_missing_runtime_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "ORT_WEB_DIR", tmp_path / "no-runtime")
    model_file = _saved(standin_model(), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"run `bash \.ci/fetch-ort-web\.sh`") as caught:
        write_page(model_file, tmp_path / "page")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "page").exists()


# -- end to end in Chromium ---------------------------------------------------------------------


def _images(folder: Path) -> list[Path]:
    """PNGs of several sizes and modes (RGB, grey, opaque RGBA, palette, a 1-pixel strip)."""
    rng = np.random.default_rng(1)
    folder.mkdir()
    shapes = {"wide.png": (31, 47, 3), "square.png": (64, 64, 3), "strip.png": (1, 300, 3)}
    paths = []
    for name, shape in shapes.items():
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    grey = Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8), mode="L")
    grey.save(folder / "grey.png")
    rgba = np.concatenate(
        [rng.integers(0, 256, (17, 13, 3), dtype=np.uint8), np.full((17, 13, 1), 255, np.uint8)],
        axis=2,
    )
    Image.fromarray(rgba, mode="RGBA").save(folder / "opaque rgba.png")
    palette = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    palette.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    return [*paths, folder / "grey.png", folder / "opaque rgba.png", folder / "palette.png"]


def _offline_chrome(chromium: str, driver: str):
    """A headless Chromium with no network (no host name resolves, 127.0.0.1 aside, for the
    static-server check; CDP's offline mode on), that keeps its console and network log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(arg)
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    return browser


def _requested_urls(browser) -> list[str]:
    """Every URL the page asked for, from the network log."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@contextlib.contextmanager
def _static_server(folder: Path) -> Iterator[str]:
    """A static web server for ``folder`` on 127.0.0.1; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request log on stderr
        pass


def _load(browser, index: Path, timeout: float = 60, base: str | None = None) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{base}/{index.name}" if base else index.as_uri())
    return WebDriverWait(browser, timeout).until(
        lambda b: b.execute_script(
            "const s = document.body.dataset.state; return s === 'loading' ? null : s;"
        )
    )


def _classify(browser, files: list[Path], timeout: float = 60) -> list[dict]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = len(browser.find_elements(By.CSS_SELECTOR, "#results > li"))
    browser.find_element(By.ID, "file").send_keys("\n".join(str(f) for f in files))
    WebDriverWait(browser, timeout).until(
        lambda b: b.execute_script("return document.body.dataset.done") == str(before + len(files))
    )
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#results > li')).reverse().map(li => ({"
        " file: li.dataset.file, label: li.dataset.label || null, error: li.dataset.error || null,"
        " probabilities: li.dataset.probabilities ? JSON.parse(li.dataset.probabilities) : null,"
        " rows: Array.from(li.querySelectorAll('tbody tr')).map(r => r.innerText),"
        " alert: (li.querySelector('[role=alert]') || {}).textContent || null}));"
    )


def test_page_offline_in_chromium_matches_onnxruntime(tmp_path):
    import onnxruntime as ort
    from selenium.webdriver.common.by import By

    _runtime_or_skip()
    chromium, driver = _browser_paths()
    model_file = _saved(standin_model(), tmp_path / "m.onnx")
    index = write_page(model_file, tmp_path / "page")
    images = _images(tmp_path / "images")
    (tmp_path / "images" / "notes.png").write_text("not an image")

    # A model that fails on some images: the failure is shown on that image, the page goes on.
    # (Its pixels are reshaped to 1 x 8 x 8 x 3 before the resize.)
    fragile = standin_model(class_names=["a", "b"])
    fragile.graph.initializer.append(
        numpy_helper.from_array(np.array([1, 8, 8, 3], np.int64), "fixed_shape")
    )
    fragile.graph.node.insert(1, helper.make_node("Reshape", ["pixels", "fixed_shape"], ["eight"]))
    transpose = next(n for n in fragile.graph.node if n.op_type == "Transpose")
    transpose.input[0] = "eight"
    fragile_index = write_page(_saved(fragile, tmp_path / "fragile.onnx"), tmp_path / "fragile")

    browser = _offline_chrome(chromium, driver)
    try:
        assert _load(browser, index) == "ready"
        seen = _classify(browser, [*images, tmp_path / "images" / "notes.png"])
        # Dropped onto the page: the same result as chosen with the file input.
        dropped = browser.execute_async_script(
            "const [name, b64, done] = arguments;"
            "const file = new File([Uint8Array.fromBase64(b64)], name, {type: 'image/png'});"
            "const transfer = new DataTransfer(); transfer.items.add(file);"
            "const before = document.querySelectorAll('#results > li').length;"
            "document.getElementById('drop').dispatchEvent(new DragEvent('drop',"
            " {dataTransfer: transfer, bubbles: true, cancelable: true}));"
            "const wait = () => document.body.dataset.done == before + 1"
            " ? done(document.querySelector('#results > li').dataset.probabilities)"
            " : setTimeout(wait, 50);"
            "wait();",
            "dropped.png",
            base64.b64encode(images[0].read_bytes()).decode(),
        )
        load_ms = browser.execute_script("return document.body.dataset.loadMs")
        about = browser.find_element(By.ID, "about").text
        title = browser.title
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

        assert _load(browser, fragile_index) == "ready"
        failed = _classify(browser, [images[0]])
        # A page whose model cannot be read says so.
        (tmp_path / "fragile" / "model.js").write_text(
            'globalThis.PIPELINE_MODEL = {"title": "t", "classNames": ["a"], "input": "image",'
            ' "output": "probabilities", "topK": 5, "bytes": "bm90IGFuIG9ubng="};\n'
        )
        assert _load(browser, fragile_index) == "failed"
        status = browser.execute_script(
            "const s = document.getElementById('status'); return [s.textContent, s.role];"
        )
        urls = _requested_urls(browser)

        # The same page from a static web server (on this machine: the network stays off).
        with _static_server(index.parent) as base:
            browser.execute_cdp_cmd(
                "Network.emulateNetworkConditions",
                {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
            )
            assert _load(browser, index, base=base) == "ready"
            served = _classify(browser, [images[0]])
            served_urls = _requested_urls(browser)
    finally:
        browser.quit()

    assert severe == [], severe
    assert title == "Image classifier: m"
    assert "4 classes" in about and "offline" in about
    assert json.loads(dropped) == seen[0]["probabilities"]
    assert int(load_ms) > 0

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    assert [s["file"] for s in seen] == [p.name for p in images] + ["notes.png"]
    for result, path in zip(seen, images, strict=False):
        with Image.open(path) as opened:
            pixels = np.asarray(opened.convert("RGB"))[None]
        expected, label = session.run(["probabilities", "label"], {"image": pixels})
        assert result["error"] is None, result
        got = np.array(result["probabilities"])
        np.testing.assert_allclose(got, expected[0], rtol=0, atol=TOLERANCE, err_msg=path.name)
        assert result["label"] == label[0] == CLASSES[int(np.argmax(got))]
        # What a person reads: the top classes in order, with percentages.
        order = np.argsort(-expected[0], kind="stable")
        assert [r.split("\t")[0] for r in result["rows"]] == [CLASSES[i] for i in order]
        assert result["rows"][0].split("\t")[1] == f"{100 * expected[0][order[0]]:.1f} %"
    assert seen[-1]["error"] == "not an image this browser can decode"
    assert seen[-1]["alert"] == seen[-1]["error"] and seen[-1]["probabilities"] is None

    assert failed[0]["probabilities"] is None
    assert failed[0]["error"].startswith("the model failed on this image:"), failed
    assert status[0].startswith("Could not load the model:") and status[1] == "alert"
    assert index.as_uri() in urls
    assert all(u.startswith(("file:", "blob:", "data:")) for u in urls), urls
    assert served[0]["probabilities"] == seen[0]["probabilities"]
    assert f"{base}/index.html" in served_urls
    assert all(u.startswith((base, "blob:", "data:")) for u in served_urls), served_urls


def _head_models() -> dict[str, tuple[onnx.ModelProto, np.ndarray]]:
    """The heads' converters' ONNX graphs on 16 features (the operators of ai.onnx.ml that
    `pipeline export` puts after the backbone): scaler + logistic regression, a calibrated
    RBF SVC, and XGBoost."""
    skl2onnx = pytest.importorskip("skl2onnx")
    onnxmltools = pytest.importorskip("onnxmltools")
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 16)).astype(np.float32)
    y = rng.integers(0, 3, 90)
    X[:, 0] += y  # something to learn
    models = {}
    for name, head in {
        "logreg": LogisticRegression(),
        "svc": CalibratedClassifierCV(SVC(), cv=3),
    }.items():
        pipe = make_pipeline(StandardScaler(), head).fit(X, y)
        models[name] = skl2onnx.to_onnx(
            pipe,
            X[:1],
            options={id(head): {"zipmap": False}},
            target_opset={"": 18, "ai.onnx.ml": 3},
        )
    booster = xgboost.XGBClassifier(n_estimators=4, max_depth=3).fit(X, y)
    models["xgboost"] = onnxmltools.convert_xgboost(
        booster, initial_types=[("input", FloatTensorType([None, 16]))], target_opset=15
    )
    return {name: (model, X[:5]) for name, model in models.items()}


@pytest.mark.filterwarnings("ignore:Attribute `prob:FutureWarning")  # skl2onnx reads SVC's probA_
def test_web_runtime_runs_the_heads_operators(tmp_path):
    """The pinned ONNX Runtime Web runs the heads' ai.onnx.ml operators (LinearClassifier,
    SVMClassifier, TreeEnsembleClassifier, Scaler, ArrayFeatureExtractor...) as ONNX Runtime
    in Python does, labels included."""
    import onnxruntime as ort

    heads = _head_models()
    _runtime_or_skip()
    chromium, driver = _browser_paths()
    index = write_page(_saved(standin_model(), tmp_path / "m.onnx"), tmp_path / "page")
    browser = _offline_chrome(chromium, driver)
    try:
        assert _load(browser, index) == "ready"
        got = {}
        for name, (model, X) in heads.items():
            got[name] = browser.execute_async_script(
                "const [b64, input, xs, shape, done] = arguments;"
                "(async () => {"
                " const s = await ort.InferenceSession.create(Uint8Array.fromBase64(b64),"
                "  {logSeverityLevel: 3});"
                " const out = await s.run({[input]:"
                "  new ort.Tensor('float32', Float32Array.from(xs), shape)});"
                " done(Object.fromEntries(Object.entries(out).map(([k, v]) =>"
                "  [k, Array.from(v.data, x => typeof x === 'bigint' ? Number(x) : x)])));"
                "})().catch(e => done({error: String(e)}));",
                base64.b64encode(model.SerializeToString()).decode(),
                model.graph.input[0].name,
                X.ravel().tolist(),
                list(X.shape),
            )
    finally:
        browser.quit()
    for name, (model, X) in heads.items():
        session = ort.InferenceSession(model.SerializeToString())
        outputs = [o.name for o in session.get_outputs()]
        assert "error" not in got[name], (name, got[name])
        for output, expected in zip(
            outputs, session.run(None, {session.get_inputs()[0].name: X}), strict=True
        ):
            if expected.dtype.kind == "f":
                np.testing.assert_allclose(
                    got[name][output], expected.ravel(), atol=TOLERANCE, err_msg=name
                )
            else:
                assert got[name][output] == expected.ravel().tolist(), (name, output)
