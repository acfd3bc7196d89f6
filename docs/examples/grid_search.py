"""Grid search over an SVC on CNN embeddings of image files, with an embedding cache.

Paths and labels go straight into a scikit-learn ``Pipeline`` whose first step is
:class:`pipeline.ImageEmbedder`. Its ``cache`` makes every image go through the CNN once,
however many folds and candidates the search fits. The best model is saved with joblib,
loaded again in a fresh Python process, and must give the same predictions there.

Usage::

    python docs/examples/grid_search.py IMAGE_ROOT WORKDIR [--model mobilenet_v2] [--weights auto]

``IMAGE_ROOT`` is an ImageFolder tree (``IMAGE_ROOT/<class>/<image>``); ``WORKDIR`` receives
``embeddings.h5`` (the cache) and ``model.joblib``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from pipeline import ImageEmbedder
from pipeline.engine.sources import FolderSource

logger = logging.getLogger("grid_search")

# Run in a fresh interpreter: nothing but the joblib file carries the model over.
_PREDICT_IN_FRESH_PROCESS = """
import json, sys, joblib
model = joblib.load(sys.argv[1])
paths = json.loads(open(sys.argv[2]).read())
print(json.dumps([str(p) for p in model.predict(paths)]))
"""


def main(
    image_root: str | Path,
    workdir: str | Path,
    *,
    model: str = "mobilenet_v2",
    weights: str | None = "auto",
    cv: int = 3,
    backend: str = "auto",
) -> dict[str, Any]:
    """Run the example; returns a summary (best ``C``, scores, where the model went)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source = FolderSource(image_root)
    paths = [r.path for r in source.records if r.label >= 0]
    labels = [source.class_names[r.label] for r in source.records if r.label >= 0]
    train_paths, test_paths, train_labels, test_labels = train_test_split(
        paths, labels, test_size=0.25, stratify=labels, random_state=0
    )

    embedder = ImageEmbedder(
        model=model, weights=weights, backend=backend, cache=str(workdir / "embeddings.h5")
    )
    pipe = Pipeline([("embed", embedder), ("scale", StandardScaler()), ("svc", SVC())])
    search = GridSearchCV(pipe, {"svc__C": [0.1, 1.0, 10.0]}, cv=cv, n_jobs=1)
    search.fit(train_paths, train_labels)
    best = search.best_estimator_
    predictions = [str(p) for p in best.predict(test_paths)]
    accuracy = sum(p == t for p, t in zip(predictions, test_labels, strict=True)) / len(test_labels)
    logger.info(
        "best %s (cv accuracy %.3f); test accuracy %.3f",
        search.best_params_,
        search.best_score_,
        accuracy,
    )

    model_path = workdir / "model.joblib"
    joblib.dump(best, model_path)
    paths_file = workdir / "test_paths.json"
    paths_file.write_text(json.dumps(test_paths))
    done = subprocess.run(
        [sys.executable, "-c", _PREDICT_IN_FRESH_PROCESS, str(model_path), str(paths_file)],
        check=True,
        capture_output=True,
        text=True,
    )
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    if reloaded != predictions:
        raise RuntimeError(f"{model_path}: predictions differ after loading in a new process")
    logger.info("saved %s; a fresh process loads it and predicts the same labels", model_path)
    return {
        "best_params": search.best_params_,
        "cv_accuracy": float(search.best_score_),
        "test_accuracy": accuracy,
        "model_path": str(model_path),
        "cache_path": str(workdir / "embeddings.h5"),
        "n_images": len(paths),
        "predictions": predictions,
    }


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image_root", help="ImageFolder tree: IMAGE_ROOT/<class>/<image>")
    parser.add_argument("workdir", help="where embeddings.h5 and model.joblib go")
    parser.add_argument("--model", default="mobilenet_v2", help="torchvision model name")
    parser.add_argument("--weights", default="auto", help="auto | DEFAULT | none | a weights name")
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds")
    parser.add_argument("--backend", default="auto", help="auto | torch | onnxruntime")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args()
    summary = main(
        args.image_root,
        args.workdir,
        model=args.model,
        weights=args.weights,
        cv=args.cv,
        backend=args.backend,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "predictions"}, indent=2))
