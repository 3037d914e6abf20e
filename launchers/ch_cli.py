"""cloud-hypervisor v53's command line, as ``vm.create`` JSON: the parser.

Every flag of cloud-hypervisor v53.0's ``src/main.rs`` is translated into its ``VmConfig``
field, kept for the hypervisor's own argv (process-level flags), or refused with one line
naming it and why (docs/vm.md lists them all). The tables are in :mod:`ch_options`; the
``key=value,…`` and ``[…]`` syntax follows ``option_parser/src/lib.rs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from credbridge.core.errors import ConfigError
from credbridge.launchers.ch_options import (
    CONSOLE_WORDS,
    EXTRA_PAYLOAD_FLAGS,
    FS_DEFAULTS,
    LIST_DEFAULTS,
    LIST_FLAGS,
    OPTION_KEYS,
    OPTIONAL_VALUE_FLAGS,
    PAYLOAD_FLAGS,
    PROCESS_FLAGS,
    PROCESS_SWITCHES,
    REFUSED_FLAGS,
    REFUSED_KEYS,
    REQUIRED_KEYS,
    SINGLE_FLAGS,
    SWITCHES,
    path_value,
    split_options,
    text_value,
)

#: OEM strings systemd reads in a confidential VM: none (SMBIOS is untrusted there).
_CONFIDENTIAL = ("tdx", "sev_snp")


class UntranslatableArgument(ConfigError):
    """A cloud-hypervisor argument the wrapper cannot carry into a ``vm.create`` body."""

    def __init__(self, flag: str, problem: str) -> None:
        super().__init__(f"{problem} (the credbridge wrapper refuses what it cannot translate)")
        self.message = f"cloud-hypervisor argument {flag}: {self.message}"
        self.key = flag


# --------------------------------------------------------------------------- option strings


def parse_options(flag: str, text: str) -> dict[str, str]:
    """``key=value,...`` as cloud-hypervisor parses it (values trimmed; a later key wins).

    Double quotes are refused: cloud-hypervisor up to v47 deletes them and later versions keep
    them, so their meaning depends on the binary's version.
    """
    if '"' in text:
        raise UntranslatableArgument(
            flag, "double quotes mean different things to different cloud-hypervisor versions"
        )
    try:
        parts = split_options(text) if text.strip() else []
    except ValueError as error:
        raise UntranslatableArgument(flag, f"invalid option syntax ({error})") from None
    out: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            raise UntranslatableArgument(flag, f"option {key!r} needs a value (key=value)")
        out[key] = value.strip()
    return out


def typed_options(flag: str, text: str) -> dict[str, Any]:
    """One flag's option string as VmConfig JSON, every key checked against :data:`OPTION_KEYS`."""
    table = OPTION_KEYS[flag]
    out: dict[str, Any] = {}
    for key, value in parse_options(flag, text).items():
        if (flag, key) in REFUSED_KEYS:
            raise UntranslatableArgument(flag, f"option {key!r} {REFUSED_KEYS[flag, key]}")
        if key not in table:
            known = ", ".join(table)
            raise UntranslatableArgument(
                flag, f"option {key!r} is not translated (translated: {known})"
            )
        json_key, convert = table[key]
        if not value:
            # OptionParser.get() treats an empty value as unset: the default applies.
            continue
        try:
            converted = convert(value)
        except ValueError as error:
            raise UntranslatableArgument(flag, f"{key}={value!r} {error}") from None
        # Dotted names are nested objects (rate_limiter_config.bandwidth.size).
        *parents, leaf = json_key.split(".")
        target = out
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = converted
    return out


def oem_string_list(text: str) -> list[str]:
    """``[s1,s2]`` -> strings; an empty string is refused (it corrupts the SMBIOS table)."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    if "[" in inner or "]" in inner:
        raise UntranslatableArgument("--platform", "nested brackets in oem_strings")
    strings = inner.split(",") if inner else []
    if any(not s for s in strings):
        raise UntranslatableArgument("--platform", "an empty OEM string")
    return strings


def console_setting(flag: str, text: str) -> str:
    """``--serial``/``--console`` as the launcher's ``off|null|tty|pty|file:P|socket:P``."""
    options = parse_options_loose(flag, text)
    modes = [word for word in CONSOLE_WORDS if word in options]
    paths = [key for key in ("file", "socket") if key in options]
    unknown = set(options) - set(CONSOLE_WORDS) - {"file", "socket"}
    if unknown:
        raise UntranslatableArgument(flag, f"option {sorted(unknown)[0]!r} is not translated")
    if len(modes) + len(paths) != 1:
        raise UntranslatableArgument(flag, "needs exactly one of off|null|pty|tty|file=|socket=")
    if modes:
        if options[modes[0]]:
            raise UntranslatableArgument(flag, f"{modes[0]} takes no value")
        return modes[0]
    key = paths[0]
    try:
        return f"{key}:{path_value(options[key])}"
    except ValueError as error:
        raise UntranslatableArgument(flag, f"{key} {error}") from None


def _without_pci_keys(text: str) -> str:
    parts = split_options(text) if text.strip() else []
    return ",".join(p for p in parts if p.partition("=")[0] not in OPTION_KEYS["--console-pci"])


def _pci_keys_only(text: str) -> str:
    parts = split_options(text) if text.strip() else []
    return ",".join(p for p in parts if p.partition("=")[0] in OPTION_KEYS["--console-pci"])


def parse_options_loose(flag: str, text: str) -> dict[str, str]:
    """Like :func:`parse_options`, but words without ``=`` are allowed (``tty``, ``off``)."""
    if '"' in text:
        raise UntranslatableArgument(flag, "double quotes are not translated")
    out: dict[str, str] = {}
    for part in split_options(text) if text.strip() else []:
        key, _, value = part.partition("=")
        out[key] = value.strip()
    return out


def debug_console(text: str) -> dict[str, Any]:
    """``--debug-console off|null|pty|tty|file=P[,iobase=0xNN]`` (x86_64) as a
    ``DebugConsoleConfig``."""
    flag = "--debug-console"
    options = parse_options_loose(flag, text)
    unknown = set(options) - set(CONSOLE_WORDS) - {"file", "iobase"}
    if unknown:
        raise UntranslatableArgument(flag, f"option {sorted(unknown)[0]!r} is not translated")
    modes = [word for word in (*CONSOLE_WORDS, "file") if word in options]
    if len(modes) != 1:
        raise UntranslatableArgument(flag, "needs exactly one of off|null|pty|tty|file=")
    out: dict[str, Any] = {"mode": modes[0].capitalize()}
    if modes[0] == "file":
        try:
            out["file"] = path_value(options["file"])
        except ValueError:
            raise UntranslatableArgument(flag, "file= is empty") from None
    if "iobase" in options:
        iobase = options["iobase"]
        digits = iobase[2:] if iobase.startswith("0x") else ""
        if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise UntranslatableArgument(flag, f"iobase={iobase!r} is not a hex port like 0xe9")
        out["iobase"] = int(digits, 16)
    return out


def api_socket_path(text: str) -> str:
    """``--api-socket path=P``, ``fd=N`` or a bare path (cloud-hypervisor's main.rs)."""
    if text.startswith("fd="):
        raise UntranslatableArgument(
            "--api-socket", "fd= is not translated (the wrapper must create the socket)"
        )
    if text.startswith("path="):
        text = text[len("path=") :].split(",", 1)[0]
    try:
        return path_value(text)
    except ValueError:
        raise UntranslatableArgument("--api-socket", "empty path") from None


# --------------------------------------------------------------------------- the argv


@dataclass
class Invocation:
    """A cloud-hypervisor command line, translated."""

    settings: dict[str, Any] = field(default_factory=dict)
    """The launcher table (see launchers/vmspec.py) for what the launcher builds itself."""
    overlay: dict[str, Any] = field(default_factory=dict)
    """VmConfig keys the launcher table has no words for (vsock, balloon, watchdog, ...)."""
    oem_strings: list[str] = field(default_factory=list)
    """The OEM strings of ``--platform`` (microvm.nix's ``vmm.notify_socket`` among them)."""
    console_pci: dict[str, Any] = field(default_factory=dict)
    """``--console``'s ``id``, ``iommu``, ``pci_segment``, ``pci_device_id``."""
    payload: dict[str, Any] = field(default_factory=dict)
    """``PayloadConfig`` keys the launcher table has no words for (``igvm``, ``host_data``)."""
    api_socket: str | None = None
    process_args: list[str] = field(default_factory=list)
    net_fds: list[list[int] | None] = field(default_factory=list)
    """Per ``--net``: the file descriptors of ``fd=[…]`` (macvtap queues microvm-run opened)."""

    @property
    def memory(self) -> dict[str, Any]:
        memory: dict[str, Any] = self.overlay.get("memory", {})
        return memory

    def confidential(self) -> bool:
        platform = self.settings.get("platform", {})
        return any(platform.get(key) for key in _CONFIDENTIAL)


def _split_flag(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        name, _, value = arg.partition("=")
        return name, value
    return arg, None


def parse_argv(argv: Sequence[str]) -> Invocation:
    """Translate cloud-hypervisor's argv (without ``argv[0]``), refusing what has no faithful
    equivalent in a ``vm.create`` body."""
    values: dict[str, list[str]] = {}
    switches: set[str] = set()
    index = 0
    while index < len(argv):
        name, inline = _split_flag(argv[index])
        index += 1
        if name in SWITCHES or name in PROCESS_SWITCHES:
            if inline is not None:
                raise UntranslatableArgument(name, "takes no value")
            switches.add(name)
            continue
        no_value_follows = index >= len(argv) or argv[index].startswith("-")
        if name in OPTIONAL_VALUE_FLAGS and inline is None and no_value_follows:
            inline = ""
        if name == "--verbose" or (name.startswith("-v") and set(name[1:]) == {"v"}):
            raise UntranslatableArgument(
                name,
                "refused: at -v cloud-hypervisor logs the whole VM config, credentials included",
            )
        known = (
            name in OPTION_KEYS
            or name in PAYLOAD_FLAGS
            or name in EXTRA_PAYLOAD_FLAGS
            or name in PROCESS_FLAGS
            or name in {"--cmdline", "--serial", "--console", "--api-socket", "--debug-console"}
        )
        if name in REFUSED_FLAGS:
            raise UntranslatableArgument(name, REFUSED_FLAGS[name])
        if not known:
            raise UntranslatableArgument(name, "is not translated into the cloud-hypervisor API")
        given: list[str] = []
        if inline is not None:
            given.append(inline)
        elif index < len(argv):
            given.append(argv[index])
            index += 1
        else:
            raise UntranslatableArgument(name, "needs a value")
        if name in LIST_FLAGS:
            # clap's num_args(1..): further words up to the next flag are more values.
            while index < len(argv) and not argv[index].startswith("-"):
                given.append(argv[index])
                index += 1
        elif name in values:
            raise UntranslatableArgument(name, "given twice (cloud-hypervisor takes it once)")
        values.setdefault(name, []).extend(given)
    return _translate(values, switches)


def _translate(values: Mapping[str, list[str]], switches: set[str]) -> Invocation:
    inv = Invocation()
    settings, overlay = inv.settings, inv.overlay

    def one(flag: str) -> str | None:
        return values[flag][0] if flag in values else None

    for flag, key in PAYLOAD_FLAGS.items():
        if (value := one(flag)) is not None:
            try:
                settings[key] = path_value(value)
            except ValueError:
                raise UntranslatableArgument(flag, "empty path") from None
    if (cmdline := one("--cmdline")) is not None:
        settings["cmdline"] = cmdline
    for flag, key in EXTRA_PAYLOAD_FLAGS.items():
        if (value := one(flag)) is not None:
            try:
                inv.payload[key] = path_value(value) if key == "igvm" else text_value(value)
            except ValueError:
                raise UntranslatableArgument(flag, "is empty") from None
    if not {"kernel", "firmware"} & set(settings) and "igvm" not in inv.payload:
        raise UntranslatableArgument("--kernel", "missing: no --kernel, --firmware or --igvm given")

    cpus = typed_options("--cpus", one("--cpus") or "boot=1")
    boot = cpus.setdefault("boot_vcpus", 1)
    cpus.setdefault("max_vcpus", boot)
    if cpus.get("features") == {}:
        del cpus["features"]
    settings["cpus"] = boot
    overlay["cpus"] = cpus

    memory = typed_options("--memory", one("--memory") or "size=512M")
    memory.setdefault("size", 512 << 20)
    overlay["memory"] = memory

    disks = [typed_options("--disk", text) for text in values.get("--disk", [])]
    settings["disks"] = [_disk_setting(disk) for disk in disks]
    nets = [typed_options("--net", text) for text in values.get("--net", [])]
    inv.net_fds = [net.pop("fds", None) for net in nets]
    settings["net"] = nets
    fs = [{**FS_DEFAULTS, **typed_options("--fs", t)} for t in values.get("--fs", [])]
    for entry in fs:
        if "tag" not in entry or "socket" not in entry:
            raise UntranslatableArgument("--fs", "needs tag= and socket=")
    if fs:
        overlay["fs"] = fs
    for flag, key in LIST_FLAGS.items():
        if flag in {"--disk", "--net", "--fs"} or flag not in values:
            continue
        entries = [{**LIST_DEFAULTS.get(flag, {}), **typed_options(flag, t)} for t in values[flag]]
        for entry in entries:
            if missing := [k for k in REQUIRED_KEYS.get(flag, ()) if k not in entry]:
                names = [
                    f"{k}=" if k in OPTION_KEYS[flag] else "bw_*/ops_* limits" for k in missing
                ]
                raise UntranslatableArgument(flag, f"needs {' and '.join(names)}")
        overlay[key] = entries
    for flag, key in SINGLE_FLAGS.items():
        if (single := one(flag)) is not None:
            overlay[key] = typed_options(flag, single)
    if "vsock" in overlay and not {"cid", "socket"} <= set(overlay["vsock"]):
        raise UntranslatableArgument("--vsock", "needs cid= and socket=")
    if "balloon" in overlay and "size" not in overlay["balloon"]:
        raise UntranslatableArgument("--balloon", "needs size=")
    for flag, key in SWITCHES.items():
        if flag in switches:
            overlay[key] = True

    if zones := overlay.pop("memory_zones", None):
        memory["zones"] = zones
    # The launcher table wants a positive size; the body's memory is this overlay's anyway.
    settings["memory"] = memory["size"] or sum(zone["size"] for zone in zones or ())
    if (debug := one("--debug-console")) is not None:
        overlay["debug_console"] = debug_console(debug)
    settings["serial"] = console_setting("--serial", one("--serial") or "null")
    console_text = one("--console") or "tty"
    settings["console"] = console_setting("--console", _without_pci_keys(console_text))
    # The virtio console is a PCI device: its id/iommu/pci_* keys (the serial port has none).
    inv.console_pci = typed_options("--console-pci", _pci_keys_only(console_text))

    if (platform_text := one("--platform")) is not None:
        raw = parse_options("--platform", platform_text)
        if "oem_strings" in raw:
            inv.oem_strings = oem_string_list(raw.pop("oem_strings"))
        rest = ",".join(f"{k}={v}" for k, v in raw.items())
        platform = typed_options("--platform", rest)
        if platform:
            settings["platform"] = platform

    if (socket_text := one("--api-socket")) is not None:
        inv.api_socket = api_socket_path(socket_text)
    for flag, default in PROCESS_FLAGS.items():
        if (value := one(flag)) is not None and value != default:
            inv.process_args += [flag, value]
    inv.process_args += [flag for flag in PROCESS_SWITCHES if flag in switches]
    return inv


def _disk_setting(disk: dict[str, Any]) -> dict[str, Any]:
    if "path" not in disk:
        raise UntranslatableArgument("--disk", "needs path= (vhost-user disks are not translated)")
    return disk
