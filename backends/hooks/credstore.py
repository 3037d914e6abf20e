"""The ``credstore`` plugin: systemd credstore files (implementation: backends/credstore.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SinkType, lazy

SETTINGS = (
    Setting(
        "directory",
        "path",
        doc="the credstore root (/run/credstore; encrypted: /etc/credstore.encrypted)",
    ),
    Setting(
        "allow_persistent", "bool", False, doc="allow plaintext on a file system that is not tmpfs"
    ),
    Setting("owner", "any", doc="owner of the target's directory (name or numeric id)"),
    Setting("group", "any", doc="group of the target's directory (name or numeric id)"),
    Setting(
        "encrypt", "any", False, doc='encrypt with systemd-creds: true, false or a key like "tpm2"'
    ),
    Setting("with_key", "string", doc="systemd-creds --with-key (default host)"),
    Setting("tpm2_pcrs", "any", doc='PCRs a TPM2 key is bound to, like "7" or "0+7"'),
    Setting("systemd_creds", "string", "systemd-creds", doc="the systemd-creds program"),
    Setting("timeout", "duration", 30.0, doc="seconds one systemd-creds run may take"),
)
"""``[sinks.credstore]`` and a unit target's ``sink`` table."""


@hookimpl
def credbridge_sinks() -> Iterator[SinkType]:
    yield SinkType(
        name="credstore",
        open=lazy("credbridge.backends.credstore:CredstoreSink"),
        summary="systemd credstore files (0400, atomic set swap) + LoadCredential= drop-in",
        target_kinds=("unit",),
        settings=SETTINGS,
    )
