"""Backbones: any torchvision classification model as an embedding network.

Models and weights are resolved through torchvision's own registry (``list_models``,
``get_model_weights``, ``get_model``), and preprocessing always comes from the weights
(``weights.transforms()``). The embedding is the input of the model's final ``nn.Linear``
(the pooled, pre-logits features): that layer is replaced by ``nn.Identity`` and kept as
:attr:`Backbone.head`, so ``head(embedding)`` reproduces the model's logits.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from ..exceptions import BackboneError
from .preprocess import Preprocessing, transform_fields

__all__ = [
    "AUTO_WEIGHTS",
    "Backbone",
    "BackboneSpec",
    "build_backbone",
    "list_backbones",
    "resolve_backbone",
    "transform_fields",
]

RANDOM_INIT_SEED = 0

#: The weights ``"auto"`` picks when no config says otherwise. torchvision's DEFAULT for
#: mobilenet_v2 is IMAGENET1K_V2, which offline machines often lack; others use DEFAULT.
AUTO_WEIGHTS: dict[str, str] = {"mobilenet_v2": "IMAGENET1K_V1"}


def list_backbones() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A resolved (model, weights) pair: everything that defines the embedding but the tensors.

    ``weights`` is torchvision's full enum name (``"MobileNet_V2_Weights.IMAGENET1K_V1"``) or
    None for random initialisation (seeded, so two runs build the same network).
    """

    model: str
    weights: str | None

    @cached_property
    def weights_enum(self) -> Any:
        from torchvision.models import get_weight

        return None if self.weights is None else get_weight(self.weights)

    def transforms(self) -> Any:
        """The preprocessing of the weights (for random init: of the model's DEFAULT weights)."""
        from torchvision.models import get_model_weights

        weights = self.weights_enum or get_model_weights(self.model).DEFAULT
        return weights.transforms()

    @cached_property
    def preprocessing_fields(self) -> dict[str, Any]:
        """The preset transform's fields (its ``repr`` omits ``antialias``)."""
        return transform_fields(self.transforms())

    @cached_property
    def preprocessing_repr(self) -> str:
        return repr(self.transforms()).replace("\n", " ")

    @cached_property
    def preprocessing(self) -> Preprocessing:
        """The preset split into a uint8 crop (decoding workers) and a normalisation (device)."""
        return Preprocessing.from_fields(self.preprocessing_fields)

    @cached_property
    def weights_url(self) -> str | None:
        return None if self.weights is None else str(self.weights_enum.url)

    def to_record(self) -> dict[str, Any]:
        """Everything torchvision contributes to this spec, as JSON-able data."""
        return {
            "model": self.model,
            "weights": self.weights,
            "weights_url": self.weights_url,
            "preprocessing_fields": self.preprocessing_fields,
            "preprocessing_repr": self.preprocessing_repr,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BackboneSpec:
        """The spec :meth:`to_record` described, usable without importing torch."""
        spec = cls(record["model"], record["weights"])
        for name in ("weights_url", "preprocessing_fields", "preprocessing_repr"):
            spec.__dict__[name] = record[name]  # fills the cached properties
        return spec

    @property
    def input_size(self) -> int:
        return int(self.preprocessing_fields["crop_size"][0])

    @property
    def resize_size(self) -> int:
        size = self.preprocessing_fields["resize_size"]
        return int(size[0]) if size else self.input_size

    @property
    def weights_id(self) -> str:
        """What identifies the weights' tensors: the checkpoint URL (it embeds a hash)."""
        if self.weights is None:
            return f"random-init:seed={RANDOM_INIT_SEED}"
        return f"{self.weights}@{self.weights_url}"


def resolve_backbone(
    model: str, weights: str | None = "auto", auto_weights: Mapping[str, str] | None = None
) -> BackboneSpec:
    """Resolve names into a :class:`BackboneSpec`, with errors that list the valid choices.

    ``weights`` is ``"auto"`` (``auto_weights[model]``, by default from :data:`AUTO_WEIGHTS`,
    else ``"DEFAULT"``),
    ``"DEFAULT"``, ``"none"``/None (random init), or an enum name with or without its class
    (``"IMAGENET1K_V1"``, ``"MobileNet_V2_Weights.IMAGENET1K_V1"``).
    """
    from torchvision.models import get_model_weights

    names = list_backbones()
    if model not in names:
        raise BackboneError(
            f"unknown model {model!r}{_suggest(model, names)} "
            "(any name from torchvision.models.list_models() works)",
            param="model",
        )
    if weights is None or str(weights).lower() == "none":
        return BackboneSpec(model, None)
    enum = get_model_weights(model)
    choice = str(weights)
    if choice == "auto":
        table = AUTO_WEIGHTS if auto_weights is None else auto_weights
        choice = table.get(model, "DEFAULT")
    if choice == "DEFAULT":
        return BackboneSpec(model, str(enum.DEFAULT))
    member = choice.split(".", 1)[1] if choice.startswith(enum.__name__ + ".") else choice
    if member not in enum.__members__:
        # enum.__members__ holds the alias DEFAULT too: name it once
        members = [name for name in enum.__members__ if name != "DEFAULT"]
        valid = ", ".join(["auto", "DEFAULT", "none", *members])
        raise BackboneError(
            f"{weights!r} is not a weight of {model}; valid: {valid}", param="weights"
        )
    return BackboneSpec(model, f"{enum.__name__}.{member}")


@dataclasses.dataclass
class Backbone:
    """A built embedding network (in eval mode, no gradients) and what was cut off it."""

    spec: BackboneSpec
    module: Any  # torch.nn.Module: images (N, 3, H, W) -> embeddings (N, feature_dim)
    head: Any  # the removed final nn.Linear, or None when the model had none
    feature_dim: int


def _last_linear(model: Any) -> tuple[Any, str, Any] | None:
    import torch.nn as nn

    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = name
    if found is None:
        return None
    parent_name, _, attr = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def build_backbone(spec: BackboneSpec) -> Backbone:
    """Instantiate ``spec`` with torchvision's weight loading and cut it at the embedding."""
    import torch
    import torch.nn as nn
    from torchvision.models import get_model

    try:
        if spec.weights is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = get_model(spec.model, weights=None)
        else:
            model = get_model(spec.model, weights=spec.weights_enum)
    except Exception as exc:  # download or checkpoint failures surface in many types
        if spec.weights is None:
            raise
        file_name = spec.weights_enum.url.rsplit("/", 1)[-1]
        raise BackboneError(
            f"could not load {spec.weights} ({type(exc).__name__}: {exc}); offline, "
            f"put {file_name} in $TORCH_HOME/hub/checkpoints (see README, 'Offline weights')",
            param="weights",
        ) from exc

    found = _last_linear(model)
    if found is not None:
        parent, attr, head = found
        setattr(parent, attr, nn.Identity())
        feature_dim = head.in_features
        module = model
    elif hasattr(model, "features"):  # e.g. squeezenet, whose classifier is a convolution
        head = None
        module = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        with torch.inference_mode():
            probe = torch.zeros(1, 3, spec.input_size, spec.input_size)
            feature_dim = int(module.eval()(probe).shape[1])
    else:  # pragma: no cover - every torchvision classifier has one or the other
        raise BackboneError(f"cannot find the embedding layer of {spec.model}", param="model")
    # A freshly built wrapper starts in train mode; anything that restores its mode later
    # (ONNX export does) would flip BatchNorm to training statistics. Fix it for good here.
    module.eval().requires_grad_(False)
    if head is not None:
        head.eval().requires_grad_(False)
    return Backbone(spec=spec, module=module, head=head, feature_dim=int(feature_dim))
