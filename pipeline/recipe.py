"""What identifies an embedding: the recipe every store, model file and cache carries.

Like torchvision's ``Weights`` carry their transforms and meta, an :class:`EmbeddingRecipe`
carries everything that changes the numbers of an embedding: the backbone (model, weights and
the weights' preprocessing), the precision, and the decode options. It owns

- the fingerprint (a hash of all of it; two equal fingerprints mean interchangeable rows),
- its round trip through HDF5 / model-file attributes (:meth:`~EmbeddingRecipe.to_attrs`,
  :meth:`~EmbeddingRecipe.from_attrs`), and
- the readable difference to what a file holds (:meth:`~EmbeddingRecipe.differences`).

What is *not* part of it: the device, the batch size and the backend (torch or ONNX Runtime),
which are checked to give the same numbers. Adding a decode or preprocessing option means a
field here (with its default for files written before it existed) plus its CLI flag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from .engine.backbones import BackboneSpec, resolve_backbone
from .engine.preprocess import CROP_MODES, VIEWS, Preprocessing
from .exceptions import ConfigError

__all__ = [
    "BACKBONE_EXTRA_ATTRS",
    "DECODE_FIELDS",
    "RECIPE_ATTRS",
    "DecodeOptions",
    "EmbeddingRecipe",
    "parse_views",
]


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How images become the network's input, when that changes the numbers.

    ``jpeg_draft``: PIL's JPEG draft mode (DCT scaling) for large JPEGs; ``gpu_decode``: nvJPEG
    on the device; ``crop_mode``: how the image is fitted to the crop (``center`` = the
    weights' preset, ``squash``, ``border``; see :mod:`pipeline.engine.preprocess`);
    ``views``: the augmented views embedded besides the plain one (sorted, e.g. ``("flip",)``).
    Every default (off, ``center``, no views) is also what files written before the option
    existed mean, and a default leaves the fingerprint as it was.
    """

    jpeg_draft: bool = False
    gpu_decode: bool = False
    crop_mode: str = "center"
    views: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "jpeg_draft", bool(self.jpeg_draft))
        object.__setattr__(self, "gpu_decode", bool(self.gpu_decode))
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(
                f"unknown crop mode {self.crop_mode!r}; choose one of {', '.join(CROP_MODES)}",
                param="crop_mode",
            )
        object.__setattr__(self, "views", parse_views(self.views))

    def non_default(self) -> dict[str, Any]:
        """The options that differ from their default, as attrs values (the fingerprint)."""
        found, default = self.as_attrs(), DecodeOptions().as_attrs()
        return {k: v for k, v in found.items() if v != default[k]}

    def as_attrs(self) -> dict[str, Any]:
        """Attribute values: bools, the crop mode, the views as a list."""
        return {**dataclasses.asdict(self), "views": list(self.views)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> DecodeOptions:
        """The options ``attrs`` name; absent ones (or None: a model file's copy of a store
        attribute the store lacked) take their default."""
        default = DecodeOptions()
        return cls(**{k: _or_default(attrs.get(k), getattr(default, k)) for k in DECODE_FIELDS})


def _backbone_extras(spec: BackboneSpec) -> dict[str, str]:
    """The checkpoint file, its sha256 and the ``--preprocess`` override ("" when none)."""
    return {
        "weights_file": spec.weights_file or "",
        "weights_sha256": spec.weights_sha256 or "",
        "preprocess": spec.preprocess or "",
    }


def _or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


def parse_views(views: Any) -> tuple[str, ...]:
    """``"flip"``, ``"flip,..."``, a JSON list or a sequence -> a sorted tuple of known views."""
    if isinstance(views, str):
        text = views.strip()
        views = json.loads(text) if text.startswith("[") else text.split(",")
    names = sorted({str(v).strip() for v in views if str(v).strip()} - {"none"})
    unknown = [v for v in names if v not in VIEWS]
    if unknown:
        raise ConfigError(
            f"unknown view(s) {unknown}; available: {', '.join(VIEWS)}", param="views"
        )
    return tuple(names)


#: Decode options, in attrs order; a file without one was written before it existed (off).
DECODE_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeOptions))

#: A checkpoint file's path and sha256 and the ``--preprocess`` override (``""`` when unused):
#: absent from files written before they existed, which then mean "unused".
BACKBONE_EXTRA_ATTRS = ("weights_file", "weights_sha256", "preprocess")

#: The attributes a recipe writes (stores, model files' ``backbone`` dict, caches).
RECIPE_ATTRS = (
    *DECODE_FIELDS,
    "model",
    "weights",
    "preprocessing",
    "preprocessing_fields",
    "precision",
    "int8_graph",
    "fingerprint",
    *BACKBONE_EXTRA_ATTRS,
)

#: The fields named in a mismatch message, in this order.
_DESCRIBED = ("model", "weights", "preprocessing", "precision", "int8_graph", *DECODE_FIELDS)


@dataclasses.dataclass(frozen=True)
class EmbeddingRecipe:
    """Backbone + precision + decode options: what an embedding was made with.

    ``int8_graph``: for precision ``int8``, the sha256 of the quantised graph (calibrated on
    the first run's images, so it is part of what the rows are); empty otherwise."""

    spec: BackboneSpec
    precision: str
    decode: DecodeOptions = DecodeOptions()
    int8_graph: str = ""

    @property
    def preprocessing(self) -> Preprocessing:
        """The weights' preprocessing with this recipe's crop mode."""
        return dataclasses.replace(self.spec.preprocessing, crop_mode=self.decode.crop_mode)

    @property
    def views(self) -> tuple[str, ...]:
        """The augmented views embedded besides the plain one."""
        return self.decode.views

    @property
    def draft_size(self) -> int | None:
        """The size JPEG draft decoding may shrink to (the resize), or None when off."""
        return self.spec.resize_size if self.decode.jpeg_draft else None

    def fingerprint(self) -> str:
        """Hash of everything that changes the numbers. Decode options enter only when they
        differ from their default, and ``"backend": ""`` stays in the payload, so fingerprints
        written before match."""
        payload: dict[str, Any] = {
            "model": self.spec.model,
            "weights": self.spec.weights_id,
            "preprocessing": self.spec.preprocessing_fields,
            "precision": self.precision,
            "backend": "",
        }
        payload.update(self.decode.non_default())
        if self.int8_graph:
            payload["int8_graph"] = self.int8_graph
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def to_attrs(self) -> dict[str, Any]:
        """The attributes describing this recipe (:data:`RECIPE_ATTRS`)."""
        return {
            **self.decode.as_attrs(),
            "model": self.spec.model,
            "weights": self.spec.weights or "none",
            "preprocessing": self.spec.preprocessing_repr,
            "preprocessing_fields": self.spec.preprocessing_fields,
            "precision": self.precision,
            "int8_graph": self.int8_graph,
            "fingerprint": self.fingerprint(),
            **_backbone_extras(self.spec),
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> EmbeddingRecipe:
        """The recipe that ``attrs`` name, resolved with this installation's torchvision.

        Decode options absent from ``attrs`` (files written before they existed) are off.
        Compare ``fingerprint()`` with ``attrs["fingerprint"]`` to know whether this
        installation reproduces the embedding.
        """
        weights, file = attrs["weights"], attrs.get("weights_file")
        if file and os.path.isfile(file):  # official weights given as a file: that file again
            weights = file
        spec = resolve_backbone(
            str(attrs["model"]), weights, preprocess=attrs.get("preprocess") or None
        )
        int8_graph = str(attrs.get("int8_graph") or "")
        return cls(spec, str(attrs["precision"]), DecodeOptions.from_attrs(attrs), int8_graph)

    def differences(self, attrs: Mapping[str, Any]) -> list[str]:
        """``"field found -> this"`` for each described field where ``attrs`` differ."""
        mine = self.to_attrs()
        defaults = DecodeOptions().as_attrs()

        def found(k: str) -> Any:
            value = _or_default(attrs.get(k), defaults.get(k, ""))
            return list(parse_views(value)) if k == "views" else value

        return [
            f"{k} {found(k)!r} -> {mine[k]!r}" for k in _DESCRIBED if str(found(k)) != str(mine[k])
        ]

    def mismatch(self, attrs: Mapping[str, Any]) -> str | None:
        """None when ``attrs`` hold this recipe's fingerprint, else what differs (one line)."""
        if attrs.get("fingerprint") == self.fingerprint():
            return None
        return "; ".join(self.differences(attrs)) or "backbone weights or preprocessing details"
