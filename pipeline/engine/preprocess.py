"""The weights' preprocessing, split where the bytes are smallest.

torchvision's classification presets (``weights.transforms()``, an ``ImageClassification``)
resize and centre-crop a PIL image, then convert it to float and normalise it. We run the
same steps in two places:

- :meth:`Preprocessing.crop` — resize and centre crop, on the decoding workers, returning
  the crop as ``uint8`` (H, W, 3): a quarter of the bytes of a float tensor to move between
  processes or to the GPU, and no torch needed;
- :meth:`Preprocessing.normalize` — ``x / 255``, minus ``mean``, over ``std``, on the inference
  device, inside the network (the exported ONNX graph holds it too).

Both take their parameters from the transform object itself (:meth:`from_transform`), never
from copied constants, and the composition equals ``weights.transforms()(image)`` bit for bit
(``tests/test_preprocess.py``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..exceptions import ImageDecodeError

__all__ = [
    "CROP_MODES",
    "MAX_ASPECT_RATIO",
    "VIEWS",
    "Preprocessing",
    "PREPROCESS_KEYS",
    "classification_preset",
    "make_view",
    "override_fields",
    "parse_preprocess",
    "transform_fields",
]

#: How an image is fitted to the square crop (named after timm's ``crop_mode``): ``center`` is
#: the weights' preset (resize the short side, centre crop); ``squash`` resizes the whole image
#: to the crop, ignoring its aspect ratio; ``border`` keeps the aspect ratio, resizing the long
#: side to the crop and padding the short one with black (zeros) on both sides.
CROP_MODES = ("center", "squash", "border")

#: Deterministic augmented views, made from the uint8 crop: ``flip`` is the horizontal mirror.
VIEWS = ("flip",)

# Resizing the short side to S makes the long side S x aspect ratio: a 1 x 8,000 strip would
# become 256 x 2,048,000 (1.5 GB of pixels). Images more elongated than this are refused (and
# recorded as failed) before anything that large is allocated.
MAX_ASPECT_RATIO = 64

# torchvision's InterpolationMode values -> PIL resampling filters (as torchvision maps them).
_PIL_FILTERS = {
    "nearest": 0,
    "nearest-exact": 0,
    "bilinear": 2,
    "bicubic": 3,
    "box": 4,
    "hamming": 5,
    "lanczos": 1,
}


def transform_fields(transform: Any) -> dict[str, Any]:
    """The fields of a torchvision classification preset (its ``repr`` omits ``antialias``)."""
    return {
        "class": type(transform).__name__,
        "crop_size": list(transform.crop_size),
        "resize_size": list(transform.resize_size) if transform.resize_size is not None else None,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": str(transform.interpolation.value),
        "antialias": transform.antialias,
    }


#: The values ``--preprocess`` may set (the rest keep the architecture's preset).
PREPROCESS_KEYS = ("resize", "crop", "mean", "std", "interpolation")


def _preprocess_error(message: str) -> ValueError:
    from ..exceptions import ConfigError

    return ConfigError(message, param="preprocess")


def _parse_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Checked ``--preprocess`` values -> canonical ones (ints, float lists, a filter name)."""
    unknown = sorted(set(values) - set(PREPROCESS_KEYS))
    if unknown:
        raise _preprocess_error(f"unknown key(s) {unknown}; valid: {', '.join(PREPROCESS_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        try:
            if key in ("resize", "crop"):
                out[key] = int(value)
                if out[key] < 1:
                    raise ValueError
            elif key in ("mean", "std"):
                parts = value if isinstance(value, (list, tuple)) else re.split(r"[,/]", str(value))
                out[key] = [float(v) for v in parts if str(v).strip()]
                if len(out[key]) != 3 or (key == "std" and min(out[key]) <= 0):
                    raise ValueError
            elif key == "interpolation":
                out[key] = str(value).lower()
                if out[key] not in _PIL_FILTERS:
                    raise _preprocess_error(
                        f"unknown interpolation {value!r}; choose one of {', '.join(_PIL_FILTERS)}"
                    )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ValueError) and getattr(exc, "param", None):
                raise
            raise _preprocess_error(
                f"bad value {key}={value!r} (resize/crop: a positive int; mean/std: "
                "three numbers such as 0.5,0.5,0.5)"
            ) from None
    return out


def parse_preprocess(value: Any) -> str | None:
    """``--preprocess`` as a canonical string: None for the default (None, ``""``,
    ``"default"``), a preset name as given (``"IMAGENET1K_V1"``), or the values sorted,
    ``"crop=224 interpolation=bicubic mean=0.5,0.5,0.5"`` (from such a string, with ``;`` or
    blanks between the pairs, a JSON object, or a mapping)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        values = dict(value)
    else:
        text = str(value).strip()
        if text.lower() in ("", "default", "auto"):
            return None
        if text.startswith("{"):
            try:
                values = json.loads(text)
            except ValueError as exc:
                raise _preprocess_error(f"is not a JSON object ({exc})") from None
        elif "=" in text:
            pairs = [p for p in re.split(r"[;\s]+", text) if p]
            if any("=" not in p for p in pairs):
                raise _preprocess_error(f"expected KEY=VALUE pairs, got {text!r}")
            values = dict(p.split("=", 1) for p in pairs)
        else:
            return text  # a preset name, checked against the architecture's weights
    if not values:
        return None
    parsed = _parse_values(values)

    def shown(v: Any) -> str:
        if isinstance(v, list):
            return ",".join(repr(float(x)) for x in v)
        return str(v)

    return " ".join(f"{k}={shown(parsed[k])}" for k in sorted(parsed))


def override_fields(fields: Mapping[str, Any], canonical: str) -> dict[str, Any]:
    """Preset ``fields`` (:func:`transform_fields`) with ``--preprocess`` values applied."""
    values = _parse_values(dict(p.split("=", 1) for p in canonical.split()))
    out = dict(fields)
    if "crop" in values:
        out["crop_size"] = [values["crop"]]
    if "resize" in values:
        out["resize_size"] = [values["resize"]]
    for key in ("mean", "std", "interpolation"):
        if key in values:
            out[key] = values[key]
    return out


def classification_preset(fields: Mapping[str, Any]) -> Any:
    """torchvision's ``ImageClassification`` preset with these fields (its ``repr`` is what a
    store records as ``preprocessing``)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    resize = fields.get("resize_size")
    return ImageClassification(
        crop_size=int(fields["crop_size"][0]),
        resize_size=int(resize[0]) if resize else None,
        mean=tuple(float(m) for m in fields["mean"]),
        std=tuple(float(s) for s in fields["std"]),
        interpolation=InterpolationMode(fields["interpolation"]),
        antialias=fields.get("antialias", True),
    )


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Resize (short side), centre crop and normalisation of a classification preset."""

    crop_size: int
    resize_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Preprocessing:
        """From :attr:`pipeline.backbones.BackboneSpec.preprocessing_fields`."""
        if fields.get("class") != "ImageClassification":
            raise ValueError(f"unsupported preprocessing {fields.get('class')!r}")
        resize = fields.get("resize_size")
        return cls(
            crop_size=int(fields["crop_size"][0]),
            resize_size=int(resize[0]) if resize else None,
            mean=tuple(float(m) for m in fields["mean"]),
            std=tuple(float(s) for s in fields["std"]),
            interpolation=str(fields["interpolation"]),
        )

    @classmethod
    def from_transform(cls, transform: Any) -> Preprocessing:
        """From a torchvision ``ImageClassification`` preset (``weights.transforms()``)."""
        return cls.from_fields(transform_fields(transform))

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing the short side, truncated as torchvision does."""
        if self.resize_size is None:
            return width, height
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def check_size(self, width: int, height: int) -> None:
        """Refuse an image without pixels, or more elongated than ``MAX_ASPECT_RATIO``: 1
        (resizing its short side would make it enormous), with :class:`ImageDecodeError`."""
        short, long = min(width, height), max(width, height)
        if short < 1:
            raise ImageDecodeError(f"image has no pixels ({width} x {height})")
        if self.resize_size is not None and long > MAX_ASPECT_RATIO * short:
            new_w, new_h = self.resized_size(width, height)
            raise ImageDecodeError(
                f"image too elongated: {width} x {height} would be resized to "
                f"{new_w} x {new_h}; the limit is an aspect ratio of {MAX_ASPECT_RATIO}:1"
            )

    def crop(self, image: Any) -> np.ndarray:
        """Fit an RGB PIL image to the crop as ``crop_mode`` says; (crop, crop, 3) uint8.

        ``center``: resize the short side and centre-crop, zero-padded when the image is
        smaller than the crop (as torchvision pads). Raises :class:`ImageDecodeError` for an
        image :meth:`check_size` refuses."""
        if self.crop_mode == "squash":
            return self._squash(image)
        if self.crop_mode == "border":
            return self._border(image)
        self.check_size(*image.size)
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, _PIL_FILTERS[self.interpolation])
        pixels = np.asarray(image)
        c = self.crop_size
        height, width = pixels.shape[:2]
        if height >= c and width >= c:
            top, left = int(round((height - c) / 2.0)), int(round((width - c) / 2.0))
            return pixels[top : top + c, left : left + c]
        # Pad to at least the crop (left/top get the smaller half), then crop the centre.
        pad_top, pad_left = max(0, (c - height) // 2), max(0, (c - width) // 2)
        padded = np.zeros((max(c, height), max(c, width), 3), dtype=np.uint8)
        padded[pad_top : pad_top + height, pad_left : pad_left + width] = pixels
        top = int(round((padded.shape[0] - c) / 2.0))
        left = int(round((padded.shape[1] - c) / 2.0))
        return padded[top : top + c, left : left + c]

    def _squash(self, image: Any) -> np.ndarray:
        """The whole image resized to (crop, crop), with the preset's interpolation."""
        width, height = image.size
        if min(width, height) < 1:
            raise ImageDecodeError(f"image has no pixels ({width} x {height})")
        c = self.crop_size
        if image.size != (c, c):
            image = image.resize((c, c), _PIL_FILTERS[self.interpolation])
        return np.asarray(image)

    def _border(self, image: Any) -> np.ndarray:
        """The long side resized to the crop (aspect ratio kept), the short side padded with
        zeros on both sides (the smaller half top / left), as padding to a square and
        resizing does, without allocating the padded full-size square."""
        width, height = image.size
        if min(width, height) < 1:
            raise ImageDecodeError(f"image has no pixels ({width} x {height})")
        c, long = self.crop_size, max(width, height)
        size = (max(1, round(c * width / long)), max(1, round(c * height / long)))
        if size != image.size:
            image = image.resize(size, _PIL_FILTERS[self.interpolation])
        pixels = np.asarray(image)
        out = np.zeros((c, c, 3), dtype=np.uint8)
        top, left = (c - size[1]) // 2, (c - size[0]) // 2
        out[top : top + size[1], left : left + size[0]] = pixels
        return out

    def crop_tensor(self, image: Any) -> Any:
        """The same resize and centre crop on a uint8 (3, H, W) torch tensor, on its device
        (for GPU-decoded images); returns (crop, crop, 3). torchvision's antialiased tensor
        resize is close to PIL's but not bit-identical, so this is a fingerprinted option.
        Only the ``center`` crop mode has a tensor path (``--gpu-decode`` refuses the others)."""
        if self.crop_mode != "center":
            raise ValueError(f"crop_mode={self.crop_mode!r} has no GPU-decode path")
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        self.check_size(int(image.shape[-1]), int(image.shape[-2]))
        if self.resize_size is not None:
            image = F.resize(
                image,
                [self.resize_size],
                interpolation=InterpolationMode(self.interpolation),
                antialias=True,
            )
        return F.center_crop(image, [self.crop_size]).permute(1, 2, 0)

    def normalize(self, images: Any) -> Any:
        """uint8 (N, 3, H, W) torch tensor -> normalised float32, as the preset computes it."""
        import torch

        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=images.device)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=images.device)
        return (images.float() / 255).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))

    def __call__(self, image: Any) -> Any:
        """The whole preset on one PIL image: float32 (3, H, W) torch tensor."""
        import torch

        pixels = torch.from_numpy(np.array(self.crop(image)))
        return self.normalize(pixels.permute(2, 0, 1)[None])[0]


def make_view(name: str, crops: Any) -> Any:
    """View ``name`` of a batch of uint8 (N, H, W, 3) crops (numpy array or torch tensor).

    ``flip`` mirrors each crop left-right. For ``center`` this equals cropping the mirrored
    image whenever the crop is centred exactly (the resized width minus the crop is even);
    otherwise the window sits one pixel over (``tests/test_views.py``).
    """
    if name != "flip":
        raise ValueError(f"unknown view {name!r}; available: {', '.join(VIEWS)}")
    if isinstance(crops, np.ndarray):
        return np.ascontiguousarray(crops[:, :, ::-1])
    return crops.flip(2)
