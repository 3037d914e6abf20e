"""Bad input (issue 7, items 6 and 7): injection through config strings, and tracebacks.

Each case runs the real ``credbridge`` command and expects one clear line on stderr with the
documented exit code (docs/cli.md), never a traceback, never a second (forged) line, and
nothing written where a hostile string pointed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from credbridge.core.config import parse_config
from credbridge.core.errors import ConfigError, CredbridgeError, PluginError
from credbridge.core.types import SinkType

CONFIG = 3
REFERENCE = 4
NOT_FOUND = 5
USAGE = 2


def one_line_error(result: Any, code: int, *needles: str) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, lines
    assert lines[0].startswith("credbridge: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "credbridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


UNIT = '[targets."app.service".credentials]\ndb = "generate:hex"\n'
# A credstore that passes the sinks' early checks, so a store setting is what fails.
SINK_OK = '[sinks.credstore]\ndirectory = "/run/cs"\nallow_persistent = true\n'


# --------------------------------------------------------------------------- item 6: injection


def test_newline_in_credstore_directory_yields_no_directive(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    config = write(
        tmp_path,
        f'[sinks.credstore]\ndirectory = "/run/cs\\nExecStartPre=/bin/touch {pwned}\\n#"\n' + UNIT,
    )
    shown = run_cli("-c", str(config), "unit", "app.service")
    one_line_error(shown, CONFIG, "sinks.credstore.directory", "control character \\n")
    assert b"ExecStartPre" not in shown.stdout
    installed = run_cli(
        "-c", str(config), "unit", "app.service", "--install", "--unit-dir", str(tmp_path / "u")
    )
    one_line_error(installed, CONFIG, "directory")
    assert not (tmp_path / "u").exists()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[targets."app.service".credentials]\n"db\\n" = "generate:hex"\n', "credentials"),
        ('[targets."app.service\\n".credentials]\ndb = "generate:hex"\n', "targets"),
        (
            '[targets.app]\nunit = "app.service\\n"\n[targets.app.credentials]\nx = "env:X"\n',
            "unit",
        ),
        ('[targets.".."]\nunit = "x.service"\n', "invalid target name"),
        ('[targets.".app.service.staging-1"]\nunit = "x.service"\n', "must not start with"),
        ('[targets.app]\nunit = "app.bogus"\n', "systemd unit name"),
    ],
)
def test_names_with_trailing_newline_or_dots_are_refused(
    tmp_path: Path, text: str, where: str
) -> None:
    """``$`` matched before a trailing newline: ``db\\n`` was a valid credential name."""
    result = run_cli("-c", str(write(tmp_path, text)), "deliver", "--dry-run")
    line = one_line_error(result, CONFIG, where)
    assert "\n" not in line


def test_default_unit_of_a_dotted_target_name_is_a_service() -> None:
    config = parse_config({"targets": {"db.example": {"credentials": {"x": "env:X"}}}})
    assert config.targets["db.example"].unit == "db.example.service"


def test_selector_with_encoded_newline_cannot_forge_a_second_line(tmp_path: Path) -> None:
    doc = tmp_path / "doc.json"
    doc.write_text('{"a": 1}')
    result = run_cli("get", f"file:{doc}#a%0Acredbridge: error: forged")
    line = one_line_error(result, NOT_FOUND, "\\ncredbridge: error: forged")
    assert line.count("credbridge: error:") == 2  # the forged text stays inside the one line


def test_newline_in_config_path_stays_inside_the_dropin_comment(tmp_path: Path) -> None:
    hostile = tmp_path / "x\nExecStartPre=/bin/touch pwned\n#"
    hostile.mkdir(parents=True)
    config = write(hostile, f'[sinks.credstore]\ndirectory = "{tmp_path}/cs"\n' + UNIT)
    result = run_cli("-c", str(config), "unit", "app.service")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert not [line for line in lines if line.startswith("ExecStartPre")]
    assert [line for line in lines if not line.startswith("#")] == [
        "[Service]",
        f"LoadCredential=db:{tmp_path}/cs/app.service/db",
    ]


def test_unit_dir_with_control_character_is_a_usage_error(tmp_path: Path) -> None:
    config = write(tmp_path, f'[sinks.credstore]\ndirectory = "{tmp_path}/cs"\n' + UNIT)
    result = run_cli(
        "-c", str(config), "unit", "app.service", "--install", "--unit-dir", f"{tmp_path}/a\nb"
    )
    assert result.returncode == USAGE, result.stderr
    assert b"Traceback" not in result.stderr
    assert not (tmp_path / "a\nb").exists()


def test_dropin_keeps_spaces_and_backslashes_and_doubles_percent(tmp_path: Path) -> None:
    directory = tmp_path / "cs dir" / "a%b\\c"
    config = write(tmp_path, f"[sinks.credstore]\ndirectory = '{directory}'\n" + UNIT)
    result = run_cli("-c", str(config), "unit", "app.service")
    assert result.returncode == 0, result.stderr
    escaped = str(directory).replace("%", "%%")
    assert f"LoadCredential=db:{escaped}/app.service/db" in result.stdout.decode().splitlines()


def test_dotdot_in_credstore_directory_is_refused(tmp_path: Path) -> None:
    """systemd ignores such a LoadCredential= path ("not valid, ignoring")."""
    config = write(tmp_path, '[sinks.credstore]\ndirectory = "../cs"\n' + UNIT)
    one_line_error(run_cli("-c", str(config), "unit", "app.service"), CONFIG, "'..'")


def test_log_messages_are_one_line() -> None:
    from credbridge.core.cli import _OneLineFormatter

    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "x %s", ("a\nforged",), None)
    assert _OneLineFormatter("%(message)s").format(record) == "x a\\nforged"


def test_raw_control_character_in_a_reference_is_refused(tmp_path: Path) -> None:
    """A raw tab in a reference split the tab-separated output rows of deliver/check."""
    config = write(
        tmp_path,
        f'[sinks.credstore]\ndirectory = "{tmp_path}/cs"\n'
        '[targets."app.service".credentials]\nx = "env:A\\tB"\n',
    )
    result = run_cli("-c", str(config), "deliver", "--dry-run")
    one_line_error(result, CONFIG, "control character \\t", "percent-encode")


def test_check_output_rows_escape_control_characters(tmp_path: Path) -> None:
    doc = tmp_path / "doc.json"
    doc.write_text("{}")
    config = write(
        tmp_path,
        f'[sinks.credstore]\ndirectory = "{tmp_path}/cs"\nallow_persistent = true\n'
        f'[targets."app.service".credentials]\nx = "file:{doc}#a%0Aok%09forged"\n',
    )
    result = run_cli("-c", str(config), "check")
    assert result.returncode == NOT_FOUND, result.stderr
    rows = result.stdout.decode().strip("\n").split("\n")
    # One row for the credential, one for the target; the selector forges no row or column.
    assert [row.split("\t")[:2] for row in rows] == [
        ["FAIL", "app.service/x"],
        ["ok", "app.service"],
    ], rows
    assert all(row.count("\t") == 3 for row in rows), rows


@pytest.mark.parametrize(
    "check",
    [
        lambda: _store_dir("app.service/x\n"),
        lambda: _plugin_name("x\n"),
        lambda: _sink_setting({"type": "virtiofs", "tag": "x\n"}),
        lambda: _launcher_setting("qemu", {"accel": "tcg\n"}),
        lambda: _launcher_setting("qemu", {"memory": "9" * 15 + "T"}),
        lambda: _launcher_setting("qemu", {"disks": [{"path": "/d", "if=none,file=/x": 1}]}),
        lambda: _launcher_setting("cloud-hypervisor", {"verbose": 10**12}),
    ],
)
def test_every_pattern_refuses_a_trailing_newline_and_bounds_hold(check: Any) -> None:
    with pytest.raises((CredbridgeError, ValueError)):
        check()


def _store_dir(key: str) -> Any:
    from credbridge.backends.filestore import FileStore

    return FileStore(Path("/nonexistent"))._dir(key)


def _plugin_name(name: str) -> Any:
    with pytest.raises(PluginError):
        SinkType(name=name, open=lambda ctx: None)  # type: ignore[arg-type, return-value]
    raise PluginError("refused")


def _sink_setting(sink: dict[str, Any]) -> Any:
    from credbridge.core.engine import Session

    config = parse_config(
        {"targets": {"vm": {"kind": "vm", "sink": sink, "launcher": {"type": "qemu"}}}}
    )
    return Session(config).sink(config.targets["vm"])


def _launcher_setting(launcher: str, settings: dict[str, Any]) -> Any:
    from credbridge.core.engine import Session

    config = parse_config(
        {
            "targets": {
                "vm": {
                    "kind": "vm",
                    "launcher": {"type": launcher, "kernel": "/k", **settings},
                    "credentials": {"x": "env:X"},
                }
            }
        }
    )
    return Session(config).launcher(config.targets["vm"])


# --------------------------------------------------------------------------- item 7: tracebacks


def test_nul_in_file_reference(tmp_path: Path) -> None:
    one_line_error(run_cli("get", "file:/etc/hostname%00x"), REFERENCE, "NUL")


def test_undecodable_argv_byte_in_reference() -> None:
    """``credbridge get $'generate:\\xff'`` raised UnicodeEncodeError."""
    line = one_line_error(run_cli("get", os.fsdecode(b"generate:\xff")), REFERENCE, "UTF-8")
    # The undecodable byte is shown escaped (as Python decoded argv: a surrogate), never raw.
    assert line == (
        "credbridge: error: reference 'generate:\\udcff': reference is not valid UTF-8; "
        "percent-encode such bytes"
    )


def test_invalid_utf8_percent_encoding_in_reference() -> None:
    one_line_error(run_cli("get", "file:/tmp/%FF"), REFERENCE, "not UTF-8")


def test_unknown_user_in_file_reference() -> None:
    one_line_error(run_cli("get", "file:~cb-no-such-user/x"), NOT_FOUND, "cb-no-such-user")


VM_TARGET = """
[targets.vm]
kind = "vm"
launcher = {{ type = "{launcher}", kernel = "/boot/vmlinuz", {settings} }}
credentials = {{ x = "generate:hex" }}
"""


@pytest.mark.parametrize(
    ("toml", "command", "key"),
    [
        ('[sinks.credstore]\ndirectory = "/run/cs\\u0000x"\n' + UNIT, "deliver", "directory"),
        ('[store]\npath = "/var/lib/cb\\u0000"\n' + SINK_OK + UNIT, "deliver", "store.path"),
        ('[credbridge]\nstore = "/x\\u0000"\n' + SINK_OK + UNIT, "deliver", "credbridge.store"),
        ('[sinks.credstore]\ndirectory = "~cb-no-such-user/cs"\n' + UNIT, "deliver", "directory"),
        ('[store]\npath = "~cb-no-such-user/store"\n' + SINK_OK + UNIT, "deliver", "store.path"),
        ("[sinks.credstore]\ntimeout = nan\n" + UNIT, "deliver", "timeout"),
        ("[sinks.credstore]\ntimeout = inf\n" + UNIT, "deliver", "timeout"),
        ("[sinks.credstore]\ntimeout = 1e300\n" + UNIT, "deliver", "timeout"),
        ("[sinks.credstore]\ntimeout = -inf\n" + UNIT, "deliver", "timeout"),
        ('[sinks.credstore]\nwith_key = "host\\n"\n' + UNIT, "deliver", "with_key"),
        (VM_TARGET.format(launcher="qemu", settings="timeout = nan"), "launch", "timeout"),
        (
            VM_TARGET.format(launcher="qemu", settings="stop_timeout = inf"),
            "launch",
            "stop_timeout",
        ),
        (
            VM_TARGET.format(launcher="cloud-hypervisor", settings="stop_timeout = nan"),
            "launch",
            "stop_timeout",
        ),
        (
            VM_TARGET.format(launcher="qemu", settings='initramfs = "~cb-no-such-user/i"'),
            "launch",
            "initramfs",
        ),
        (
            VM_TARGET.format(launcher="qemu", settings='disks = ["/d\\u0000"]'),
            "launch",
            "disks[0].path",
        ),
        (
            VM_TARGET.format(launcher="qemu", settings='serial = "file:~cb-no-such-user/log"'),
            "launch",
            "serial",
        ),
        (VM_TARGET.format(launcher="qemu", settings='memory = "9999999999T"'), "launch", "memory"),
        (VM_TARGET.format(launcher="qemu", settings='cpu = "max\\n"'), "launch", "cpu"),
    ],
)
def test_bad_settings_are_one_line(tmp_path: Path, toml: str, command: str, key: str) -> None:
    config = write(tmp_path, toml.replace("/run/cs", str(tmp_path / "cs")))
    args = ["vm", "--dry-run"] if command == "launch" else ["--dry-run"]
    result = run_cli("-c", str(config), command, *args, env={"CREDBRIDGE_STORE": str(tmp_path)})
    one_line_error(result, CONFIG, key)


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("connect_timeout = nan", "connect_timeout"),
        ("read_timeout = inf", "read_timeout"),
        ("backoff = nan", "backoff"),
        ('ca_cert = "~cb-no-such-user/ca.pem"', "ca_cert"),
        ('client_cert = "/c\\u0000"\nclient_key = "/k"', "client_cert"),
        ('namespace = "team\\r\\nX-Injected: 1"', "namespace"),
        ('auth = { method = "token", token_file = "~cb-no-such-user/t" }', "auth.token_file"),
        ('auth = { method = "token", token = "t\\nX-Injected: 1" }', "auth.token"),
    ],
)
def test_bad_vault_settings_are_one_line(tmp_path: Path, setting: str, key: str) -> None:
    config = write(tmp_path, f"[sources.vault]\n{setting}\n")
    result = run_cli("-c", str(config), "get", "vault:secret/app#x")
    line = one_line_error(result, CONFIG, key)
    # The setting is named and the value is not echoed: no header can be smuggled in.
    assert "X-Injected" not in line


def test_nul_in_config_path_from_the_api() -> None:
    from credbridge.core.config import load_config

    with pytest.raises(ConfigError, match="NUL"):
        load_config("/tmp/x\0y")


def test_store_path_from_environment_is_checked(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f'[sinks.credstore]\ndirectory = "{tmp_path}/cs"\nallow_persistent = true\n' + UNIT,
    )
    result = run_cli(
        "-c", str(config), "deliver", "--dry-run", env={"CREDBRIDGE_STORE": "~cb-no-such-user/s"}
    )
    one_line_error(result, CONFIG, "CREDBRIDGE_STORE")


# --------------------------------------------------------------------------- issue 19: round two

CLAN = '[sources.clan-vars]\ndirectory = "{directory}"\nmachine = "m"\n'
CLAN_UNIT = '[targets."app.service".credentials]\ndb = "clan-vars:gen/db"\n'
SOPS_STORE = '[store]\ntype = "sops"\npath = "{path}"\n'


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        (CLAN.format(directory="~cb-no-such-user/clan") + SINK_OK + CLAN_UNIT, "directory"),
        (CLAN.format(directory="/clan\\u0000x") + SINK_OK + CLAN_UNIT, "directory"),
        (SOPS_STORE.format(path="~cb-no-such-user/s.yaml") + SINK_OK + UNIT, "store.path"),
        (UNIT.replace('"generate:hex"', '{ ref = "env:X", owner = 4294967296 }'), "db.owner"),
        (UNIT.replace('"generate:hex"', '{ ref = "env:X", owner = "4294967295" }'), "db.owner"),
        (UNIT.replace('"generate:hex"', '{ ref = "env:X", group = -1 }'), "db.group"),
        (
            UNIT.replace('"generate:hex"', '{ ref = "env:X", mode = "\u0660\u0664\u0660\u0660" }'),
            "db.mode",
        ),
        ("[sinks.credstore]\nowner = 4294967296\n" + UNIT, "sinks.credstore.owner"),
        ('[sinks.credstore]\ngroup = ""\n' + UNIT, "sinks.credstore.group"),
    ],
    ids=[
        "clan-unknown-user",
        "clan-nul",
        "sops-store-unknown-user",
        "owner-too-big",
        "owner-no-change-id",
        "group-negative",
        "mode-arabic-digits",
        "sink-owner-too-big",
        "sink-group-empty",
    ],
)
def test_bad_paths_and_ids_are_one_line(tmp_path: Path, toml: str, key: str) -> None:
    config = write(tmp_path, toml.replace("/run/cs", str(tmp_path / "cs")))
    result = run_cli("-c", str(config), "deliver", "--dry-run", env={"X": "x"})
    one_line_error(result, CONFIG, key)


def test_unknown_user_in_a_sops_reference_is_a_bad_reference() -> None:
    one_line_error(run_cli("get", "sops:~cb-no-such-user/s.yaml#x"), REFERENCE, "cb-no-such-user")


@pytest.mark.parametrize(
    ("field", "text"),
    [("owner", "\u0663"), ("group", "\uff11\uff12"), ("owner", "\u00b3")],
    ids=str,
)
def test_only_ascii_digits_are_numeric_ids(
    tmp_path: Path, tmpfs_dir: Path, field: str, text: str
) -> None:
    """int() reads Arabic-Indic 3 as 3 and fullwidth 12 as 12; for credbridge they are names, so
    the delivery stops before a file is handed to uid 3 or gid 12."""
    config = write(
        tmp_path,
        f'[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n'
        f'[targets."app.service".credentials]\ndb = {{ ref = "env:X", {field} = "{text}" }}\n',
    )
    result = run_cli("-c", str(config), "deliver", env={"X": "x"})
    one_line_error(result, 9, "app.service/db", "unknown user or group", repr(text))
    assert not (tmpfs_dir / "app.service").exists()


def _deep_json(depth: int) -> str:
    return '{"a":' * depth + '"leaf"' + "}" * depth


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("credbridge.toml", "x = " + "[" * 500 + "]" * 500 + "\n"),
        ("credbridge.toml", "x = " + "{a=" * 500 + "1" + "}" * 500 + "\n"),
        ("credbridge.toml", "x = " + "[" * 120 + "]" * 120 + "\n"),
        ("credbridge.json", '{"x":' + "[" * 1000 + "]" * 1000 + "}"),
        ("credbridge.json", '{"x":' + _deep_json(1000) + "}"),
        ("credbridge.json", '{"x":' + _deep_json(150) + "}"),
    ],
    ids=[
        "toml-arrays-500",
        "toml-tables-500",
        "toml-120",
        "json-arrays-1000",
        "json-1000",
        "json-150",
    ],
)
def test_configs_nested_too_deep_are_one_line(tmp_path: Path, name: str, text: str) -> None:
    config = write(tmp_path, text, name)
    one_line_error(run_cli("-c", str(config), "check"), CONFIG, str(config), "nested deeper than")


@pytest.mark.parametrize("depth", [150, 1000, 5000])
@pytest.mark.parametrize("selector", ["", "#a", "#/a/a"])
def test_file_values_nested_too_deep_are_one_line(
    tmp_path: Path, depth: int, selector: str
) -> None:
    (tmp_path / "deep.json").write_text(_deep_json(depth))
    result = run_cli("get", f"file:{tmp_path / 'deep.json'}{selector}")
    if not selector:
        # Without a selector the file is a raw value: it is delivered as is, never parsed.
        assert result.returncode == 0
        return
    one_line_error(result, NOT_FOUND, "deep.json", "nested deeper than 100 levels")
