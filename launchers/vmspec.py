"""The hypervisor-neutral VM description both launchers read from a target's ``launcher`` table.

Example (docs/vm.md has every key)::

    [targets.test-vm.launcher]
    type = "cloud-hypervisor"
    kernel = "/var/lib/microvms/test-vm/vmlinux"
    initramfs = "/var/lib/microvms/test-vm/initrd"
    cmdline = "console=ttyS0 root=/dev/vda"
    memory = "1G"
    cpus = 2
    disks = [{ path = "/var/lib/microvms/test-vm/root.img", readonly = false }]
    serial = "tty"
    console = "off"
    net = [{ tap = "vm-test", mac = "02:00:00:00:00:01" }]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credbridge.core.config import Config
from credbridge.core.errors import ConfigError
from credbridge.core.settings import (
    SIZE_MAX,
    control_problem,
    refuse_unknown,
    seconds_setting,
    size_setting,
)
from credbridge.launchers.hooks import VM_KEYS

COMMON_KEYS = VM_KEYS
"""The hypervisor-neutral keys of a VM target's ``launcher`` table (declared with the plugins)."""
_OPTION_KEY = re.compile(r"[a-z][a-z0-9_.-]*")
MAX_MEMORY = SIZE_MAX  # 1 PiB: beyond any host; keeps a typo from reaching the hypervisor
CONSOLE_MODES = ("off", "null", "tty", "pty", "file", "socket")


@dataclass(frozen=True)
class Disk:
    path: Path
    readonly: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    """Extra keys passed through to the hypervisor (e.g. ``direct``, ``serial``)."""


@dataclass(frozen=True)
class ConsoleSpec:
    mode: str
    """One of ``off``, ``null``, ``tty``, ``pty``, ``file``, ``socket``."""
    path: Path | None = None


@dataclass(frozen=True)
class VmSpec:
    name: str
    kernel: Path | None
    firmware: Path | None
    initramfs: Path | None
    cmdline: str
    memory_bytes: int
    cpus: int
    disks: tuple[Disk, ...]
    serial: ConsoleSpec
    console: ConsoleSpec
    net: tuple[Mapping[str, Any], ...]
    """Network devices, passed through to the hypervisor unchanged."""
    binary: str | None
    runtime_dir: Path
    extra_args: tuple[str, ...]
    timeout: float
    """Seconds to wait for the hypervisor's API/startup before giving up."""
    settings: Mapping[str, Any]
    """The whole launcher table, for launcher-specific keys."""


def parse_size(value: Any, where: str, label: str) -> int:
    """Guest memory: the ``size`` setting kind, at most :data:`MAX_MEMORY`."""
    return size_setting(value, file=label, key=where, maximum=MAX_MEMORY)


def _console(value: Any, where: str, config: Config) -> ConsoleSpec:
    if not isinstance(value, str):
        raise ConfigError(
            'must be a string like "tty" or "file:/path"', file=config.label, key=where
        )
    mode, _, path = value.partition(":")
    mode = mode.lower()
    if mode not in CONSOLE_MODES:
        raise ConfigError(
            f"unknown mode {mode!r} (known: {', '.join(CONSOLE_MODES)})",
            file=config.label,
            key=where,
        )
    if mode in {"file", "socket"}:
        if not path:
            raise ConfigError(f'{mode} needs a path: "{mode}:/path"', file=config.label, key=where)
        return ConsoleSpec(mode, config.resolve_path(path, where))
    return ConsoleSpec(mode)


def default_runtime_dir(name: str) -> Path:
    """``$RUNTIME_DIRECTORY`` under systemd (RuntimeDirectory=), else /run/credbridge/NAME."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "credbridge"
    return Path("/run/credbridge") / name


def parse_vm_spec(
    name: str,
    settings: Mapping[str, Any],
    config: Config,
    where: str,
    *,
    extra_keys: frozenset[str] = frozenset(),
    launcher: str = "",
    default_serial: str = "tty",
    default_console: str = "off",
) -> VmSpec:
    """Validate the common keys; ``extra_keys`` are the launcher's own."""
    label = config.label
    refuse_unknown(
        settings,
        COMMON_KEYS | extra_keys,
        what=f"launcher {launcher!r}" if launcher else "this launcher",
        file=label,
        where=where,
    )

    def path(key: str) -> Path | None:
        value = settings.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError("must be a path string", file=label, key=f"{where}.{key}")
        return config.resolve_path(value, f"{where}.{key}")

    kernel, firmware = path("kernel"), path("firmware")
    if kernel is None and firmware is None:
        raise ConfigError("needs 'kernel' or 'firmware'", file=label, key=where)
    cmdline = settings.get("cmdline", "")
    if not isinstance(cmdline, str):
        raise ConfigError("must be a string", file=label, key=f"{where}.cmdline")
    cpus = settings.get("cpus", 1)
    if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= 255:
        raise ConfigError("must be an integer from 1 to 255", file=label, key=f"{where}.cpus")
    disks = []
    raw_disks = settings.get("disks", [])
    if not isinstance(raw_disks, list):
        raise ConfigError("must be a list of tables with 'path'", file=label, key=f"{where}.disks")
    for index, disk in enumerate(raw_disks):
        dwhere = f"{where}.disks[{index}]"
        if isinstance(disk, str):
            disk = {"path": disk}
        if not isinstance(disk, Mapping) or not isinstance(disk.get("path"), str):
            raise ConfigError("must be a table with a 'path' string", file=label, key=dwhere)
        extra = {k: v for k, v in disk.items() if k not in {"path", "readonly"}}
        for key in extra:
            # Keys become hypervisor option names (QEMU's -drive KEY=VALUE): words only.
            if not _OPTION_KEY.fullmatch(key):
                raise ConfigError(
                    "disk option names are lowercase words (letters, digits, '_.-')",
                    file=label,
                    key=f"{dwhere}.{key}",
                )
        readonly = disk.get("readonly", False)
        if not isinstance(readonly, bool):
            raise ConfigError("must be true or false", file=label, key=f"{dwhere}.readonly")
        disks.append(Disk(config.resolve_path(disk["path"], f"{dwhere}.path"), readonly, extra))
    net = settings.get("net", [])
    if not isinstance(net, list) or not all(isinstance(n, Mapping) for n in net):
        raise ConfigError("must be a list of tables", file=label, key=f"{where}.net")
    binary = settings.get("binary")
    if binary is not None and (not isinstance(binary, str) or control_problem(binary)):
        raise ConfigError("must be a program name or path", file=label, key=f"{where}.binary")
    extra_args = settings.get("extra_args", [])
    if not isinstance(extra_args, list) or not all(isinstance(a, str) for a in extra_args):
        raise ConfigError("must be a list of strings", file=label, key=f"{where}.extra_args")
    runtime = path("runtime_dir") or default_runtime_dir(name)
    timeout = seconds_setting(settings.get("timeout", 30), file=label, key=f"{where}.timeout")
    return VmSpec(
        name=name,
        kernel=kernel,
        firmware=firmware,
        initramfs=path("initramfs"),
        cmdline=cmdline,
        memory_bytes=parse_size(settings.get("memory", "512M"), f"{where}.memory", label),
        cpus=cpus,
        disks=tuple(disks),
        serial=_console(settings.get("serial", default_serial), f"{where}.serial", config),
        console=_console(settings.get("console", default_console), f"{where}.console", config),
        net=tuple(net),
        binary=binary,
        runtime_dir=runtime,
        extra_args=tuple(extra_args),
        timeout=timeout,
        settings=settings,
    )
