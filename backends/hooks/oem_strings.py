"""The ``oem-strings`` plugin: SMBIOS type 11 OEM strings (implementation: oem_strings.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SinkType, lazy

SETTINGS = (
    Setting(
        "max_bytes",
        "integer",
        48 * 1024,
        doc="bytes all OEM strings may take",
        minimum=1,
        maximum=65535,
    ),
)
"""A VM target's ``sink`` table with ``type = "oem-strings"``."""


@hookimpl
def credbridge_sinks() -> Iterator[SinkType]:
    yield SinkType(
        name="oem-strings",
        open=lazy("credbridge.backends.oem_strings:open_sink"),
        summary="SMBIOS type 11 OEM strings, imported by systemd in the guest",
        target_kinds=("vm",),
        settings=SETTINGS,
    )
