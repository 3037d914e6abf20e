"""What the built-in VM sinks (``oem-strings``, ``fw-cfg``, ``virtiofs``) share: a plan.

Each checks names and sizes with the same ``validate`` for a plan (sizes of values not made
yet are ``None``) as for a launch, and plans every credential as added where its channel puts
it; only the checks and the place differ.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

from credbridge.core import Change, Pending, PlanEntry, Secret
from credbridge.core.vm import VmSink


class ChannelSink(VmSink):
    """A VM sink whose plan is its checks and, for each credential, where it goes."""

    @abc.abstractmethod
    def validate(self, sizes: Mapping[str, int | None]) -> None:
        """Raise :class:`~credbridge.core.DeliveryError` naming the credential that cannot go
        through this channel (``None``: its size is not known yet)."""

    @abc.abstractmethod
    def place(self, name: str) -> str:
        """Where credential ``name`` shows up in the guest, as a plan line says it."""

    def plan(self, credentials: Mapping[str, Secret | Pending]) -> list[PlanEntry]:
        self.validate({n: Pending.size_of(v) for n, v in credentials.items()})
        return [
            PlanEntry(
                name,
                Change.ADD,
                self.place(name) + (f" ({v.reason})" if isinstance(v, Pending) else ""),
            )
            for name, v in credentials.items()
        ]
