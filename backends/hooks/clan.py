"""The ``clan-vars`` plugin: the ``clan-vars:`` source (implementation: backends/clan.py).

Loading it costs this module only; sops runs when a var is read.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.clan"
SETTINGS = (
    Setting("directory", "path", doc="the clan's directory, holding vars/ and sops/ (required)"),
    Setting("machine", "string", doc="the clan machine whose vars are read"),
    Setting("binary", "path", doc="the sops program (default: sops on $PATH)"),
    Setting("age_key", "string", doc="a reference to an age identity (credential:, file:, env:)"),
    Setting("age_key_file", "path", doc="an age identity file"),
    Setting("timeout", "duration", 30.0, doc="seconds one sops run may take"),
    Setting("concurrency", "integer", doc="sops runs at once", minimum=1, maximum=256),
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
