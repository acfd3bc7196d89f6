"""Exported ONNX models against ``pipeline predict``: agreement, file size, speed.

Per data set (a folder with train/ and test/, or sklearn:digits) and classifier: extract
with real MobileNetV2 (IMAGENET1K_V1, CPU), fit, export (``run_export``, tolerance off so the
numbers are always measured), then on every test image: label agreement and max |Δp| of the
exported model (ONNX Runtime) against predict's code path, and the part of it that the
resize explains (the same graph fed PIL's crops). Speed: ``run_predict`` with the joblib
file and with the .onnx file on the same image files (same decoding; 200 of them, --timed classifiers), interleaved, medians.

    python benchmarks/export_agreement.py --data ../shared/data/cifar10-mini --data sklearn:digits

Prints one JSON line per classifier and writes them to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.classifiers import CLASSIFIER_NAMES  # noqa: E402
from pipeline.engine.sources import open_source  # noqa: E402
from pipeline.export.build import build_model  # noqa: E402
from pipeline.export.run import run_export  # noqa: E402
from pipeline.export.runtime import ExportedModel  # noqa: E402
from pipeline.export.verify import reference_predictions  # noqa: E402
from pipeline.extract import main as extract_main  # noqa: E402
from pipeline.fit import load_model_file  # noqa: E402
from pipeline.fit import main as fit_main  # noqa: E402
from pipeline.predict import _load_recipe, run_predict  # noqa: E402


def _test_images(data: str, limit: int) -> tuple[list, list[str] | None]:
    """(PIL images, their files or None): the test split, else the last rows."""
    source = open_source(data)
    records = [r for r in source.records if r.split == "test"] or source.records[-limit:]
    records = records[:limit]
    paths = None if data.startswith("sklearn:") else [r.path for r in records]
    return [source.load(r) for r in records], paths


def _crop_stats(recipe, images) -> dict:
    """Share of crop values where the graph's resize differs from PIL's, and the largest."""
    import onnxruntime as ort
    from onnx import TensorProto

    from pipeline.export.crops import add_crops
    from pipeline.export.graph import GraphBuilder, tensor

    g = GraphBuilder()
    crops = add_crops(g, "image", recipe.preprocessing)
    model = g.finish(
        [tensor("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [tensor(crops, TensorProto.UINT8, [None] * 4)],
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    share, worst = [], 0
    for image in images:
        got = session.run(None, {"image": np.asarray(image)[None]})[0][0].astype(int)
        diff = np.abs(got - recipe.preprocessing.crop(image))
        share.append(float((diff > 0).mean()))
        worst = max(worst, int(diff.max()))
    return {"crop_values_differing": round(float(np.mean(share)), 6), "crop_max_difference": worst}


def _from_crops(payload, recipe, images) -> np.ndarray:
    """The graph without its resize, fed PIL's crops: what is left is backbone/head numerics."""
    model = ExportedModel(
        build_model(payload, recipe, {"class_names": "[]"}, from_crops=True).SerializeToString()
    )
    crops = np.stack([recipe.preprocessing.crop(im) for im in images])
    return np.concatenate(
        [
            model.session.run(["probabilities"], {"crops": crops[i : i + 32]})[0]
            for i in range(0, len(crops), 32)
        ]
    )


def _speed(model_file: Path, onnx_file: Path, paths: list[str], repeats: int) -> dict:
    times: dict[str, list[float]] = {"predict": [], "onnx": []}
    for _ in range(repeats):
        for name, path in (("predict", model_file), ("onnx", onnx_file)):
            started = time.perf_counter()
            run_predict(path, paths, workers=0)
            times[name].append(time.perf_counter() - started)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "predict_images_per_s": round(len(paths) / median["predict"], 1),
        "onnx_images_per_s": round(len(paths) / median["onnx"], 1),
        "onnx_over_predict": round(median["predict"] / median["onnx"], 2),
    }


def run(
    data: str, work: Path, clfs: list[str], limit: int, repeats: int, timed: list[str]
) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    store = work / "f.h5"
    if not store.exists():
        argv = [
            "--data",
            data,
            "--out",
            str(store),
            "--model",
            "mobilenet_v2",
            "--no-progress",
            "-q",
        ]
        assert extract_main(argv) == 0
    models = work / "run" / "models"
    todo = [c for c in clfs if not (models / f"{c}.joblib").exists()]
    if todo:
        argv = ["--features", str(store), "--clf", ",".join(todo), "--out", str(work / "run")]
        assert fit_main([*argv, "--no-audit", "-q"]) == 0
    images, paths = _test_images(data, limit)
    rows = []
    for clf in clfs:
        model_file = models / f"{clf}.joblib"
        out = work / f"{clf}.onnx"
        result = run_export(model_file, out, n_images=32, tolerance=1.0)
        payload = load_model_file(model_file)
        recipe = _load_recipe(payload, model_file)
        labels, proba = reference_predictions(payload, recipe, images)
        got, got_labels = ExportedModel(out).run([np.asarray(im) for im in images])
        no_resize = _from_crops(payload, recipe, images)
        row = {
            "data": data,
            "clf": clf,
            "n_images": len(images),
            "label_agreement": round(float(np.mean(got_labels == labels)), 5),
            "max_abs_dp": float(np.abs(got - proba).max()),
            "max_abs_dp_from_pil_crops": float(np.abs(no_resize - proba).max()),
            "export_check": result.verification.line(),
            "file_mb": round(result.size_bytes / 1e6, 2),
        }
        if clf == clfs[0]:
            row.update(_crop_stats(recipe, images))
        if paths is not None and repeats and clf in timed:
            row.update(_speed(model_file, out, paths[:200], repeats))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--clf", default=",".join(CLASSIFIER_NAMES))
    parser.add_argument("--work", default="artifacts/export_agreement")
    parser.add_argument("--limit", type=int, default=500, help="test images per data set")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs (0: none)")
    parser.add_argument("--timed", default="logreg,xgboost", help="classifiers timed")
    parser.add_argument("--out", default="artifacts/export_agreement.json")
    args = parser.parse_args()
    rows = []
    for data in args.data:
        name = data.replace(":", "_").rstrip("/").rsplit("/", 1)[-1]
        work = Path(args.work) / name
        rows += run(
            data, work, args.clf.split(","), args.limit, args.repeats, args.timed.split(",")
        )
    load = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "loadavg": load}, indent=1))
    print(json.dumps({"loadavg": load}))


if __name__ == "__main__":
    main()
