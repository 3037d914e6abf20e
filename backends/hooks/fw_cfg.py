"""The ``fw-cfg`` plugin: QEMU fw_cfg items (implementation: backends/fw_cfg.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SinkType, lazy

SETTINGS: tuple[Setting, ...] = ()


@hookimpl
def credbridge_sinks() -> Iterator[SinkType]:
    yield SinkType(
        name="fw-cfg",
        open=lazy("credbridge.backends.fw_cfg:open_sink"),
        summary="QEMU fw_cfg items opt/io.systemd.credentials/NAME (files, never values)",
        target_kinds=("vm",),
        settings=SETTINGS,
    )
