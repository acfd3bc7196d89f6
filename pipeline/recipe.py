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
from collections.abc import Mapping
from typing import Any

from .engine.backbones import BackboneSpec, resolve_backbone

__all__ = ["DECODE_FIELDS", "RECIPE_ATTRS", "DecodeOptions", "EmbeddingRecipe"]


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How images are decoded, when that changes the pixels the network sees.

    ``jpeg_draft``: PIL's JPEG draft mode (DCT scaling) for large JPEGs; ``gpu_decode``: nvJPEG
    on the device. Both default to off, which is also what files written before they existed
    mean.
    """

    jpeg_draft: bool = False
    gpu_decode: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, bool(getattr(self, field.name)))


#: Decode options, in attrs order; a file without one was written before it existed (off).
DECODE_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeOptions))

#: The attributes a recipe writes (stores, model files' ``backbone`` dict, caches).
RECIPE_ATTRS = (
    *DECODE_FIELDS,
    "model",
    "weights",
    "preprocessing",
    "preprocessing_fields",
    "precision",
    "fingerprint",
)

#: The fields named in a mismatch message, in this order.
_DESCRIBED = ("model", "weights", "preprocessing", "precision", *DECODE_FIELDS)


@dataclasses.dataclass(frozen=True)
class EmbeddingRecipe:
    """Backbone + precision + decode options: what an embedding was made with."""

    spec: BackboneSpec
    precision: str
    decode: DecodeOptions = DecodeOptions()

    @property
    def draft_size(self) -> int | None:
        """The size JPEG draft decoding may shrink to (the resize), or None when off."""
        return self.spec.resize_size if self.decode.jpeg_draft else None

    def fingerprint(self) -> str:
        """Hash of everything that changes the numbers. Decode options enter only when on, and
        ``"backend": ""`` stays in the payload, so fingerprints written before match."""
        payload: dict[str, Any] = {
            "model": self.spec.model,
            "weights": self.spec.weights_id,
            "preprocessing": self.spec.preprocessing_fields,
            "precision": self.precision,
            "backend": "",
        }
        payload.update({k: True for k in DECODE_FIELDS if getattr(self.decode, k)})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def to_attrs(self) -> dict[str, Any]:
        """The attributes describing this recipe (:data:`RECIPE_ATTRS`)."""
        return {
            **dataclasses.asdict(self.decode),
            "model": self.spec.model,
            "weights": self.spec.weights or "none",
            "preprocessing": self.spec.preprocessing_repr,
            "preprocessing_fields": self.spec.preprocessing_fields,
            "precision": self.precision,
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> EmbeddingRecipe:
        """The recipe that ``attrs`` name, resolved with this installation's torchvision.

        Decode options absent from ``attrs`` (files written before they existed) are off.
        Compare ``fingerprint()`` with ``attrs["fingerprint"]`` to know whether this
        installation reproduces the embedding.
        """
        spec = resolve_backbone(str(attrs["model"]), attrs["weights"])
        decode = DecodeOptions(**{k: bool(attrs.get(k, False)) for k in DECODE_FIELDS})
        return cls(spec, str(attrs["precision"]), decode)

    def differences(self, attrs: Mapping[str, Any]) -> list[str]:
        """``"field found -> this"`` for each described field where ``attrs`` differ."""
        mine = self.to_attrs()
        defaults = dataclasses.asdict(DecodeOptions())
        return [
            f"{k} {attrs.get(k, defaults.get(k))!r} -> {mine[k]!r}"
            for k in _DESCRIBED
            if str(attrs.get(k, defaults.get(k))) != str(mine[k])
        ]

    def mismatch(self, attrs: Mapping[str, Any]) -> str | None:
        """None when ``attrs`` hold this recipe's fingerprint, else what differs (one line)."""
        if attrs.get("fingerprint") == self.fingerprint():
            return None
        return "; ".join(self.differences(attrs)) or "backbone weights or preprocessing details"
