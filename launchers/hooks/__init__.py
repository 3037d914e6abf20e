"""The registration modules of credbridge's built-in launcher plugins.

Each module here is what one entry point of the ``credbridge`` group names: it only declares
the launcher's record; ``open`` imports the implementation in ``credbridge.launchers.*`` when a
VM target is launched, planned or checked.
"""

from __future__ import annotations

VM_KEYS = frozenset(
    {
        "kernel",
        "firmware",
        "initramfs",
        "cmdline",
        "memory",
        "cpus",
        "disks",
        "serial",
        "console",
        "net",
        "binary",
        "runtime_dir",
        "extra_args",
        "timeout",
    }
)
"""The hypervisor-neutral VM description (launchers/vmspec.py reads them)."""
RUNTIME_KEYS = frozenset({"allow_persistent", "virtiofsd", "virtiofsd_args", "stop_timeout"})
"""What the VM runtime reads (launchers/runtime.py)."""
