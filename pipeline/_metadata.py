"""Installed package versions without importing the packages or ``importlib.metadata``.

A warm re-run must compare versions in a few milliseconds: importing ``importlib.metadata``
alone costs ~30 ms here, a sizeable share of a run that only lists files. Wheels install a
``{name}-{version}.dist-info`` folder beside the package (the binary distribution format), so
the version is read from that folder's name; anything else falls back to ``importlib.metadata``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

__all__ = ["installed_version"]


@functools.cache
def installed_version(package: str) -> str:
    """The installed distribution version of ``package`` (import name = distribution name),
    or ``"absent"``."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        return "absent"
    if spec.origin and os.path.isabs(spec.origin):
        folder = os.path.dirname(spec.origin)  # a package's __init__.py, or a module file
        site = os.path.dirname(folder) if spec.submodule_search_locations else folder
        prefix = package.replace("-", "_") + "-"
        found = [
            name[len(prefix) : -len(".dist-info")]
            for name in os.listdir(site)
            if name.startswith(prefix) and name.endswith(".dist-info")
        ]
        if len(found) == 1:
            return found[0]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"
