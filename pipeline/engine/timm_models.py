"""timm models as backbones: ``--model timm:NAME`` (the optional ``pipeline[timm]`` extra).

The embedding is timm's pooled pre-logits (the model made with ``num_classes=0``). The
preprocessing comes from timm's own resolver (:func:`timm.data.resolve_data_config` of the
weights' pretrained config, which :func:`timm.data.create_transform` turns into a Resize of the
short side to ``floor(size / crop_pct)``, a centre crop, and a normalisation): it is mapped
onto the same preset fields torchvision models have, so the fingerprint, the crop modes, the
views and the ONNX graph work unchanged.

Weights: timm's pretrained weights when they are already in a local cache (Hugging Face's or
torch.hub's; nothing is ever downloaded), a checkpoint file (``--weights PATH``), or ``none``
(random init, seeded).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import types
from typing import Any

from ..exceptions import BackboneError

__all__ = [
    "TIMM_PREFIX",
    "build_timm",
    "cached_pretrained_file",
    "import_timm",
    "is_timm",
    "resolve_timm",
    "timm_preprocessing_fields",
]

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
#: What ``--weights`` names timm's pretrained weights with (besides a pretrained tag).
PRETRAINED_NAMES = ("auto", "DEFAULT", "pretrained")
# (model, sha256) of checkpoint files whose keys were matched already.
_MATCHED: set[tuple[str, str]] = set()


def is_timm(model: str) -> bool:
    return str(model).startswith(TIMM_PREFIX)


def import_timm() -> Any:
    """The timm module, or a one-line :class:`BackboneError` saying how to install it."""
    try:
        import timm
    except ImportError:
        raise BackboneError(
            "timm models need timm, which is not installed: pip install 'pipeline[timm]'",
            param="model",
        ) from None
    return timm


def _pretrained_cfg(name: str) -> Any:
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(name)


def cached_pretrained_file(cfg: Any) -> str | None:
    """The local file holding the pretrained weights of ``cfg`` (a timm ``PretrainedCfg``):
    Hugging Face's cache first (where timm looks first), then torch.hub's; None when neither
    has it. Only looks: never downloads."""
    if getattr(cfg, "file", None) and os.path.isfile(cfg.file):
        return str(cfg.file)
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = str(cfg.hf_hub_id).partition("@")
        names = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
        for filename in filter(None, names):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if getattr(cfg, "url", None):
        import torch

        path = os.path.join(torch.hub.get_dir(), "checkpoints", str(cfg.url).rsplit("/", 1)[-1])
        if os.path.isfile(path):
            return path
    return None


def _check_name(name: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME.TAG`` -> (architecture, tag), with suggestions for unknown names."""
    timm = import_timm()
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise BackboneError(
            f"unknown timm model {arch!r}{hint} (any name from timm.list_models() works)",
            param="model",
        )
    if tag:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise BackboneError(
                f"{arch} has no pretrained tag {tag!r}; valid: {', '.join(tags) or 'none'}",
                param="model",
            )
    return arch, tag or None


def resolve_timm(model: str, weights: Any) -> dict[str, Any]:
    """The weights fields of a :class:`~pipeline.engine.backbones.BackboneSpec` for
    ``timm:NAME[.TAG]``: ``weights``, ``weights_sha256``, ``weights_file``.

    ``weights``: ``auto``/``DEFAULT``/``pretrained`` (the tag's or the architecture's default
    pretrained weights, which must be in a local cache), a pretrained tag, ``none``, or a
    checkpoint file (its keys are checked here)."""
    from .checkpoints import file_sha256, is_weights_file

    name = model[len(TIMM_PREFIX) :]
    arch, tag = _check_name(name)
    if weights is None or str(weights).lower() == "none":
        return {"weights": None}
    if is_weights_file(weights):
        sha = file_sha256(weights)
        path = str(os.path.realpath(os.path.expanduser(os.fspath(weights))))
        spec = types.SimpleNamespace(model=model, weights_file=path, weights_sha256=sha)
        _check_file(spec)
        return {"weights": path, "weights_sha256": sha, "weights_file": path}
    choice = str(weights)
    if choice not in PRETRAINED_NAMES:
        tag = _check_name(choice if choice.startswith(arch + ".") else f"{arch}.{choice}")[1]
    cfg = _pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    full = f"{arch}.{cfg.tag}" if getattr(cfg, "tag", None) else arch
    found = cached_pretrained_file(cfg)
    if found is None:
        raise BackboneError(
            f"timm's pretrained weights {full} are not in the local cache (Hugging Face's or "
            "torch.hub's) and are never downloaded here; fetch them once with "
            f"timm.create_model({full!r}, pretrained=True), or pass --weights PATH or none",
            param="weights",
        )
    return {"weights": full, "weights_sha256": file_sha256(found), "weights_file": found}


def timm_preprocessing_fields(spec: Any) -> dict[str, Any]:
    """timm's eval preprocessing for ``spec`` as preset fields (see the module docstring)."""
    import_timm()
    from timm.data import resolve_data_config

    pretrained = spec.weights and spec.weights != spec.weights_file
    name = spec.weights if pretrained else spec.model[len(TIMM_PREFIX) :]
    cfg = _pretrained_cfg(name)
    config = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg else {})
    _, height, width = config["input_size"]
    if height != width:
        raise BackboneError(
            f"{spec.model} takes {height} x {width} inputs; only square inputs are supported",
            param="model",
        )
    if config.get("crop_mode", "center") != "center":
        logger.warning(
            "timm's preset for %s fits images with crop_mode=%s; pass --crop-mode %s to match "
            "it (this run uses the crop mode it is given)",
            spec.model,
            config["crop_mode"],
            config["crop_mode"],
        )
    interpolation = str(config["interpolation"])
    if interpolation == "random":  # a training-time choice; eval uses bilinear
        interpolation = "bilinear"
    return {
        "class": "ImageClassification",
        "crop_size": [int(height)],
        "resize_size": [math.floor(height / float(config["crop_pct"]))],
        "mean": [float(m) for m in config["mean"]],
        "std": [float(s) for s in config["std"]],
        "interpolation": interpolation,
        "antialias": True,
    }


def _head_keys(cfg: Any) -> tuple[str, ...]:
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    classifier = values.get("classifier") or "head"
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _create(spec: Any, **kwargs: Any) -> Any:
    import timm

    return timm.create_model(spec.model[len(TIMM_PREFIX) :], num_classes=0, **kwargs)


def _matched(model: Any, spec: Any, verbose: bool = True) -> dict[str, Any]:
    from .checkpoints import load_state_dict, match_state_dict

    return match_state_dict(
        load_state_dict(spec.weights_file, verbose),
        model.state_dict(),
        head=_head_keys(getattr(model, "pretrained_cfg", None)),
        name=os.path.basename(spec.weights_file),
        model=spec.model,
        verbose=verbose,
    )


def _check_file(spec: Any) -> None:
    """Match the file's keys against the architecture (built on the meta device: no memory,
    no initialisation) so that a wrong file fails before any image is read."""
    import torch

    if (spec.model, spec.weights_sha256) in _MATCHED:
        return
    with torch.device("meta"):
        model = _create(spec, pretrained=False)
    _matched(model, spec)
    _MATCHED.add((spec.model, spec.weights_sha256))


def build_timm(spec: Any, seed: int) -> tuple[Any, int]:
    """(module, feature dim): the timm model cut at its pooled pre-logits, in eval mode;
    random init is seeded with ``seed``."""
    import torch

    import_timm()
    if spec.weights is None or spec.weights == spec.weights_file:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create(spec, pretrained=False)
        if spec.weights is not None:
            model.load_state_dict(_matched(model, spec, verbose=False), strict=False)
    else:  # timm's pretrained weights, from the cached file found at resolution
        model = _create(spec, pretrained=True, pretrained_cfg_overlay={"file": spec.weights_file})
    model.eval().requires_grad_(False)
    size = spec.input_size
    try:
        with torch.inference_mode():
            feature_dim = int(model(torch.zeros(1, 3, size, size)).flatten(1).shape[1])
    except Exception as exc:  # e.g. a ViT made for another input size
        raise BackboneError(
            f"{spec.model} cannot embed {size} x {size} inputs ({type(exc).__name__}: {exc})",
            param="preprocess",
        ) from exc
    return model, feature_dim
