"""The ``local`` plugin: ``file:``, ``env:``, ``credential:`` (implementation: local.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.local"


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    yield SourceType(
        scheme="file",
        open=lazy(f"{IMPL}:open_file"),
        summary="a file on this machine (relative paths: from the config's directory)",
        options=("strip",),
        settings=(),
        validate=lazy(f"{IMPL}:validate_file"),
    )
    yield SourceType(
        scheme="env",
        open=lazy(f"{IMPL}:open_env"),
        summary="an environment variable of the credbridge process",
        options=("strip",),
        settings=(),
        validate=lazy(f"{IMPL}:validate_env"),
    )
    yield SourceType(
        scheme="credential",
        open=lazy(f"{IMPL}:open_credential"),
        summary="a systemd credential in $CREDENTIALS_DIRECTORY (LoadCredential= of this unit)",
        options=("strip",),
        settings=(),
        validate=lazy(f"{IMPL}:validate_credential"),
    )
