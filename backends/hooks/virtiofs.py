"""The ``virtiofs`` plugin: a read-only virtiofs share (implementation: backends/virtiofs.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SinkType, lazy

SETTINGS = (
    Setting(
        "tag",
        "string",
        "credbridge",
        doc="the virtio-fs tag the guest mounts (1-36 of letters, digits, '_.-')",
    ),
)
"""A VM target's ``sink`` table with ``type = "virtiofs"``."""


@hookimpl
def credbridge_sinks() -> Iterator[SinkType]:
    yield SinkType(
        name="virtiofs",
        open=lazy("credbridge.backends.virtiofs:open_sink"),
        summary="files in a per-VM tmpfs directory shared read-only through virtiofsd",
        target_kinds=("vm",),
        settings=SETTINGS,
    )
