"""The ``virtiofs`` plugin: a read-only virtiofs share (implementation: backends/virtiofs.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SinkType, lazy

SETTINGS = frozenset({"tag"})


@hookimpl
def credbridge_sinks() -> Iterator[SinkType]:
    yield SinkType(
        name="virtiofs",
        open=lazy("credbridge.backends.virtiofs:open_sink"),
        summary="files in a per-VM tmpfs directory shared read-only through virtiofsd",
        target_kinds=("vm",),
        settings=SETTINGS,
    )
