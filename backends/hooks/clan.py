"""The ``clan-vars`` plugin: the ``clan-vars:`` source (implementation: backends/clan.py).

Loading it costs this module and the sops settings it shares (backends/hooks/sops.py); sops
runs when a var is read.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.backends.hooks.sops import AGE_KEY, AGE_KEY_FILE, BINARY, CONCURRENCY, TIMEOUT
from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.clan"
SETTINGS = (
    Setting("directory", "path", doc="the clan's directory, holding vars/ and sops/ (required)"),
    Setting("machine", "string", doc="the clan machine whose vars are read"),
    BINARY,
    AGE_KEY,
    AGE_KEY_FILE,
    TIMEOUT,
    CONCURRENCY,
)
"""``[sources.clan-vars]``; backends/clan.py reads them."""


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
