"""Configuration: the shipped defaults plus a user's file and CLI overrides, resolved in one place.

The defaults ship inside the package (``pipeline/default.toml``, read with
:mod:`importlib.resources`, so a wheel has them; ``configs/default.toml`` in the repository is a
link to it). They are the *only* defaults: :class:`ExtractConfig` and :class:`FitConfig` take
their field defaults from that file, so ``run_fit(FitConfig())`` trains what the CLI trains.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ExtractConfig",
    "FitConfig",
    "default_values",
    "load_config_file",
    "load_section",
    "parse_set_overrides",
]

#: The shipped defaults (package data).
DEFAULT_CONFIG_PATH = Path(str(importlib.resources.files(__package__).joinpath("default.toml")))


def _read_defaults() -> dict[str, Any]:
    return tomllib.loads(
        importlib.resources.files(__package__).joinpath("default.toml").read_text("utf-8")
    )


_DEFAULTS = _read_defaults()


def default_values(section: str) -> dict[str, Any]:
    """A copy of section ``section`` (``"extract"``, ``"fit"``, ``"fit.nn"`` ...) of the defaults."""
    node: Any = _DEFAULTS
    for part in section.split("."):
        node = node[part]
    return copy.deepcopy(node)


def load_config_file(path: str | Path | None = None) -> dict[str, Any]:
    """Read a TOML config file (the shipped defaults when ``path`` is None)."""
    if path is None:
        return copy.deepcopy(_DEFAULTS)
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}", param="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", param="config") from exc


def load_section(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """Return section ``name`` of a config file, falling back to the default file's values.

    Keys missing from a user's file take the project default, so a user file may hold only
    the values it changes.
    """
    defaults = default_values(name)
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
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", param="set")
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


def _default(section: str, key: str) -> Any:
    """A dataclass field whose default is ``[section] key`` of the shipped defaults."""
    value = default_values(section)[key]
    if isinstance(value, Mapping | list):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value))
    return dataclasses.field(default=value)


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Everything stage one needs; fields map 1:1 to ``[extract]`` keys and CLI flags."""

    data: str = _default("extract", "data")
    model: str = _default("extract", "model")
    weights: str | None = _default("extract", "weights")
    preprocess: str | Mapping[str, Any] | None = _default("extract", "preprocess")
    out: str = _default("extract", "out")
    batch_size: int = _default("extract", "batch_size")
    workers: int = _default("extract", "workers")
    device: str = _default("extract", "device")
    precision: str = _default("extract", "precision")
    backend: str = _default("extract", "backend")
    dask: str = _default("extract", "dask")
    checkpoint_seconds: float = _default("extract", "checkpoint_seconds")
    jpeg_draft: bool = _default("extract", "jpeg_draft")
    gpu_decode: bool = _default("extract", "gpu_decode")
    crop_mode: str = _default("extract", "crop_mode")
    views: str | Sequence[str] = _default("extract", "views")
    overwrite: bool = _default("extract", "overwrite")
    prune: bool = _default("extract", "prune")
    compact: bool = _default("extract", "compact")
    progress: bool = _default("extract", "progress")
    auto_weights: Mapping[str, str] = _default("extract", "auto_weights")

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

    ``nn``, ``svc``, ``xgboost``, ``logreg``, ``knn``, ``svc_approx`` and ``ensemble`` hold each
    classifier's hyperparameters (the ``[fit.<clf>]`` tables; ``--set svc.C=10`` overrides
    one); ``search`` is the ``[fit.search]`` table (``enabled``, ``cv``, ``widen``,
    ``widen_bound`` and one search space per searched classifier).
    """

    features: str = _default("fit", "features")
    clf: str = _default("fit", "clf")
    cv: int = _default("fit", "cv")
    test_size: float = _default("fit", "test_size")
    out: str = _default("fit", "out")
    seed: int = _default("fit", "seed")
    dask: str = _default("fit", "dask")
    nn: Mapping[str, Any] = _default("fit", "nn")
    svc: Mapping[str, Any] = _default("fit", "svc")
    xgboost: Mapping[str, Any] = _default("fit", "xgboost")
    logreg: Mapping[str, Any] = _default("fit", "logreg")
    knn: Mapping[str, Any] = _default("fit", "knn")
    svc_approx: Mapping[str, Any] = _default("fit", "svc_approx")
    ensemble: Mapping[str, Any] = _default("fit", "ensemble")
    svc_warn_rows: int = _default("fit", "svc_warn_rows")
    tta: bool = _default("fit", "tta")
    augment: bool = _default("fit", "augment")
    search: Mapping[str, Any] = _default("fit", "search")
    audit: bool = _default("fit", "audit")
    replace: bool = _default("fit", "replace")
    refit: bool = _default("fit", "refit")

    @property
    def search_enabled(self) -> bool:
        """``--search`` (``[fit.search] enabled``): choose hyperparameters by inner CV."""
        return bool(self.search.get("enabled", False))

    @property
    def search_cv(self) -> int:
        """Inner folds of ``--search`` (``[fit.search] cv``)."""
        return self.search.get("cv", 3)

    @property
    def search_widen(self) -> tuple[int, float]:
        """``[fit.search] widen`` (rounds) and ``widen_bound`` (factor)."""
        return self.search.get("widen", 0), self.search.get("widen_bound", 100.0)

    @property
    def search_spaces(self) -> dict[str, Mapping[str, Any]]:
        """The ``[fit.search.<clf>]`` tables: classifier -> {parameter: candidates}."""
        return {k: v for k, v in self.search.items() if isinstance(v, Mapping)}

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
