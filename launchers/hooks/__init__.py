"""The registration modules of credbridge's built-in launcher plugins.

Each module here is what one entry point of the ``credbridge`` group names: it only declares
the launcher's record; ``open`` imports the implementation in ``credbridge.launchers.*`` when a
VM target is launched, planned or checked.
"""

from __future__ import annotations

from collections.abc import Sequence

from credbridge.core.settings import Setting
from credbridge.core.types import LauncherType, lazy

VM_SETTINGS = (
    Setting("kernel", "path", doc="the guest kernel (kernel or firmware is required)"),
    Setting("firmware", "path", doc="the firmware to boot instead of a kernel"),
    Setting("initramfs", "path", doc="the initramfs for the kernel"),
    Setting("cmdline", "any", "", doc="the kernel command line (a string)"),
    Setting("memory", "size", 512 << 20, doc='guest memory: bytes or "512M", "1G"'),
    Setting("cpus", "integer", 1, doc="virtual CPUs", minimum=1, maximum=255),
    Setting("disks", "list", [], doc="disks: paths, or tables with path, readonly, options"),
    Setting(
        "serial", "string", "tty", doc='serial port: off, null, tty, pty, "file:P", "socket:P"'
    ),
    Setting("console", "string", "off", doc="virtio console, the same modes as serial"),
    Setting("net", "list", [], doc="network devices, tables passed to the hypervisor"),
    Setting("binary", "string", doc="the hypervisor program (default: found on $PATH)"),
    Setting("runtime_dir", "path", doc="the VM's runtime directory (default /run/credbridge/NAME)"),
    Setting("extra_args", "list", [], doc="extra hypervisor arguments (strings)"),
    Setting("timeout", "duration", 30.0, doc="seconds to wait for the hypervisor to start"),
)
"""The hypervisor-neutral VM description (launchers/vmspec.py reads them)."""
RUNTIME_SETTINGS = (
    Setting("allow_persistent", "bool", False, doc="allow a runtime_dir that is not on tmpfs"),
    Setting("virtiofsd", "string", doc="the virtiofsd program (default: found in known places)"),
    Setting("virtiofsd_args", "list", [], doc="extra virtiofsd arguments (strings)"),
    Setting("stop_timeout", "duration", 10.0, doc="seconds a stopping VM gets before SIGKILL"),
)
"""What the VM runtime reads (``RuntimeSettings`` in launchers/runtime.py)."""
RUNTIME_KEYS = frozenset(setting.name for setting in RUNTIME_SETTINGS)


def vm_launcher(
    name: str, implementation: str, summary: str, settings: Sequence[Setting]
) -> LauncherType:
    """The record of a VM launcher whose ``open`` is ``implementation`` (``"module:name"``,
    imported on first use); ``settings`` hold :data:`VM_SETTINGS` and
    :data:`RUNTIME_SETTINGS` and the launcher's own."""
    return LauncherType(name=name, open=lazy(implementation), summary=summary, settings=settings)
