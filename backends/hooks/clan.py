"""The ``clan-vars`` plugin: the ``clan-vars:`` source (implementation: backends/clan.py).

Loading it costs this module only; sops runs when a var is read.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.clan"
SETTINGS = frozenset(
    {"directory", "machine", "binary", "age_key", "age_key_file", "timeout", "concurrency"}
)


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    yield SourceType(
        scheme="clan-vars",
        open=lazy(f"{IMPL}:open_source"),
        summary="secrets clan vars generated (clan-vars:GENERATOR/FILE), sops CLI",
        options=("strip",),
        settings=SETTINGS,
        selectors=True,
        validate=lazy(f"{IMPL}:validate_reference"),
    )
