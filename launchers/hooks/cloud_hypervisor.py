"""The ``cloud-hypervisor`` plugin (implementation: launchers/cloud_hypervisor.py).

Loading it costs this module only: the implementation (``http.client``, ``socket``, the VM
runtime) is imported when a VM target with this launcher is launched, planned or checked.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import LauncherType, lazy
from credbridge.launchers.hooks import RUNTIME_KEYS, VM_KEYS

SETTINGS = VM_KEYS | RUNTIME_KEYS | {"verbose", "oem_strings_on_cmdline", "platform"}


@hookimpl
def credbridge_launchers() -> Iterator[LauncherType]:
    yield LauncherType(
        name="cloud-hypervisor",
        open=lazy("credbridge.launchers.cloud_hypervisor:CloudHypervisorLauncher"),
        summary="cloud-hypervisor via its REST API (OEM strings / virtiofs in vm.create, not argv)",
        settings=SETTINGS,
    )
