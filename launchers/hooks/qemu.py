"""The ``qemu`` plugin (implementation: launchers/qemu.py).

Loading it costs this module only: the implementation and the VM runtime are imported when a
VM target with this launcher is launched, planned or checked.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import LauncherType
from credbridge.launchers.hooks import RUNTIME_SETTINGS, VM_SETTINGS, vm_launcher

SETTINGS = (
    *VM_SETTINGS,
    *RUNTIME_SETTINGS,
    Setting("machine", "string", "q35", doc="the QEMU machine type"),
    Setting("accel", "string", "kvm:tcg", doc='accelerators to try, ":"-separated'),
    Setting("cpu", "string", "max", doc="the QEMU CPU model"),
    Setting(
        "smbios_path", "any", "auto", doc='OEM strings through -smbios path=: true, false, "auto"'
    ),
)


@hookimpl
def credbridge_launchers() -> Iterator[LauncherType]:
    yield vm_launcher(
        "qemu",
        "credbridge.launchers.qemu:open_launcher",
        "QEMU: credentials via -smbios path= / -fw_cfg file= / virtiofs, never argv",
        SETTINGS,
    )
