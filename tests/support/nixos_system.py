"""The files a NixOS system would hold for an evaluated configuration (tests/nix/eval.nix).

NixOS turns ``systemd.services`` and ``systemd.targets`` into unit files and symlinks
(nixos/lib/systemd-lib.nix: ``serviceToUnit``, ``targetToUnit``, ``commonUnitText``,
``attrsToSection``, ``generateUnits``); ``environment.etc`` into ``/etc/NAME`` symlinks through
``/etc/static`` into the store; ``systemd.tmpfiles.rules`` into
``/etc/tmpfiles.d/00-nixos.conf``. :func:`render_system` writes the same text at the same
names, as an :class:`NixosSystem` (absolute path -> content, symlinks), which tests place in a
directory tree (``systemd-analyze verify --root``) or install in the host guest.

What NixOS derives *before* writing (the ``[Unit]`` keys from ``after``/``before``/...,
the default ``path`` and its ``PATH``, ``X-Restart-Triggers`` as a store file, job scripts) is
done by the stub module (tests/nix/stub-nixos.nix) during evaluation, as NixOS's own service
module does it; this file only writes the text.

Differences from a NixOS machine, on purpose: the unit files are plain files in
``/etc/systemd/system`` (NixOS makes that directory one symlink into the store, which would
hide the host's own units); store paths are the stub's (``/nix/store/000...-NAME``, or what
the evaluation's ``paths`` mapped them to).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNIT_DIR = "/etc/systemd/system"
TMPFILES_NAME = "tmpfiles.d/00-nixos.conf"
TMPFILES_HEADER = (
    "# This file is created automatically and should not be modified.\n"
    "# Please change the option \u2018systemd.tmpfiles.rules\u2019 instead.\n"
)


def nix_to_string(value: Any) -> str:
    """Nix's ``toString`` for the JSON values an evaluation prints."""
    if value is None:
        return ""
    if value is True:
        return "1"
    if value is False:
        return ""
    if isinstance(value, float):
        return f"{value:f}"
    if isinstance(value, list):
        return " ".join(nix_to_string(v) for v in value)
    return str(value)


def to_option(value: Any) -> str:
    """systemd-lib.nix's ``toOption``: booleans as true/false, the rest through toString."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return nix_to_string(value)


def nix_to_json_string(text: str) -> str:
    """``builtins.toJSON`` of a string: ``"`` and ``\\`` escaped, control characters as
    ``\\n``/``\\r``/``\\t`` or ``\\u00XX``, everything else (UTF-8 included) as is."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _nix_sorted(mapping: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Attribute sets iterate in byte order of their names."""
    return sorted(mapping.items(), key=lambda item: item[0].encode())


def attrs_to_section(attrs: Mapping[str, Any]) -> str:
    """One ``KEY=VALUE`` line per value; a list gives one line per element."""
    lines = []
    for key, value in _nix_sorted(attrs):
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={to_option(item)}\n")
    return "".join(lines)


def _install(wanted_by: list[str]) -> str:
    return f"\n[Install]\nWantedBy={' '.join(wanted_by)}\n" if wanted_by else ""


def service_text(service: Mapping[str, Any], global_environment: Mapping[str, Any]) -> str:
    """``serviceToUnit``'s text for one evaluated ``systemd.services.NAME``."""
    environment = {**global_environment, **service.get("environment", {})}
    body = "[Service]\n"
    for name, value in _nix_sorted(environment):
        if value is not None:
            body += f"Environment={nix_to_json_string(f'{name}={value}')}\n"
    if service.get("reloadIfChanged", False):
        body += "X-ReloadIfChanged=true\n"
    elif not service.get("restartIfChanged", True):
        body += "X-RestartIfChanged=false\n"
    if not service.get("stopIfChanged", True):
        body += "X-StopIfChanged=false\n"
    body += attrs_to_section(service.get("serviceConfig", {}))
    unit = "[Unit]\n" + attrs_to_section(service.get("unitConfig", {})) + "\n"
    return unit + body + _install(list(service.get("wantedBy", [])))


def target_text(target: Mapping[str, Any]) -> str:
    """``targetToUnit``'s text (no [Install]: NixOS links ``wantedBy`` instead)."""
    return "[Unit]\n" + attrs_to_section(target.get("unitConfig", {})) + "\n"


def _fake_store_path(name: str, content: bytes) -> str:
    digest = hashlib.sha256(name.encode() + b"\0" + content).hexdigest()[:32]
    return f"/nix/store/{digest}-{name}"


@dataclass
class NixosSystem:
    """Absolute path -> (content, mode) and absolute path -> symlink target."""

    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    #: Every unit with a unit file or drop-in here (``NAME.service``, ``NAME.target``).
    units: list[str] = field(default_factory=list)
    #: Units NixOS starts at boot through ``wantedBy`` links: wanting unit -> wanted units.
    wants: dict[str, list[str]] = field(default_factory=dict)

    def unit_file(self, unit: str) -> str:
        """The text of ``unit``'s file or, for a drop-in, of ``overrides.conf``."""
        for path in (f"{UNIT_DIR}/{unit}", f"{UNIT_DIR}/{unit}.d/overrides.conf"):
            if path in self.files:
                return self.files[path][0].decode()
        raise KeyError(unit)

    def write(self, root: Path) -> None:
        """Place everything under ``root`` (symlink targets are left as they are)."""
        for path, (data, mode) in self.files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode)
        for path, link in self.symlinks.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(link)

    def manifest(self) -> dict[str, Any]:
        """JSON for the host guest's driver, which installs it as :meth:`write` does."""
        return {
            "files": [
                {"path": p, "mode": m, "data": base64.b64encode(d).decode()}
                for p, (d, m) in sorted(self.files.items())
            ],
            "symlinks": [{"path": p, "target": t} for p, t in sorted(self.symlinks.items())],
        }


def render_system(result: Mapping[str, Any]) -> NixosSystem:
    """The unit files, /etc entries and store files of an evaluated configuration."""
    system = NixosSystem()
    global_environment = result.get("globalEnvironment", {})
    units: list[tuple[str, str, Mapping[str, Any]]] = [
        (f"{name}.service", service_text(service, global_environment), service)
        for name, service in result["services"].items()
    ] + [
        (f"{name}.target", target_text(target), target)
        for name, target in result.get("targets", {}).items()
    ]
    for unit, text, definition in units:
        if not definition.get("enable", True):
            system.symlinks[f"{UNIT_DIR}/{unit}"] = "/dev/null"
        elif definition.get("overrideStrategy") == "asDropin":
            system.files[f"{UNIT_DIR}/{unit}.d/overrides.conf"] = (text.encode(), 0o444)
        else:
            system.files[f"{UNIT_DIR}/{unit}"] = (text.encode(), 0o444)
        system.units.append(unit)
        for kind, option in (("wants", "wantedBy"), ("requires", "requiredBy")):
            for other in definition.get(option, []):
                system.symlinks[f"{UNIT_DIR}/{other}.{kind}/{unit}"] = f"../{unit}"
                if kind == "wants":
                    system.wants.setdefault(other, []).append(unit)
    etc = dict(result.get("etc", {}))
    if result.get("tmpfiles"):
        etc[TMPFILES_NAME] = TMPFILES_HEADER + "\n" + "\n".join(result["tmpfiles"]) + "\n"
    if etc:
        listing = "".join(f"{name}\0{text}\0" for name, text in sorted(etc.items()))
        static = _fake_store_path("etc", listing.encode()) + "/etc"
        system.symlinks["/etc/static"] = static
        for name, text in etc.items():
            system.files[f"{static}/{name}"] = (text.encode(), 0o444)
            system.symlinks[f"/etc/{name}"] = f"/etc/static/{name}"
    for item in result.get("storeFiles", []):
        mode = 0o555 if item["executable"] else 0o444
        system.files[item["path"]] = (item["text"].encode(), mode)
    return system


def verify_root(root: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify --root=ROOT UNITS`` with this host's systemd units in
    ``ROOT/usr/lib/systemd/system`` (sysinit.target and friends), so that every command a
    unit names is looked up in ``root`` too."""
    vendor = root / "usr" / "lib" / "systemd" / "system"
    if not vendor.exists():
        shutil.copytree("/usr/lib/systemd/system", vendor, symlinks=True)
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
