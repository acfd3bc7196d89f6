"""Extraction throughput: ours end to end vs forward-only (torch, ONNX Runtime) vs the tutorial loop.

Everything is measured in one run on the same generated photo-sized JPEGs, so the ratios are
comparable. Usage::

    python benchmarks/extract_throughput.py --images 800 --repeats 3
    python benchmarks/extract_throughput.py --stages --cifar ../shared/data/cifar10-mini --images 320 --repeats 3

``--stages`` (issue 31) measures in one process, variants alternated: fp32 and int8
(``--precision int8``'s graph, calibrated on 256 of the images) forward-only on ready crops and
end to end (``embed_images``: decoding threads, resize, batch, forward; the rows checked equal
to forward-only's), on 500x375 JPEGs (upscaled from ``--cifar``, else generated) and on
CIFAR-size ones; the time per stage; the first-run quantisation cost.

Rows printed (images/s, median of ``--repeats`` runs):

- ``ours``: ``python -m pipeline.extract`` as a fresh process, process start included, on a
  fresh ``--out`` each time, after one earlier run has exported and verified the ONNX graph
  (what every run after a user's first one does).
- ``ours, first use``: the very first run, with an empty graph cache: it imports torch,
  builds the network, exports the graph and verifies it against torch (one run).
- ``ours, warm re-run``: the same command again over the unchanged folder (its share of the
  first run's time).
- ``forward-only onnxruntime``: the plain features graph (float NCHW input, normalisation not
  included), exported here, on pre-decoded, pre-normalised tensors (batch 64), ONNX Runtime's
  default session options (all cores, spinning threads).
- ``forward-only torch``: the backbone, fp32, channels-last, batch 64.
- ``tutorial loop``: torchvision ``ImageFolder`` + ``DataLoader(batch_size=8, num_workers=1)``,
  ``no_grad``, fp32, the model's own ``features`` + pooling, contiguous layout; timed from its
  first batch (imports and model load excluded), and again as a fresh process like ours.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def make_photos(root: Path, n: int, size=(500, 375), classes: int = 4, seed: int = 0) -> None:
    """Photo-like JPEGs: smooth colour fields plus texture, so they decode like real photos."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0.005, 0.03, 3)
        base = np.stack(
            [np.sin(xx * a + i), np.cos(yy * b + 2 * i), np.sin((xx + yy) * c)], axis=-1
        )
        noise = rng.normal(0, 0.15, (h, w, 3))
        pixels = np.clip((base * 0.4 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def run_ours(data: Path, out: Path, extra: list[str], env: dict[str, str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.extract",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        "-q",
        *extra,
    ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return time.perf_counter() - started


def _backbone():
    from pipeline.engine.backbones import build_backbone, resolve_backbone

    return build_backbone(resolve_backbone("mobilenet_v2", "IMAGENET1K_V1"))


def _timed(run, batch, n: int) -> float:
    run(batch[:8])  # warm-up
    started, done = time.perf_counter(), 0
    while done < n:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def forward_only_torch(n: int) -> float:
    import torch

    module = _backbone().module.to(memory_format=torch.channels_last)
    batch = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _timed(module, batch, n)


def export_plain_graph(path: Path) -> None:
    """The features module alone, float NCHW in: the reference the issue names."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            _backbone().module,
            (torch.zeros(2, 3, 224, 224),),
            str(path),
            input_names=["images"],
            dynamic_axes={"images": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )


def forward_only_onnxruntime(graph: Path, n: int) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((64, 3, 224, 224), dtype=np.float32)
    return _timed(lambda x: session.run(None, {"images": x}), batch, n)


def tutorial_loop(data: Path) -> float:
    """The loop most transfer-learning tutorials teach, timed from the first batch request."""
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    model = mobilenet_v2(weights=weights).eval()
    dataset = ImageFolder(str(data), transform=weights.transforms())
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=1)
    started = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            torch.nn.functional.adaptive_avg_pool2d(model.features(images), 1).flatten(1)
    return len(dataset) / (time.perf_counter() - started)


TUTORIAL_SCRIPT = """
import sys, torch
from torchvision.datasets import ImageFolder
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
weights = MobileNet_V2_Weights.IMAGENET1K_V1
model = mobilenet_v2(weights=weights).eval()
loader = torch.utils.data.DataLoader(
    ImageFolder(sys.argv[1], transform=weights.transforms()), batch_size=8, num_workers=1
)
with torch.no_grad():
    for images, _ in loader:
        torch.nn.functional.adaptive_avg_pool2d(model.features(images), 1).flatten(1)
"""


def tutorial_process(data: Path, n: int) -> float:
    """The same loop as a fresh ``python`` process: process start included, like ours."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", TUTORIAL_SCRIPT, str(data)], check=True)
    return n / (time.perf_counter() - started)


def upscaled_photos(source: Path, root: Path, n: int, size=(500, 375)) -> None:
    """Decode-heavy JPEGs from real small images: each upscaled (bicubic) to ``size``."""
    files = sorted(source.rglob("*.jpg"))[:n]
    for i, path in enumerate(files):
        folder = root / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").resize(size, Image.BICUBIC).save(
                folder / f"{i:05d}.jpg", quality=90
            )


def small_images(source: Path | None, root: Path, n: int) -> None:
    """CIFAR-size JPEGs: the source's own files, else generated 32x32 ones."""
    if source is None:
        make_photos(root, n, size=(32, 32))
        return
    for i, path in enumerate(sorted(source.rglob("*.jpg"))[:n]):
        folder = root / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(path.read_bytes())


def _stage_times(files: list[Path], pre, runner, batch: int = 32) -> dict[str, float]:
    """Milliseconds per image of each stage, one after the other in this thread (the
    forward pass with its own threads)."""
    import h5py

    from pipeline.engine.sources import decode_image

    t0 = time.perf_counter()
    images = [decode_image(f) for f in files]
    t1 = time.perf_counter()
    crops = [pre.crop(im) for im in images]
    t2 = time.perf_counter()
    batches = [np.stack(crops[i : i + batch]) for i in range(0, len(crops), batch)]
    t3 = time.perf_counter()
    rows = [runner(b) for b in batches]
    t4 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, h5py.File(Path(tmp) / "w.h5", "w") as fh:
        out = fh.create_dataset("x", (len(files), rows[0].shape[1]), "f4")
        at = 0
        for r in rows:
            out[at : at + len(r)] = r
            at += len(r)
    t5 = time.perf_counter()
    n = len(files) / 1000
    return {
        "decode": (t1 - t0) / n,
        "resize+crop": (t2 - t1) / n,
        "batch copy": (t3 - t2) / n,
        "forward": (t4 - t3) / n,
        "write": (t5 - t4) / n,
    }


def stages(args: argparse.Namespace) -> None:
    """fp32 vs int8, end to end vs forward-only, on decode-heavy and on small JPEGs; where
    the time goes; the first-run cost of quantising. In one process, variants alternated."""
    from pipeline._runtime import auto_workers, inference_threads
    from pipeline.engine import quantize
    from pipeline.engine.backbones import resolve_backbone
    from pipeline.engine.onnx import OnnxRunner
    from pipeline.engine.runners import embed_images, make_runner, ordered_map
    from pipeline.engine.sources import decode_image

    spec = resolve_backbone(args.model, args.weights)
    pre = spec.preprocessing
    threads, workers = inference_threads(), auto_workers("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PIPELINE_CACHE_DIR"] = str(Path(tmp) / "cache")
        sets = {"500x375 JPEGs": Path(tmp) / "big", "CIFAR-size JPEGs": Path(tmp) / "small"}
        if args.cifar is not None:
            upscaled_photos(args.cifar, sets["500x375 JPEGs"], args.images)
        else:
            make_photos(sets["500x375 JPEGs"], args.images)
        small_images(args.cifar, sets["CIFAR-size JPEGs"], args.images)
        files = {k: sorted(v.rglob("*.jpg")) for k, v in sets.items()}
        fp32 = make_runner(spec, "cpu", "fp32", "onnxruntime", threads=threads)
        calib = np.stack([pre.crop(decode_image(f)) for f in files["500x375 JPEGs"][:256]])
        started = time.perf_counter()
        sha = quantize.make_int8_graph(fp32.path, calib)
        quantise_s = time.perf_counter() - started
        int8 = quantize.int8_runner(sha, threads)
        print(
            f"first-run quantisation: {quantise_s:.1f} s ({len(calib)} calibration crops, "
            f"{quantize.DEFAULT_VARIANT})",
            flush=True,
        )
        # The same graphs as 2 streams of single-threaded sessions (2 batches at once).
        runners = {
            "fp32 1x2": fp32,
            "int8 1x2": int8,
            "fp32 2x1": OnnxRunner(fp32.path, fp32.feature_dim, threads, streams=2),
            "int8 2x1": OnnxRunner(int8.path, int8.feature_dim, threads, streams=2),
        }
        results: dict[tuple[str, str, str], list[float]] = {}
        profile: dict[str, list[dict[str, float]]] = {k: [] for k in files}
        for r in range(args.repeats):
            for name, paths in files.items():
                crops = np.stack([pre.crop(decode_image(f)) for f in paths])
                for precision, runner in runners.items():

                    def load(i: int, paths=paths):
                        return decode_image(paths[i])

                    t = time.perf_counter()
                    e2e, _ = embed_images(
                        load, len(paths), pre, runner, batch_size=32, workers=workers
                    )
                    e2e_rate = len(paths) / (time.perf_counter() - t)
                    t = time.perf_counter()
                    chunks = [crops[i : i + 32] for i in range(0, len(crops), 32)]
                    ref = np.concatenate(list(ordered_map(runner, chunks, runner.streams)))
                    forward_rate = len(paths) / (time.perf_counter() - t)
                    if not np.array_equal(e2e, ref):
                        raise SystemExit(f"{name} {precision}: end to end rows differ")
                    results.setdefault((name, precision, "e2e"), []).append(e2e_rate)
                    results.setdefault((name, precision, "fwd"), []).append(forward_rate)
                profile[name].append(_stage_times(paths, pre, fp32))
            print(
                f"run {r + 1}: "
                + ", ".join(f"{'/'.join(k)} {v[-1]:.0f}" for k, v in results.items()),
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"\n{args.images} images per set; batch 32, {workers} decoding threads, {threads} "
        f"inference threads; medians of {args.repeats}; images/s\n"
    )
    print(
        "| images | variant | forward-only | end to end | e2e / forward-only | e2e / fp32 forward-only |"
    )
    print("|---|---|---|---|---|---|")
    for name in files:
        base = med[(name, "fp32 1x2", "fwd")]
        for precision in runners:
            f, e = med[(name, precision, "fwd")], med[(name, precision, "e2e")]
            print(f"| {name} | {precision} | {f:.0f} | {e:.0f} | {e / f:.2f} | {e / base:.2f} |")
    print(
        "\n| images | "
        + " | ".join(profile[next(iter(files))][0])
        + " |  (ms per image, one thread; forward: its own threads)"
    )
    print("|---|" + "---|" * len(profile[next(iter(files))][0]))
    for name, runs in profile.items():
        print(
            f"| {name} | "
            + " | ".join(f"{statistics.median(r[k] for r in runs):.2f}" for k in runs[0])
            + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--stages",
        action="store_true",
        help="fp32 vs int8, end to end vs forward-only, and where the time goes (in process)",
    )
    parser.add_argument("--cifar", type=Path, help="with --stages: real small JPEGs to use")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", default="IMAGENET1K_V1")
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="more flags for pipeline.extract (e.g. --workers 2)",
    )
    args = parser.parse_args()
    if args.stages:
        stages(args)
        return
    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {cores} cores, {os.uname().machine}; {args.images} JPEGs 500x375; "
        f"mobilenet_v2 IMAGENET1K_V1; medians of {args.repeats}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        make_photos(data, args.images)
        graph = Path(tmp) / "plain.onnx"
        export_plain_graph(graph)
        env = {**os.environ, "PIPELINE_CACHE_DIR": str(Path(tmp) / "cache")}
        first_use = args.images / run_ours(data, Path(tmp) / "first.h5", args.extra, env)
        print(f"first use (empty graph cache): {first_use:.3g} images/s", flush=True)
        results: dict[str, list[float]] = {
            k: [] for k in ("ours", "warm", "torch", "onnxruntime", "tutorial", "tutorial_process")
        }
        for r in range(args.repeats):
            out = Path(tmp) / f"f{r}.h5"
            first = run_ours(data, out, args.extra, env)
            results["ours"].append(args.images / first)
            results["warm"].append(run_ours(data, out, args.extra, env) / first)
            results["torch"].append(forward_only_torch(args.images // 2))
            results["onnxruntime"].append(forward_only_onnxruntime(graph, args.images))
            results["tutorial"].append(tutorial_loop(data))
            results["tutorial_process"].append(tutorial_process(data, args.images))
            print(
                f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in results.items()),
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print("| measurement | images/s (median) | ours / it |")
    print("|---|---|---|")
    print(f"| ours end to end (process start included) | {med['ours']:.1f} | 1.00 |")
    print(
        f"| ours, first use (graph exported and verified; 1 run) | {first_use:.1f} | "
        f"{med['ours'] / first_use:.2f} |"
    )
    for key, label in [
        ("onnxruntime", "forward-only ONNX Runtime"),
        ("torch", "forward-only torch channels-last"),
        ("tutorial", "tutorial loop (batch 8, 1 worker), timed from its first batch"),
        ("tutorial_process", "tutorial loop as a fresh process (process start included)"),
    ]:
        print(f"| {label} | {med[key]:.1f} | {med['ours'] / med[key]:.2f} |")
    print(
        f"\nwarm re-run over the unchanged folder: {100 * med['warm']:.1f} % of the first run's time"
    )


if __name__ == "__main__":
    main()
