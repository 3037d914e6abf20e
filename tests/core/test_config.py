from __future__ import annotations

from pathlib import Path

import pytest
from credbridge.core import ConfigError, Session, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "credbridge.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("[targets.app]\nbogus = 1\n", "targets.app.bogus", "unknown setting"),
        (
            '[targets.app.credentials]\n"bad/name" = "env:X"\n',
            'targets.app.credentials."bad/name"',
            "invalid credential name",
        ),
        ('[targets.app.credentials]\nx = "nocolon"\n', "targets.app.credentials.x", "SCHEME:"),
        (
            '[targets.app.credentials]\nx = { ref = "env:X", mode = "0444" }\n',
            "targets.app.credentials.x.mode",
            "world-readable",
        ),
        (
            '[targets.app.credentials]\nx = { ref = "env:X", mode = "0600" }\n',
            "targets.app.credentials.x.mode",
            "read bits only",
        ),
        (
            '[targets.app.credentials]\nx = { ref = "env:X", optional = "yes" }\n',
            "targets.app.credentials.x.optional",
            "true or false",
        ),
        (
            '[targets.app.credentials]\nx = "target:other/y"\n',
            "targets.app.credentials.x",
            "names no credential",
        ),
        (
            '[targets.a.credentials]\nx = "target:b/y"\n[targets.b.credentials]\ny = "target:a/x"\n',
            "targets.a.credentials.x",
            "loop",
        ),
        ('[targets.app]\nkind = "container"\n', "targets.app.kind", "must be one of"),
        ("[nonsense]\n", "nonsense", "unknown section"),
        ("[credbridge]\nconcurrency = 0\n", "credbridge.concurrency", "1 to 256"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, body: str, key: str, problem: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert key in message
    assert problem in message
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    ("table", "quoted"),
    [
        ("[targets.app.service.credentials]", '[targets."app.service".credentials]'),
        ("[targets.app.service]", '[targets."app.service"]'),
    ],
)
def test_an_unquoted_dotted_unit_name_gets_a_quoting_hint(
    tmp_path: Path, table: str, quoted: str
) -> None:
    path = write(tmp_path, f'{table}\ndb = "generate:hex"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "targets.app.service: unknown setting" in message
    assert message.endswith(f"a unit name with a dot must be quoted in TOML: {quoted}")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[targets\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("credential", "problem"),
    [
        ('"vualt:secret/x"', "unknown scheme 'vualt'"),
        ('"generate:base64?length=3"', "does not apply"),
        ('"generate:base64?bytes=0"', "outside"),
        ('"generate:base64#sel"', "take no '#selector'"),
        ('"credential:a/b"', "not a valid systemd credential name"),
    ],
)
def test_references_are_checked_against_plugins(
    tmp_path: Path, credential: str, problem: str
) -> None:
    path = write(tmp_path, f"[targets.app.credentials]\nx = {credential}\n")
    # load_config checks references itself, as Session.validate does (both must refuse it).
    with pytest.raises(ConfigError) as info, Session(load_config(path)) as session:
        session.validate()
    assert problem in str(info.value)
    assert "targets.app.credentials.x" in str(info.value)


def test_unknown_sink_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[targets.app]\nsink = "nope"\n')
    with (
        pytest.raises(ConfigError, match="unknown sink 'nope'"),
        Session(load_config(path)) as session,
    ):
        session.validate()


def test_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[targets."app.service".credentials]\nk = { ref = "env:K", mode = 0o440, owner = "root" }\n',
        )
    )
    target = config.target("app.service")
    assert target.kind == "unit"
    assert target.unit == "app.service"
    assert target.sink == "credstore"
    spec = target.credentials[0]
    assert spec.mode == 0o440
    assert spec.owner == "root"
    assert not spec.optional
