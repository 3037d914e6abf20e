"""The ``cloud-hypervisor`` plugin (implementation: launchers/cloud_hypervisor.py).

Loading it costs this module only: the implementation (``http.client``, ``socket``, the VM
runtime) is imported when a VM target with this launcher is launched, planned or checked.
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
    Setting("verbose", "any", 0, doc="cloud-hypervisor's -v count: true/false or 0 to 8"),
    Setting("oem_strings_on_cmdline", "bool", False, doc="pass OEM strings on the command line"),
    Setting("platform", "table", {}, doc="PlatformConfig keys for vm.create (not oem_strings)"),
)


@hookimpl
def credbridge_launchers() -> Iterator[LauncherType]:
    yield vm_launcher(
        "cloud-hypervisor",
        "credbridge.launchers.cloud_hypervisor:CloudHypervisorLauncher",
        "cloud-hypervisor via its REST API (OEM strings / virtiofs in vm.create, not argv)",
        SETTINGS,
    )
