"""virtiofsd, the vhost-user daemon behind the ``virtiofs`` channel: finding it and its argv.

Two daemons answer to the name: the Rust virtiofsd (``--shared-dir``, ``--readonly``) and
QEMU's old C one (``-o source=``, QEMU <= 7.2), told apart by their ``--help`` text. The
VM runtime (launchers/runtime.py) starts and watches it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from credbridge.core.errors import LaunchError
from credbridge.core.vm import VirtiofsShare
from credbridge.launchers.processes import probe


@dataclass(frozen=True)
class Virtiofsd:
    """A virtiofsd binary: ``flavour`` is ``"rust"`` (upstream) or ``"c"`` (QEMU <= 7.2)."""

    path: str
    flavour: str


_VIRTIOFSD_CANDIDATES = ("virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
_flavours: dict[str, str] = {}


def virtiofsd_flavour(path: str) -> str:
    """``rust`` or ``c``, from the program's ``--help`` (cached per path)."""
    if path not in _flavours:
        try:
            text = probe([path, "--help"], timeout=10).decode(errors="replace")
        except (OSError, subprocess.TimeoutExpired) as error:
            raise LaunchError(f"cannot run virtiofsd {path}: {error}") from None
        if "--shared-dir" in text:
            _flavours[path] = "rust"
        elif "source=" in text:
            _flavours[path] = "c"
        else:
            raise LaunchError(f"{path} does not look like virtiofsd (unknown --help output)")
    return _flavours[path]


def find_virtiofsd(configured: str | None = None) -> Virtiofsd:
    """The configured virtiofsd, else the first found: PATH, /usr/libexec, /usr/lib/qemu."""
    candidates = (configured,) if configured else _VIRTIOFSD_CANDIDATES
    for candidate in candidates:
        path = shutil.which(candidate) if "/" not in candidate else candidate
        if path and os.access(path, os.X_OK):
            return Virtiofsd(path, virtiofsd_flavour(path))
    if configured:
        raise LaunchError(f"virtiofsd {configured!r} not found or not executable")
    raise LaunchError(
        "no virtiofsd found (install the 'virtiofsd' package, or on Debian 12 "
        "'qemu-system-common' for /usr/lib/qemu/virtiofsd)"
    )


def virtiofsd_argv(
    daemon: Virtiofsd, share: VirtiofsShare, socket_path: Path, *, extra_args: Sequence[str] = ()
) -> list[str]:
    """The virtiofsd command line: read-only where the daemon supports it, no caching."""
    if daemon.flavour == "rust":
        return [
            daemon.path,
            f"--socket-path={socket_path}",
            f"--shared-dir={share.directory}",
            "--readonly",
            "--cache=never",
            "--sandbox=namespace",
            "--log-level=warn",
            *extra_args,
        ]
    # The C daemon has no read-only switch: the guest mounts the share "ro" and the
    # directory is a throw-away copy that is wiped when the VM exits.
    return [
        daemon.path,
        f"--socket-path={socket_path}",
        "-o",
        f"source={share.directory}",
        "-o",
        "cache=none",
        "-o",
        "no_posix_lock",
        "-o",
        "log_level=warn",
        *extra_args,
    ]
