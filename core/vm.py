"""The contract between VM sinks (backends/) and VM launchers (launchers/).

A VM sink turns resolved credentials into a hypervisor-neutral :class:`VmChannel` (SMBIOS OEM
strings, fw_cfg files, a virtiofs directory); a launcher maps that channel onto its
hypervisor (cloud-hypervisor's ``vm.create`` body, QEMU's ``-smbios``/``-fw_cfg``/
``vhost-user-fs-pci``). The set of channels is open: a sink and a launcher that both know
another one (say ``vsock``) carry its items in :attr:`VmChannel.other`, and every launcher
refuses, by name, a channel it does not take (:meth:`VmChannel.check_taken`). Values stay
inside :class:`~credbridge.core.secret.Secret` until the launcher writes them where only the
hypervisor reads them.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from credbridge.core.errors import DeliveryError, LaunchError
from credbridge.core.interfaces import Delivery, Sink, Staged
from credbridge.core.records import field, record
from credbridge.core.secret import Secret

FW_CFG_PREFIX = "opt/io.systemd.credentials/"
CREDENTIAL_SIZE_MAX = 1 << 20
"""systemd's per-credential limit (``CREDENTIAL_SIZE_MAX``, src/shared/creds-util.h): 1 MiB
from systemd 250 through 258 at least; also its per-import total of VM credentials."""
CREDENTIALS_TOTAL_SIZE_MAX = CREDENTIAL_SIZE_MAX
"""systemd's limit on what one unit receives (``CREDENTIALS_TOTAL_SIZE_MAX``, the same 1 MiB):
each credential counts the length of its name plus its size (exec-credential.c); one more
byte fails the unit with "Argument list too long" before it starts."""
NAME_MAX = 255
BUILT_IN_CHANNELS = ("oem_strings", "fw_cfg", "virtiofs")
"""The channels :class:`VmChannel` names as fields; any other is a key of ``other``."""
RUNTIME_LOCK = ".credbridge.lock"
"""The lock file a launch holds in its runtime directory while the VM runs (its pid inside)."""


def running_launch(runtime_dir: Path) -> int | None:
    """The pid of the ``credbridge launch`` whose VM runs in ``runtime_dir``, or ``None``.

    Read from :data:`RUNTIME_LOCK` (no lock is taken: a launch starting meanwhile must not
    find it held); a pid that is gone is a crashed launch's leftover, not a running VM."""
    try:
        fd = os.open(runtime_dir / RUNTIME_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 32).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid systemd credential name, or ``None``."""
    if not name:
        return "empty name"
    if name in {".", ".."}:
        return "'.' and '..' are not credential names"
    for char in name:
        if not " " <= char <= "~":
            return "only printable ASCII is allowed"
        if char in "/:":
            return f"{char!r} is not allowed"
    if len(name) > NAME_MAX:  # ASCII by now: characters are bytes
        return f"longer than {NAME_MAX} bytes"
    return None


def check_name(name: str, channel: str, *, forbid: str = "", max_length: int = NAME_MAX) -> None:
    """Raise :class:`DeliveryError` naming the credential if ``channel`` cannot carry ``name``."""
    problem = name_problem(name)
    if problem is None:
        bad = [c for c in forbid if c in name]
        if bad:
            problem = f"{bad[0]!r} is not allowed"
        elif len(name) > max_length:
            problem = f"longer than {max_length} characters"
    if problem is not None:
        raise DeliveryError(f"credential {name!r}: invalid name for {channel}: {problem}")


def check_size(name: str, size: int) -> None:
    """Raise :class:`DeliveryError` when one value exceeds what systemd imports."""
    if size > CREDENTIAL_SIZE_MAX:
        raise DeliveryError(
            f"credential {name!r}: {size} bytes is over systemd's limit of "
            f"{CREDENTIAL_SIZE_MAX} bytes (1 MiB) per credential"
        )


def check_unit_total(unit: str, sizes: Mapping[str, int]) -> None:
    """Raise :class:`DeliveryError` when a unit's credentials together exceed what systemd
    passes to one unit (names count, as systemd counts them); names the largest."""
    total = sum(len(name) + size for name, size in sizes.items())
    if total > CREDENTIALS_TOTAL_SIZE_MAX:
        largest = max(sizes, key=lambda name: (sizes[name], name))
        raise DeliveryError(
            f"{unit}: its {len(sizes)} credentials take {total} bytes (names included), over "
            f"systemd's limit of {CREDENTIALS_TOTAL_SIZE_MAX} bytes (1 MiB) per unit; "
            f"the largest is {largest!r} ({sizes[largest]} bytes)"
        )


@record(frozen=True)
class FwCfgItem:
    """One fw_cfg blob: ``name`` is the full item name, ``path`` a 0400 file with the value."""

    name: str
    path: Path


@record(frozen=True)
class VirtiofsShare:
    """A host directory to export read-only through virtiofsd under ``tag``."""

    tag: str
    directory: Path


@record
class VmChannel:
    """What a VM sink prepared for one launch."""

    sink: str
    oem_strings: list[Secret] = field(default_factory=list)
    """Complete SMBIOS type 11 strings (``io.systemd.credential.binary:NAME=BASE64``)."""
    fw_cfg: list[FwCfgItem] = field(default_factory=list)
    virtiofs: list[VirtiofsShare] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    """Credential names carried (for plans and logs; never values)."""
    other: dict[str, list[Any]] = field(default_factory=dict)
    """Items of channels beyond the built-in ones, by channel name: what a sink made for a
    launcher that knows that channel (their own agreement; nothing here reads the items)."""

    def carried(self) -> list[str]:
        """The channels that hold items: the built-in ones by field name, then ``other``'s."""
        built_in = [name for name in BUILT_IN_CHANNELS if getattr(self, name)]
        return built_in + [name for name, items in self.other.items() if items]

    def check_taken(self, target: str, launcher: str, takes: Collection[str]) -> None:
        """Raise :class:`LaunchError` when the channel holds items of a channel that
        ``launcher`` does not take (``takes``: the channel names it maps onto its hypervisor)."""
        refused = [name for name in self.carried() if name not in takes]
        if refused:
            raise LaunchError(
                f"{target}: sink {self.sink!r} produced {', '.join(refused)} items, which the "
                f"{launcher} launcher does not take"
            )


class VmSink(Sink):
    """A sink whose delivery happens at VM launch, through :meth:`prepare`."""

    changes_after_boot: ClassVar[bool] = False
    """Whether :meth:`update` can change what a running VM reads (a shared directory), or
    the channel is fixed once the VM booted (SMBIOS, fw_cfg): ``credbridge agent`` then
    restarts the VM's unit as its ``on_change`` says, or reports the VM stale."""

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

    def update(self, deliveries: Sequence[Delivery], runtime_dir: Path) -> list[str]:
        """Replace, in place, what the VM running in ``runtime_dir`` reads through this
        channel; the names that changed (added, changed or removed). Only for sinks with
        :attr:`changes_after_boot`; all or nothing, as :meth:`prepare`."""
        raise DeliveryError(f"{type(self).__name__}: the channel cannot change after boot")

    def cleanup(self, channel: VmChannel) -> None:
        """Remove what :meth:`prepare` created outside ``runtime_dir`` (e.g. a share dir)."""

    def stage(self, deliveries: Sequence[Delivery]) -> Staged:
        raise DeliveryError("VM sinks deliver when the VM starts: use 'credbridge launch'")
