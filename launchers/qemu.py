"""``qemu`` — the hypervisor-neutral VM description (launchers/vmspec.py) as a QEMU command line.

Credentials reach QEMU only as paths of 0400 files in the launch's private runtime directory:

* ``oem-strings`` sink: ``-smbios type=11,path=FILE``, one file per OEM string. QEMU 5.2-9.2
  did not NUL-terminate the file's content (garbage appended, or a crash); fixed in 10.0
  (a7a05f5f6a40) and in the 7.2.18 stable release. With an affected or unknown version the
  launcher falls back to fw_cfg, with a warning. ``smbios_path = true|false`` overrides the
  detection (e.g. for a distribution build carrying the fix).
* ``fw-cfg`` sink: ``-fw_cfg name=opt/io.systemd.credentials/NAME,file=FILE``.
* ``virtiofs`` sink: virtiofsd per share (started and watched by launchers/runtime.py),
  ``vhost-user-fs-pci`` and a shared ``memory-backend-memfd`` for the guest RAM.

Never ``value=``/``string=``: QEMU's argv is world-readable in /proc. Commas inside option
values are doubled, as QEMU's option parser requires.

Launcher keys (declared in launchers/hooks/qemu.py, besides the common ones of
launchers/hooks/__init__.py): ``machine`` (default ``q35``), ``accel`` (default ``kvm:tcg``:
KVM when available, else TCG), ``cpu`` (default ``max``), ``smbios_path`` (``auto``).
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credbridge.backends.fw_cfg import fw_cfg_channel, fw_cfg_preview
from credbridge.core import (
    ConfigError,
    Delivery,
    Launcher,
    LauncherContext,
    LaunchError,
    Pending,
    Secret,
)
from credbridge.core.vm import BUILT_IN_CHANNELS, VmChannel, VmSink
from credbridge.launchers.hooks.qemu import SETTINGS
from credbridge.launchers.processes import probe
from credbridge.launchers.runtime import LaunchInterrupted, RuntimeSettings, Virtiofsd
from credbridge.launchers.vmspec import ConsoleSpec, TableChecks, VmSpec, vm_spec

log = logging.getLogger(__name__)

DEFAULT_BINARY = "qemu-system-x86_64"
MEMORY_BACKEND_ID = "credbridge-mem"
_VERSION = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")
_UBUNTU = re.compile(r"ubuntu(\d+)\.(\d+)")
_WORD = re.compile(r"[a-z0-9_-]+")
_MIB = 1 << 20

Version = tuple[int, int, int]


def escape(value: str | Path) -> str:
    """A QEMU option value: a comma is doubled, otherwise it would end the value."""
    return str(value).replace(",", ",,")


def parse_version(text: str) -> Version | None:
    match = _VERSION.search(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def smbios_path_works(version: Version | None, banner: str = "") -> bool:
    """Whether ``-smbios type=11,path=`` NUL-terminates the file content (see module doc).

    ``path=`` exists since 5.2; the overrun was fixed in 10.0 and backported to 7.2.18 and to
    Ubuntu's 8.2.2+ds-0ubuntu1.11. Unknown versions count as affected: the fallback is safe.
    """
    if version is None:
        return False
    if version >= (10, 0, 0):
        return True
    if version[:2] == (7, 2) and version[2] >= 18:
        return True
    ubuntu = _UBUNTU.search(banner)
    if version == (8, 2, 2) and ubuntu is not None:
        return (int(ubuntu.group(1)), int(ubuntu.group(2))) >= (1, 11)
    return False


@dataclass(frozen=True)
class QemuInfo:
    binary: str
    version: Version | None
    banner: str


_info_cache: dict[str, QemuInfo] = {}


def qemu_info(binary: str) -> QemuInfo:
    """The QEMU version from ``BINARY --version`` (cached per binary)."""
    if binary not in _info_cache:
        try:
            output = probe([binary, "--version"], timeout=30)
        except FileNotFoundError:
            raise LaunchError(f"QEMU binary {binary!r} not found") from None
        except (OSError, subprocess.TimeoutExpired) as error:
            raise LaunchError(f"cannot run {binary} --version: {error}") from None
        banner = output.decode(errors="replace").strip().splitlines()
        first = banner[0] if banner else ""
        _info_cache[binary] = QemuInfo(binary, parse_version(first), first)
    return _info_cache[binary]


def _chardev(spec: ConsoleSpec, ident: str) -> str:
    """The ``-chardev`` of a serial port or console that is not ``off``."""
    chardev = f"{'stdio' if spec.mode == 'tty' else spec.mode},id={ident}"
    if spec.path is not None:  # file: and socket: modes
        chardev += f",path={escape(spec.path)}"
    if spec.mode == "socket":
        chardev += ",server=on,wait=off"
    return chardev


def _option_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return escape(str(value))


class QemuLauncher(Launcher):
    def __init__(self, context: LauncherContext) -> None:
        config, where = context.config, context.where
        self.label = config.label
        settings = context.read_settings(SETTINGS)
        self.spec: VmSpec = vm_spec(context.target.name, settings, config, where)
        checks = self.checks = TableChecks(config, where)
        if not isinstance(context.sink, VmSink):
            raise ConfigError(
                "the qemu launcher needs a VM sink (oem-strings, fw-cfg, virtiofs)",
                file=self.label,
                key=f"{context.target.where}.sink",
            )
        self.sink: VmSink = context.sink
        self.sink_name = context.target.sink
        self.machine: str = settings["machine"]
        self.cpu: str = settings["cpu"]
        self.accel: list[str] = settings["accel"].split(":")
        if not all(_WORD.fullmatch(a) for a in self.accel):
            raise checks.fail("accel", 'must be accelerators separated by ":" like "kvm:tcg"')
        if settings["smbios_path"] not in (True, False, "auto"):
            raise checks.fail("smbios_path", 'must be true, false or "auto"')
        self.smbios_path: bool | str = settings["smbios_path"]
        self.runtime = RuntimeSettings.read(settings, checks)
        if self.spec.memory_bytes % _MIB:
            raise checks.fail("memory", "QEMU needs a whole number of MiB")
        if self.spec.serial.mode == "tty" and self.spec.console.mode == "tty":
            raise checks.fail("", 'serial and console cannot both be "tty" with QEMU')
        self.binary = self.spec.binary or DEFAULT_BINARY
        self.pci = not self.machine.startswith("microvm")

    # ------------------------------------------------------------------ decisions

    def use_smbios_path(self) -> tuple[bool, str | None]:
        """Whether OEM strings go through ``-smbios path=``; else the warning to give."""
        if self.smbios_path is True:
            return True, None
        if self.smbios_path is False:
            return False, "smbios_path = false: OEM strings are delivered through fw_cfg"
        info = qemu_info(self.binary)
        if smbios_path_works(info.version, info.banner):
            return True, None
        shown = ".".join(map(str, info.version)) if info.version else "of unknown version"
        return False, (
            f"QEMU {shown} may corrupt -smbios path= data (fixed in 10.0 and 7.2.18); "
            "delivering the OEM-string credentials through fw_cfg instead "
            "(set smbios_path = true if this build has the fix)"
        )

    # ------------------------------------------------------------------ argv

    def _device(self, name: str) -> str:
        return f"{name}-pci" if self.pci else f"{name}-device"

    def argv(
        self,
        channel: VmChannel,
        smbios_files: Sequence[Path],
        sockets: Mapping[str, Path],
    ) -> list[str]:
        spec = self.spec
        mib = spec.memory_bytes // _MIB
        machine = self.machine
        if channel.virtiofs:
            machine += f",memory-backend={MEMORY_BACKEND_ID}"
        argv = [self.binary, "-name", escape(spec.name), "-machine", machine]
        for accel in self.accel:
            argv += ["-accel", accel]
        argv += ["-cpu", self.cpu, "-smp", str(spec.cpus), "-m", f"{mib}M"]
        argv += ["-nodefaults", "-no-user-config", "-display", "none"]
        if channel.virtiofs:
            argv += [
                "-object",
                f"memory-backend-memfd,id={MEMORY_BACKEND_ID},size={mib}M,share=on",
            ]
        if spec.firmware is not None:
            argv += ["-bios", str(spec.firmware)]
        if spec.kernel is not None:
            argv += ["-kernel", str(spec.kernel)]
            if spec.initramfs is not None:
                argv += ["-initrd", str(spec.initramfs)]
            if spec.cmdline:
                argv += ["-append", spec.cmdline]
        if spec.serial.mode == "off":
            argv += ["-serial", "none"]
        else:
            argv += ["-chardev", _chardev(spec.serial, "serial0"), "-serial", "chardev:serial0"]
        if spec.console.mode != "off":
            argv += [
                "-device",
                self._device("virtio-serial"),
                "-chardev",
                _chardev(spec.console, "console0"),
                "-device",
                "virtconsole,chardev=console0",
            ]
        for index, disk in enumerate(spec.disks):
            options = {"format": "raw", **disk.options}
            drive = f"file={escape(disk.path)},if=none,id=disk{index}"
            drive += "".join(f",{k}={_option_value(v)}" for k, v in options.items())
            if disk.readonly:
                drive += ",readonly=on"
            argv += ["-drive", drive, "-device", f"{self._device('virtio-blk')},drive=disk{index}"]
        for index, net in enumerate(spec.net):
            argv += self._net(index, net)
        for path in smbios_files:
            argv += ["-smbios", f"type=11,path={escape(path)}"]
        for item in channel.fw_cfg:
            argv += ["-fw_cfg", f"name={escape(item.name)},file={escape(item.path)}"]
        for index, share in enumerate(channel.virtiofs):
            socket = sockets[share.tag]
            argv += [
                "-chardev",
                f"socket,id=virtiofs{index},path={escape(socket)}",
                "-device",
                f"{self._device('vhost-user-fs')},chardev=virtiofs{index},tag={escape(share.tag)}",
            ]
        argv += list(spec.extra_args)
        return argv

    def _net(self, index: int, net: Mapping[str, Any]) -> list[str]:
        key = f"net[{index}]"
        unknown = set(net) - {"tap", "mac", "type"}
        if unknown:
            raise self.checks.fail(
                key, f"unknown key {sorted(unknown)[0]!r} (known: mac, tap, type)"
            )
        if "tap" in net:
            backend = f"tap,id=net{index},ifname={escape(net['tap'])},script=no,downscript=no"
        elif net.get("type") == "user":
            backend = f"user,id=net{index}"
        else:
            raise self.checks.fail(key, 'needs tap = "NAME" or type = "user"')
        device = f"{self._device('virtio-net')},netdev=net{index}"
        if "mac" in net:
            device += f",mac={escape(net['mac'])}"
        return ["-netdev", backend, "-device", device]

    # ------------------------------------------------------------------ plan / launch

    def plan(self, credentials: Mapping[str, Secret | Pending]) -> Mapping[str, Any]:
        spec = self.spec
        entries = self.sink.plan(credentials)
        names = list(credentials)
        channel = self.sink.preview(names, spec.runtime_dir)
        channel.check_taken(self.spec.name, "qemu", BUILT_IN_CHANNELS)
        warnings: list[str] = []
        smbios: list[Path] = []
        delivery = self.sink_name
        if channel.oem_strings:
            direct, warning = self.use_smbios_path()
            if direct:
                smbios = self._smbios_paths(spec.runtime_dir, len(channel.oem_strings))
            else:
                warnings.append(warning or "")
                channel = fw_cfg_preview(names, spec.runtime_dir, sink=channel.sink)
                delivery = "fw-cfg (fallback from oem-strings)"
        helpers: list[list[str]] = []
        sockets: dict[str, Path] = {}
        for share in channel.virtiofs:
            sockets[share.tag] = spec.runtime_dir / "sockets" / f"virtiofsd-{share.tag}.sock"
            try:
                daemon = self.runtime.find_virtiofsd()
            except LaunchError as error:
                warnings.append(str(error))
                continue
            helpers.append(self.runtime.virtiofsd_argv(daemon, share, sockets[share.tag]))
        info = qemu_info(self.binary) if self.smbios_path == "auto" else None
        # The keys of credbridge.core.types.PLAN_KEYS, as every launcher's plan has them.
        return {
            "target": spec.name,
            "launcher": "qemu",
            "sink": self.sink_name,
            "delivery": delivery,
            "binary": self.binary,
            "version": info.banner if info else None,
            "runtime_dir": str(spec.runtime_dir),
            "argv": self.argv(channel, smbios, sockets),
            "helpers": helpers,
            "requests": [],
            "credentials": [
                {"credential": e.credential, "change": e.change.value, "detail": e.detail}
                for e in entries
            ],
            "warnings": warnings,
        }

    @staticmethod
    def _smbios_paths(runtime_dir: Path, count: int) -> list[Path]:
        return [runtime_dir / "smbios" / f"oem-{index:03d}" for index in range(count)]

    def runtime_dir(self) -> Path:
        return self.spec.runtime_dir

    def check(self) -> None:
        self.runtime.check(self.spec, self.checks)

    def launch(self, deliveries: Sequence[Delivery]) -> int:
        spec = self.spec
        direct, warning = self.use_smbios_path()  # before anything is written
        daemon: Virtiofsd | None = None
        with self.runtime.runtime(spec, self.checks) as runtime:
            try:
                channel = runtime.prepare(self.sink, deliveries)
                channel.check_taken(self.spec.name, "qemu", BUILT_IN_CHANNELS)
                smbios: list[Path] = []
                if channel.oem_strings:
                    if direct:
                        runtime.private_dir("smbios")
                        smbios = self._smbios_paths(runtime.path, len(channel.oem_strings))
                        for path, text in zip(smbios, channel.oem_strings, strict=True):
                            runtime.write_file(str(path.relative_to(runtime.path)), text.reveal())
                    else:
                        log.warning("VM %s: %s", spec.name, warning)
                        for text in channel.oem_strings:
                            text.wipe()
                        channel = fw_cfg_channel(deliveries, runtime.path, sink=channel.sink)
                sockets: dict[str, Path] = {}
                for share in channel.virtiofs:
                    daemon = daemon or self.runtime.find_virtiofsd()
                    sockets[share.tag] = runtime.start_virtiofsd(
                        share, daemon, extra_args=self.runtime.virtiofsd_args
                    )
                argv = self.argv(channel, smbios, sockets)
                for text in channel.oem_strings:
                    text.wipe()
                return runtime.run(argv)
            except LaunchInterrupted as stop:
                log.warning("VM %s: %s", spec.name, stop)
                return stop.status


def open_launcher(context: LauncherContext) -> QemuLauncher:
    return QemuLauncher(context)
