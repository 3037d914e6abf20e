"""cloud-hypervisor's ``VmConfig`` (the ``vm.create`` body) for a VM description, and the same
VM as command-line flags for the opt-in ``oem_strings_on_cmdline`` mode, with their redaction.

The body follows components/schemas/VmConfig of cloud-hypervisor's OpenAPI spec (the tests
check it against the spec). The flags carry only values cloud-hypervisor's option parser can
split faithfully: no commas, brackets, quotes or spaces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from credbridge.core import ConfigError
from credbridge.launchers.vmspec import ConsoleSpec, VmSpec

REDACTED = "<redacted>"
_CLI_UNSAFE = re.compile(r'[,\[\]"\s]')
_CONSOLE_MODE = {
    "off": "Off",
    "null": "Null",
    "tty": "Tty",
    "pty": "Pty",
    "file": "File",
    "socket": "Socket",
}


def console_config(spec: ConsoleSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": _CONSOLE_MODE[spec.mode]}
    if spec.mode == "file":
        out["file"] = str(spec.path)
    elif spec.mode == "socket":
        out["socket"] = str(spec.path)
    return out


def build_vm_config(
    vm: VmSpec,
    oem_strings: Sequence[str],
    fs: Sequence[Mapping[str, Any]] = (),
    platform: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``VmConfig`` JSON object (components/schemas/VmConfig of the OpenAPI spec)."""
    payload: dict[str, Any] = {}
    if vm.kernel is not None:
        payload["kernel"] = str(vm.kernel)
    if vm.firmware is not None:
        payload["firmware"] = str(vm.firmware)
    if vm.initramfs is not None:
        payload["initramfs"] = str(vm.initramfs)
    if vm.cmdline:
        payload["cmdline"] = vm.cmdline
    body: dict[str, Any] = {
        "payload": payload,
        "cpus": {"boot_vcpus": vm.cpus, "max_vcpus": vm.cpus},
        # vhost-user devices (virtiofs) need the guest memory shared with the daemon.
        "memory": {"size": vm.memory_bytes, "shared": bool(fs)},
        "serial": console_config(vm.serial),
        "console": console_config(vm.console),
    }
    if vm.disks:
        body["disks"] = [
            {**disk.options, "path": str(disk.path), "readonly": disk.readonly} for disk in vm.disks
        ]
    if vm.net:
        body["net"] = [dict(n) for n in vm.net]
    if fs:
        body["fs"] = [dict(f) for f in fs]
    merged = dict(platform or {})
    if oem_strings:
        merged["oem_strings"] = list(oem_strings)
    if merged:
        body["platform"] = merged
    return body


class UnsafeForCommandLine(ConfigError):
    """A value cloud-hypervisor's option parser cannot carry (``key`` names it)."""

    problem = (
        "cannot be put on cloud-hypervisor's command line (no commas, brackets, quotes or "
        "spaces); drop oem_strings_on_cmdline to use the API"
    )

    def __init__(self, key: str) -> None:
        super().__init__(self.problem, key=key)
        self.option = key


def _cli_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and not _CLI_UNSAFE.search(value):
        return value
    raise UnsafeForCommandLine(where)


def _cli_options(table: Mapping[str, Any], where: str) -> str:
    return ",".join(f"{key}={_cli_value(value, f'{where}.{key}')}" for key, value in table.items())


def _cli_size(size: int) -> str:
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _cli_console(table: Mapping[str, Any]) -> str:
    mode = str(table["mode"]).lower()
    if "file" in table:
        return f"file={_cli_value(table['file'], 'file')}"
    if "socket" in table:
        return f"socket={_cli_value(table['socket'], 'socket')}"
    return mode


def vm_config_to_cli(body: Mapping[str, Any]) -> list[str]:
    """Command-line flags that describe the same VM as ``body`` (opt-in CLI mode only)."""
    args: list[str] = []
    payload = body["payload"]
    for key in ("kernel", "firmware", "initramfs"):
        if key in payload:
            args += [f"--{key}", payload[key]]
    if "cmdline" in payload:
        args += ["--cmdline", payload["cmdline"]]
    cpus = body["cpus"]
    args += ["--cpus", f"boot={cpus['boot_vcpus']},max={cpus['max_vcpus']}"]
    memory = body["memory"]
    shared = "on" if memory.get("shared") else "off"
    args += ["--memory", f"size={_cli_size(memory['size'])},shared={shared}"]
    for index, disk in enumerate(body.get("disks", [])):
        args += ["--disk", _cli_options(disk, f"disks[{index}]")]
    for index, net in enumerate(body.get("net", [])):
        args += ["--net", _cli_options(net, f"net[{index}]")]
    for index, fs in enumerate(body.get("fs", [])):
        args += ["--fs", _cli_options(fs, f"fs[{index}]")]
    args += ["--serial", _cli_console(body["serial"]), "--console", _cli_console(body["console"])]
    platform = dict(body.get("platform", {}))
    oem = platform.pop("oem_strings", [])
    parts = [_cli_options(platform, "platform")] if platform else []
    if oem:
        parts.append("oem_strings=[" + ",".join(oem) + "]")
    if parts:
        args += ["--platform", ",".join(parts)]
    return args


def redact_oem(text: str) -> str:
    """``io.systemd.credential.binary:NAME=BASE64`` -> ``...:NAME=<redacted>``."""
    head, sep, _ = text.partition("=")
    return f"{head}={REDACTED}" if sep else REDACTED


def redact_argv(argv: Sequence[str]) -> list[str]:
    out = list(argv)
    for index, arg in enumerate(out):
        if index and out[index - 1] == "--platform" and "oem_strings=" in arg:
            head, _, rest = arg.partition("oem_strings=[")
            strings, _, tail = rest.partition("]")
            redacted = ",".join(redact_oem(s) for s in strings.split(",") if s)
            out[index] = f"{head}oem_strings=[{redacted}]{tail}"
    return out
