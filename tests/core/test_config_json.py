"""JSON configs: the TOML schema, chosen by the ``.json`` extension (what Nix writes)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from credbridge.core import ConfigError, Session, load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [
    REPO / "examples" / "credbridge.toml",
    REPO / "examples" / "microvm" / "credbridge.toml",
]


def write_json(tmp_path: Path, data: Any, name: str = "credbridge.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
def test_json_and_toml_give_the_same_config(example: Path, tmp_path: Path) -> None:
    """Every shipped TOML example, rewritten as JSON next to it, loads to an equal Config."""
    data = tomllib.loads(example.read_text())
    as_json = write_json(tmp_path, data)
    as_toml = tmp_path / "credbridge.toml"
    as_toml.write_text(example.read_text())
    from_toml, from_json = load_config(as_toml), load_config(as_json)
    assert from_json.targets == from_toml.targets
    assert from_json.sources == from_toml.sources
    assert from_json.sinks == from_toml.sinks
    assert (from_json.store_type, from_json.store_settings) == (
        from_toml.store_type,
        from_toml.store_settings,
    )
    with Session(from_json) as session:
        session.validate()


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"targets": {"app": {"bogus": 1}}}, "targets.app.bogus", "unknown setting"),
        (
            {"targets": {"app.service": {"credentials": {"bad/name": "env:X"}}}},
            'targets."app.service".credentials."bad/name"',
            "invalid credential name",
        ),
        (
            {"targets": {"app": {"credentials": {"x": {"ref": "env:X", "mode": "0444"}}}}},
            "targets.app.credentials.x.mode",
            "world-readable",
        ),
        (
            {"targets": {"app": {"credentials": {"x": {"ref": "env:X", "optional": None}}}}},
            "targets.app.credentials.x.optional",
            "true or false",
        ),
        ({"targets": {"app": {"credentials": ["env:X"]}}}, "targets.app.credentials", "table"),
        ({"targets": []}, "targets", "must be a table"),
        ({"credbridge": {"concurrency": 1.5}}, "credbridge.concurrency", "1 to 256"),
        ({"nonsense": {}}, "nonsense", "unknown section"),
    ],
)
def test_json_errors_name_the_same_key_path(
    tmp_path: Path, data: Any, key: str, problem: str
) -> None:
    path = write_json(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    assert problem in message
    assert "\n" not in message
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"targets": {', "invalid JSON: Expecting"),
        ('{"targets": {}, "targets": {}}', "duplicate key 'targets'"),
        ('{"targets": {"a": {"credentials": {"x": "env:A", "x": "env:B"}}}}', "duplicate key 'x'"),
        ('{"credbridge": {"concurrency": NaN}}', "NaN is not a number"),
        ('["targets"]', "top level must be an object, not list"),
        ("", "invalid JSON"),
    ],
)
def test_json_syntax_errors_are_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write_json(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_extension_chooses_the_format(tmp_path: Path) -> None:
    """``.JSON`` is JSON; any other extension is TOML (a JSON body there is a TOML error)."""
    body = json.dumps({"targets": {"app": {"credentials": {"x": "env:X"}}}})
    upper = write_json(tmp_path, body, "config.JSON")
    assert list(load_config(upper).targets) == ["app"]
    other = write_json(tmp_path, body, "config.conf")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(other)


def test_cli_accepts_a_json_config(tmp_path: Path, cli: Any) -> None:
    store = tmp_path / "store"
    credstore = Path("/dev/shm") / f"credbridge-json-{tmp_path.name}"
    path = write_json(
        tmp_path,
        {
            "store": {"path": str(store)},
            "sinks": {"credstore": {"directory": str(credstore)}},
            "targets": {
                "app.service": {"credentials": {"token": {"ref": "env:JSON_TEST_TOKEN"}}},
            },
        },
    )
    try:
        result = cli("-c", str(path), "deliver", env={"JSON_TEST_TOKEN": "json-config-value-8Hq2"})
        assert result.returncode == 0, result.stderr.decode()
        assert (credstore / "app.service" / "token").read_bytes() == b"json-config-value-8Hq2"
        result = cli("-c", str(path), "unit", "app.service")
        assert f"LoadCredential=token:{credstore}/app.service/token" in result.stdout.decode()
        bad = write_json(tmp_path, '{"targets": {"a": 1}}', "bad.json")
        result = cli("-c", str(bad), "check")
        assert result.returncode == 3
        assert result.stderr.decode().strip() == (
            f"credbridge: error: {bad}: targets.a: must be a table, not int"
        )
    finally:
        import shutil

        shutil.rmtree(credstore, ignore_errors=True)
