"""Predictions on new images with a model file from ``python -m pipeline.fit``.

The images are embedded with exactly the backbone, weights, preprocessing and precision
recorded in the model file (checked by fingerprint), then classified. An unreadable image
gets a row with its error instead of stopping the run.

.. warning:: Model files are joblib pickles: loading one runs code from it. Only pass model
   files you made or trust.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import add_verbosity, setup_logging
from .exceptions import PipelineError

__all__ = ["Prediction", "build_parser", "collect_images", "main", "run_predict"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One input's result: the predicted class and its probability, or the error."""

    path: str
    label: str = ""
    probability: float | None = None
    error: str = ""


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Expand folders into their image files (recursive, each real file once; see
    :func:`pipeline.sources.walk_images`); keep files as given. What a folder walk cannot use
    (not a regular file, unreadable folder) is listed too, and fails with its reason."""
    return list(_collect_with_failures(inputs))


def _collect_with_failures(inputs: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
    """Path -> "" for each image to decode, or -> the reason it cannot be used."""
    from .sources import walk_images

    paths: dict[str, str] = {}
    for item in inputs:
        if os.path.isdir(item):
            found = walk_images(item)
            if not found.images and not found.failed:
                raise PipelineError(f"IMAGE_OR_DIR: no images found in {item}")
            paths.update(dict.fromkeys(found.images, ""))
            paths.update(found.failed)
        else:
            paths.setdefault(os.fspath(item), "")
    return paths


def _check_out(out: str | None) -> None:
    """``--out`` must be a file path in an existing, writable folder: checked before any
    embedding is done."""
    if out is None:
        return
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise PipelineError(
            f"--out: {out} is a directory; give a file path such as {out}/predictions.csv"
        )
    if not os.path.isdir(folder):
        raise PipelineError(f"--out: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PipelineError(f"--out: cannot write to {folder} (permission denied)")


class BackboneMismatchError(PipelineError, ValueError):
    """The backbone available here does not reproduce the one the model was trained on."""


def _load_backbone(payload: dict[str, Any], model_path: Path) -> tuple[Any, str, bool, bool]:
    from .backbones import resolve_backbone

    info = payload["backbone"]
    try:
        spec = resolve_backbone(info["model"], info["weights"])
    except PipelineError as exc:
        raise BackboneMismatchError(
            f"--model: {model_path} needs a backbone this torchvision cannot provide ({exc})"
        ) from exc
    precision = str(info["precision"])
    draft = bool(info.get("jpeg_draft"))
    gpu_decode = bool(info.get("gpu_decode"))
    if spec.fingerprint(precision, jpeg_draft=draft, gpu_decode=gpu_decode) != info["fingerprint"]:
        raise BackboneMismatchError(
            f"--model: {model_path} was trained on embeddings of {info['model']} / "
            f"{info['weights']} with other preprocessing or weights than this installation "
            "gives (fingerprint differs); re-extract and re-fit with this installation"
        )
    return spec, precision, draft, gpu_decode


def run_predict(
    model_path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 0,
    workers: int = -1,
    device: str = "auto",
    backend: str = "auto",
) -> list[Prediction]:
    """Classify every image in ``inputs`` (files or folders) with the model file."""
    import numpy as np

    from .embedding import (
        auto_batch_size,
        auto_workers,
        embed_images,
        inference_threads,
        make_runner,
        resolve_device,
    )
    from .exceptions import ImageDecodeError
    from .fit import load_model_file
    from .sources import decode_image

    model_path = Path(model_path)
    payload = load_model_file(model_path)
    spec, precision, draft, gpu_decode = _load_backbone(payload, model_path)
    draft_size = spec.resize_size if draft else None
    walked = _collect_with_failures(inputs)
    paths = list(walked)
    if not paths:
        raise PipelineError("IMAGE_OR_DIR: give at least one image or folder")
    torch_device = resolve_device(device)
    if gpu_decode and torch_device.type != "cuda":
        raise BackboneMismatchError(
            f"--model: {model_path} was trained on GPU-decoded embeddings (--gpu-decode); "
            f"predicting with it needs a CUDA device, not {torch_device}"
        )
    if torch_device.type == "cpu" and precision != "fp32":
        logger.warning(
            "the model was trained on %s embeddings; computing them on the CPU in %s "
            "(slow) to match",
            precision,
            precision,
        )
    workers = workers if workers >= 0 else auto_workers(torch_device)
    runner = make_runner(spec, torch_device, precision, backend, threads=inference_threads(workers))
    expected_dim = int(payload["backbone"]["feature_dim"])
    if runner.feature_dim != expected_dim:
        raise BackboneMismatchError(
            f"--model: {model_path} expects {expected_dim}-d embeddings, the backbone gives "
            f"{runner.feature_dim}"
        )

    def load(i: int) -> Any:
        if walked[paths[i]]:
            raise ImageDecodeError(walked[paths[i]])
        return decode_image(paths[i], draft_size)

    features, errors = embed_images(
        load,
        len(paths),
        spec,
        runner,
        paths=paths if gpu_decode else None,
        batch_size=batch_size or auto_batch_size(torch_device),
        workers=workers,
        on_error="collect",
    )
    ok = [i for i, e in enumerate(errors) if not e]
    results = {i: Prediction(paths[i], error=errors[i]) for i in range(len(paths)) if errors[i]}
    if ok:
        estimator = payload["estimator"]
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(features[ok])
            best = proba.argmax(axis=1)
            labels = np.asarray(estimator.classes_)[best]
            scores = proba[np.arange(len(ok)), best]
        else:
            labels, scores = estimator.predict(features[ok]), [None] * len(ok)
        for i, label, score in zip(ok, labels, scores, strict=True):
            results[i] = Prediction(paths[i], str(label), None if score is None else float(score))
    return [results[i] for i in range(len(paths))]


def _write_csv(predictions: Sequence[Prediction], out: str | None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "prediction", "probability", "error"])
    for p in predictions:
        prob = "" if p.probability is None else f"{p.probability:.6f}"
        writer.writerow([p.path, p.label, prob, p.error])
    # A file name that is not valid UTF-8 is written as its original bytes.
    data = buffer.getvalue().encode("utf-8", "surrogateescape")
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from .store import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_bytes(data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Classify images with a model file from `python -m pipeline.fit`. "
        "Model files are pickles: only load ones you trust.",
    )
    add = parser.add_argument
    add("--model", required=True, help="a models/<clf>.joblib file written by pipeline.fit")
    add("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders")
    add("--out", help="write CSV here instead of standard output")
    add("--batch-size", type=int, default=0, help="images per forward pass (0: automatic)")
    add(
        "--workers",
        type=int,
        default=-1,
        help="decoding threads on CPU, processes with a GPU (-1: automatic)",
    )
    add("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add("--backend", default="auto", help="auto | torch | onnxruntime")
    add_verbosity(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        _check_out(args.out)
        predictions = run_predict(
            args.model,
            args.inputs,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            backend=args.backend,
        )
        _write_csv(predictions, args.out)
    except (PipelineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = sum(1 for p in predictions if p.error)
    logger.info(
        "%d images, %d predicted, %d unreadable",
        len(predictions),
        len(predictions) - failed,
        failed,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
