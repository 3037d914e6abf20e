"""cloud-hypervisor v53's option keys, flag by flag, and how each value is converted.

The tables say, for every flag of ``src/main.rs``, which ``VmConfig`` field (OpenAPI spec) each
option key of ``vmm/src/config.rs`` becomes, with a converter that parses the value the way
cloud-hypervisor's option parser (``option_parser/src/lib.rs``) does; ``ch_cli`` applies them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any


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


def text_value(text: str) -> str:
    if not text:
        raise ValueError("is empty")
    return text


def path_value(text: str) -> str:
    """A path; relative ones are resolved against the working directory, as the real binary
    (which runs in this directory) would resolve them."""
    return os.path.join(os.getcwd(), text_value(text))


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


def _at_pairs(text: str, example: str, entry: str) -> list[tuple[str, str]]:
    """``[A@B,...]`` (cloud-hypervisor's ``Tuple`` lists) as ``(A, B)`` pairs, A digits."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"is not a list like {example}")
    pairs = []
    for item in split_options(body[1:-1]):
        left, at, right = item.partition("@")
        if not at or not left.isdigit():
            raise ValueError(f"has an entry that is not {entry} ({item!r})")
        pairs.append((left, right))
    return pairs


def _affinity(text: str) -> list[dict[str, Any]]:
    """cloud-hypervisor's ``Tuple<u32, Vec<usize>>``: ``[0@[0-1],1@[2]]``."""
    return [
        {"vcpu": int(vcpu), "host_cpus": _int_list(host_cpus)}
        for vcpu, host_cpus in _at_pairs(text, "[0@[0,1],1@[2]]", "vcpu@[cpus]")
    ]


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
    out = []
    for node, distance in _at_pairs(text, "[1@20,2@30]", "node@distance"):
        if not distance.isdigit():
            raise ValueError(f"has an entry that is not node@distance ({node + '@' + distance!r})")
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
    "id": ("id", text_value),
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
    "--tpm": {"socket": ("socket", path_value)},
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
        "path": ("path", path_value),
        "readonly": ("readonly", _toggle),
        "direct": ("direct", _toggle),
        "num_queues": ("num_queues", _int),
        "queue_size": ("queue_size", _int),
        "vhost_user": ("vhost_user", _toggle),
        "socket": ("vhost_socket", path_value),
        "serial": ("serial", text_value),
        "rate_limit_group": ("rate_limit_group", text_value),
        "queue_affinity": ("queue_affinity", _queue_affinity),
        "image_type": ("image_type", _choice(IMAGE_TYPES)),
        "lock_granularity": ("lock_granularity", _choice(LOCK_GRANULARITY)),
        "sparse": ("sparse", _toggle),
        "backing_files": ("backing_files", _toggle),
        **RATE_LIMITER,
        **PCI_COMMON,
    },
    "--net": {
        "tap": ("tap", text_value),
        "ip": ("ip", text_value),
        "mask": ("mask", text_value),
        "mac": ("mac", text_value),
        "host_mac": ("host_mac", text_value),
        "offload_tso": ("offload_tso", _toggle),
        "offload_ufo": ("offload_ufo", _toggle),
        "offload_csum": ("offload_csum", _toggle),
        "mtu": ("mtu", _int),
        "num_queues": ("num_queues", _int),
        "queue_size": ("queue_size", _int),
        "vhost_user": ("vhost_user", _toggle),
        "socket": ("vhost_socket", path_value),
        "vhost_mode": ("vhost_mode", _choice({"client": "Client", "server": "Server"})),
        # Sent with vm.add-net as SCM_RIGHTS, never in a body (WrapperLauncher).
        "fd": ("fds", _int_list),
        **RATE_LIMITER,
        **PCI_COMMON,
    },
    "--fs": {
        "tag": ("tag", text_value),
        "socket": ("socket", path_value),
        "num_queues": ("num_queues", _int),
        "queue_size": ("queue_size", _int),
        **{k: v for k, v in PCI_COMMON.items() if k != "iommu"},
    },
    "--vsock": {"cid": ("cid", _int), "socket": ("socket", path_value), **PCI_COMMON},
    "--balloon": {
        "size": ("size", _bytes),
        "deflate_on_oom": ("deflate_on_oom", _toggle),
        "free_page_reporting": ("free_page_reporting", _toggle),
        **PCI_COMMON,
    },
    "--device": {
        "path": ("path", path_value),
        "x_nv_gpudirect_clique": ("x_nv_gpudirect_clique", _int),
        "x_exclude_mmap_bars": ("x_exclude_mmap_bars", _int_list),
        **PCI_COMMON,
    },
    "--rng": {"src": ("src", path_value), **PCI_COMMON},
    "--rtc": dict(PCI_COMMON),
    # --console's PCI keys (its mode and path are parsed by ch_cli.console_setting).
    "--console-pci": dict(PCI_COMMON),
    "--pmem": {
        "file": ("file", path_value),
        "size": ("size", _bytes),
        "discard_writes": ("discard_writes", _toggle),
        **PCI_COMMON,
    },
    "--vdpa": {"path": ("path", path_value), "num_queues": ("num_queues", _int), **PCI_COMMON},
    "--user-device": {
        "socket": ("socket", path_value),
        **{k: v for k, v in PCI_COMMON.items() if k != "iommu"},
    },
    "--pci-segment": {
        "pci_segment": ("pci_segment", _int),
        "mmio32_aperture_weight": ("mmio32_aperture_weight", _int),
        "mmio64_aperture_weight": ("mmio64_aperture_weight", _int),
    },
    "--rate-limit-group": {"id": ("id", text_value), **RATE_LIMITER},
    "--landlock-rules": {"path": ("path", path_value), "access": ("access", _access)},
    "--memory-zone": {
        "id": ("id", text_value),
        "size": ("size", _bytes),
        "file": ("file", path_value),
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
        "device_id": ("device_id", text_value),
        "memory_zones": ("memory_zones", _string_list),
        "pci_segments": ("pci_segments", _int_list),
    },
    "--generic-vhost-user": {
        "device_type": ("device_type", _device_type),
        "virtio_id": ("device_type", _device_type),
        "queue_sizes": ("queue_sizes", _int_list),
        "socket": ("socket", path_value),
        **{k: v for k, v in PCI_COMMON.items() if k != "iommu"},
    },
    "--platform": {
        "num_pci_segments": ("num_pci_segments", _int),
        "iommu_segments": ("iommu_segments", _int_list),
        "iommu_address_width": ("iommu_address_width_bits", _int),
        "serial_number": ("serial_number", text_value),
        "uuid": ("uuid", text_value),
        "system_serial_number": ("system_serial_number", text_value),
        "system_uuid": ("system_uuid", text_value),
        "system_manufacturer": ("system_manufacturer", text_value),
        "system_product_name": ("system_product_name", text_value),
        "system_version": ("system_version", text_value),
        "system_family": ("system_family", text_value),
        "system_sku_number": ("system_sku_number", text_value),
        "chassis_asset_tag": ("chassis_asset_tag", text_value),
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
CONSOLE_WORDS = ("off", "null", "pty", "tty")
