"""microvm.nix's real cloud-hypervisor runner: the argv its ``microvm-run`` execs.

tests/nix/eval-microvm-runner.nix evaluates the vendored microvm.nix files
(``../shared/vendor/microvm.nix``: options.nix, asserts.nix and lib/runner.nix with the
cloud-hypervisor runner) with nix-instantiate, the vendored nixpkgs lib and stub packages.
The ``microvm-run`` script it yields is then run by bash from its ``runtime_args=`` line on
(what comes before opens macvtap devices, creates volumes and starts socat), with
cloud-hypervisor's store path pointing at a program that prints its argv: the words are the
ones bash would exec, quoting, ``extraArgsScript`` output and all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from support.nixeval import NIXPKGS_LIB, NixError, instantiate, missing, to_nix

REPO = Path(__file__).resolve().parent.parent.parent
MICROVM = REPO.parent / "shared" / "vendor" / "microvm.nix"
EVAL = REPO / "tests" / "nix" / "eval-microvm-runner.nix"
#: The microvm.nix commit the vendored files come from (its README says so too).
MICROVM_COMMIT = "71beea0076cd46dafcee97a5a2e7d00cbba5bd2f"
_BEGIN = "#credbridge-begin "
_END = "#credbridge-end "


def unavailable() -> str | None:
    """Why the runner cannot be evaluated here, or None."""
    if not (MICROVM / "lib" / "runners" / "cloud-hypervisor.nix").is_file():
        return f"the vendored microvm.nix is not at {MICROVM} (see ../shared/README.md)"
    return missing()


class RunnerRefused(Exception):
    """microvm.nix itself refuses the configuration (an assertion or a ``throw``)."""


def scripts(
    config: str, *, system: str = "x86_64-linux", paths: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The runner package's bin scripts (name -> text) for microvm options ``config`` (a Nix
    attrset); ``paths`` maps stub package names (``linux-dev``, ``initrd``, ...) to store
    paths."""
    args = {
        "libPath": str(NIXPKGS_LIB),
        "microvmPath": str(MICROVM),
        "config": config,
        "system": to_nix(system),
        "paths": to_nix(dict(paths or {})),
    }
    try:
        result: Mapping[str, Any] = instantiate(EVAL, args)
    except NixError as error:
        reason = [line for line in str(error).splitlines() if line.startswith("error:")]
        raise RunnerRefused(reason[0] if reason else str(error)) from None
    if "assertions" in result:
        raise RunnerRefused("; ".join(m.strip() for m in result["assertions"]))
    build: str = result["buildCommand"]
    out: dict[str, str] = {}
    while _BEGIN in build:
        _, _, rest = build.partition(_BEGIN)
        name, _, rest = rest.partition("\n")
        text, _, build = rest.partition(f"\n{_END}{name}\n")
        out[name] = text
    return out


def microvm_run(
    config: str, *, system: str = "x86_64-linux", paths: Mapping[str, str] | None = None
) -> str:
    """The text of ``microvm-run``."""
    found = scripts(config, system=system, paths=paths)
    return next(text for name, text in found.items() if name.endswith("-microvm-run"))


ARGV_PRINTER = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def runner_argv(
    config: str,
    workdir: Path,
    *,
    system: str = "x86_64-linux",
    paths: Mapping[str, str] | None = None,
) -> list[str]:
    """cloud-hypervisor's argv (without argv[0]) exactly as ``microvm-run`` would exec it in
    ``workdir`` (microvm@NAME.service's working directory)."""
    package = workdir / "cloud-hypervisor-argv-printer"
    (package / "bin").mkdir(parents=True, exist_ok=True)
    printer = package / "bin" / "cloud-hypervisor"
    printer.write_text(f"#!{sys.executable}\n{ARGV_PRINTER}")
    printer.chmod(0o755)
    printers = {name: str(package) for name in ("cloud-hypervisor", "cloud-hypervisor-graphics")}
    script = microvm_run(config, system=system, paths={**(paths or {}), **printers})
    tail = script[script.index("\nruntime_args=") :]
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", tail],
        cwd=workdir,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        timeout=60,
    )
    argv: list[str] = json.loads(result.stdout)
    return argv
