"""The check every export passes before it is written: the graph against ``predict``.

A sample of images (the feature store's own files when they are readable, else generated
ones) goes through ``predict``'s code path (the recorded backbone, views and classifier:
:func:`pipeline.predict.classify_features`) and through the graph in ONNX Runtime, from the
same decoded pixels. The label agreement and the largest probability difference are
reported; a difference over the tolerance fails the export.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..recipe import EmbeddingRecipe
from .runtime import ExportedModel

__all__ = [
    "MIN_LABEL_AGREEMENT",
    "PROBABILITY_TOLERANCE",
    "Verification",
    "reference_predictions",
    "sample_images",
    "verify",
]

logger = logging.getLogger(__name__)

#: Largest |probability difference| to ``predict`` the graph may have when it is fed PIL's
#: crops (``--tolerance``): the converters and the float32 arithmetic, the resize left out.
PROBABILITY_TOLERANCE = 1e-3
#: Least label agreement with ``predict`` of the whole graph (its resize included), whose
#: uint8 rounding differs from PIL's by a grey level in a few pixels: a near-tie, or a tree
#: split or nearest neighbour next to the edge, may go the other way; a broken resize or
#: crop would disagree on most images.
MIN_LABEL_AGREEMENT = 0.9


@dataclasses.dataclass
class Verification:
    """What the check found (stored as the model's ``verification`` metadata)."""

    n_images: int
    images: str  # "store" or "generated"
    label_agreement: float
    max_abs_probability_difference: float
    max_abs_probability_difference_from_pil_crops: float
    tolerance: float
    min_label_agreement: float = MIN_LABEL_AGREEMENT

    @property
    def passed(self) -> bool:
        return (
            self.max_abs_probability_difference_from_pil_crops <= self.tolerance
            and self.label_agreement >= self.min_label_agreement
        )

    def line(self) -> str:
        return (
            f"{self.n_images} {self.images} images: labels agree on "
            f"{100 * self.label_agreement:.2f} % (at least {100 * self.min_label_agreement:g} "
            f"%), max |Δp| {self.max_abs_probability_difference:.2e}; from PIL's crops max "
            f"|Δp| {self.max_abs_probability_difference_from_pil_crops:.2e} (tolerance "
            f"{self.tolerance:g})"
        )


def _store_path(payload: Mapping[str, Any], model_path: Path) -> Path | None:
    store = payload.get("store")
    if not store:
        return None
    for candidate in (
        Path(store),
        model_path.parent.parent / store,
        model_path.parent.parent.parent / store,
    ):
        if candidate.is_file():
            return candidate
    return None


def _store_images(payload: Mapping[str, Any], model_path: Path, n: int) -> list[Any]:
    """Up to ``n`` readable images of the store, evenly spread over its rows."""
    from ..engine.sources import DigitsSource, Record, decode_image
    from ..exceptions import ImageDecodeError, PipelineError
    from ..store import read_row_index

    store = _store_path(payload, model_path)
    if store is None:
        return []
    try:
        paths = [str(p) for p in read_row_index(store).paths]
    except (PipelineError, OSError):
        return []
    order = np.linspace(0, len(paths) - 1, num=min(len(paths), 4 * n)).round().astype(int)
    digits = None
    found = []
    for i in dict.fromkeys(order.tolist()):
        path = paths[i]
        try:
            if path.startswith("sklearn:digits/"):
                digits = digits or DigitsSource()
                found.append(digits.load(Record(path, -1, "")))
            else:
                found.append(decode_image(path))
        except (ImageDecodeError, OSError):
            continue
        if len(found) == n:
            break
    return found


def generated_images(n: int, seed: int = 0) -> list[Any]:
    """``n`` smooth random colour images of assorted sizes and aspect ratios."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (40, 30), (300, 200), (180, 240), (97, 131), (224, 224), (64, 48)]
    images = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        coarse = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
        noise = rng.integers(-20, 21, smooth.shape)
        images.append(Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)))
    return images


def sample_images(payload: Mapping[str, Any], model_path: Path, n: int) -> tuple[list[Any], str]:
    """``(images, "store" | "generated")``: the store's own files when readable."""
    found = _store_images(payload, model_path, n)
    if found:
        return found, "store"
    return generated_images(n), "generated"


def reference_predictions(
    payload: Mapping[str, Any], recipe: EmbeddingRecipe, images: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, probabilities)`` of PIL ``images`` as ``pipeline predict`` computes them on
    this CPU (its backbone runner, crops, views and :func:`classify_features`)."""
    from .._runtime import cpu_cores
    from ..engine.runners import embed_images, make_runner
    from ..predict import classify_features

    runner = make_runner(recipe.spec, "cpu", recipe.precision, "auto", threads=cpu_cores())
    views = tuple(payload.get("views") or ())
    features, _ = embed_images(
        lambda i: images[i],
        len(images),
        recipe.preprocessing,
        runner,
        batch_size=32,
        workers=0,
        views=views,
    )
    labels, proba = classify_features(payload["estimator"], features if views else features[None])
    return np.asarray([str(v) for v in labels]), np.asarray(proba, dtype=np.float64)


def verify(
    model: bytes,
    from_crops: bytes,
    payload: Mapping[str, Any],
    recipe: EmbeddingRecipe,
    images: Sequence[Any],
    source: str,
    tolerance: float = PROBABILITY_TOLERANCE,
) -> Verification:
    """Run ``predict``'s code, the graph (``model``) and the graph without its resize
    (``from_crops``, fed PIL's crops) on ``images``; compare."""
    labels, proba = reference_predictions(payload, recipe, images)
    got_proba, got_labels = ExportedModel(model).run([np.asarray(im) for im in images])
    crops = [recipe.preprocessing.crop(im) for im in images]
    cropped = ExportedModel(from_crops)
    crop_proba = np.concatenate(
        [
            cropped.session.run(["probabilities"], {"crops": np.stack(crops[i : i + 32])})[0]
            for i in range(0, len(crops), 32)
        ]
    )
    return Verification(
        n_images=len(images),
        images=source,
        label_agreement=float(np.mean(got_labels == labels)),
        max_abs_probability_difference=float(np.abs(got_proba - proba).max()),
        max_abs_probability_difference_from_pil_crops=float(np.abs(crop_proba - proba).max()),
        tolerance=tolerance,
    )
