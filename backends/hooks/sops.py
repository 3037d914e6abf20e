"""The ``sops`` plugin: the ``sops:`` source and the ``sops`` store (backends/sops.py).

Loading it costs this module only; the sops binary is looked up when a file is decrypted.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, StoreType, lazy

IMPL = "credbridge.backends.sops"
OPTIONS = frozenset({"type"})
SOURCE_SETTINGS = frozenset(
    {"binary", "config", "age_key", "age_key_file", "timeout", "concurrency"}
)
STORE_SETTINGS = frozenset(
    {"path", "binary", "config", "age_key", "age_key_file", "age_recipients", "timeout"}
)


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    yield SourceType(
        scheme="sops",
        open=lazy(f"{IMPL}:open_source"),
        summary="sops-encrypted YAML/JSON/dotenv/INI/binary files (sops:PATH#/key), sops CLI",
        options=OPTIONS,
        settings=SOURCE_SETTINGS,
        selectors=True,
        validate=lazy(f"{IMPL}:validate_reference"),
    )


@hookimpl
def credbridge_stores() -> Iterator[StoreType]:
    yield StoreType(
        name="sops",
        open=lazy(f"{IMPL}:open_store"),
        summary="generated values in a sops-encrypted YAML/JSON file (sops set, .sops.yaml rules)",
        settings=STORE_SETTINGS,
    )
