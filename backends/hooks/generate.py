"""The ``generate`` plugin: ``generate:`` and ``stored:`` (implementation: backends/generate.py).

Loading it costs this module only; ``cryptography`` is imported when a key is generated.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.generate"
FORMATS = "credbridge.backends.generators"
"""What each kind takes and makes; checking a reference loads this and not the sources."""
GENERATE_OPTIONS = frozenset(
    {
        "bytes",
        "length",
        "charset",
        "id",
        "comment",
        "bits",
        "curve",
        "cn",
        "san",
        "ca",
        "days",
        "key",
    }
)
"""Every option of every generator; backends/generate.py says which kind takes which."""
STORED_OPTIONS = frozenset({"version"})


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    yield SourceType(
        scheme="generate",
        open=lazy(f"{IMPL}:open_generate"),
        summary=(
            "random values (base64, hex, password, uuid, bytes) and keys (ssh-*, wireguard, "
            "age, tls-ca, tls, ed25519, x25519), persisted in the store"
        ),
        options=GENERATE_OPTIONS,
        settings=(),
        selectors=True,
        validate=lazy(f"{FORMATS}:validate_generate"),
        public=lazy(f"{FORMATS}:selects_public"),
    )
    yield SourceType(
        scheme="stored",
        open=lazy(f"{IMPL}:open_stored"),
        summary="values in the store of generated values (?version=previous after a rotate)",
        options=STORED_OPTIONS,
        settings=(),
        selectors=True,
        validate=lazy(f"{IMPL}:validate_stored"),
        public=lazy(f"{IMPL}:stored_selects_public"),
    )
