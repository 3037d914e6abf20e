"""The ``local`` plugin: ``file:``, ``env:``, ``credential:`` (implementation: local.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.local"


SUMMARIES = {
    "file": "a file on this machine (relative paths: from the config's directory)",
    "env": "an environment variable of the credbridge process",
    "credential": "a systemd credential in $CREDENTIALS_DIRECTORY (LoadCredential= of this unit)",
}
"""The schemes, each opened by ``open_SCHEME`` and checked by ``validate_SCHEME`` in local.py."""


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    for scheme, summary in SUMMARIES.items():
        yield SourceType(
            scheme=scheme,
            open=lazy(f"{IMPL}:open_{scheme}"),
            summary=summary,
            options=("strip",),
            settings=(),
            validate=lazy(f"{IMPL}:validate_{scheme}"),
        )
