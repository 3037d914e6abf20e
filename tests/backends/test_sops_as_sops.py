"""``sops:`` gives what the reference client, ``sops decrypt``, prints for the same file.

Every file here is encrypted by the real sops deciding the format itself from the file's
name (``sops encrypt --in-place``), never through credbridge's own idea of the type, and every
value is compared with what ``sops decrypt`` / ``sops decrypt --extract`` prints for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from credbridge.core import NotFound
from support.age_sops import AgeKey, age_keygen, clean_sops_env, keys, sops
from support.sessions import resolve

__all__ = ["age_keygen", "clean_sops_env", "keys"]  # fixtures, imported for pytest


def encrypt_in_place(path: Path, plaintext: bytes, key: AgeKey, *options: str) -> Path:
    """``sops encrypt --in-place``: sops alone decides the format (by name, or ``options``)."""
    path.write_bytes(plaintext)
    sops("encrypt", "--age", key.recipient, *options, "--in-place", str(path))
    return path


def extract(path: Path, key: AgeKey, *tree: str, options: tuple[str, ...] = ()) -> bytes:
    """``sops decrypt --extract '["A"]["B"]' FILE``: the reference client's value."""
    index = "".join(f'["{part}"]' for part in tree)
    return sops("decrypt", *options, "--extract", index, str(path), key=key)


def config(key: AgeKey) -> dict[str, Any]:
    return {"sources": {"sops": {"age_key_file": str(key.path)}}}


def in_order(raw: bytes) -> Any:
    """JSON with every object as a list of pairs: equal only in the same key order."""
    return json.loads(raw, object_pairs_hook=list)


@pytest.mark.parametrize(
    ("name", "plaintext", "tree"),
    [
        (".env", b"A=1\nB=two words\n", ("B",)),
        ("prod.env", b"A=1\nB=two words\n", ("B",)),
        ("x.yml", b"a:\n  b: yml\n", ("a", "b")),
        ("x.yaml", b"a:\n  b: yaml\n", ("a", "b")),
        ("x.ini", b"[a]\nb = ini\n", ("a", "b")),
        ("x.json", b'{"a": {"b": "json"}}', ("a", "b")),
        ("x.YAML", b"a:\n  b: binary, sops tests the ending case-sensitively\n", ()),
        ("x.yaml.bak", b"a: binary\n", ()),
        ("json", b'{"a": "binary"}', ()),
    ],
)
def test_the_format_is_sops_choice_by_name(
    keys: tuple[AgeKey, AgeKey],
    tmp_path: Path,
    name: str,
    plaintext: bytes,
    tree: tuple[str, ...],
) -> None:
    key = keys[0]
    path = encrypt_in_place(tmp_path / name, plaintext, key)
    if tree:
        reference = f"sops:{path}#/{'/'.join(tree)}"
        expected = extract(path, key, *tree)
    else:
        reference = f"sops:{path}"
        expected = sops("decrypt", str(path), key=key)
        assert expected == plaintext
    assert resolve(config(key), reference) == {reference: expected}


def test_type_is_sops_input_type(keys: tuple[AgeKey, AgeKey], tmp_path: Path) -> None:
    """``?type=`` is ``--input-type``: a dotenv file named ``secrets.txt``."""
    key = keys[0]
    types = ("--input-type", "dotenv", "--output-type", "dotenv")
    path = encrypt_in_place(tmp_path / "secrets.txt", b"TOKEN=abc\nOTHER=x\n", key, *types)
    reference = f"sops:{path}?type=dotenv#TOKEN"
    expected = extract(path, key, "TOKEN", options=("--input-type", "dotenv"))
    assert expected == b"abc"
    assert resolve(config(key), reference) == {reference: expected}


ODD_JSON = """{
  "a.b": "dot", "a/b": "slash", "a b": "space", "ключ": "юникод", "": "empty",
  "multi": "line 1\\nline 2\\n", "neg0": -0.0, "tiny": 1e-7, "huge": 1e21, "ten": 10.0,
  "t": true, "f": false, "null": null, "html": "<a&b>",
  "obj": {"zeta": 1, "alpha": -0.0, "mid": [3, 1.50, "x", {"b": 2, "a": 1}], "é": "ü"},
  "list": [{"z": null}, -0.0, "s"]
}"""

ODD_YAML = """"a.b": dot
"a/b": slash
"a b": space
"ключ": юникод
"": empty
multi: |
  line 1
  line 2
neg0: -0.0
tiny: 1.0e-7
ten: 10.0
t: true
f: false
"null": null
html: "<a&b>"
obj:
  zeta: 1
  alpha: -0.0
  mid: [3, 1.50, x, {b: 2, a: 1}]
  é: ü
list: [{z: null}, -0.0, s]
"""


@pytest.mark.parametrize("name", ["odd.json", "odd.yaml"])
def test_every_value_is_what_sops_prints(
    keys: tuple[AgeKey, AgeKey],
    tmp_path: Path,
    name: str,
) -> None:
    key = keys[0]
    plaintext = ODD_JSON if name.endswith(".json") else ODD_YAML
    path = encrypt_in_place(tmp_path / name, plaintext.encode(), key)
    top = in_order(sops("decrypt", "--output-type", "json", str(path), key=key))
    trees = [(k,) for k, _ in top]
    trees += [("obj", "mid"), ("obj", "alpha"), ("obj", "mid", "3"), ("list", "1")]
    references = {}
    for tree in trees:
        pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in tree)
        references[f"sops:{path}#/{quote(pointer, safe='/~')}"] = tree
    got = resolve(config(key), *references)
    for reference, tree in references.items():
        value = got[reference]
        assert isinstance(value, bytes), (reference, value)
        # Structured files are read as sops's JSON: the reference is the same JSON output.
        index = [int(p) if p.isdigit() and tree[0] in ("obj", "list") else p for p in tree]
        extract_index = "".join(f"[{json.dumps(p, ensure_ascii=False)}]" for p in index)
        outputs = [("--output-type", "json")]
        if name.endswith(".json"):
            outputs.append(())  # for a JSON file: exactly what plain `sops decrypt` prints
        for output in outputs:
            expected = sops("decrypt", *output, "--extract", extract_index, str(path), key=key)
            if expected.lstrip()[:1] in (b"{", b"["):
                assert in_order(value) == in_order(expected), reference
            else:
                assert value == expected, reference
    assert got[f"sops:{path}#/neg0"] == b"-0"
    assert got[f"sops:{path}#/tiny"] == b"1e-7"
    assert got[f"sops:{path}#/multi"] == b"line 1\nline 2\n"


def test_an_ini_default_group_before_any_section(
    keys: tuple[AgeKey, AgeKey],
    tmp_path: Path,
) -> None:
    """Keys before any section and an explicit [DEFAULT]: sops keeps both groups."""
    key = keys[0]
    plaintext = b"top = 1\nother = x\n[DEFAULT]\nd = 2\n[sec]\nk = v\n"
    path = encrypt_in_place(tmp_path / "app.ini", plaintext, key)
    groups = [
        dict(group)
        for name, group in in_order(sops("decrypt", "--output-type", "json", str(path), key=key))
        if name == "DEFAULT"
    ]
    assert groups == [{"top": "1", "other": "x"}, {"d": "2"}]
    # What sops writes back: both groups are the file's DEFAULT section.
    written = sops("decrypt", str(path), key=key).decode()
    assert "top   = 1" in written and "[DEFAULT]\nd = 2" in written
    references = [f"sops:{path}#/DEFAULT/{name}" for name in ("top", "other", "d")]
    got = resolve(config(key), *references, f"sops:{path}#/sec/k")
    assert got[references[0]] == extract(path, key, "DEFAULT", "top") == b"1"
    assert got[references[1]] == extract(path, key, "DEFAULT", "other") == b"x"
    assert got[references[2]] == groups[1]["d"].encode()
    assert got[f"sops:{path}#/sec/k"] == extract(path, key, "sec", "k")


def test_no_field_names_the_selector_as_written(
    keys: tuple[AgeKey, AgeKey],
    tmp_path: Path,
) -> None:
    key = keys[0]
    path = encrypt_in_place(
        tmp_path / "app.yaml", b"app2:\n  db:\n    password: pw\n'a/b':\n  c: 1\n", key
    )
    refs = [f"sops:{path}#app2/db/password", f"sops:{path}#/a~1b/nope", f"sops:{path}#/app2/db/pw"]
    got = resolve(config(key), *refs, f"sops:{path}#/app2/db/password")
    assert got[f"sops:{path}#/app2/db/password"] == extract(path, key, "app2", "db", "password")
    for ref in refs:
        assert isinstance(got[ref], NotFound)
    assert str(got[refs[0]]) == (
        f"{refs[0]}: no field 'app2/db/password' in the secret (#app2/db/password names one "
        "top-level key; for a path write #/app2/db/password)"
    )
    assert "no field '/a~1b/nope' in the secret" in str(got[refs[1]])
    assert "no field '/app2/db/pw' in the secret" in str(got[refs[2]])
