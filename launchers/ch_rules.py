"""cloud-hypervisor v53's create-time rules (``VmConfig::validate`` in vmm/src/config.rs) that a
``VmConfig`` valid for the OpenAPI spec can still break, checked before ``vm.create``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: cloud-hypervisor v53's ``VmConfig::validate`` (vmm/src/config.rs) rules that a VmConfig
#: valid for the OpenAPI spec can still break, named by cloud-hypervisor's ValidationError.
CH_RULES_VERSION = "53.0"
_SPECIAL_VSOCK_CIDS = {0, 1, 2, (1 << 32) - 1}


def _shared_backing(memory: Mapping[str, Any]) -> bool:
    """``VmConfig::backed_by_shared_memory``."""
    if memory.get("shared") or memory.get("hugepages"):
        return True
    zones = memory.get("zones") or []
    return memory.get("size") == 0 and all(z.get("shared") or z.get("hugepages") for z in zones)


def _numa_node_broken(node: Mapping[str, Any], used: dict[str, int], segments: int) -> str | None:
    """``NumaConfig::validate`` and the NUMA part of ``VmConfig::validate``."""
    numa_id = node["guest_numa_id"]
    device, cpus, zones = node.get("device_id"), node.get("cpus"), node.get("memory_zones")
    if device is not None and (cpus is not None or zones is not None):
        return "InvalidNumaConfig: device_id is mutually exclusive with cpus and memory_zones"
    if device is None and cpus is None and zones is None:
        return "InvalidNumaConfig: a NUMA node needs device_id or cpus/memory_zones"
    if device == "" or cpus == [] or zones == []:
        return f"InvalidNumaConfig: NUMA node {numa_id} has an empty list or device_id"
    for zone in zones or []:
        if zone in used:
            return f"MemoryZoneReused: zone {zone} in NUMA nodes {used[zone]} and {numa_id}"
        used[zone] = numa_id
    for segment in node.get("pci_segments", []):
        if segment >= segments:
            return f"InvalidPciSegment: NUMA node {numa_id} names PCI segment {segment}"
        if segment == 0 and numa_id != 0:
            return f"DefaultPciSegmentInvalidNode: PCI segment 0 on NUMA node {numa_id}"
    return None


def create_rule_broken(body: Mapping[str, Any], arch: str) -> str | None:
    """The first of cloud-hypervisor's create-time rules ``body`` breaks, or None."""
    memory: Mapping[str, Any] = body.get("memory", {})
    cpus: Mapping[str, Any] = body.get("cpus", {})
    boot, most = cpus.get("boot_vcpus", 1), cpus.get("max_vcpus", 1)
    if most < boot:
        return f"CpusMaxLowerThanBoot: max={most} is lower than boot={boot}"
    if most > (255 if arch == "x86_64" else 8192):
        return f"TooManyCpus: max={most} is more than cloud-hypervisor supports on {arch}"
    if topology := cpus.get("topology"):
        parts = list(topology.values())
        if 0 in parts:
            return "CpuTopologyZeroPart: a topology part is 0"
        if arch == "x86_64" and topology["threads_per_core"] > 2:
            return "CpuTopologyThreadsPerCore: more than 2 threads per core on x86_64"
        if arch == "aarch64" and topology["dies_per_package"] != 1:
            return "CpuTopologyDiesPerPackage: aarch64 takes 1 die per package"
        if (count := parts[0] * parts[1] * parts[2] * parts[3]) != most:
            return f"CpuTopologyCount: the topology gives {count} vCPUs, max is {most}"
    if "hugepage_size" in memory:
        size = memory["hugepage_size"]
        if not memory.get("hugepages"):
            return "HugePageSizeWithoutHugePages: hugepage_size needs hugepages=on"
        if size <= 0 or size & (size - 1):
            return f"InvalidHugePageSize: {size} is not a power of two"
    if memory.get("shared") and memory.get("mergeable"):
        return "InvalidSharedMemoryWithMergeable: shared=on and mergeable=on"
    if any(z.get("shared") and z.get("mergeable") for z in memory.get("zones") or []):
        return "InvalidSharedMemoryWithMergeable: a memory zone is shared and mergeable"
    if body.get("fs") and not _shared_backing(memory):
        return "VhostUserRequiresSharedMemory: --fs needs shared=on or hugepages=on"
    vhost_user = [d for key in ("disks", "net") for d in body.get(key, []) if d.get("vhost_user")]
    if vhost_user and not _shared_backing(memory):
        return (
            "VhostUserRequiresSharedMemory: a vhost_user=on device needs shared=on or hugepages=on"
        )
    if body.get("generic_vhost_user") and not _shared_backing(memory):
        return "VhostUserRequiresSharedMemory: --generic-vhost-user needs shared=on or hugepages=on"
    zone_ids = [zone["id"] for zone in memory.get("zones") or []]
    if len(zone_ids) != len(set(zone_ids)):
        return "IdentifierNotUnique: a memory zone id is given twice"
    used: dict[str, int] = {}
    segments = body.get("platform", {}).get("num_pci_segments", 1)
    for node in body.get("numa", []):
        if problem := _numa_node_broken(node, used, segments):
            return problem
    if body.get("user_devices") and not _shared_backing(memory):
        return "UserDevicesRequireSharedMemory: --user-device needs shared=on or hugepages=on"
    groups = {group["id"] for group in body.get("rate_limit_groups", [])}
    for disk in body.get("disks", []):
        group = disk.get("rate_limit_group")
        if group is not None and (group not in groups or "rate_limiter_config" in disk):
            return f"InvalidRateLimiterGroup: --disk rate_limit_group={group}"
    for rule in body.get("landlock_rules", []):
        if not os.path.exists(rule["path"]):
            return f"LandlockPathDoesNotExist: {rule['path']}"
    if (vsock := body.get("vsock")) and vsock.get("cid") in _SPECIAL_VSOCK_CIDS:
        return f"VsockSpecialCid: cid {vsock['cid']} is reserved"
    if (balloon := body.get("balloon")) is not None:
        zones = sum(zone.get("size", 0) for zone in memory.get("zones") or [])
        total = memory.get("size", 0) + zones + memory.get("hotplugged_size", 0)
        if balloon.get("size", 0) >= total:
            return f"BalloonLargerThanRam: balloon {balloon['size']} >= RAM {total}"
    for net in body.get("net", []):
        queues = net.get("num_queues", 2)
        if queues < 2:
            return f"VnetQueueLowerThan2: --net num_queues={queues}"
        if (fds := net.get("fds")) is not None:
            if len(fds) * 2 != queues:
                given = len(fds) * 2
                return f"VnetQueueFdMismatch: fd= gives {given} queues, num_queues={queues}"
            if any(fd <= 2 for fd in fds):
                return "VnetReservedFd: --net fd= names stdin, stdout or stderr"
        if queues // 2 > boot:
            return f"TooManyQueues: --net num_queues={queues} with {boot} boot vCPUs"
        if ("ip" in net) != ("mask" in net):
            return "IpProvidedWithoutMask: --net ip= and mask= go together"
    paths = [d["path"] for d in body.get("devices", []) if "path" in d]
    if len(paths) != len(set(paths)):
        return "DuplicateDevicePath: a --device path is given twice"
    keys = ("disks", "net", "fs", "devices", "pmem", "vdpa", "user_devices")
    ids = [d["id"] for key in keys for d in body.get(key, []) if "id" in d]
    if len(ids) != len(set(ids)):
        return "IdentifierNotUnique: a device id is given twice"
    return None
