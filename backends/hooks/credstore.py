"""The ``credstore`` plugin: systemd credstore files (implementation: backends/credstore.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SinkType, lazy

SETTINGS = frozenset(
    {
        "directory",
        "allow_persistent",
        "owner",
        "group",
        "encrypt",
        "with_key",
        "tpm2_pcrs",
        "systemd_creds",
        "timeout",
    }
)


@hookimpl
def credbridge_sinks() -> Iterator[SinkType]:
    yield SinkType(
        name="credstore",
        open=lazy("credbridge.backends.credstore:CredstoreSink"),
        summary="systemd credstore files (0400, atomic set swap) + LoadCredential= drop-in",
        target_kinds=("unit",),
        settings=SETTINGS,
    )
