"""``vault:`` compared with what OpenBao's own client prints for the same secret.

Secrets are written with ``bao kv put`` and read back with ``bao kv get -format=json`` and
``bao read -format=json`` against a real dev server; every value credbridge returns must be
what those print (a string as its bytes, anything else as compact JSON), for odd keys and
every JSON type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, secret_value
from credbridge.core import BadReference, NotFound, parse_reference
from credbridge.core.errors import ExitCode
from support.openbao import DevServer, openbao
from support.servers import unique
from support.sessions import resolve_text as resolve
from support.vault_setup import clean_vault_env, root_config, token_file, vault_config, write_toml

pytestmark = pytest.mark.vault

__all__ = ["clean_vault_env", "openbao"]  # fixtures, imported so pytest finds them here

ODD_DOCUMENT: dict[str, Any] = {
    "dotted.key": "dot-value-7f3a",
    "a/b": "slash-value-7f3a",
    "with space": "space value 7f3a",
    "ünïcødé-ключ": "ünïcødé-значение-7f3a",
    "": "empty-key-value-7f3a",
    "~tilde": "tilde-value-7f3a",
    "multi": "line one 7f3a\nline two\n\n",
    "trailing-space": "value 7f3a  ",
    "number": 5432,
    "float": 0.5,
    "negative": -17,
    "yes": True,
    "no": False,
    "nothing": None,
    "list": [1, "two", None],
    "object": {"inner": "inner-value-7f3a", "n": 1},
    "empty-string": "",
}


def bao_json(server: DevServer, *args: str) -> Any:
    """``bao kv get ...`` / ``bao read ...`` with ``-format=json`` (flags go before the path)."""
    words = 2 if args[0] == "kv" else 1
    return json.loads(server.bao(*args[:words], "-format=json", *args[words:]).stdout)


def as_delivered(value: Any) -> bytes:
    """What docs/references.md promises for a selected value: a string's UTF-8 bytes, else
    compact JSON (what ``bao kv get -format=json`` holds, re-serialised without spaces)."""
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def pointer(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


def reference_for(path: str, key: str) -> str:
    """A reference to one field, percent-encoded as a user would write it."""
    return str(parse_reference(f"vault:{path}")) + "#" + _quote(pointer(key))


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/~")


def test_every_field_is_what_bao_kv_get_prints(openbao: DevServer, tmp_path: Path) -> None:
    path = f"secret/{unique('odd')}"
    for value in ODD_DOCUMENT.values():
        if isinstance(value, str) and "7f3a" in value:
            secret_value(value)
    document = tmp_path / "doc.json"
    document.write_text(json.dumps(ODD_DOCUMENT))
    openbao.bao("kv", "put", path, f"@{document}")  # typed JSON, as bao writes it
    printed = bao_json(openbao, "kv", "get", path)["data"]["data"]
    assert set(printed) == set(ODD_DOCUMENT)
    refs = {key: reference_for(path, key) for key in printed}
    got = resolve(root_config(openbao, tmp_path), *refs.values())
    for key, ref in refs.items():
        outcome = got[ref]
        assert isinstance(outcome, str), (key, outcome)
        assert outcome.encode() == as_delivered(printed[key]), key
    # A string field, byte for byte what `bao kv get -field=` prints.
    for key in ("multi", "trailing-space", "ünïcødé-ключ", "with space"):
        field = openbao.bao("kv", "get", f"-field={key}", path).stdout
        assert got[refs[key]].encode() == field, key


def test_version_zero_is_the_latest_as_in_bao(openbao: DevServer, tmp_path: Path) -> None:
    path = f"secret/{unique('ver')}"
    openbao.bao("kv", "put", path, "password=" + secret_value("first-3c1d"))
    openbao.bao("kv", "put", path, "password=" + secret_value("second-3c1d"))
    mount = unique("kv1")
    openbao.bao("secrets", "enable", f"-path={mount}", "-version=1", "kv")
    openbao.bao("kv", "put", f"{mount}/x", "password=" + secret_value("v1-only-3c1d"))
    got = resolve(
        root_config(openbao, tmp_path),
        f"vault:{path}?version=0#password",
        f"vault:{path}?version=1#password",
        f"vault:{path}#password",
        f"vault:{mount}/x?version=0#password",
        f"vault:{mount}/x?kv=1&version=0#password",
    )
    expected = [
        bao_json(openbao, "kv", "get", "-version=0", path)["data"]["data"]["password"],
        bao_json(openbao, "kv", "get", "-version=1", path)["data"]["data"]["password"],
        bao_json(openbao, "kv", "get", path)["data"]["data"]["password"],
        bao_json(openbao, "kv", "get", "-version=0", f"{mount}/x")["data"]["password"],
        bao_json(openbao, "kv", "get", f"{mount}/x")["data"]["password"],
    ]
    assert expected[:3] == ["second-3c1d", "first-3c1d", "second-3c1d"]
    assert list(got.values()) == expected


def test_the_api_path_of_vault_read_gets_the_reference_to_write(
    openbao: DevServer, tmp_path: Path
) -> None:
    name = unique("api")
    openbao.bao("kv", "put", f"secret/{name}", "password=" + secret_value("api-path-9e2b"))
    # `bao read` takes KV v2's HTTP API path; `bao kv get` (and credbridge) the secret's.
    read = bao_json(openbao, "read", f"secret/data/{name}")["data"]["data"]
    config = root_config(openbao, tmp_path)
    got = resolve(config, f"vault:secret/{name}#password", f"vault:secret/data/{name}#password")
    values = list(got.values())
    assert values[0] == read["password"]
    assert isinstance(values[1], NotFound)
    assert values[1].problem == (
        f"no secret at secret/data/{name} (KV v2 mount secret/); if secret/data/{name} is "
        f"the API path that 'vault read' takes, write vault:secret/{name}"
    )
    # A secret whose own name starts with data/ is read as `bao kv get` reads it.
    openbao.bao("kv", "put", f"secret/data/{name}", "password=" + secret_value("named-data-9e2b"))
    printed = bao_json(openbao, "kv", "get", f"secret/data/{name}")["data"]["data"]
    again = resolve(config, f"vault:secret/data/{name}#password")
    assert list(again.values()) == [printed["password"]] == ["named-data-9e2b"]


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("vault://secret/app#password", "write vault:secret/app#password (or"),
        ("vault://secret/app?version=2#/db/host", "write vault:secret/app?version=2#/db/host"),
        ("vault:///secret/app", "write vault:/secret/app"),
        ("file://etc/hostname", "write file:etc/hostname (or file:/etc/hostname"),
        ("file:///etc/hostname", "write file:/etc/hostname"),
        ("env://HOME", "write env:HOME"),
        ("file:%2F%2Fetc/hostname", "write file:etc/hostname"),
    ],
)
def test_url_forms_are_refused_with_the_reference_to_write(text: str, hint: str) -> None:
    with pytest.raises(BadReference) as info:
        parse_reference(text)
    assert "is URL syntax, which references do not use" in info.value.problem
    assert hint in info.value.problem
    assert info.value.exit_code == ExitCode.REFERENCE


def test_a_url_form_on_the_command_line_exits_4_with_one_line(
    openbao: DevServer, tmp_path: Path
) -> None:
    config = write_toml(
        tmp_path / "c.toml",
        vault_config(openbao.address, auth={"token_file": token_file(tmp_path, openbao.token)}),
    )
    result = run_cli("-c", str(config), "get", "vault://secret/app#password")
    assert result.returncode == ExitCode.REFERENCE
    assert result.stderr.count(b"\n") == 1
    assert b"write vault:secret/app" in result.stderr
