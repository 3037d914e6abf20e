"""Evaluate nix/module.nix with Debian's nix-instantiate (Nix 2.8) and the vendored nixpkgs lib.

Nothing here builds a derivation: the module is evaluated with ``lib.evalModules`` against
small stub modules (tests/nix/stub-*.nix) in a throw-away Nix state directory, read-only
(``--readonly-mode``), with no network and no experimental features. tests/support/nixos_system.py
writes the evaluated units and files the way NixOS does.
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

import pytest

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


def require_nix() -> None:
    """Skips the test where nix-instantiate or the vendored sources are missing (fails under
    CI=true, where nothing may skip)."""
    problem = missing()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def nix() -> None:
    """``require_nix`` for the tests that ask for it."""
    require_nix()


@pytest.fixture(scope="module", autouse=True)
def nix_ready() -> None:
    """``require_nix`` for every test of a module that imports this fixture."""
    require_nix()


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


def written_config(result: dict[str, Any], directory: Path) -> Path:
    """The config.json the NixOS module writes (``evaluate``'s result), as a file in ``directory``."""
    path = directory / "config.json"
    path.write_text(result["etc"]["credbridge/config.json"])
    return path
