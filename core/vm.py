"""The contract between VM sinks (backends/) and VM launchers (launchers/).

A VM sink turns resolved credentials into a hypervisor-neutral :class:`VmChannel` (SMBIOS OEM
strings, fw_cfg files, a virtiofs directory); a launcher maps that channel onto its
hypervisor (cloud-hypervisor's ``vm.create`` body, QEMU's ``-smbios``/``-fw_cfg``/
``vhost-user-fs-pci``). Values stay inside :class:`~credbridge.core.secret.Secret` until the
launcher writes them where only the hypervisor reads them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from credbridge.core.errors import DeliveryError
from credbridge.core.secret import Secret
from credbridge.core.types import Delivery, Sink, Staged

FW_CFG_PREFIX = "opt/io.systemd.credentials/"


@dataclass(frozen=True)
class FwCfgItem:
    """One fw_cfg blob: ``name`` is the full item name, ``path`` a 0400 file with the value."""

    name: str
    path: Path


@dataclass(frozen=True)
class VirtiofsShare:
    """A host directory to export read-only through virtiofsd under ``tag``."""

    tag: str
    directory: Path


@dataclass
class VmChannel:
    """What a VM sink prepared for one launch."""

    sink: str
    oem_strings: list[Secret] = field(default_factory=list)
    """Complete SMBIOS type 11 strings (``io.systemd.credential.binary:NAME=BASE64``)."""
    fw_cfg: list[FwCfgItem] = field(default_factory=list)
    virtiofs: list[VirtiofsShare] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    """Credential names carried (for plans and logs; never values)."""


class VmSink(Sink):
    """A sink whose delivery happens at VM launch, through :meth:`prepare`."""

    @abc.abstractmethod
    def prepare(self, deliveries: Sequence[Delivery], runtime_dir: Path) -> VmChannel:
        """Validate and materialise the credentials for one launch.

        ``runtime_dir`` is a private (0700) directory that the launcher removes when the VM
        exits; files written there must be 0400. Raise :class:`DeliveryError` naming the
        credential at fault (never the value) when a limit is exceeded.
        """

    def preview(self, names: Sequence[str], runtime_dir: Path) -> VmChannel:
        """The channel :meth:`prepare` would build, without values or files (dry-run plans).

        Same paths, items and shares as a real launch; ``oem_strings`` hold placeholders
        (``io.systemd.credential.binary:NAME=<redacted>``), never values.
        """
        return VmChannel(sink=type(self).__name__, names=list(names))

    def cleanup(self, channel: VmChannel) -> None:
        """Remove what :meth:`prepare` created outside ``runtime_dir`` (e.g. a share dir)."""

    def stage(self, deliveries: Sequence[Delivery]) -> Staged:
        raise DeliveryError("VM sinks deliver when the VM starts: use 'credbridge launch'")
