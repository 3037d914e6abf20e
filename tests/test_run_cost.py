"""Per-run cost that grows with the number of credentials stays linear and small: lookups by
name, rendering references, and the files a run opens (bench/bench_core.py has the timings;
these tests count operations, never time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from credbridge.core import reference as reference_module
from credbridge.core.config import CredentialSpec, Target
from credbridge.core.reference import parse_reference


class CountedName(str):
    """A credential name that counts how often it is compared."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountedName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_credential_is_found_by_name_without_comparing_the_others() -> None:
    specs = tuple(
        CredentialSpec(CountedName(f"c{i}"), parse_reference("env:HOME")) for i in range(1000)
    )
    target = Target("app.service", "unit", "app.service", specs, "credstore")
    CountedName.compared = 0
    found = target.credential("c999")
    assert found is specs[-1]
    assert target.credential("missing") is None
    assert CountedName.compared <= 2


def test_the_first_of_two_credentials_with_one_name_is_found() -> None:
    first = CredentialSpec("c", parse_reference("env:A"))
    second = CredentialSpec("c", parse_reference("env:B"))
    target = Target("app.service", "unit", "app.service", (first, second), "credstore")
    assert target.credential("c") is first


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls = [0]
    original: Callable[..., Any] = getattr(reference_module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(reference_module, name, counted)
    return calls


def test_a_reference_is_rendered_once_however_often_it_is_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = parse_reference("generate:base64?bytes=32&id=app/key#sel%20ector")
    quotes = counting(monkeypatch, "quote")
    encodes = counting(monkeypatch, "urlencode")
    first = str(reference)
    once = (quotes[0], encodes[0])
    assert once[0] >= 1 and once[1] == 1
    assert [str(reference) for _ in range(5)] == [first] * 5
    assert (quotes[0], encodes[0]) == once
    assert parse_reference(first) == reference
