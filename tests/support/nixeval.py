"""Evaluate nix/module.nix with Debian's nix-instantiate (Nix 2.8) and the vendored nixpkgs lib.

Nothing here builds a derivation: the module is evaluated with ``lib.evalModules`` against
small stub modules (tests/nix/stub-*.nix) in a throw-away Nix state directory, read-only
(``--readonly-mode``), with no network and no experimental features. ``render_units`` writes the
evaluated ``systemd.services`` as unit files the way NixOS does, for ``systemd-analyze verify``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
NIXPKGS_LIB = REPO.parent / "shared" / "vendor" / "nixpkgs-lib" / "lib"
EVAL = REPO / "tests" / "nix" / "eval.nix"
LIB_MISSING = (
    f"the vendored nixpkgs lib is not at {NIXPKGS_LIB} "
    "(it lives outside the repository, in ../shared/vendor/nixpkgs-lib/)"
)


def missing() -> str | None:
    if shutil.which("nix-instantiate") is None:
        return "nix-instantiate not installed (Debian package nix-bin)"
    if not (NIXPKGS_LIB / "default.nix").is_file():
        return LIB_MISSING
    return None


class NixError(Exception):
    """nix-instantiate failed; ``str()`` is its error output."""


def nix_string(value: str) -> str:
    return json.dumps(value).replace("${", "\\${")


def to_nix(value: Any) -> str:
    """A Python value as a Nix expression (for --arg)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return nix_string(value)
    if isinstance(value, list | tuple):
        return "[ " + " ".join(f"({to_nix(v)})" for v in value) + " ]"
    if isinstance(value, Mapping):
        return "{ " + " ".join(f"{nix_string(k)} = {to_nix(v)};" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def instantiate(expr_file: Path, args: Mapping[str, str], *, strict: bool = True) -> Any:
    """``nix-instantiate --eval --json FILE --arg K V...`` in a private, read-only Nix state."""
    with tempfile.TemporaryDirectory(prefix="credbridge-nix-") as home:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "NIX_STATE_DIR": f"{home}/state",
            "NIX_LOG_DIR": f"{home}/log",
            "NIX_CONF_DIR": f"{home}/conf",
            "XDG_CACHE_HOME": f"{home}/cache",
        }
        argv = [
            "nix-instantiate",
            "--readonly-mode",
            "--option", "build-users-group", "",
            "--option", "experimental-features", "",
            "--option", "substituters", "",
            "--eval", "--json",
            *(["--strict"] if strict else []),
            str(expr_file),
        ]  # fmt: skip
        for key, value in args.items():
            argv += ["--arg", key, value]
        result = subprocess.run(argv, capture_output=True, env=env, timeout=300, check=False)
    if result.returncode != 0:
        raise NixError(result.stderr.decode(errors="replace"))
    return json.loads(result.stdout)


def evaluate(
    config: str | Mapping[str, Any],
    *,
    with_microvm: bool = True,
    paths: Mapping[str, str] | None = None,
    guest: str | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the module with ``config`` (a Nix expression, or a value turned into one)."""
    args = {
        "libPath": str(NIXPKGS_LIB),
        "config": config if isinstance(config, str) else to_nix(config),
        "withMicrovm": to_nix(with_microvm),
        "paths": to_nix(dict(paths or {})),
    }
    if guest is not None:
        args["guestConfig"] = guest if isinstance(guest, str) else to_nix(guest)
    result: dict[str, Any] = instantiate(EVAL, args)
    return result


# --------------------------------------------------------------------------- unit files


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lines(key: str, value: Any) -> list[str]:
    if isinstance(value, list):
        return [f"{key}={_value(v)}" for v in value]
    return [f"{key}={_value(value)}"]


def unit_text(service: Mapping[str, Any]) -> str:
    """A service of ``systemd.services`` as NixOS writes it (nixos/lib/systemd-lib.nix)."""
    unit: list[str] = ["[Unit]"]
    if service.get("description"):
        unit.append(f"Description={service['description']}")
    for key, option in (
        ("Documentation", "documentation"),
        ("After", "after"),
        ("Before", "before"),
        ("Wants", "wants"),
        ("Requires", "requires"),
    ):
        if service.get(option):
            unit.append(f"{key}={' '.join(service[option])}")
    if service.get("restartTriggers"):
        unit.append(f"X-Restart-Triggers={' '.join(service['restartTriggers'])}")
    for key, value in service.get("unitConfig", {}).items():
        unit += _lines(key, value)
    body = ["[Service]"]
    for key, value in sorted(service.get("environment", {}).items()):
        body.append(f'Environment="{key}={value}"')
    for key, value in service.get("serviceConfig", {}).items():
        body += _lines(key, value)
    install = []
    for key, option in (("WantedBy", "wantedBy"), ("RequiredBy", "requiredBy")):
        if service.get(option):
            install.append(f"{key}={' '.join(service[option])}")
    sections = [unit, body] + ([["[Install]", *install]] if install else [])
    return "\n\n".join("\n".join(s) for s in sections) + "\n"


def render_units(services: Mapping[str, Mapping[str, Any]], directory: Path) -> list[str]:
    """Write unit files (drop-ins for ``overrideStrategy = "asDropin"``); return unit names."""
    names = []
    for name, service in services.items():
        unit = f"{name}.service"
        if service.get("overrideStrategy") == "asDropin":
            dropin = directory / f"{unit}.d"
            dropin.mkdir(parents=True, exist_ok=True)
            (dropin / "overrides.conf").write_text(unit_text(service))
        else:
            (directory / unit).write_text(unit_text(service))
        names.append(unit)
    return names


def systemd_analyze_verify(directory: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of ``units`` found through ``directory`` (and drop-ins)."""
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{directory}:", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
