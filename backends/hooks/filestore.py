"""The ``filestore`` plugin: the ``file`` store of generated values (backends/filestore.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import StoreType, lazy

SETTINGS = frozenset({"path", "seal", "tpm2_pcrs"})


@hookimpl
def credbridge_stores() -> Iterator[StoreType]:
    yield StoreType(
        name="file",
        open=lazy("credbridge.backends.filestore:open_store"),
        summary="0400 files under a 0700 directory (default /var/lib/credbridge), "
        "sealed with systemd-creds with seal",
        settings=SETTINGS,
    )
