"""Which int8 quantisation keeps MobileNetV2's embeddings? (issue 31) Every variant in one run.

The fp32 features graph (the one ``--backend onnxruntime`` runs: uint8 NHWC crops in,
normalisation inside) is quantised with ONNX Runtime's ``quantize_static`` in each variant
below, calibrated on the first ``--calib`` training images (in content-key order, as
``--precision int8`` does), and every variant is compared with fp32 on the same crops:

- per image, the cosine of its int8 embedding to its fp32 one (min, 1st percentile, median);
- classifiers (``--clf``, default logreg; fit's default hyperparameters, seed 0) trained on
  the train split (digits: a fixed third of the content keys is test) and scored on the test
  split: accuracy difference int8 - fp32 with a 95 % paired bootstrap interval (5,000
  resamples of the test images) and fit's exact McNemar test;
- forward-only speed: int8 / fp32 images per second, batches alternated, median of
  ``--repeats`` (batch 32, all cores).

    python benchmarks/int8_calibration.py --data ../shared/data/cifar10-mini
    python benchmarks/int8_calibration.py --data ../shared/data/cifar10-mini --variants minmax,entropy-keep-out

Prints one markdown table (``--json`` keeps the numbers). It takes about a minute per variant
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import machine
import numpy as np


def load_crops(data: str, model: str, weights: str) -> tuple[dict[str, Any], Any]:
    """uint8 crops, labels and content keys of each split, in content-key order."""
    from pipeline.engine.backbones import resolve_backbone
    from pipeline.engine.sources import open_source

    spec = resolve_backbone(model, weights)
    source = open_source(data)
    records = list(source.records)
    keys = source.keys(records)
    order = np.argsort(keys, kind="stable")
    splits: dict[str, Any] = {}
    for i in order:
        r = records[i]
        split = r.split or ("train" if int(keys[i][:8], 16) % 3 else "test")
        s = splits.setdefault(split, {"crops": [], "labels": []})
        s["crops"].append(spec.preprocessing.crop(source.load(r)))
        s["labels"].append(r.label)
    for s in splits.values():
        s["crops"] = np.stack(s["crops"])
        s["labels"] = np.asarray(s["labels"])
    return splits, spec


def embed(session: Any, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: crops[i : i + batch]})[0] for i in range(0, len(crops), batch)]
    ).reshape(len(crops), -1)


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def probe(clf: str, train: np.ndarray, y_train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Test predictions of ``clf`` with fit's default hyperparameters and seed 0."""
    from pipeline.classifiers import default_params, make_classifier

    params = default_params(clf)
    if clf == "nn":
        params = {**params, "random_state": 0, "device": "cpu"}
    model = make_classifier(clf, **params)
    return model.fit(train, y_train).predict(test)


def paired(correct_ref: np.ndarray, correct: np.ndarray, resamples: int = 5000) -> list[float]:
    """int8 - fp32 accuracy, its 95 % paired bootstrap interval (the test images resampled
    together), and the exact McNemar p-value fit uses to call a difference."""
    from pipeline.fit.evidence import mcnemar_exact

    a, b = correct_ref.astype(float), correct.astype(float)
    idx = np.random.default_rng(0).integers(0, len(a), (resamples, len(a)))
    diffs = (b[idx] - a[idx]).mean(1)
    p = mcnemar_exact(correct_ref, correct)
    return [float(b.mean() - a.mean()), *np.percentile(diffs, [2.5, 97.5]).tolist(), float(p)]


def speed(sessions: list[Any], crops: np.ndarray, repeats: int, batch: int = 32) -> list[float]:
    """Images/s of each session, alternated batch by batch, median over ``repeats`` rounds."""
    x = crops[:batch]
    names = [s.get_inputs()[0].name for s in sessions]
    for s, n in zip(sessions, names, strict=True):
        s.run(None, {n: x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for k, (s, n) in enumerate(zip(sessions, names, strict=True)):
            t = time.perf_counter()
            s.run(None, {n: x})
            times[k].append(time.perf_counter() - t)
    return [batch / statistics.median(t) for t in times]


def speed_only(args: argparse.Namespace) -> None:
    """int8 / fp32 forward-only images per second of each variant, alternated."""
    from pipeline.engine.backbones import resolve_backbone
    from pipeline.engine.quantize import quantize_graph
    from pipeline.engine.runners import make_runner

    spec = resolve_backbone(args.model, None if args.weights == "none" else args.weights)
    crops = np.random.default_rng(0).integers(0, 256, (64, 224, 224, 3), dtype=np.uint8)
    graph = make_runner(spec, "cpu", "fp32", "onnxruntime").path
    fp32 = session(graph)
    print("\n| model | variant | fp32 images/s | int8 images/s | int8 / fp32 | quantise s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            out = Path(tmp) / f"{name}.onnx"
            started = time.perf_counter()
            quantize_graph(graph, out, crops[: args.calib], variant=name)
            seconds = time.perf_counter() - started
            f, i = speed([fp32, session(out)], crops, args.repeats)
            print(
                f"| {args.model} ({args.weights}) | {name} | {f:.1f} | {i:.1f} | {i / f:.2f} | {seconds:.0f} |",
                flush=True,
            )


def main() -> None:
    from pipeline.engine.quantize import QUANT_VARIANTS, quantize_graph
    from pipeline.engine.runners import make_runner

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="sklearn:digits")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", default="IMAGENET1K_V1")
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--variants", default=",".join(QUANT_VARIANTS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clf", default="logreg", help="e.g. logreg,svc,nn")
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="only int8 / fp32 forward speed (e.g. resnet18 --weights none), 64 crops",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"machine: {machine.describe('cpu')}", flush=True)
    if args.speed_only:
        speed_only(args)
        return
    splits, spec = load_crops(args.data, args.model, args.weights)
    train, test = splits["train"], splits["test"]
    runner = make_runner(spec, "cpu", "fp32", "onnxruntime")
    fp32 = session(runner.path)
    ref_train, ref_test = embed(fp32, train["crops"]), embed(fp32, test["crops"])
    clfs = args.clf.split(",")
    ref_correct = {
        c: probe(c, ref_train, train["labels"], ref_test) == test["labels"] for c in clfs
    }
    ref_acc = ", ".join(f"{c} {v.mean():.4f}" for c, v in ref_correct.items())
    print(f"fp32 accuracy: {ref_acc}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            out = Path(tmp) / f"{name}.onnx"
            started = time.perf_counter()
            quantize_graph(runner.path, out, train["crops"][: args.calib], variant=name)
            seconds = time.perf_counter() - started
            q = session(out)
            e_train, e_test = embed(q, train["crops"]), embed(q, test["crops"])
            both = np.concatenate([e_train, e_test]).astype(np.float64)
            ref = np.concatenate([ref_train, ref_test]).astype(np.float64)
            cos = (both * ref).sum(1) / (np.linalg.norm(both, axis=1) * np.linalg.norm(ref, axis=1))
            diffs = {
                c: paired(
                    ref_correct[c], probe(c, e_train, train["labels"], e_test) == test["labels"]
                )
                for c in clfs
            }
            f, i = speed([fp32, q], test["crops"], args.repeats)
            row = {
                "variant": name,
                "calib": args.calib,
                "quantise_s": seconds,
                "cos": [float(cos.min()), float(np.percentile(cos, 1)), float(np.median(cos))],
                "diff": diffs,
                "speedup": i / f,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\nData: {args.data} ({len(train['labels'])} train / {len(test['labels'])} test); "
        f"{args.model} ({spec.weights}); fp32 accuracy: {ref_acc}\n"
    )
    print(
        "| variant | calib images | cosine min / p01 / median | "
        + " | ".join(f"{c} int8 - fp32 [95 % paired], McNemar p" for c in clfs)
        + " | int8 / fp32 forward | quantise s |"
    )
    print("|---|---|---|" + "---|" * len(clfs) + "---|---|")
    for r in rows:
        c = r["cos"]
        cells = [
            f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}], {d[3]:.2f}"
            for d in (r["diff"][k] for k in clfs)
        ]
        print(
            f"| {r['variant']} | {r['calib']} | {c[0]:.3f} / {c[1]:.3f} / {c[2]:.3f} | "
            + " | ".join(cells)
            + f" | {r['speedup']:.2f}x | {r['quantise_s']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
