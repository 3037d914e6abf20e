"""The ``sops`` plugin: the ``sops:`` source and the ``sops`` store (backends/sops.py).

Loading it costs this module only; the sops binary is looked up when a file is decrypted.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SourceType, StoreType, lazy

IMPL = "credbridge.backends.sops"
OPTIONS = frozenset({"type"})
BINARY = Setting("binary", "path", doc="the sops program (default: sops on $PATH)")
AGE_KEY = Setting(
    "age_key", "string", doc="a reference to an age identity (credential:, file:, env:)"
)
AGE_KEY_FILE = Setting("age_key_file", "path", doc="an age identity file")
TIMEOUT = Setting("timeout", "duration", 30.0, doc="seconds one sops run may take")
CONCURRENCY = Setting("concurrency", "integer", doc="sops runs at once", minimum=1, maximum=256)
"""What every table that runs sops holds (``clan-vars:`` too); backends/sops_cli.py reads them."""
CONFIG = Setting("config", "path", doc="a .sops.yaml to use instead of searching upward")
SOURCE_SETTINGS = (BINARY, CONFIG, AGE_KEY, AGE_KEY_FILE, TIMEOUT, CONCURRENCY)
"""``[sources.sops]``; backends/sops.py reads them."""
STORE_SETTINGS = (
    Setting("path", "path", doc="the sops file generated values are kept in (required)"),
    BINARY,
    CONFIG,
    AGE_KEY,
    AGE_KEY_FILE,
    Setting("age_recipients", "list", [], doc="age public keys to encrypt a new file to"),
    TIMEOUT,
)
"""``[store]`` with ``type = "sops"``; backends/sops.py reads them."""


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
