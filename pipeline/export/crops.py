"""The recipe's resize and crop as ONNX ops: uint8 pixels ``[N, H, W, 3]`` of any size in,
the uint8 crops ``[N, c, c, 3]`` the backbone takes out, exactly as
:meth:`pipeline.engine.preprocess.Preprocessing.crop` makes them with PIL.

Sizes are computed from the input's shape with the same integer arithmetic and rounding
(``Round`` is half-to-even, like Python's ``round``), and the resize is opset 18's
``Resize(antialias=1, exclude_outside=1)`` on uint8, whose fixed-point filter follows PIL's
``Image.resize``: the crops agree with PIL's to within 1 grey level in a small share of
pixels (measured in ``benchmarks/export_agreement.py``; see docs/export.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.preprocess import Preprocessing
from ..exceptions import ConfigError
from .graph import GraphBuilder

__all__ = ["RESIZE_MODES", "add_crops", "add_view", "preprocessing_record"]

#: The weights' interpolation -> ONNX Resize attributes (PIL's filters: bicubic's a = -0.5).
RESIZE_MODES: dict[str, dict[str, Any]] = {
    "bilinear": {"mode": "linear"},
    "bicubic": {"mode": "cubic", "cubic_coeff_a": -0.5},
}


def _resize(g: GraphBuilder, image: str, height: str, width: str, interpolation: str) -> str:
    """``image`` resized to (height, width) (1-element int64 tensors), as PIL resizes."""
    if interpolation not in RESIZE_MODES:
        raise ConfigError(
            f"the weights' interpolation {interpolation!r} has no ONNX Resize equivalent "
            f"(supported: {', '.join(RESIZE_MODES)})",
            param="model_path",
        )
    # Pillow resizes one axis, rounds to uint8, then the other; the order changes the result
    # (bicubic overshoots clip differently). One Resize over both axes would not follow it.
    # Measured on random sizes, Pillow 13 goes vertical first when the vertical reduction is
    # the larger one and above 1 (57 of 60 random shapes; see docs/export.md): both orders
    # are computed and the right one kept, so the graph has no control flow.
    attrs = {
        "antialias": 1,
        "exclude_outside": 1,
        "coordinate_transformation_mode": "half_pixel",
        **RESIZE_MODES[interpolation],
    }
    across = g.op("Resize", image, "", "", width, axes=[2], **attrs)
    across_then_down = g.op("Resize", across, "", "", height, axes=[1], **attrs)
    down = g.op("Resize", image, "", "", height, axes=[1], **attrs)
    down_then_across = g.op("Resize", down, "", "", width, axes=[2], **attrs)
    shape = g.op("Shape", image)
    old_h = g.op("Slice", shape, g.const([1], "i", np.int64), g.const([2], "i", np.int64))
    old_w = g.op("Slice", shape, g.const([2], "i", np.int64), g.const([3], "i", np.int64))
    # old_h / height > old_w / width and old_h > height, in integers
    steeper = g.op("Greater", g.op("Mul", old_h, width), g.op("Mul", old_w, height))
    vertical_first = g.op("And", steeper, g.op("Greater", old_h, height))
    return g.op("Where", vertical_first, down_then_across, across_then_down)


def _pad(g: GraphBuilder, image: str, top: str, left: str, bottom: str, right: str) -> str:
    zero = g.const([0], "zero", np.int64)
    pads = g.op("Concat", zero, top, left, zero, zero, bottom, right, zero, axis=0)
    return g.op("Pad", image, pads)


def _half_to_even(g: GraphBuilder, numerator: str, denominator: str) -> str:
    """``round(numerator / denominator)`` as Python computes it (float64, half to even)."""
    num = g.op("Cast", numerator, to=11)
    den = g.op("Cast", denominator, to=11)
    return g.op("Cast", g.op("Round", g.op("Div", num, den)), to=7)


def add_crops(g: GraphBuilder, image: str, pre: Preprocessing) -> str:
    """Nodes turning ``image`` (uint8 NHWC) into the recipe's crops; returns their name."""
    shape = g.op("Shape", image)
    height = g.op("Slice", shape, g.const([1], "i", np.int64), g.const([2], "i", np.int64))
    width = g.op("Slice", shape, g.const([2], "i", np.int64), g.const([3], "i", np.int64))
    c = g.const([pre.crop_size], "crop", np.int64)
    if pre.crop_mode == "squash":
        return _resize(g, image, c, c, pre.interpolation)
    if pre.crop_mode == "border":
        return _border(g, image, height, width, c, pre)
    return _center(g, image, height, width, c, pre)


def _border(
    g: GraphBuilder, image: str, height: str, width: str, c: str, pre: Preprocessing
) -> str:
    """Long side to the crop (aspect kept), short side padded with zeros on both sides."""
    one, two = g.const([1], "one", np.int64), g.const([2], "two", np.int64)
    long = g.op("Max", height, width)
    new_h = g.op("Max", one, _half_to_even(g, g.op("Mul", c, height), long))
    new_w = g.op("Max", one, _half_to_even(g, g.op("Mul", c, width), long))
    resized = _resize(g, image, new_h, new_w, pre.interpolation)
    top = g.op("Div", g.op("Sub", c, new_h), two)
    left = g.op("Div", g.op("Sub", c, new_w), two)
    bottom = g.op("Sub", g.op("Sub", c, new_h), top)
    right = g.op("Sub", g.op("Sub", c, new_w), left)
    return _pad(g, resized, top, left, bottom, right)


def _center(
    g: GraphBuilder, image: str, height: str, width: str, c: str, pre: Preprocessing
) -> str:
    """Short side to ``resize_size``, zero-padded to at least the crop, centre crop."""
    zero, two = g.const([0], "zero", np.int64), g.const([2], "two", np.int64)
    if pre.resize_size is not None:
        s = g.const([pre.resize_size], "resize", np.int64)
        short, long = g.op("Min", height, width), g.op("Max", height, width)
        new_long = g.op("Div", g.op("Mul", s, long), short)  # int(S * long / short)
        portrait = g.op("LessOrEqual", width, height)
        new_w = g.op("Where", portrait, s, new_long)
        new_h = g.op("Where", portrait, new_long, s)
        image = _resize(g, image, new_h, new_w, pre.interpolation)
        height, width = new_h, new_w
    padded_h, padded_w = g.op("Max", c, height), g.op("Max", c, width)
    top_pad = g.op("Max", zero, g.op("Div", g.op("Sub", c, height), two))
    left_pad = g.op("Max", zero, g.op("Div", g.op("Sub", c, width), two))
    bottom_pad = g.op("Sub", g.op("Sub", padded_h, height), top_pad)
    right_pad = g.op("Sub", g.op("Sub", padded_w, width), left_pad)
    image = _pad(g, image, top_pad, left_pad, bottom_pad, right_pad)
    top = _half_to_even(g, g.op("Sub", padded_h, c), two)
    left = _half_to_even(g, g.op("Sub", padded_w, c), two)
    starts = g.op("Concat", top, left, axis=0)
    ends = g.op("Add", starts, g.op("Concat", c, c, axis=0))
    return g.op("Slice", image, starts, ends, g.const([1, 2], "axes", np.int64))


def add_view(g: GraphBuilder, crops: str, view: str) -> str:
    """View ``view`` of the crops, as :func:`pipeline.engine.preprocess.make_view` makes it."""
    if view != "flip":
        raise ConfigError(f"view {view!r} has no ONNX equivalent", param="model_path")
    return g.op(
        "Slice",
        crops,
        g.const([-1], "start", np.int64),
        g.const([np.iinfo(np.int64).min], "end", np.int64),
        g.const([2], "axis", np.int64),
        g.const([-1], "step", np.int64),
    )


def preprocessing_record(pre: Preprocessing, views: tuple[str, ...]) -> dict[str, Any]:
    """The preprocessing as data (the model's ``preprocessing`` metadata)."""
    return {
        "input": "uint8 RGB pixels [N, H, W, 3], decoded and upright (EXIF applied)",
        "crop_mode": pre.crop_mode,
        "resize_size": pre.resize_size,
        "crop_size": pre.crop_size,
        "interpolation": pre.interpolation,
        "antialias": True,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "views": list(views),
        "combine_views": "mean of the probabilities" if views else None,
    }
