"""Resolving references through a real ``Session``, as the tests of every source do."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from credbridge.core import Request, Secret, Session, parse_config, parse_reference


def _resolved(
    config: Mapping[str, Any],
    refs: tuple[str, ...],
    directory: Path | None,
    reveal: Callable[[Secret], Any],
) -> dict[str, Any]:
    requests = [Request(parse_reference(r)) for r in refs]
    with Session(parse_config(config, directory=directory)) as session:
        for request in requests:
            session.check_reference(request.reference)
        outcomes = session.resolve(requests)
    out: dict[str, Any] = {}
    for ref, request in zip(refs, requests, strict=True):
        value = outcomes[request]
        out[ref] = reveal(value) if isinstance(value, Secret) else value
    return out


def resolve(config: Mapping[str, Any], *refs: str, directory: Path | None = None) -> dict[str, Any]:
    """Each reference checked, then all resolved in one Session: values revealed as bytes,
    failures as the SourceError."""
    return _resolved(config, refs, directory, Secret.reveal)


def resolve_text(config: Mapping[str, Any], *refs: str) -> dict[str, Any]:
    """As ``resolve``, values revealed as text."""
    return _resolved(config, refs, None, Secret.reveal_text)


def resolve_all(config: dict[str, Any], *refs: str) -> list[Any]:
    """All resolved in one Session without checking each first: values as text, in order."""
    requests = [Request(parse_reference(r)) for r in refs]
    with Session(parse_config(config)) as session:
        outcomes = session.resolve(requests)
    return [
        outcomes[r].reveal_text() if isinstance(outcomes[r], Secret) else outcomes[r]
        for r in requests
    ]
