"""The ``generate`` plugin: ``generate:`` and ``stored:`` (implementation: backends/generate.py)."""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.generate"
GENERATE_OPTIONS = frozenset({"bytes", "length", "charset", "id"})
STORED_OPTIONS = frozenset({"version"})


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    yield SourceType(
        scheme="generate",
        open=lazy(f"{IMPL}:open_generate"),
        summary="random values (base64, hex, password, uuid, bytes), persisted in the store",
        options=GENERATE_OPTIONS,
        settings=(),
        selectors=False,
        validate=lazy(f"{IMPL}:validate_generate"),
    )
    yield SourceType(
        scheme="stored",
        open=lazy(f"{IMPL}:open_stored"),
        summary="values in the store of generated values (?version=previous after a rotate)",
        options=STORED_OPTIONS,
        settings=(),
        selectors=False,
        validate=lazy(f"{IMPL}:validate_stored"),
    )
