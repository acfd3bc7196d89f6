"""Are bf16 (and fp16) embeddings equivalent to fp32 ones? (issue 16)

The same images are embedded once per precision through the CLI (``python -m pipeline.extract
--precision P --backend torch``: the same engine for each, so only the precision differs), then:

- per image, the cosine similarity of its P embedding to its fp32 one (min, 1st percentile,
  median) and ``max |P - fp32| / ||fp32||``;
- stage two: ``python -m pipeline.fit`` on each store with the same split, seed and
  hyperparameters (``--no-audit``), test accuracy with the report's 95 % interval, and paired
  against fp32 on the same test images: the difference with a 95 % paired bootstrap interval
  (5,000 resamples), the discordant images (right only in fp32 / right only in P), and the share
  of identical predictions. For scale, the same for fp32 fitted with another seed (``--seed 1``):
  what training randomness alone moves.

Data: ``--data DIR`` (e.g. ``../shared/data/cifar10-mini``: real 32x32 JPEGs, given
train/test split), else generated cifar10-mini-like data: 10 classes of 32x32 JPEGs (a class is
a shape and a colour family, drawn at a random place, size and shade on a random background,
plus noise), ``--train-per-class`` / ``--test-per-class`` in train/ and test/ folders.

    python benchmarks/precision_equivalence.py --data ../shared/data/cifar10-mini --device cpu
    python benchmarks/precision_equivalence.py --device cuda          # generated; fp32, bf16, fp16
    python benchmarks/precision_equivalence.py --data ../shared/data/cifar10-mini --device cpu \
        --precisions fp32,int8 --backend onnxruntime --clf logreg,svc,nn   # int8 (issue 31)

Prints markdown tables headed by the machine; ``--json`` keeps every number. Classifiers:
``--clf`` (default logreg,nn, plus xgboost when it is importable), trained on ``--fit-device``
(default cpu: deterministic, so the embeddings are the only difference).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import machine
import numpy as np
from extract_throughput import REPO
from PIL import Image, ImageDraw

SHAPES = ("disk", "square", "triangle", "hbars", "vbars")


def make_cifar_like(root: Path, train: int, test: int, seed: int = 0) -> None:
    """10 classes (5 shapes x 2 colour families) of 32x32 JPEGs in train/ and test/."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train), ("test", test)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _draw(rng, c).save(folder / f"{i:04d}.jpg", quality=90)


def _draw(rng: np.random.Generator, c: int) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (32, 32), background)
    warm = c // 5 == 0  # colour family: warm (red dominant) or cool (blue dominant)
    shade = rng.integers(120, 256), rng.integers(0, 160), rng.integers(0, 120)
    colour = tuple(int(v) for v in (shade if warm else shade[::-1]))
    size = int(rng.integers(10, 24))
    x, y = (int(v) for v in rng.integers(0, 32 - size + 1, 2))
    draw, box = ImageDraw.Draw(image), (x, y, x + size, y + size)
    shape = SHAPES[c % 5]
    if shape == "disk":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=colour)
    else:
        for k in range(0, size, 4):
            bar = (
                (x, y + k, x + size, y + k + 1)
                if shape == "hbars"
                else (x + k, y, x + k + 1, y + size)
            )
            draw.rectangle(bar, fill=colour)
    noise = rng.normal(0, 12, (32, 32, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def run(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def extract(args: argparse.Namespace, data: Path, precision: str, out: Path, device: str) -> float:
    py = [sys.executable, "-m", "pipeline.extract", "--data", str(data), "--out", str(out)]
    flags = ["--model", args.model, "--weights", args.weights, "--device", device]
    # int8 is a quantised ONNX Runtime graph: it has no torch backend.
    backend = "auto" if precision == "int8" else args.backend
    flags += ["--precision", precision, "--backend", backend, "--no-progress", "-q"]
    seconds = run([*py, *flags])
    from pipeline.store import read_attrs

    made = read_attrs(out)["precision"]
    if made != precision:  # int8 falls back to fp32 where it is not faster
        raise SystemExit(f"{out} was made in {made}, not {precision} (see its log line)")
    return seconds


def fit(args: argparse.Namespace, store: Path, out: Path, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pipeline.fit", "--features", str(store), "--out", str(out)]
    cmd += ["--clf", ",".join(args.clf), "--seed", str(seed), "--no-audit", "-q"]
    for clf in args.clf:
        if clf in ("nn", "xgboost"):
            cmd += ["--set", f"{clf}.device={args.fit_device}"]
    run(cmd)
    report = json.loads((out / "report.json").read_text())
    with open(out / report["predictions"], newline="") as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if r["split"] == "test" or report["evaluation"] != "given split"
        ]
    results = {r["clf"]: r for r in report["results"]}
    per_clf = {}
    for clf in args.clf:
        mine = sorted(
            (r["path"], r["correct"] in ("True", "true", "1"), r["pred"])
            for r in rows
            if r["clf"] == clf
        )
        per_clf[clf] = {
            "accuracy": results[clf]["accuracy"],
            "ci": results[clf]["ci"]["accuracy"],
            "paths": [m[0] for m in mine],
            "correct": [m[1] for m in mine],
            "pred": [m[2] for m in mine],
        }
    return per_clf


def embedding_agreement(store: Path, reference: Path) -> dict[str, float]:
    """Per-image cosine to the reference store's embedding, and max |diff| / ||reference||."""
    from pipeline.store import read_store

    a, b = read_store(store), read_store(reference)
    order_a, order_b = np.argsort(a.paths), np.argsort(b.paths)
    if list(a.paths[order_a]) != list(b.paths[order_b]):
        raise SystemExit(f"{store} and {reference} hold different images")
    x = a.features[order_a].astype(np.float64)
    y = b.features[order_b].astype(np.float64)
    norms = np.linalg.norm(y, axis=1)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * norms)
    rel = np.abs(x - y).max(1) / norms
    return {
        "images": len(cos),
        "cos_min": float(cos.min()),
        "cos_p01": float(np.percentile(cos, 1)),
        "cos_median": float(np.median(cos)),
        "rel_max": float(rel.max()),
        "rel_median": float(np.median(rel)),
    }


def paired(ref: dict[str, Any], other: dict[str, Any], resamples: int = 5000) -> dict[str, Any]:
    """Accuracy difference other - ref on the same test images, paired bootstrap 95 %."""
    if ref["paths"] != other["paths"]:
        raise SystemExit("the runs were evaluated on different images")
    a, b = np.asarray(ref["correct"], float), np.asarray(other["correct"], float)
    idx = np.random.default_rng(0).integers(0, len(a), (resamples, len(a)))
    diffs = (b[idx] - a[idx]).mean(1)
    return {
        "diff": float(b.mean() - a.mean()),
        "ci": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
        "only_ref": int(((a == 1) & (b == 0)).sum()),
        "only_other": int(((a == 0) & (b == 1)).sum()),
        "same_pred": float(np.mean(np.asarray(ref["pred"]) == np.asarray(other["pred"]))),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, help="ImageFolder with train/ and test/; else generated"
    )
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precisions", default="", help="default: fp32,bf16 (CPU), fp32,bf16,fp16 (CUDA)"
    )
    parser.add_argument("--clf", default="", help="default: logreg,nn and xgboost if importable")
    parser.add_argument("--fit-device", default="cpu", help="nn/xgboost device for stage two")
    parser.add_argument(
        "--backend", default="torch", help="extraction backend of the float precisions"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/precision_equivalence"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    args.device_type = "cuda" if cuda else "cpu"
    args.precisions = (
        args.precisions.split(",")
        if args.precisions
        else (["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"])
    )
    if args.precisions[0] != "fp32":
        parser.error("--precisions must start with fp32 (the reference)")
    has_xgb = importlib.util.find_spec("xgboost") is not None
    args.clf = (
        args.clf.split(",") if args.clf else ["logreg", "nn", *(["xgboost"] if has_xgb else [])]
    )
    if not has_xgb:
        print("xgboost is not installed here: its rows are skipped", flush=True)
    return args


def measure(args: argparse.Namespace, data: Path, facts: dict[str, Any]) -> None:
    """Fill ``facts`` step by step (a run stopped early keeps what it measured)."""
    # On a GPU, fp32 on the CPU too: ours turns cuDNN's TF32 (torch's default for fp32
    # convolutions) off for --precision fp32, so the two should agree to fp32 rounding.
    cpu_too = [("fp32 on the CPU", "fp32", "cpu")] if args.device_type == "cuda" else []
    for name, p, device in [(p, p, args.device) for p in args.precisions] + cpu_too:
        store = args.work / f"{name.replace(' ', '-')}.h5"
        store.unlink(missing_ok=True)
        facts["extract_seconds"][name] = extract(args, data, p, store, device)
        print(f"extract {name}: {facts['extract_seconds'][name]:.1f} s", flush=True)
        if name != "fp32":
            facts["agreement"][name] = embedding_agreement(store, args.work / "fp32.h5")
    for p, seed in [(p, 0) for p in args.precisions] + [("fp32", 1)]:
        key = p if seed == 0 else f"{p}, seed 1"
        runs = fit(args, args.work / f"{p}.h5", args.work / f"fit-{p}-{seed}", seed)
        facts["fits"][key] = runs
        print(f"fit {key}: " + ", ".join(f"{c} {v['accuracy']:.4f}" for c, v in runs.items()))
        if key != "fp32":
            ref = facts["fits"]["fp32"]
            facts["paired"][key] = {clf: paired(ref[clf], runs[clf]) for clf in args.clf}


def print_tables(args: argparse.Namespace, facts: dict[str, Any], data_name: str) -> None:
    print(f"\nMachine: {facts['machine']}")
    print(
        f"Data: {data_name}; {args.model} (weights {facts['weights']}) on {args.device_type}, "
        f"`--backend {args.backend}` for the float precisions (int8: its ONNX Runtime graph); stage two on {args.fit_device}, seed 0.\n"
    )
    print(
        "| precision vs fp32 | images | cosine min | cosine p01 | cosine median | max abs diff / norm: max | median | extract s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if "fp32" not in facts["extract_seconds"]:
        return
    print(f"| fp32 (reference) | | | | | | | {facts['extract_seconds']['fp32']:.1f} |")
    for p, a in facts["agreement"].items():
        print(
            f"| {p} | {a['images']} | {a['cos_min']:.6f} | {a['cos_p01']:.6f} | {a['cos_median']:.6f} "
            f"| {a['rel_max']:.2e} | {a['rel_median']:.2e} | {facts['extract_seconds'][p]:.1f} |"
        )
    print(
        "\n| clf | run | test accuracy [95 %] | minus fp32 [95 % paired bootstrap] | right only in fp32 / only here | same predictions |"
    )
    print("|---|---|---|---|---|---|")
    for clf in args.clf:
        for key, runs in facts["fits"].items():
            r = runs[clf]
            acc = f"{r['accuracy']:.4f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
            if key == "fp32":
                print(f"| {clf} | fp32 | {acc} | | | |")
                continue
            d = facts["paired"][key][clf]
            print(
                f"| {clf} | {key} | {acc} | {d['diff']:+.4f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] "
                f"| {d['only_ref']} / {d['only_other']} | {d['same_pred']:.3f} |"
            )


def main() -> None:
    args = parse_args()
    facts: dict[str, Any] = {"machine": machine.describe(args.device_type)}
    print(f"machine: {facts['machine']}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = args.work / "images"
        if not data.exists():
            make_cifar_like(data, args.train_per_class, args.test_per_class)
        name = (
            f"generated cifar10-mini-like, {10 * args.train_per_class} train / "
            f"{10 * args.test_per_class} test 32x32 JPEGs"
        )
    else:
        name = str(data)
    from pipeline.engine.backbones import resolve_backbone

    facts["weights"] = resolve_backbone(args.model, args.weights).weights or "random init"
    facts |= {"extract_seconds": {}, "agreement": {}, "fits": {}, "paired": {}}
    try:
        measure(args, data, facts)
    except KeyboardInterrupt:
        print("\nINTERRUPTED: the tables hold what was measured before", flush=True)
    print_tables(args, facts, name)
    if args.json:
        args.json.write_text(json.dumps(facts | {"data": name}, indent=1, default=str))


if __name__ == "__main__":
    main()
