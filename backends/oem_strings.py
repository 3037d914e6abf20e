"""``oem-strings`` — credentials as SMBIOS type 11 OEM strings, imported by the guest's systemd.

systemd (252+) in the guest imports every OEM string ``io.systemd.credential.binary:NAME=B64``
as the system credential NAME (``systemd-creds --system list``; services take it with
``LoadCredential=NAME`` or ``ImportCredential=NAME``). The binary form is always used: Base64
carries any byte (NUL, 0xff, newlines) and never a comma, bracket or quote that a hypervisor's
option parser could split on.

Limits checked before anything starts, each failure one line naming the credential:

* names follow systemd's rules (1-255 printable ASCII bytes, no ``/`` or ``:``, not ``.``/``..``)
  and carry no ``=`` (the guest splits the string at the first ``=``);
* no empty value (an OEM string with nothing after ``=`` is of no use and is easy to get wrong);
* each value at most 1 MiB (systemd's ``CREDENTIAL_SIZE_MAX``);
* at most 255 strings (the SMBIOS string count is one byte);
* all strings together (each + its NUL) within ``max_bytes``, default 49152 (48 KiB). QEMU
  documents 65535 bytes for *all* SMBIOS tables on x86; cloud-hypervisor writes its tables at
  0xF0000 with the MP table right after them in the same 64 KiB. 48 KiB leaves 16 KiB for the
  other structures (BIOS, system, chassis, processor and memory tables; the MP table grows with
  the vCPU count, ~6 KiB at 255 vCPUs). Larger secrets belong in ``fw-cfg`` or ``virtiofs``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path

from credbridge.backends.hooks.oem_strings import SETTINGS
from credbridge.backends.vm_sink import ChannelSink
from credbridge.core import (
    Delivery,
    DeliveryError,
    Secret,
    SinkContext,
)
from credbridge.core.vm import VmChannel, check_name, check_size

SINK_NAME = "oem-strings"
PREFIX = "io.systemd.credential.binary:"
MAX_STRINGS = 255
DEFAULT_MAX_BYTES = 48 * 1024
SMBIOS_TABLES_MAX = 65535


def encoded_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


class OemStringsSink(ChannelSink):
    def __init__(self, context: SinkContext) -> None:
        # Declared (backends/hooks/oem_strings.py) as an integer from 1 to SMBIOS_TABLES_MAX.
        self.max_bytes: int = context.read_settings(SETTINGS)["max_bytes"]

    def validate(self, sizes: Mapping[str, int | None]) -> None:
        """Check names, value sizes (``None``: not known yet) and the SMBIOS budget."""
        total = 0
        for index, (name, size) in enumerate(sizes.items()):
            check_name(name, "SMBIOS OEM strings", forbid="=")
            if index >= MAX_STRINGS:
                raise DeliveryError(
                    f"credential {name!r}: more than {MAX_STRINGS} credentials "
                    f"({len(sizes)}) do not fit in SMBIOS OEM strings; use the fw-cfg or "
                    "virtiofs sink"
                )
            if size is None:
                continue
            if size == 0:
                raise DeliveryError(f"credential {name!r}: empty value (nothing to deliver)")
            check_size(name, size)
            total += len(PREFIX) + len(name) + 1 + encoded_length(size) + 1
            if total > self.max_bytes:
                raise DeliveryError(
                    f"credential {name!r}: the OEM strings would reach {total} bytes, over the "
                    f"SMBIOS budget of {self.max_bytes} bytes; use the fw-cfg or virtiofs sink "
                    "for large credentials"
                )

    def place(self, name: str) -> str:
        return "SMBIOS type 11 OEM string"

    def prepare(self, deliveries: Sequence[Delivery], runtime_dir: Path) -> VmChannel:
        self.validate({d.name: len(d.value) for d in deliveries})
        strings = []
        for delivery in deliveries:
            encoded = base64.b64encode(delivery.value.reveal())
            strings.append(Secret(PREFIX.encode() + delivery.name.encode() + b"=" + encoded))
        return VmChannel(sink=SINK_NAME, oem_strings=strings, names=[d.name for d in deliveries])

    def preview(self, names: Sequence[str], runtime_dir: Path) -> VmChannel:
        return VmChannel(
            sink=SINK_NAME,
            oem_strings=[Secret(f"{PREFIX}{n}=<redacted>".encode()) for n in names],
            names=list(names),
        )


def open_sink(context: SinkContext) -> OemStringsSink:
    return OemStringsSink(context)
