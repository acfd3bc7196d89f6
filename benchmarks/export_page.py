"""The offline page (`pipeline export --page`) in headless Chromium from file://, network off:
load time (navigation start -> session ready) and per-image time per model size, and the
largest |Δp| against ONNX Runtime in Python on the same pixels.

Models: the test's stand-in (tiny), the stand-in with a hidden layer of ~10 MB, and a
MobileNetV2 (random weights: same size and speed as the real ones) behind the same antialiased
resize to 224 and a linear head, composed in ONNX. Page loads are interleaved across models;
medians of --repeats.

PYTHONPATH=. python benchmarks/export_page.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.export.page import write_page  # noqa: E402
from tests.test_export_page import (  # noqa: E402
    _classify,
    _load,
    _offline_chrome,
    standin_model,
)


def mobilenet_model(folder: Path, classes: list[str]) -> onnx.ModelProto:
    """Resize (antialiased, to 224) -> MobileNetV2 (random weights) -> linear -> softmax."""
    import torch
    import torchvision
    from onnx import TensorProto, compose, helper, numpy_helper

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            net = torchvision.models.mobilenet_v2(weights=None)
            self.features, self.pool = net.features, torch.nn.AdaptiveAvgPool2d(1)
            self.linear = torch.nn.Linear(1280, len(classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.linear(torch.flatten(self.pool(self.features(x)), 1)), 1)

    torch.manual_seed(0)
    path = folder / "backbone.onnx"
    torch.onnx.export(
        Head().eval(),
        (torch.zeros(1, 3, 224, 224),),
        str(path),
        input_names=["normalised"],
        output_names=["probabilities"],
        dynamic_axes={"normalised": {0: "N"}, "probabilities": {0: "N"}},
        dynamo=False,
        opset_version=18,
    )
    backbone = onnx.load(str(path))
    front = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node(
                "Resize",
                ["nchw", "", "", "sizes"],
                ["small"],
                mode="linear",
                antialias=1,
                axes=[2, 3],
            ),
            helper.make_node("Sub", ["small", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["normalised"]),
        ],
        "front",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("normalised", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            numpy_helper.from_array(np.array([224, 224], np.int64), "sizes"),
            numpy_helper.from_array(
                np.array([123.7, 116.3, 103.5], np.float32).reshape(1, 3, 1, 1), "mean"
            ),
            numpy_helper.from_array(
                np.array([58.4, 57.1, 57.4], np.float32).reshape(1, 3, 1, 1), "std"
            ),
        ],
    )
    front_model = helper.make_model(front, opset_imports=[helper.make_opsetid("", 18)])
    front_model.ir_version = backbone.ir_version
    model = compose.merge_models(front_model, backbone, io_map=[("normalised", "normalised")])
    helper.set_model_props(model, {"class_names": json.dumps(classes)})
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver") or "chromedriver")
    args = parser.parse_args()
    import onnxruntime as ort

    classes = [f"class {i}" for i in range(10)]
    work = Path(tempfile.mkdtemp(prefix="page-bench-"))
    models = {
        "standin": standin_model(classes),
        "standin_10MB": standin_model(classes, hidden=13_000),
        "mobilenet_v2": mobilenet_model(work, classes),
    }
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate([(224, 224), (480, 640), (32, 32), (1080, 1920)]):
        images.append(work / f"img{i}_{w}x{h}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images[-1])
    pages, sizes = {}, {}
    for name, model in models.items():
        onnx.save(model, str(work / f"{name}.onnx"))
        sizes[name] = (work / f"{name}.onnx").stat().st_size
        pages[name] = write_page(work / f"{name}.onnx", work / name)
    browser = _offline_chrome(args.chromium, args.chromedriver)
    loads = {name: [] for name in models}
    scripts = {name: [] for name in models}
    try:
        for _ in range(args.repeats):
            for name, index in pages.items():
                assert _load(browser, index) == "ready"
                data = browser.execute_script("return {...document.body.dataset};")
                loads[name].append(int(data["loadMs"]))
                scripts[name].append(int(data["scriptsMs"]))
        results = {}
        for name, index in pages.items():
            _load(browser, index)
            _classify(browser, images)  # warm-up
            runs = [_classify(browser, images) for _ in range(args.repeats)]
            per_image = browser.execute_script(
                "return Array.from(document.querySelectorAll('#results > li')).reverse()"
                ".map(li => [li.dataset.file, +li.dataset.decodeMs, +li.dataset.runMs]);"
            )
            session = ort.InferenceSession(str(work / f"{name}.onnx"))
            diff = 0.0
            for path, result in zip(images, runs[-1][-len(images) :], strict=True):
                pixels = np.asarray(Image.open(path).convert("RGB"))[None]
                expected = session.run(["probabilities"], {"image": pixels})[0][0]
                diff = max(diff, float(np.abs(np.array(result["probabilities"]) - expected).max()))
            timing = {}
            for path in images:
                rows = [r for r in per_image if r[0] == path.name][1:]  # without the warm-up
                timing[path.name] = {
                    "decode_ms": statistics.median(r[1] for r in rows),
                    "run_ms": statistics.median(r[2] for r in rows),
                }
            results[name] = {
                "model_MB": round(sizes[name] / 1e6, 2),
                "page_MB": round(
                    sum(f.stat().st_size for f in index.parent.rglob("*") if f.is_file()) / 1e6, 1
                ),
                "scripts_read_ms_median": statistics.median(scripts[name]),
                "ready_ms_median": statistics.median(loads[name]),
                "ready_ms_all": loads[name],
                "max_abs_dp_vs_python": diff,
                "per_image": timing,
            }
    finally:
        browser.quit()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
