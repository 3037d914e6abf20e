"""cloud-hypervisor v53's command line, as ``vm.create`` JSON: the flag tables and the parser.

Every flag of cloud-hypervisor v53.0's ``src/main.rs`` is translated into its ``VmConfig``
field, kept for the hypervisor's own argv (process-level flags), or refused with one line
naming it and why (docs/vm.md lists them all). Option keys follow ``vmm/src/config.rs``; the
``key=value,…`` and ``[…]`` syntax follows ``option_parser/src/lib.rs``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from credbridge.core.errors import ConfigError

#: OEM strings systemd reads in a confidential VM: none (SMBIOS is untrusted there).
_CONFIDENTIAL = ("tdx", "sev_snp")


class UntranslatableArgument(ConfigError):
    """A cloud-hypervisor argument the wrapper cannot carry into a ``vm.create`` body."""

    def __init__(self, flag: str, problem: str) -> None:
        super().__init__(f"{problem} (the credbridge wrapper refuses what it cannot translate)")
        self.message = f"cloud-hypervisor argument {flag}: {self.message}"
        self.key = flag


# --------------------------------------------------------------------------- value types
# Each takes the option's text (already trimmed, as cloud-hypervisor's OptionParser does)
# and returns the JSON value, or raises ValueError with the reason.

Convert = Callable[[str], Any]


def _toggle(text: str) -> bool:
    """cloud-hypervisor's ``Toggle``: on/off/true/false (any case); empty means off."""
    value = text.lower()
    if value in {"on", "true"}:
        return True
    if value in {"off", "false", ""}:
        return False
    raise ValueError("is not on or off")


def _bytes(text: str) -> int:
    """cloud-hypervisor's ``ByteSized``: an integer with an optional K, M or G suffix."""
    shift = {"K": 10, "M": 20, "G": 30}.get(text[-1:], 0)
    digits = text[:-1] if shift else text
    if not digits.isdigit():
        raise ValueError("is not a size like 512M")
    return int(digits) << shift


def _int(text: str) -> int:
    if not text.isdigit():
        raise ValueError("is not a non-negative integer")
    return int(text)


def _text(text: str) -> str:
    if not text:
        raise ValueError("is empty")
    return text


def _path(text: str) -> str:
    """A path; relative ones are resolved against the working directory, as the real binary
    (which runs in this directory) would resolve them."""
    return os.path.join(os.getcwd(), _text(text))


def _choice(mapping: Mapping[str, str]) -> Convert:
    def convert(text: str) -> str:
        if text not in mapping:
            raise ValueError(f"is not one of {', '.join(mapping)}")
        return mapping[text]

    return convert


def _int_list(text: str) -> list[int]:
    """cloud-hypervisor's ``IntegerList``: ``[0,2-4]`` (brackets optional, ranges inclusive)."""
    out: list[int] = []
    for item in text.strip().strip("[]").split(","):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"is not a list of CPUs like [0,2-3] ({item!r})")
        if dash and int(low) >= int(high):
            raise ValueError(f"has an empty range {item!r}")
        out += range(int(low), int(high if dash else low) + 1)
    return out


def _topology(text: str) -> dict[str, int]:
    """``threads_per_core:cores_per_die:dies_per_package:packages`` as a ``CpuTopology``."""
    parts = text.split(":")
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        raise ValueError("is not threads:cores:dies:packages")
    keys = ("threads_per_core", "cores_per_die", "dies_per_package", "packages")
    return dict(zip(keys, map(int, parts), strict=True))


def _affinity(text: str) -> list[dict[str, Any]]:
    """cloud-hypervisor's ``Tuple<u32, Vec<usize>>``: ``[0@[0-1],1@[2]]``."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError("is not a list like [0@[0,1],1@[2]]")
    out = []
    for item in split_options(body[1:-1]):
        vcpu, at, host_cpus = item.partition("@")
        if not at or not vcpu.isdigit():
            raise ValueError(f"has an entry that is not vcpu@[cpus] ({item!r})")
        out.append({"vcpu": int(vcpu), "host_cpus": _int_list(host_cpus)})
    return out


def _cpu_features(text: str) -> dict[str, bool]:
    """``features=[amx]``: the only CPU feature cloud-hypervisor v53 knows (on x86_64)."""
    names = [name for name in text.strip().strip("[]").split(",") if name]
    if any(name != "amx" for name in names):
        raise ValueError("names a feature other than amx")
    return {"amx": True} if names else {}


def _queue_affinity(text: str) -> list[dict[str, Any]]:
    """``queue_affinity=[0@[1,2],1@[3]]`` as ``VirtQueueAffinity`` objects."""
    return [
        {"queue_index": item["vcpu"], "host_cpus": item["host_cpus"]} for item in _affinity(text)
    ]


def _access(text: str) -> str:
    """A landlock rule's ``access``: ``r``, ``w`` or ``rw`` (at most two letters in v53)."""
    if not text or len(text) > 2 or set(text) - {"r", "w"}:
        raise ValueError("is not r, w or rw")
    return text


def _string_list(text: str) -> list[str]:
    """cloud-hypervisor's ``StringList``: ``[a,b]`` (brackets optional)."""
    items = split_options(text.strip().strip("[]"))
    if any(not item for item in items):
        raise ValueError("has an empty name")
    return items


def _distances(text: str) -> list[dict[str, int]]:
    """``distances=[1@20,2@30]`` as ``NumaDistance`` objects."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError("is not a list like [1@20,2@30]")
    out = []
    for item in split_options(body[1:-1]):
        node, at, distance = item.partition("@")
        if not at or not node.isdigit() or not distance.isdigit():
            raise ValueError(f"has an entry that is not node@distance ({item!r})")
        out.append({"destination": int(node), "distance": int(distance)})
    return out


#: virtio device IDs by the names ``--generic-vhost-user device_type=`` takes (config.rs,
#: Linux's virtio_ids.h); watchdog and iommu are refused by cloud-hypervisor itself.
# Index = virtio device ID ("_": none).
_VIRTIO_TEXT = (
    "_ net block console rng balloon iomem rpmsg scsi 9p mac80211_wlan rproc_serial caif "
    "memory_balloon _ _ gpu clock input vsock crypto signal_dist pstore iommu mem sound fs pmem "
    "rpmb mac80211_hwsim video_encoder video_decoder scmi nitro_sec_mod i2c watchdog can dmabuf "
    "param_serv audio_policy bt gpio rdma camera ism spi tee cpu_balloon media usb"
)
_VIRTIO_NAMES = _VIRTIO_TEXT.split()
VIRTIO_IDS = {name: number for number, name in enumerate(_VIRTIO_NAMES) if name != "_"}


def _device_type(text: str) -> int:
    number = int(text) if text[:1] in "123456789" and text.isdigit() else VIRTIO_IDS.get(text)
    if number is None:
        raise ValueError("is not a virtio device type (net, block, fs, ... or a number)")
    if number in (VIRTIO_IDS["watchdog"], VIRTIO_IDS["iommu"]):
        raise ValueError("cannot work as a vhost-user device (cloud-hypervisor refuses it)")
    return number


IMAGE_TYPES = {"raw": "Raw", "qcow2": "Qcow2", "vhd": "FixedVhd", "vhdx": "Vhdx"}
HOTPLUG_METHODS = {"acpi": "Acpi", "virtio-mem": "VirtioMem"}
LOCK_GRANULARITY = {"byte-range": "ByteRange", "full": "Full"}
#: PciDeviceCommonConfig::OPTIONS_IOMMU, which most devices take.
PCI_COMMON: dict[str, tuple[str, Convert]] = {
    "id": ("id", _text),
    "iommu": ("iommu", _toggle),
    "pci_segment": ("pci_segment", _int),
    "pci_device_id": ("pci_device_id", _int),
}
#: ``bw_*``/``ops_*``: a RateLimiterConfig (dotted names are nested objects).
RATE_LIMITER: dict[str, tuple[str, Convert]] = {
    f"{short}_{part}": (f"rate_limiter_config.{group}.{part}", _int)
    for short, group in (("bw", "bandwidth"), ("ops", "ops"))
    for part in ("size", "one_time_burst", "refill_time")
}

#: CLI option key -> (VmConfig key, converter), per flag. Keys not listed are refused: each
#: listed one was checked to mean the same in cloud-hypervisor's CLI parser (vmm/src/config.rs)
#: and in the OpenAPI ``VmConfig`` (including renames such as ``socket`` -> ``vhost_socket``).
OPTION_KEYS: dict[str, dict[str, tuple[str, Convert]]] = {
    "--cpus": {
        "boot": ("boot_vcpus", _int),
        "max": ("max_vcpus", _int),
        "topology": ("topology", _topology),
        "kvm_hyperv": ("kvm_hyperv", _toggle),
        "max_phys_bits": ("max_phys_bits", _int),
        "affinity": ("affinity", _affinity),
        "features": ("features", _cpu_features),
        "nested": ("nested", _toggle),
        "core_scheduling": (
            "core_scheduling",
            _choice({"vm": "Vm", "vcpu": "Vcpu", "off": "Off"}),
        ),
    },
    "--tpm": {"socket": ("socket", _path)},
    "--memory": {
        "size": ("size", _bytes),
        "mergeable": ("mergeable", _toggle),
        "shared": ("shared", _toggle),
        "hugepages": ("hugepages", _toggle),
        "hugepage_size": ("hugepage_size", _bytes),
        "hotplug_method": ("hotplug_method", _choice(HOTPLUG_METHODS)),
        "hotplug_size": ("hotplug_size", _bytes),
        "hotplugged_size": ("hotplugged_size", _bytes),
        "prefault": ("prefault", _toggle),
        "reserve": ("reserve", _toggle),
        "thp": ("thp", _toggle),
    },
    "--disk": {
        "path": ("path", _path),
        "readonly": ("readonly", _toggle),
        "direct": ("direct", _toggle),
        "num_queues": ("num_queues", _int),
        "queue_size": ("queue_size", _int),
        "vhost_user": ("vhost_user", _toggle),
        "socket": ("vhost_socket", _path),
        "serial": ("serial", _text),
        "rate_limit_group": ("rate_limit_group", _text),
        "queue_affinity": ("queue_affinity", _queue_affinity),
        "image_type": ("image_type", _choice(IMAGE_TYPES)),
        "lock_granularity": ("lock_granularity", _choice(LOCK_GRANULARITY)),
        "sparse": ("sparse", _toggle),
        "backing_files": ("backing_files", _toggle),
        **RATE_LIMITER,
        **PCI_COMMON,
    },
    "--net": {
        "tap": ("tap", _text),
        "ip": ("ip", _text),
        "mask": ("mask", _text),
        "mac": ("mac", _text),
        "host_mac": ("host_mac", _text),
        "offload_tso": ("offload_tso", _toggle),
        "offload_ufo": ("offload_ufo", _toggle),
        "offload_csum": ("offload_csum", _toggle),
        "mtu": ("mtu", _int),
        "num_queues": ("num_queues", _int),
        "queue_size": ("queue_size", _int),
        "vhost_user": ("vhost_user", _toggle),
        "socket": ("vhost_socket", _path),
        "vhost_mode": ("vhost_mode", _choice({"client": "Client", "server": "Server"})),
        # Sent with vm.add-net as SCM_RIGHTS, never in a body (WrapperLauncher).
        "fd": ("fds", _int_list),
        **RATE_LIMITER,
        **PCI_COMMON,
    },
    "--fs": {
        "tag": ("tag", _text),
        "socket": ("socket", _path),
        "num_queues": ("num_queues", _int),
        "queue_size": ("queue_size", _int),
        **{k: v for k, v in PCI_COMMON.items() if k != "iommu"},
    },
    "--vsock": {"cid": ("cid", _int), "socket": ("socket", _path), **PCI_COMMON},
    "--balloon": {
        "size": ("size", _bytes),
        "deflate_on_oom": ("deflate_on_oom", _toggle),
        "free_page_reporting": ("free_page_reporting", _toggle),
        **PCI_COMMON,
    },
    "--device": {
        "path": ("path", _path),
        "x_nv_gpudirect_clique": ("x_nv_gpudirect_clique", _int),
        "x_exclude_mmap_bars": ("x_exclude_mmap_bars", _int_list),
        **PCI_COMMON,
    },
    "--rng": {"src": ("src", _path), **PCI_COMMON},
    "--rtc": dict(PCI_COMMON),
    "--pmem": {
        "file": ("file", _path),
        "size": ("size", _bytes),
        "discard_writes": ("discard_writes", _toggle),
        **PCI_COMMON,
    },
    "--vdpa": {"path": ("path", _path), "num_queues": ("num_queues", _int), **PCI_COMMON},
    "--user-device": {
        "socket": ("socket", _path),
        **{k: v for k, v in PCI_COMMON.items() if k != "iommu"},
    },
    "--pci-segment": {
        "pci_segment": ("pci_segment", _int),
        "mmio32_aperture_weight": ("mmio32_aperture_weight", _int),
        "mmio64_aperture_weight": ("mmio64_aperture_weight", _int),
    },
    "--rate-limit-group": {"id": ("id", _text), **RATE_LIMITER},
    "--landlock-rules": {"path": ("path", _path), "access": ("access", _access)},
    "--memory-zone": {
        "id": ("id", _text),
        "size": ("size", _bytes),
        "file": ("file", _path),
        "shared": ("shared", _toggle),
        "hugepages": ("hugepages", _toggle),
        "hugepage_size": ("hugepage_size", _bytes),
        "host_numa_node": ("host_numa_node", _int),
        "hotplug_size": ("hotplug_size", _bytes),
        "hotplugged_size": ("hotplugged_size", _bytes),
        "prefault": ("prefault", _toggle),
        "reserve": ("reserve", _toggle),
        "mergeable": ("mergeable", _toggle),
    },
    "--numa": {
        "guest_numa_id": ("guest_numa_id", _int),
        "cpus": ("cpus", _int_list),
        "distances": ("distances", _distances),
        "device_id": ("device_id", _text),
        "memory_zones": ("memory_zones", _string_list),
        "pci_segments": ("pci_segments", _int_list),
    },
    "--generic-vhost-user": {
        "device_type": ("device_type", _device_type),
        "virtio_id": ("device_type", _device_type),
        "queue_sizes": ("queue_sizes", _int_list),
        "socket": ("socket", _path),
        **{k: v for k, v in PCI_COMMON.items() if k != "iommu"},
    },
    "--platform": {
        "num_pci_segments": ("num_pci_segments", _int),
        "iommu_segments": ("iommu_segments", _int_list),
        "iommu_address_width": ("iommu_address_width_bits", _int),
        "serial_number": ("serial_number", _text),
        "uuid": ("uuid", _text),
        "system_serial_number": ("system_serial_number", _text),
        "system_uuid": ("system_uuid", _text),
        "system_manufacturer": ("system_manufacturer", _text),
        "system_product_name": ("system_product_name", _text),
        "system_version": ("system_version", _text),
        "system_family": ("system_family", _text),
        "system_sku_number": ("system_sku_number", _text),
        "chassis_asset_tag": ("chassis_asset_tag", _text),
        "iommufd": ("iommufd", _toggle),
        "vfio_p2p_dma": ("vfio_p2p_dma", _toggle),
        "tdx": ("tdx", _toggle),
        "sev_snp": ("sev_snp", _toggle),
    },
}
#: cloud-hypervisor's defaults for FsConfig (vm_config.rs), which the API body must spell out.
FS_DEFAULTS = {"num_queues": 1, "queue_size": 1024}
#: Flags cloud-hypervisor accepts several values for (``--disk a b`` or ``--disk a --disk b``).
LIST_FLAGS = {
    "--disk": "disks",
    "--net": "net",
    "--fs": "fs",
    "--device": "devices",
    "--pmem": "pmem",
    "--vdpa": "vdpa",
    "--user-device": "user_devices",
    "--pci-segment": "pci_segments",
    "--rate-limit-group": "rate_limit_groups",
    "--landlock-rules": "landlock_rules",
    "--memory-zone": "memory_zones",
    "--numa": "numa",
    "--generic-vhost-user": "generic_vhost_user",
}
#: The keys each entry of a list flag (beyond --disk/--net/--fs) must have, and its defaults.
REQUIRED_KEYS = {
    "--device": ("path",),
    "--pmem": ("file",),
    "--vdpa": ("path",),
    "--user-device": ("socket",),
    "--pci-segment": ("pci_segment",),
    "--rate-limit-group": ("id", "rate_limiter_config"),
    "--landlock-rules": ("path", "access"),
    "--memory-zone": ("id", "size"),
    "--numa": ("guest_numa_id",),
    "--generic-vhost-user": ("socket", "queue_sizes", "device_type"),
}
LIST_DEFAULTS: dict[str, dict[str, Any]] = {"--vdpa": {"num_queues": 1}}
SINGLE_FLAGS = {
    "--vsock": "vsock",
    "--balloon": "balloon",
    "--rng": "rng",
    "--tpm": "tpm",
    "--rtc": "rtc",
}
PAYLOAD_FLAGS = {"--kernel": "kernel", "--initramfs": "initramfs", "--firmware": "firmware"}
#: Payload flags the launcher table has no words for (added to the body's payload).
EXTRA_PAYLOAD_FLAGS = {"--igvm": "igvm", "--host-data": "host_data"}
SWITCHES = {"--watchdog": "watchdog", "--pvpanic": "pvpanic", "--landlock": "landlock_enable"}
#: Flags about the cloud-hypervisor process, not the VM: passed on when not the default.
PROCESS_FLAGS = {
    "--seccomp": "true",
    "--log-file": None,
    "--log-format": None,
    "--event-monitor": None,
    "--gdb": None,
    "--dbus-object-path": None,
    "--dbus-service-name": None,
}
PROCESS_SWITCHES = ("--no-shutdown", "--dbus-system-bus")
#: ``--rtc`` takes an optional value (clap's num_args(0..=1)).
OPTIONAL_VALUE_FLAGS = {"--rtc"}
#: Option keys cloud-hypervisor v53's CLI accepts that a vm.create body cannot carry, and why.
REFUSED_KEYS = {
    ("--cpus", "profile"): "has no field in the API's CpusConfig (v53 OpenAPI spec)",
    ("--memory", "file"): "has no field in the API's MemoryConfig (v53 OpenAPI spec)",
    ("--platform", "iommufd_fd"): (
        "is a file descriptor: cloud-hypervisor v53's API takes descriptors for net devices only"
    ),
    ("--device", "fd"): (
        "is a file descriptor: cloud-hypervisor v53's API takes descriptors for net devices only"
    ),
    ("--disk", "_disable_io_uring"): "has no field in the API's DiskConfig (v53 OpenAPI spec)",
    ("--disk", "_disable_aio"): "has no field in the API's DiskConfig (v53 OpenAPI spec)",
}
#: Flags refused with a reason of their own (every other unknown flag: "is not translated").
REFUSED_FLAGS = {
    "--gpu": (
        "exists only in cloud-hypervisor's graphics build (not in v53's main.rs) and has no "
        "API field; run graphics VMs without the credbridge wrapper"
    ),
    "--restore": "restores a snapshot instead of creating a VM: nothing to add credentials to",
    "--ivshmem": "has no schema in v53's OpenAPI spec (no vm.create field)",
    "--fw-cfg-config": "has no field in the API's PayloadConfig (v53 OpenAPI spec)",
    "--pvmemcontrol": "has no field in the API's VmConfig (v53 OpenAPI spec)",
}
PASS_THROUGH = ({"--version"}, {"-V"}, {"--help"}, {"-h"})
_CONSOLE_WORDS = ("off", "null", "pty", "tty")


# --------------------------------------------------------------------------- option strings


def split_options(text: str) -> list[str]:
    """cloud-hypervisor's ``split_commas``: commas inside ``[...]`` do not split."""
    parts, depth, current = [], 0, ""
    for char in text.strip():
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ']'")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError("unbalanced '['")
    parts.append(current)
    return parts


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
    modes = [word for word in _CONSOLE_WORDS if word in options]
    paths = [key for key in ("file", "socket") if key in options]
    unknown = set(options) - set(_CONSOLE_WORDS) - {"file", "socket"}
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
        return f"{key}:{_path(options[key])}"
    except ValueError as error:
        raise UntranslatableArgument(flag, f"{key} {error}") from None


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
    unknown = set(options) - set(_CONSOLE_WORDS) - {"file", "iobase"}
    if unknown:
        raise UntranslatableArgument(flag, f"option {sorted(unknown)[0]!r} is not translated")
    modes = [word for word in (*_CONSOLE_WORDS, "file") if word in options]
    if len(modes) != 1:
        raise UntranslatableArgument(flag, "needs exactly one of off|null|pty|tty|file=")
    out: dict[str, Any] = {"mode": modes[0].capitalize()}
    if modes[0] == "file":
        try:
            out["file"] = _path(options["file"])
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
        return _path(text)
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
                settings[key] = _path(value)
            except ValueError:
                raise UntranslatableArgument(flag, "empty path") from None
    if (cmdline := one("--cmdline")) is not None:
        settings["cmdline"] = cmdline
    for flag, key in EXTRA_PAYLOAD_FLAGS.items():
        if (value := one(flag)) is not None:
            try:
                inv.payload[key] = _path(value) if key == "igvm" else _text(value)
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
    settings["console"] = console_setting("--console", one("--console") or "tty")

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
