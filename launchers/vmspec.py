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

_OPTION_KEY = re.compile(r"[a-z][a-z0-9_.-]*")
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
    """Every declared key of the launcher table, parsed by its kind (defaults filled in), for
    the launcher's own keys."""


class TableChecks:
    """Refusals for what a setting's kind cannot say (a list's items, a console mode): one
    line naming the config file and the key, as the kinds' own checks do."""

    def __init__(self, config: Config, where: str) -> None:
        self.config = config
        self.where = where

    def fail(self, key: str, message: str) -> ConfigError:
        """``message`` about ``key`` of the table (the table itself for ``""``)."""
        return ConfigError(
            message, file=self.config.label, key=f"{self.where}.{key}" if key else self.where
        )

    def strings(self, values: Mapping[str, Any], key: str) -> tuple[str, ...]:
        """A ``list`` setting whose items must be strings (argv words)."""
        items = values[key]
        if not all(isinstance(item, str) for item in items):
            raise self.fail(key, "must be a list of strings")
        return tuple(items)


def _console(value: str, key: str, checks: TableChecks) -> ConsoleSpec:
    mode, _, path = value.partition(":")
    mode = mode.lower()
    if mode not in CONSOLE_MODES:
        raise checks.fail(key, f"unknown mode {mode!r} (known: {', '.join(CONSOLE_MODES)})")
    if mode in {"file", "socket"}:
        if not path:
            raise checks.fail(key, f'{mode} needs a path: "{mode}:/path"')
        return ConsoleSpec(mode, checks.config.resolve_path(path, f"{checks.where}.{key}"))
    return ConsoleSpec(mode)


def _disks(raw: list[Any], checks: TableChecks) -> tuple[Disk, ...]:
    disks = []
    for index, disk in enumerate(raw):
        key = f"disks[{index}]"
        if isinstance(disk, str):
            disk = {"path": disk}
        if not isinstance(disk, Mapping) or not isinstance(disk.get("path"), str):
            raise checks.fail(key, "must be a table with a 'path' string")
        extra = {k: v for k, v in disk.items() if k not in {"path", "readonly"}}
        for option in extra:
            # Keys become hypervisor option names (QEMU's -drive KEY=VALUE): words only.
            if not _OPTION_KEY.fullmatch(option):
                raise checks.fail(
                    f"{key}.{option}",
                    "disk option names are lowercase words (letters, digits, '_.-')",
                )
        readonly = disk.get("readonly", False)
        if not isinstance(readonly, bool):
            raise checks.fail(f"{key}.readonly", "must be true or false")
        path = checks.config.resolve_path(disk["path"], f"{checks.where}.{key}.path")
        disks.append(Disk(path, readonly, extra))
    return tuple(disks)


def default_runtime_dir(name: str) -> Path:
    """``$RUNTIME_DIRECTORY`` under systemd (RuntimeDirectory=), else /run/credbridge/NAME."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "credbridge"
    return Path("/run/credbridge") / name


def vm_spec(name: str, values: Mapping[str, Any], config: Config, where: str) -> VmSpec:
    """The VM description from a launcher table's ``values``, read (parsed by their kinds)
    through declarations that include :data:`~credbridge.launchers.hooks.VM_SETTINGS`."""
    checks = TableChecks(config, where)
    if values["kernel"] is None and values["firmware"] is None:
        raise checks.fail("", "needs 'kernel' or 'firmware'")
    if not isinstance(values["cmdline"], str):
        raise checks.fail("cmdline", "must be a string")
    if not all(isinstance(n, Mapping) for n in values["net"]):
        raise checks.fail("net", "must be a list of tables")
    return VmSpec(
        name=name,
        kernel=values["kernel"],
        firmware=values["firmware"],
        initramfs=values["initramfs"],
        cmdline=values["cmdline"],
        memory_bytes=values["memory"],
        cpus=values["cpus"],
        disks=_disks(values["disks"], checks),
        serial=_console(values["serial"], "serial", checks),
        console=_console(values["console"], "console", checks),
        net=tuple(values["net"]),
        binary=values["binary"],
        runtime_dir=values["runtime_dir"] or default_runtime_dir(name),
        extra_args=checks.strings(values, "extra_args"),
        timeout=values["timeout"],
        settings=values,
    )
