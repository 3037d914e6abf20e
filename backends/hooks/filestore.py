"""The ``filestore`` plugin: the ``file`` store of generated values (backends/filestore.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import StoreType, lazy

STORE_PATH = Setting(
    "path", "path", doc="the store directory ($CREDBRIDGE_STORE, /var/lib/credbridge)"
)
SETTINGS = (
    STORE_PATH,
    Setting(
        "seal",
        "any",
        False,
        doc='false, or the systemd-creds key sealing each value: "host", "tpm2", '
        '"host+tpm2", "auto"',
    ),
    Setting("tpm2_pcrs", "any", doc='PCRs a "tpm2" seal binds to, as "7" or "0+7"'),
)
"""``[store]`` with ``type = "file"``."""


@hookimpl
def credbridge_stores() -> Iterator[StoreType]:
    yield StoreType(
        name="file",
        open=lazy("credbridge.backends.filestore:open_store"),
        summary="0400 files under a 0700 directory (default /var/lib/credbridge), "
        "sealed with systemd-creds with seal",
        settings=SETTINGS,
    )
