"""The ``qemu`` plugin (implementation: launchers/qemu.py).

Loading it costs this module only: the implementation and the VM runtime are imported when a
VM target with this launcher is launched, planned or checked.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import LauncherType, lazy
from credbridge.launchers.hooks import RUNTIME_KEYS, VM_KEYS

SETTINGS = VM_KEYS | RUNTIME_KEYS | {"machine", "accel", "cpu", "smbios_path"}


@hookimpl
def credbridge_launchers() -> Iterator[LauncherType]:
    yield LauncherType(
        name="qemu",
        open=lazy("credbridge.launchers.qemu:open_launcher"),
        summary="QEMU: credentials via -smbios path= / -fw_cfg file= / virtiofs, never argv",
        settings=SETTINGS,
    )
