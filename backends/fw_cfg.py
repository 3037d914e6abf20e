"""``fw-cfg`` — credentials as QEMU fw_cfg items ``opt/io.systemd.credentials/NAME``.

systemd (251+) in the guest imports each item as the system credential NAME (the guest kernel
needs the ``qemu_fw_cfg`` driver, which systemd loads itself on QEMU/KVM). Each value is
written to a 0400 file in the launch's private runtime directory and the hypervisor is given
the file's *path* (``-fw_cfg name=...,file=PATH``), never the value.

Limits: QEMU refuses fw_cfg names over 55 characters and the prefix takes 27, so names are at
most 28 characters (and follow systemd's rules); each value at most 1 MiB, and all of them
together at most 1 MiB -- systemd stops importing once an import pass exceeds that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from credbridge.backends.hooks.fw_cfg import SETTINGS
from credbridge.backends.vm_sink import ChannelSink
from credbridge.core import (
    Delivery,
    DeliveryError,
    SinkContext,
)
from credbridge.core.fsutil import ensure_private_dir, write_new_file
from credbridge.core.vm import (
    CREDENTIAL_SIZE_MAX,
    FW_CFG_PREFIX,
    FwCfgItem,
    VmChannel,
    check_name,
    check_size,
)

SINK_NAME = "fw-cfg"
FW_CFG_NAME_MAX = 55
NAME_MAX = FW_CFG_NAME_MAX - len(FW_CFG_PREFIX)  # 28
SUBDIR = "fw_cfg"


def validate(sizes: Mapping[str, int | None], channel: str = "fw_cfg") -> None:
    total = 0
    for name, size in sizes.items():
        check_name(name, channel, max_length=NAME_MAX)
        if size is None:
            continue
        check_size(name, size)
        total += size
        if total > CREDENTIAL_SIZE_MAX:
            raise DeliveryError(
                f"credential {name!r}: the credentials would reach {total} bytes, over the "
                f"{CREDENTIAL_SIZE_MAX} bytes (1 MiB) systemd imports in total"
            )


def item_path(runtime_dir: Path, name: str) -> Path:
    return runtime_dir / SUBDIR / name


def fw_cfg_channel(
    deliveries: Sequence[Delivery], runtime_dir: Path, *, sink: str = SINK_NAME
) -> VmChannel:
    """Validate, write one 0400 file per credential and describe the items.

    Launchers use this directly to fall back from OEM strings (QEMU's ``-smbios path=`` bug).
    """
    validate({d.name: len(d.value) for d in deliveries})
    ensure_private_dir(runtime_dir / SUBDIR)
    items = []
    for delivery in deliveries:
        path = item_path(runtime_dir, delivery.name)
        write_new_file(path, delivery.value.reveal(), mode=0o400)
        items.append(FwCfgItem(FW_CFG_PREFIX + delivery.name, path))
    return VmChannel(sink=sink, fw_cfg=items, names=[d.name for d in deliveries])


def fw_cfg_preview(names: Sequence[str], runtime_dir: Path, *, sink: str = SINK_NAME) -> VmChannel:
    validate(dict.fromkeys(names))
    return VmChannel(
        sink=sink,
        fw_cfg=[FwCfgItem(FW_CFG_PREFIX + n, item_path(runtime_dir, n)) for n in names],
        names=list(names),
    )


class FwCfgSink(ChannelSink):
    def __init__(self, context: SinkContext) -> None:
        context.read_settings(SETTINGS)  # none: refuses any key the table holds

    def validate(self, sizes: Mapping[str, int | None]) -> None:
        validate(sizes)

    def place(self, name: str) -> str:
        return f"fw_cfg {FW_CFG_PREFIX}{name}"

    def prepare(self, deliveries: Sequence[Delivery], runtime_dir: Path) -> VmChannel:
        return fw_cfg_channel(deliveries, runtime_dir)

    def preview(self, names: Sequence[str], runtime_dir: Path) -> VmChannel:
        return fw_cfg_preview(names, runtime_dir)


def open_sink(context: SinkContext) -> FwCfgSink:
    return FwCfgSink(context)
