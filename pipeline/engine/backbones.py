"""Backbones: any torchvision classification model (or timm model) as an embedding network.

Models and weights are resolved through torchvision's own registry (``list_models``,
``get_model_weights``, ``get_model``), and preprocessing comes from the weights
(``weights.transforms()``). The embedding is the input of the model's final ``nn.Linear``
(the pooled, pre-logits features): that layer is replaced by ``nn.Identity`` and kept as
:attr:`Backbone.head`, so ``head(embedding)`` reproduces the model's logits.

A backbone is named three ways: a torchvision weights name (``IMAGENET1K_V1``), a checkpoint
file (``--weights PATH``, :mod:`pipeline.engine.checkpoints`; preprocessing of the
architecture's default weights), or a timm model (``timm:NAME``,
:mod:`pipeline.engine.timm_models`). ``--preprocess`` replaces the preprocessing by another
preset's or by given values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any

from ..exceptions import BackboneError
from .checkpoints import file_sha256, is_weights_file, official_weights
from .preprocess import (
    Preprocessing,
    classification_preset,
    override_fields,
    parse_preprocess,
    transform_fields,
)
from .timm_models import build_timm, is_timm, resolve_timm, timm_preprocessing_fields

__all__ = [
    "AUTO_WEIGHTS",
    "Backbone",
    "BackboneSpec",
    "build_backbone",
    "list_backbones",
    "resolve_backbone",
    "transform_fields",
]

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
# (model, sha256) of checkpoint files whose keys were matched already (ImageEmbedder resolves
# its parameters on every call).
_MATCHED: set[tuple[str, str]] = set()

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

    ``weights`` is torchvision's full enum name (``"MobileNet_V2_Weights.IMAGENET1K_V1"``),
    None for random initialisation (seeded, so two runs build the same network), the path of
    a checkpoint file (``weights_sha256`` its hash), or for ``timm:`` models a pretrained
    name (``"resnet18.a1_in1k"``, ``weights_file`` the cached file and ``weights_sha256`` its
    hash). ``weights_file`` is also set when a file was recognised as official torchvision
    weights: it is where the tensors are read from and takes no part in comparisons.
    ``preprocess``: :func:`~pipeline.engine.preprocess.parse_preprocess`'s canonical
    override (a full weights name, or values), None for the weights' own preprocessing.
    """

    model: str
    weights: str | None
    weights_sha256: str | None = None
    preprocess: str | None = None
    weights_file: str | None = dataclasses.field(default=None, compare=False)

    @property
    def is_timm(self) -> bool:
        return is_timm(self.model)

    @property
    def is_file(self) -> bool:
        """Weights from a checkpoint file that is not an official torchvision one."""
        return self.weights is not None and self.weights == self.weights_file

    @cached_property
    def weights_enum(self) -> Any:
        from torchvision.models import get_weight

        if self.weights is None or self.is_timm or self.weights_sha256 is not None:
            return None
        return get_weight(self.weights)

    def transforms(self) -> Any:
        """The preprocessing of the weights (for random init or a file: of the model's DEFAULT
        weights; for timm: timm's; ``preprocess`` applied), as torchvision's preset."""
        if self.is_timm or self.preprocess:
            return classification_preset(self.preprocessing_fields)
        from torchvision.models import get_model_weights

        weights = self.weights_enum or get_model_weights(self.model).DEFAULT
        return weights.transforms()

    @cached_property
    def preprocessing_fields(self) -> dict[str, Any]:
        """The preset transform's fields (its ``repr`` omits ``antialias``)."""
        if self.is_timm:
            fields = timm_preprocessing_fields(self)
        elif self.preprocess and "=" not in self.preprocess:  # another weights' preset
            from torchvision.models import get_weight

            return transform_fields(get_weight(self.preprocess).transforms())
        else:
            fields = transform_fields(dataclasses.replace(self, preprocess=None).transforms())
        return override_fields(fields, self.preprocess) if self.preprocess else fields

    @cached_property
    def preprocessing_repr(self) -> str:
        return repr(self.transforms()).replace("\n", " ")

    @cached_property
    def preprocessing(self) -> Preprocessing:
        """The preset split into a uint8 crop (decoding workers) and a normalisation (device)."""
        return Preprocessing.from_fields(self.preprocessing_fields)

    @cached_property
    def weights_url(self) -> str | None:
        return None if self.weights_enum is None else str(self.weights_enum.url)

    def to_record(self) -> dict[str, Any]:
        """Everything torchvision contributes to this spec, as JSON-able data."""
        return {
            "model": self.model,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "preprocess": self.preprocess,
            "weights_file": self.weights_file,
            "weights_url": self.weights_url,
            "preprocessing_fields": self.preprocessing_fields,
            "preprocessing_repr": self.preprocessing_repr,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BackboneSpec:
        """The spec :meth:`to_record` described, usable without importing torch."""
        spec = cls(
            record["model"],
            record["weights"],
            record.get("weights_sha256"),
            record.get("preprocess"),
            record.get("weights_file"),
        )
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
        """What identifies the weights' tensors: the checkpoint URL (it embeds a hash), or the
        sha256 of a checkpoint file (with timm's pretrained name for timm's weights)."""
        if self.weights is None:
            return f"random-init:seed={RANDOM_INIT_SEED}"
        if self.weights_sha256 is not None:
            name = "" if self.is_file else f"{self.weights}@"
            return f"{name}sha256:{self.weights_sha256}"
        return f"{self.weights}@{self.weights_url}"


def resolve_backbone(
    model: str,
    weights: str | None = "auto",
    auto_weights: Mapping[str, str] | None = None,
    preprocess: Any = None,
) -> BackboneSpec:
    """Resolve names into a :class:`BackboneSpec`, with errors that list the valid choices.

    ``weights`` is ``"auto"`` (``auto_weights[model]``, by default from :data:`AUTO_WEIGHTS`,
    else ``"DEFAULT"``),
    ``"DEFAULT"``, ``"none"``/None (random init), an enum name with or without its class
    (``"IMAGENET1K_V1"``, ``"MobileNet_V2_Weights.IMAGENET1K_V1"``), or a checkpoint file
    (``.pth``, ``.pt``, ``.pth.tar``, ``.safetensors``; its keys are checked here). ``model``
    ``"timm:NAME"`` is a timm model (:func:`~pipeline.engine.timm_models.resolve_timm`).
    ``preprocess``: None (the weights' preprocessing), a weights name whose preset to use, or
    values (``"resize=256 crop=224 mean=0.5,0.5,0.5 std=0.5,0.5,0.5 interpolation=bicubic"``,
    or a mapping).
    """
    canonical = parse_preprocess(preprocess)
    if is_timm(model):
        spec = BackboneSpec(model, **resolve_timm(model, weights))
    else:
        spec = _resolve_torchvision(model, weights, auto_weights)
    if canonical is None:
        return spec
    if "=" not in canonical:
        canonical = _preset_name(spec, canonical)
    spec = dataclasses.replace(spec, preprocess=canonical)
    _ = spec.preprocessing_fields  # a bad combination fails here, not mid-run
    return spec


def _preset_name(spec: BackboneSpec, name: str) -> str:
    """The full weights name of ``--preprocess NAME`` (a weights name of the architecture)."""
    if spec.is_timm:
        raise BackboneError(
            f"timm models take values (resize=..., crop=..., mean=..., std=..., "
            f"interpolation=...), not a preset name such as {name!r}",
            param="preprocess",
        )
    from torchvision.models import get_model_weights

    enum = get_model_weights(spec.model)
    member = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    if member == "DEFAULT":
        return str(enum.DEFAULT)
    if member not in enum.__members__:
        valid = ", ".join(["DEFAULT", *enum.__members__])
        raise BackboneError(
            f"{name!r} is not a preset of {spec.model}; valid: {valid}, or values such as "
            "'resize=256 crop=224'",
            param="preprocess",
        )
    return f"{enum.__name__}.{member}"


def _resolve_file(model: str, weights: Any) -> BackboneSpec:
    """A checkpoint file: official torchvision weights when its hash says so, else its own."""
    sha = file_sha256(weights)
    path = os.path.realpath(os.path.expanduser(os.fspath(weights)))
    found = official_weights(sha, model)
    if found is not None:
        logger.info("%s is torchvision's official %s (sha256 %s...)", path, found[1], sha[:12])
        return BackboneSpec(model, found[1], weights_file=path)
    other = official_weights(sha)
    if other is not None:
        raise BackboneError(
            f"{path} is torchvision's official {other[1]} checkpoint (of {other[0]}), not one "
            f"of {model}",
            param="weights",
        )
    spec = BackboneSpec(model, path, weights_sha256=sha, weights_file=path)
    if (model, sha) not in _MATCHED:
        import torch

        with torch.device("meta"):  # shapes only: no memory, no initialisation
            network = _torchvision_model(spec)
        _matched(network, spec)
        _MATCHED.add((model, sha))
    return spec


def _resolve_torchvision(
    model: str, weights: Any, auto_weights: Mapping[str, str] | None
) -> BackboneSpec:
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
    if is_weights_file(weights):
        return _resolve_file(model, weights)
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


def _head_name(model: Any) -> str | None:
    """The classifier head's name: the last ``nn.Linear``, else a ``classifier`` module."""
    import torch.nn as nn

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if names:
        return names[-1]
    return "classifier" if hasattr(model, "classifier") else None


def _torchvision_model(spec: BackboneSpec) -> Any:
    from torchvision.models import get_model

    return get_model(spec.model, weights=None)


def _matched(network: Any, spec: BackboneSpec, verbose: bool = True) -> dict[str, Any]:
    """The file's entries to load into ``network`` (raises for a file of another network)."""
    from .checkpoints import load_state_dict, match_state_dict

    return match_state_dict(
        load_state_dict(spec.weights_file, verbose),
        network.state_dict(),
        head=_head_name(network),
        name=os.path.basename(str(spec.weights_file)),
        model=spec.model,
        verbose=verbose,
    )


@contextlib.contextmanager
def _hub_dir_with(file: str, file_name: str) -> Iterator[None]:
    """torch.hub's folder pointed at a temporary one where ``file_name`` is a link to
    ``file``: torchvision's own weight loading then reads the user's official file, with
    whatever it does besides loading tensors (googlenet's ``transform_input``, densenet's
    key renaming)."""
    import torch.hub

    with tempfile.TemporaryDirectory(prefix="pipeline-hub-") as tmp:
        os.makedirs(os.path.join(tmp, "checkpoints"))
        os.symlink(file, os.path.join(tmp, "checkpoints", file_name))
        previous = torch.hub._hub_dir  # None: derived from $TORCH_HOME, as it was
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub._hub_dir = previous


def _build_network(spec: BackboneSpec) -> tuple[Any, bool]:
    """The torchvision network of ``spec`` with its weights (seeded random init for none),
    and whether its classifier head holds the weights' head (False: a file's head of another
    shape was dropped)."""
    import torch
    from torchvision.models import get_model

    if spec.weights is None or spec.is_file:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = _torchvision_model(spec)
        if spec.is_file:
            if file_sha256(spec.weights_file) != spec.weights_sha256:
                raise BackboneError(
                    f"{spec.weights_file} changed since it was resolved", param="weights"
                )
            kept = _matched(model, spec, verbose=False)  # said when it was resolved
            model.load_state_dict(kept, strict=False)
            head = _head_name(model)
            return model, not head or any(k.startswith(head + ".") for k in kept)
        return model, True
    if spec.weights_file is not None:  # an official file given as --weights PATH
        with _hub_dir_with(spec.weights_file, spec.weights_url.rsplit("/", 1)[-1]):
            return get_model(spec.model, weights=spec.weights_enum), True
    return get_model(spec.model, weights=spec.weights_enum), True


def build_backbone(spec: BackboneSpec) -> Backbone:
    """Instantiate ``spec`` with torchvision's weight loading and cut it at the embedding."""
    import torch
    import torch.nn as nn

    if spec.is_timm:
        module, feature_dim = build_timm(spec, RANDOM_INIT_SEED)
        return Backbone(spec=spec, module=module, head=None, feature_dim=feature_dim)
    try:
        model, head_loaded = _build_network(spec)
    except Exception as exc:  # download or checkpoint failures surface in many types
        if spec.weights is None or spec.is_file or isinstance(exc, BackboneError):
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
        if not head_loaded:
            head = None  # the file's head did not fit: no logits to reproduce
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
