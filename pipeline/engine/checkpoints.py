"""Checkpoint files people bring (``--weights PATH``): read safely, unwrap, match to a network.

A file is read with ``torch.load(weights_only=True)`` (tensors and plain containers only; a
pickled model or optimizer object with code is refused, never unpickled) or with
``safetensors``. What it holds is either a state dict or a dict keeping one under a usual key
(``state_dict``, ``model``, ...: the transfer-learning tutorials' ``{'state_dict': ...,
'optimizer': ...}`` checkpoints); ``module.`` (DataParallel) and ``_orig_mod.``
(``torch.compile``) prefixes are stripped. Keys are matched against the architecture: a
classifier head of another shape (a fine-tuned network's own class count) is dropped, since
only the features are used; anything else missing or unexpected is a one-line error.

Official torchvision checkpoints are recognised by their sha256 (:func:`official_weights`), so
that the file gives the same recipe and fingerprint as naming the weights.

torch is imported only by the functions that load tensors: hashing a file (the warm path)
does not need it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..exceptions import BackboneError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "OFFICIAL_SHA256",
    "STATE_DICT_KEYS",
    "file_sha256",
    "is_weights_file",
    "load_state_dict",
    "match_state_dict",
    "official_weights",
]

logger = logging.getLogger(__name__)

#: File names ``--weights`` takes as a checkpoint file (anything with a path separator too).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".bin", ".safetensors")

#: Keys under which training scripts keep the state dict, in the order they are tried.
STATE_DICT_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "state_dict_ema",
    "model_ema",
    "net",
    "network",
    "module",
)

#: Full sha256 of official torchvision checkpoints, where known (verified byte for byte).
#: Every other official file is recognised by the hash prefix its URL embeds (below).
OFFICIAL_SHA256 = {
    "mobilenet_v2-b0353104.pth": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
}

# torchvision's checkpoint names end in "-<first hex digits of the file's sha256>.<ext>"
# (torch.hub's check_hash convention: torch.hub verifies downloads against that prefix).
_URL_HASH = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z.]+$")
_PREFIXES = ("module.", "_orig_mod.")
_hash_cache: dict[tuple[str, int, int], str] = {}


def is_weights_file(weights: Any) -> bool:
    """True when ``weights`` names a file rather than a weights name (``auto``, ``none``,
    ``IMAGENET1K_V1``): it has a path separator or a checkpoint suffix."""
    if weights is None or isinstance(weights, bool):
        return False
    if isinstance(weights, os.PathLike):
        return True
    text = str(weights)
    return os.sep in text or "/" in text or text.lower().endswith(CHECKPOINT_SUFFIXES)


def _checked_path(weights: Any) -> Path:
    path = Path(os.fspath(weights)).expanduser()
    if not path.exists():
        raise BackboneError(f"{path}: no such checkpoint file", param="weights")
    if not path.is_file():
        raise BackboneError(f"{path} is not a file", param="weights")
    return path.resolve()


def file_sha256(weights: Any) -> str:
    """The sha256 of a checkpoint file (remembered per path, size and mtime)."""
    path = _checked_path(weights)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        try:
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise BackboneError(
                f"{path}: cannot read ({exc.strerror or exc})", param="weights"
            ) from exc
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def _official_files(model: str | None) -> list[tuple[str, str, str]]:
    """(model, full weights name, file name) of torchvision's checkpoints; one model's or all."""
    import torchvision
    from torchvision.models import get_model_weights

    models = [model] if model else torchvision.models.list_models(module=torchvision.models)
    found = []
    for name in models:
        enum = get_model_weights(name)
        for member in enum:
            found.append((name, f"{enum.__name__}.{member.name}", member.url.rsplit("/", 1)[-1]))
    return found


def _is_file_of(sha256: str, file_name: str) -> bool:
    if file_name in OFFICIAL_SHA256:
        return OFFICIAL_SHA256[file_name] == sha256
    match = _URL_HASH.search(file_name)
    return bool(match) and sha256.startswith(match.group(1))


def official_weights(sha256: str, model: str | None = None) -> tuple[str, str, str] | None:
    """``(model, weights name, file name)`` of the official torchvision checkpoint whose
    contents hash to ``sha256`` (of ``model`` only, when given), or None.

    The full hash is compared where :data:`OFFICIAL_SHA256` knows it; otherwise the hash
    prefix in the file's URL (``mobilenet_v2-b0353104.pth``: the sha256 starts ``b0353104``),
    the same check torch.hub applies to the downloads torchvision makes."""
    for entry in _official_files(model):
        if _is_file_of(sha256, entry[2]):
            return entry
    return None


def _read(path: Path) -> Any:
    """The file's contents: safetensors, else torch.load(weights_only=True)."""
    if path.name.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise BackboneError(
                f"{path}: reading .safetensors needs the safetensors package "
                "(pip install 'pipeline[timm]')",
                param="weights",
            ) from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise BackboneError(
                f"{path} is not a safetensors checkpoint ({_first_line(exc)})", param="weights"
            ) from exc
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise BackboneError(
                f"{path} holds pickled Python objects beyond tensors (a whole model?), which "
                "are not loaded (it could run code); save model.state_dict() instead",
                param="weights",
            ) from exc
        raise BackboneError(
            f"{path} is not a checkpoint file ({_first_line(exc)})", param="weights"
        ) from exc
    except Exception as exc:  # zip, EOF, invalid load key...: not a torch file
        raise BackboneError(
            f"{path} is not a checkpoint file ({type(exc).__name__}: {_first_line(exc)})",
            param="weights",
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _is_state_dict(value: Any) -> bool:
    import torch

    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) for k in value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def load_state_dict(weights: Any, verbose: bool = True) -> dict[str, Any]:
    """Read a checkpoint file into a state dict (unwrapped, prefixes stripped); says in the
    log which key held it and what was stripped (at debug level unless ``verbose``)."""
    say = logger.info if verbose else logger.debug
    path = _checked_path(weights)
    content = _read(path)
    if _is_state_dict(content):
        state = dict(content)
    elif isinstance(content, Mapping):
        key = next((k for k in STATE_DICT_KEYS if _is_state_dict(content.get(k))), None)
        if key is None:
            keys = ", ".join(map(str, list(content)[:8])) or "nothing"
            raise BackboneError(
                f"{path} holds no state dict (top-level keys: {keys}; tried "
                f"{', '.join(STATE_DICT_KEYS)})",
                param="weights",
            )
        say("%s: using the state dict under %r", path.name, key)
        state = dict(content[key])
    else:
        raise BackboneError(
            f"{path} holds a {type(content).__name__}, not a state dict", param="weights"
        )
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            say("%s: stripped the %r prefix from every key", path.name, prefix)
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _is_head_key(key: str, head: str | tuple[str, ...] | None) -> bool:
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    return any(key == h or key.startswith(h + ".") for h in heads if h)


def _listed(keys: list[str], limit: int = 4) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def match_state_dict(
    state: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    head: str | tuple[str, ...] | None,
    name: str,
    model: str,
    verbose: bool = True,
) -> dict[str, Any]:
    """The entries of ``state`` to load into a network whose state dict is ``expected``.

    ``head``: the prefix(es) of the classifier head's keys in ``state`` (``fc``,
    ``classifier.1``); head entries the network lacks or has in another shape are dropped
    and said so. BatchNorm's ``num_batches_tracked`` may be absent (older files). Anything
    else missing, unexpected or of another shape raises :class:`BackboneError` naming the
    first few keys."""
    dropped = [
        k
        for k, v in state.items()
        if _is_head_key(k, head)
        and (k not in expected or tuple(expected[k].shape) != tuple(v.shape))
    ]
    if dropped:
        shapes = "; ".join(f"{k} {tuple(state[k].shape)}" for k in dropped[:2])
        (logger.warning if verbose else logger.debug)(
            "%s: classifier head dropped (%s; %s has %s): only the features are used",
            name,
            shapes,
            model,
            "no such head" if dropped[0] not in expected else tuple(expected[dropped[0]].shape),
        )
    kept = {k: v for k, v in state.items() if k not in dropped}
    missing = [
        k
        for k in expected
        if k not in kept
        and not k.endswith("num_batches_tracked")
        and not (dropped and _is_head_key(k, head))
    ]
    unexpected = [k for k in kept if k not in expected]
    reshaped = [
        k for k in kept if k in expected and tuple(expected[k].shape) != tuple(kept[k].shape)
    ]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"missing {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listed(unexpected)}")
        if reshaped:
            first = reshaped[0]
            parts.append(
                f"other shapes {_listed(reshaped)} ({first}: {tuple(kept[first].shape)} in "
                f"the file, {tuple(expected[first].shape)} in {model})"
            )
        raise BackboneError(
            f"{name} is not a checkpoint of {model}: {'; '.join(parts)}", param="weights"
        )
    return kept
