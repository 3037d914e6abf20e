"""Finding credbridge's plugins: the entry points of the ``credbridge`` group, and importing them.

Entry points are found by reading the ``entry_points.txt`` of the distributions on
``sys.path`` directly (a few file reads); ``importlib.metadata`` is used instead when some path
entry is not a directory or a meta-path finder provides distributions of its own.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
import sys
from typing import Any, NamedTuple

GROUP = "credbridge"
OWN_DISTRIBUTION = "credbridge"


def normalize(name: str) -> str:
    """A plugin or distribution name the way PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class FoundEntryPoint(NamedTuple):
    """An entry point of the group, and the distribution that declares it."""

    name: str
    value: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return normalize(self.distribution) == OWN_DISTRIBUTION


def _parse_entry_points(text: str, group: str) -> list[tuple[str, str]]:
    """The ``name = value`` lines of ``[group]`` in an ``entry_points.txt`` (INI syntax)."""
    found: list[tuple[str, str]] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1].strip() == group
            continue
        if inside and "=" in line:
            name, _, value = line.partition("=")
            found.append((name.strip(), value.strip()))
    return found


def _headers(path: str) -> dict[str, str]:
    """``Name`` and ``Version`` from a METADATA/PKG-INFO file (RFC 822 headers)."""
    headers: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, sep, value = line.partition(":")
                if sep and key in {"Name", "Version"}:
                    headers.setdefault(key, value.strip())
    except OSError:
        pass
    return headers


def _scan_path(group: str) -> list[FoundEntryPoint] | None:
    """Entry points of ``group`` from the ``*.dist-info``/``*.egg-info`` dirs on ``sys.path``.

    The first distribution of a name on the path wins, as with ``importlib.metadata``.
    ``None`` when that shortcut does not apply (a zip on the path, another finder).
    """
    path_finder = importlib.machinery.PathFinder
    for finder in sys.meta_path:
        if finder is not path_finder and hasattr(finder, "find_distributions"):
            return None
    seen: set[str] = set()
    found: list[FoundEntryPoint] = []
    group_bytes = group.encode()
    for entry in sys.path:
        directory = entry or "."
        try:
            names = os.listdir(directory)
        except NotADirectoryError:
            return None
        except OSError:
            continue
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not dot or suffix not in {"dist-info", "egg-info"}:
                continue
            dist, _, rest = stem.partition("-")
            key = normalize(dist)
            if key in seen:
                continue
            seen.add(key)
            meta = os.path.join(directory, name)
            try:
                with open(os.path.join(meta, "entry_points.txt"), "rb") as handle:
                    raw = handle.read()
            except OSError:
                continue
            if group_bytes not in raw:  # most distributions: no decoding, no parsing
                continue
            entries = _parse_entry_points(raw.decode("utf-8", "replace"), group)
            if not entries:
                continue
            headers = _headers(
                os.path.join(meta, "METADATA" if suffix == "dist-info" else "PKG-INFO")
            )
            version = headers.get("Version") or rest.partition("-")[0]
            display = headers.get("Name") or dist
            found += [FoundEntryPoint(n, v, display, version) for n, v in entries]
    return found


def _scan_metadata(group: str) -> list[FoundEntryPoint]:
    from importlib.metadata import distributions

    seen: set[str] = set()
    found: list[FoundEntryPoint] = []
    for dist in distributions():
        name = dist.metadata["Name"] or "unknown"
        if normalize(name) in seen:
            continue
        seen.add(normalize(name))
        found += [
            FoundEntryPoint(ep.name, ep.value, name, dist.version)
            for ep in dist.entry_points
            if ep.group == group
        ]
    return found


def find_entry_points(group: str = GROUP) -> list[FoundEntryPoint]:
    """Every entry point of ``group``: credbridge's own first, then by name."""
    found = _scan_path(group)
    if found is None:
        found = _scan_metadata(group)
    return sorted(found, key=lambda ep: (not ep.builtin, ep.name))


def load_object(value: str) -> Any:
    """Import what an entry point names: ``package.module`` or ``package.module:attr.attr``."""
    module, _, attribute = value.partition(":")
    found: Any = importlib.import_module(module.strip())
    attribute = attribute.partition("[")[0].strip()  # extras are not ours to check
    for part in filter(None, attribute.split(".")):
        found = getattr(found, part)
    return found
