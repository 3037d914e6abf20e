from __future__ import annotations

from pathlib import Path

import pytest
from credbridge.core import (
    BadReference,
    InvalidValue,
    NotFound,
    Secret,
    SecretDocument,
    parse_reference,
    resolve,
)


def test_parse_full_reference() -> None:
    ref = parse_reference("vault:secret/app/db?version=3&kv=2#/db/password")
    assert ref.scheme == "vault"
    assert ref.path == "secret/app/db"
    assert ref.options == {"version": "3", "kv": "2"}
    assert ref.selector == "/db/password"


def test_canonical_form_round_trips() -> None:
    ref = parse_reference("generate:password?length=24&charset=alnum")
    assert parse_reference(str(ref)) == ref
    assert str(ref) == "generate:password?charset=alnum&length=24"


def test_percent_encoding_in_path() -> None:
    ref = parse_reference("file:/tmp/a%23b%3Fc")
    assert ref.path == "/tmp/a#b?c"
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty reference"),
        ("nocolon", "missing 'SCHEME:'"),
        ("Bad:x", "invalid scheme"),
        ("file:", "empty path"),
        ("file:/x#", "empty selector"),
        ("file:/x?a=1&a=2", "given twice"),
        ("file:/x?novalue", "KEY=VALUE"),
        (" file:/x", "one line"),
        ("file:/x#/a~2b", "JSON pointer escape"),
    ],
)
def test_bad_references_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(BadReference) as info:
        parse_reference(text)
    assert problem in str(info.value)
    assert info.value.exit_code == 4


def test_pointer_and_key_selection() -> None:
    doc = Secret(
        b'{"db": {"password": "pw", "port": 5432, "a/b": "slash", "list": ["x", "y"]}, "top": "t"}'
    )
    assert parse_reference("file:/x#/db/password").select(doc).reveal() == b"pw"
    assert parse_reference("file:/x#/db/port").select(doc).reveal() == b"5432"
    assert parse_reference("file:/x#/db/a~1b").select(doc).reveal() == b"slash"
    assert parse_reference("file:/x#/db/list/1").select(doc).reveal() == b"y"
    assert parse_reference("file:/x#top").select(doc).reveal() == b"t"
    assert parse_reference("file:/x#/db/list").select(doc).reveal() == b'["x","y"]'


def test_selection_errors_are_typed_and_do_not_echo_values() -> None:
    doc = Secret(b'{"db": {"password": "hunter2"}}')
    with pytest.raises(NotFound) as info:
        parse_reference("file:/x#/db/user").select(doc)
    assert "/db/user" in str(info.value)
    assert "hunter2" not in str(info.value)
    with pytest.raises(InvalidValue) as bad:
        parse_reference("file:/x#key").select(Secret(b"hunter2 is not json"))
    assert "hunter2" not in str(bad.value)


def test_no_selector_on_single_field_document() -> None:
    ref = parse_reference("vault:secret/x")
    assert ref.select(SecretDocument({"only": "v"})).reveal() == b"v"
    with pytest.raises(InvalidValue, match="2 fields"):
        ref.select(SecretDocument({"a": "1", "b": "2"}))


def test_a_selected_object_is_canonical_json(tmp_path: Path) -> None:
    """A JSON pointer to an object yields compact JSON with sorted keys: the same bytes on
    every run, whatever order the document lists them in (no spurious change or restart)."""
    from credbridge.core import Request, Session, parse_reference
    from credbridge.core.config import parse_config

    document = tmp_path / "app.json"
    document.write_text('{"cfg": {"zeta": 1, "alpha": {"y": true, "b": null}}}')
    request = Request(parse_reference(f"file:{document}#/cfg"))
    with Session(parse_config({})) as session:
        (value,) = session.resolve([request]).values()
    assert value.reveal() == b'{"alpha":{"b":null,"y":true},"zeta":1}'


def test_int_option_bounds_by_default_are_0_to_1_mib() -> None:
    """The documented defaults of ``Reference.int_option`` (docs/plugins.md), for plugins."""
    for value in (0, 1 << 20):
        assert parse_reference(f"demo:x?n={value}").int_option("n", 5) == value
    with pytest.raises(BadReference, match=r"option n=1048577 is outside 0\.\.1048576"):
        parse_reference("demo:x?n=1048577").int_option("n", 5)
    assert parse_reference("demo:x").int_option("n", 5) == 5


def test_flag_option_reads_one_set_of_yes_no_words(tmp_path: Path) -> None:
    """``?strip=`` of file: and clan-vars: and ``VAULT_SKIP_VERIFY`` read the same words."""
    for word in ("true", "YES", "on", "1", "t"):
        assert parse_reference(f"demo:x?f={word}").flag_option("f") is True
    for word in ("false", "No", "off", "0", "f"):
        assert parse_reference(f"demo:x?f={word}").flag_option("f", True) is False
    assert parse_reference("demo:x?f=").flag_option("f", True) is True
    with pytest.raises(BadReference, match="f must be true or false"):
        parse_reference("demo:x?f=maybe").flag_option("f")
    (tmp_path / "value").write_text("token\n")
    ref = f"file:{tmp_path}/value?strip=on"
    assert resolve([ref])[ref].reveal() == b"token"
    with pytest.raises(BadReference, match="strip must be true or false"):
        resolve([f"file:{tmp_path}/value?strip=maybe"])


def test_int_option_takes_at_most_20_digits() -> None:
    twenty = parse_reference("demo:x?n=" + "0" * 19 + "7")
    assert twenty.int_option("n", 5) == 7
    with pytest.raises(BadReference, match="is not an integer"):
        parse_reference("demo:x?n=" + "0" * 20 + "7").int_option("n", 5)


def test_a_bad_option_is_echoed_as_written() -> None:
    """``+`` decodes to a space (form encoding): the message quotes what the user wrote."""
    with pytest.raises(BadReference, match=r"option bytes='\+32' is not an integer"):
        parse_reference("generate:hex?bytes=+32").int_option("bytes", 32)
    with pytest.raises(BadReference, match=r"option n='%2B1' is not an integer"):
        parse_reference("demo:x?a=1&n=%2B1#f").int_option("n", 5)
    with pytest.raises(BadReference, match=r"unknown charset '\+alnum'"):
        resolve(["generate:password?charset=+alnum"])
    with pytest.raises(BadReference, match=r"option curve='\+p256' is not one of"):
        resolve(["generate:ssh-ecdsa?curve=+p256"])


def test_a_pointer_one_past_the_end_of_a_list_is_not_found() -> None:
    document = SecretDocument({"hosts": ["a", "b", "c"]})
    assert parse_reference("demo:x#/hosts/2").select(document).reveal() == b"c"
    with pytest.raises(NotFound, match="no element '/hosts/3' in the secret"):
        parse_reference("demo:x#/hosts/3").select(document)
