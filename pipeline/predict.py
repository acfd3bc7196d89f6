"""Predictions on new images with a model file from ``python -m pipeline.fit``.

The images are embedded with exactly the backbone, weights, preprocessing and precision
recorded in the model file (checked by fingerprint), then classified. An unreadable image
gets a row with its error instead of stopping the run.

.. warning:: Model files are joblib pickles: loading one runs code from it. Only pass model
   files you made or trust. A model exported by ``pipeline export`` (``.onnx``) is data:
   ``--model x.onnx`` runs it with ONNX Runtime, no code from the file is executed.
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

import numpy as np

from ._cli import ArgumentParser, add_verbosity, examples, run_command, show_defaults, validated
from ._io import atomic_path
from ._runtime import BACKENDS, check_device, resolve_runtime
from .engine.runners import embed_images, make_runner
from .engine.sources import decode_image, walk_images
from .exceptions import BackboneMismatchError, ConfigError, ImageDecodeError, PipelineError
from .export.runtime import ExportedModel, is_exported_model
from .fit.model_file import load_model_file
from .fit.streaming import predict_rows
from .fit.views import predict_proba_views
from .recipe import EmbeddingRecipe

__all__ = [
    "Prediction",
    "build_parser",
    "classify_features",
    "collect_images",
    "main",
    "run_predict",
]

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
    :func:`pipeline.engine.sources.walk_images`); keep files as given. What a folder walk cannot
    use (not a regular file, unreadable folder) is listed too, and fails with its reason."""
    return list(_collect_with_failures(inputs))


def _collect_with_failures(inputs: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
    """Path -> "" for each image to decode, or -> the reason it cannot be used."""
    paths: dict[str, str] = {}
    for item in inputs:
        if os.path.isdir(item):
            found = walk_images(item)
            if not found.images and not found.failed:
                raise ConfigError(f"no images found in {item}", param="inputs")
            paths.update(dict.fromkeys(found.images, ""))
            paths.update(found.failed)
        else:
            try:
                os.lstat(item)
            except (FileNotFoundError, NotADirectoryError):
                raise ConfigError(f"{os.fspath(item)} does not exist", param="inputs") from None
            except OSError:
                pass  # unreadable, name too long...: the image's row says why
            paths.setdefault(os.fspath(item), "")
    return paths


def _check_out(out: str | None) -> None:
    """``out`` must be a file path in an existing, writable folder: checked before any
    embedding is done."""
    if out is None:
        return
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ConfigError(
            f"{out} is a directory; give a file path such as {out}/predictions.csv", param="out"
        )
    if not os.path.isdir(folder):
        raise ConfigError(f"folder {folder} does not exist", param="out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {folder} (permission denied)", param="out")


def _load_recipe(payload: dict[str, Any], model_path: Path) -> EmbeddingRecipe:
    info = payload["backbone"]
    try:
        recipe = EmbeddingRecipe.from_attrs(info)
    except PipelineError as exc:
        raise BackboneMismatchError(
            f"{model_path} needs a backbone this torchvision cannot provide ({exc})",
            param="model_path",
        ) from exc
    if recipe.mismatch(info) is not None:
        raise BackboneMismatchError(
            f"{model_path} was trained on embeddings of {info['model']} / "
            f"{info['weights']} with other preprocessing or weights than this installation "
            "gives (fingerprint differs); re-extract and re-fit with this installation",
            param="model_path",
        )
    return recipe


def _runner(recipe: EmbeddingRecipe, runtime: Any) -> Any:
    """The runner that gives the model file's embeddings on ``runtime``'s device."""
    precision = recipe.precision
    if runtime.device.type == "cpu" and precision not in ("fp32", "int8"):
        logger.warning(
            "the model was trained on %s embeddings; computing them on the CPU in %s "
            "(slow) to match",
            precision,
            precision,
        )
    return make_runner(
        recipe.spec,
        runtime.device,
        precision,
        runtime.backend,
        threads=runtime.threads,
        int8_graph=recipe.int8_graph,
    )


# long: the model file's steps in order (an exported .onnx branches off at the top).
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
    walked = _collect_with_failures(inputs)  # a path that does not exist: error, before the model
    paths = list(walked)
    if not paths:
        raise ConfigError("give at least one image or folder", param="inputs")
    model_path = Path(model_path)
    if is_exported_model(model_path):
        return _predict_exported(model_path, paths, walked, batch_size)
    payload = load_model_file(model_path)
    recipe = _load_recipe(payload, model_path)
    precision, draft_size = recipe.precision, recipe.draft_size
    gpu_decode = recipe.decode.gpu_decode
    if precision == "int8":  # a quantised graph on ONNX Runtime: the CPU, whatever is here
        device = "cpu"
    runtime = resolve_runtime(device, precision, batch_size, workers, backend)
    torch_device = runtime.device
    if gpu_decode and torch_device.type != "cuda":
        raise BackboneMismatchError(
            f"{model_path} was trained on GPU-decoded embeddings (--gpu-decode); "
            f"predicting with it needs a CUDA device, not {torch_device}",
            param="model_path",
        )
    runner = _runner(recipe, runtime)
    expected_dim = int(payload["backbone"]["feature_dim"])
    if runner.feature_dim != expected_dim:
        raise BackboneMismatchError(
            f"{model_path} expects {expected_dim}-d embeddings, the backbone gives "
            f"{runner.feature_dim}",
            param="model_path",
        )

    def load(i: int) -> Any:
        if walked[paths[i]]:
            raise ImageDecodeError(walked[paths[i]])
        return decode_image(paths[i], draft_size)

    views = tuple(payload.get("views", ()))  # averaged at test time by fit (its TTA)
    features, errors = embed_images(
        load,
        len(paths),
        recipe.preprocessing,
        runner,
        paths=paths if gpu_decode else None,
        batch_size=runtime.batch_size,
        workers=runtime.workers,
        on_error="collect",
        views=views,
    )
    return _classify(payload["estimator"], paths, features if views else features[None], errors)


def classify_features(estimator: Any, features: np.ndarray) -> tuple[np.ndarray, Any]:
    """``(labels, probabilities or None)`` of ``features`` (views, N, D), as predict makes
    them (see :func:`_classify`); ``pipeline export`` checks its graph against this."""
    if hasattr(estimator, "predict_proba") and len(features) > 1:
        proba = predict_proba_views(estimator, features)
        return np.asarray(estimator.classes_)[proba.argmax(axis=1)], proba
    return predict_rows(estimator, features[0])


def _predict_exported(
    model_path: Path, paths: list[str], walked: dict[str, str], batch_size: int
) -> list[Prediction]:
    """Classify with an exported ``.onnx`` model (ONNX Runtime; loading it runs no code):
    the same decoding as with a model file, the resize and everything after in the graph."""
    if not model_path.is_file():
        raise ConfigError(f"{model_path}: no such model file", param="model_path")
    try:
        model = ExportedModel(model_path)
    except Exception as exc:  # not ONNX, or not one written by `pipeline export`
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise ConfigError(
            f"{model_path}: not a model written by `pipeline export` ({detail})",
            param="model_path",
        ) from exc
    errors = dict(walked)
    pixels: dict[int, np.ndarray] = {}
    for i, path in enumerate(paths):
        if errors[path]:
            continue
        try:
            pixels[i] = np.asarray(decode_image(path))
        except ImageDecodeError as exc:
            errors[path] = str(exc)
    rows = sorted(pixels)
    proba, labels = model.run([pixels[i] for i in rows], batch_size=batch_size or 32)
    found = {i: (labels[j], float(proba[j].max())) for j, i in enumerate(rows)}
    return [
        Prediction(p, *found[i]) if i in found else Prediction(p, error=errors[p])
        for i, p in enumerate(paths)
    ]


def _classify(
    estimator: Any, paths: list[str], features: np.ndarray, errors: list[str]
) -> list[Prediction]:
    """One :class:`Prediction` per path: the class and its probability, or the error.

    ``features`` is (views, N, D). One view: the labels and probabilities fit reports
    (:func:`pipeline.fit.streaming.predict_rows`: ``predict``'s own label, which for
    ``logreg`` can differ from the probabilities' arg-max at a near-tie). Several: the
    arg-max of the probabilities averaged over the views, as fit's test-time augmentation
    does (:func:`pipeline.fit.views.predict_proba_views`)."""
    ok = [i for i, e in enumerate(errors) if not e]
    results = {i: Prediction(paths[i], error=errors[i]) for i in range(len(paths)) if errors[i]}
    if ok:
        labels, proba = classify_features(estimator, features[:, ok])
        if proba is None:
            scores = [None] * len(ok)
        else:
            column = {label: j for j, label in enumerate(estimator.classes_)}
            scores = proba[np.arange(len(ok)), [column[label] for label in labels]]
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
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)


def build_parser(prog: str = "python -m pipeline.predict") -> argparse.ArgumentParser:
    fit = prog.replace("predict", "fit")
    parser = ArgumentParser(
        prog=prog,
        description=f"Classify images with a model file from `{fit}`. "
        "joblib model files are pickles: only load ones you trust; exported .onnx models "
        "are data.",
        epilog=examples(
            prog,
            [
                ("--model artifacts/models/logreg.joblib new/", "a CSV of predictions on stdout"),
                ("--model runs/a/models/svc.joblib a.jpg b.jpg --out p.csv", "into a file"),
            ],
        ),
    )
    add = parser.add_argument
    add(
        "--model",
        required=True,
        help=f"a models/<clf>.joblib file written by `{fit}` (a pickle: loading runs "
        f"code), or an .onnx file written by `{prog.replace('predict', 'export')}` (data: safe "
        "to receive)",
    )
    add("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders")
    add("--out", help="write CSV here instead of standard output")
    add("--batch-size", type=int, default=0, help="images per forward pass (0: automatic)")
    add(
        "--workers",
        type=int,
        default=-1,
        help="decoding threads on CPU, processes with a GPU (-1: automatic)",
    )
    add(
        "--device",
        default="auto",
        type=validated(check_device, "device"),
        help="auto | cpu | cuda | cuda:N",
    )
    add("--backend", default="auto", choices=BACKENDS, help="auto: ONNX Runtime on CPU, else torch")
    add_verbosity(parser)
    own = ("batch_size", "workers", "device", "backend")  # predict's defaults: no config file
    show_defaults(parser, {a.dest: a.default for a in parser._actions if a.dest in own})
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m pipeline.predict") -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad usage or input)."""
    flags = {"model_path": "--model", "inputs": "IMAGE_OR_DIR"}
    return run_command(build_parser(prog), argv, _predict, flags=flags)


def _predict(args: argparse.Namespace) -> int:
    """The command: predict the images, write the CSV."""
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
    failed = sum(1 for p in predictions if p.error)
    logger.info(
        "%d images, %d predicted, %d unreadable",
        len(predictions),
        len(predictions) - failed,
        failed,
    )
    if predictions and failed == len(predictions):
        # The CSV, with each input's error, is written all the same (as extract writes /failed).
        where = args.out if args.out else "the error column of the CSV"
        raise ConfigError(
            f"nothing could be predicted: every input ({failed}) is unreadable; the reasons are "
            f"in {where}",
            param="inputs",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
