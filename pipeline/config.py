"""Configuration: ``configs/default.toml`` plus CLI overrides, resolved in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from .engine.backbones import AUTO_WEIGHTS

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ExtractConfig",
    "FitConfig",
    "load_config_file",
    "load_section",
    "parse_set_overrides",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def load_config_file(path: str | Path | None = None) -> dict[str, Any]:
    """Read a TOML config file (the project's default when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"--config: no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config: {path} is not valid TOML: {exc}") from exc


def load_section(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """Return section ``name`` of a config file, falling back to the default file's values.

    Keys missing from a user's file take the project default, so a user file may hold only
    the values it changes.
    """
    defaults = load_config_file(None).get(name, {})
    if path is None:
        return _deep_merge({}, defaults)
    return _deep_merge(defaults, load_config_file(path).get(name, {}))


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_set_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``["svc.C=10", "nn.hidden_layer_sizes=[256]"]`` into a nested dict.

    Values are read as TOML literals (numbers, booleans, lists, quoted strings); anything
    that is not a TOML literal is taken as a bare string.
    """
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


def _from_mapping(cls: Any, section: str, values: Mapping[str, Any]) -> Any:
    """``cls(**values)``, with unknown keys named in a one-line error."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"[{section}]: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    return cls(**values)


def _auto_weights() -> dict[str, str]:
    return dict(AUTO_WEIGHTS)


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Everything stage one needs; fields map 1:1 to ``[extract]`` keys and CLI flags."""

    data: str = "sklearn:digits"
    model: str = "mobilenet_v2"
    weights: str | None = "auto"
    out: str = "artifacts/features.h5"
    batch_size: int = 0
    workers: int = -1
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    dask: str = ""
    checkpoint_seconds: float = 30.0
    jpeg_draft: bool = False
    gpu_decode: bool = False
    overwrite: bool = False
    progress: bool = True
    auto_weights: Mapping[str, str] = dataclasses.field(default_factory=_auto_weights)

    @classmethod
    def from_file(cls, path: str | Path | None = None, **overrides: Any) -> ExtractConfig:
        """Build from a config file's ``[extract]`` section, then apply non-None overrides."""
        values = load_section("extract", path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ExtractConfig:
        return _from_mapping(cls, "extract", values)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Everything stage two needs; fields map 1:1 to ``[fit]`` keys and CLI flags.

    ``nn``, ``svc``, ``xgboost`` and ``logreg`` hold each classifier's hyperparameters (the
    ``[fit.<clf>]`` tables; ``--set svc.C=10`` overrides one).
    """

    features: str = "artifacts/features.h5"
    clf: str = "all"
    cv: int = 0
    test_size: float = 0.2
    out: str = "artifacts"
    seed: int = 0
    dask: str = ""
    nn: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    svc: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    xgboost: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    logreg: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    svc_approx: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    svc_warn_rows: int = 20000

    @classmethod
    def from_file(
        cls,
        path: str | Path | None = None,
        sets: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> FitConfig:
        """Build from a config file's ``[fit]`` section, then ``--set`` values, then flags.

        Precedence: CLI flag (non-None ``overrides``), then ``sets`` (parsed ``--set``), then
        the config file, then the project default file.
        """
        values = _deep_merge(load_section("fit", path), sets or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FitConfig:
        return _from_mapping(cls, "fit", values)
