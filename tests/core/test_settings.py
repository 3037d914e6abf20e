"""Declared settings: a misspelt key is an error naming the file and the key, never a default."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from credbridge.backends.hooks import filestore as filestore_hooks
from credbridge.backends.hooks import generate as generate_hooks
from credbridge.core import ConfigError, load_config, parse_config
from credbridge.core.settings import Setting, size_setting
from credbridge.launchers.hooks import qemu as qemu_hooks


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "credbridge.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (
            '[targets."app.service"]\nsink = { type = "credstore", directroy = "/run/x" }\n',
            'targets."app.service".sink.directroy',
            "did you mean 'directory'?",
        ),
        (
            '[sinks.credstore]\ndirectroy = "/run/x"\n[targets."app.service".credentials]\n',
            "sinks.credstore.directroy",
            "did you mean 'directory'?",
        ),
        ('[store]\npth = "/var/lib/x"\n', "store.pth", "did you mean 'path'?"),
        ("[sources.env]\nstrip = true\n", "sources.env.strip", "known: none"),
        ('[sources.vault]\nadress = "http://x"\n', "sources.vault.adress", "'address'"),
        (
            '[targets.vm]\nkind = "vm"\n[targets.vm.launcher]\ntype = "qemu"\n'
            'kernel = "/k"\nmachin = "q35"\n',
            "targets.vm.launcher.machin",
            "did you mean 'machine'?",
        ),
        (
            '[targets.vm]\nkind = "vm"\nsink = { type = "oem-strings", max_byte = 1 }\n'
            '[targets.vm.launcher]\ntype = "qemu"\nkernel = "/k"\n',
            "targets.vm.sink.max_byte",
            "'max_bytes'",
        ),
    ],
)
def test_misspelt_setting_names_file_and_key(
    tmp_path: Path, text: str, key: str, hint: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: unknown setting"), message
    assert hint in message


def test_tables_for_unknown_plugins_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sinks\.credstorr: unknown sink 'credstorr'"):
        load_config(write(tmp_path, "[sinks.credstorr]\n"))
    with pytest.raises(ConfigError, match=r"sources\.vualt: no plugin provides the source"):
        load_config(write(tmp_path, "[sources.vualt]\n"))


def test_parse_config_checks_plugin_names_like_load_config(tmp_path: Path) -> None:
    data = {"targets": {"a.service": {"sink": "nope"}}}
    with pytest.raises(ConfigError, match="unknown sink 'nope'") as from_code:
        parse_config(data)
    path = write(tmp_path, '[targets."a.service"]\nsink = "nope"\n')
    with pytest.raises(ConfigError, match="unknown sink 'nope'") as from_file:
        load_config(path)
    assert str(from_code.value).partition(": ")[2] == str(from_file.value).partition(": ")[2]
    with pytest.raises(ConfigError, match="unknown store type 'nope'"):
        parse_config({"store": {"type": "nope"}})


def test_valid_settings_pass(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[store]\npath = "state"\n[sinks.credstore]\ndirectory = "/run/x"\n'
            '[targets."a.service"]\nsink = { type = "credstore", allow_persistent = true }\n',
        )
    )
    assert config.sink_settings(config.target("a.service")) == {
        "directory": "/run/x",
        "allow_persistent": True,
    }


def test_registration_modules_declare_what_the_implementations_read() -> None:
    """The registration modules (loaded always) declare what the implementations (loaded on
    use) accept; where an implementation keeps a finer table, this keeps the two in step."""
    from credbridge.backends.generators import KEY_KINDS, KIND_OPTIONS

    per_kind = [*KIND_OPTIONS.values(), *(kind.options for kind in KEY_KINDS.values())]
    assert frozenset().union(*per_kind) == generate_hooks.GENERATE_OPTIONS

    def names(declared: Iterable[Setting]) -> set[str]:
        return {setting.name for setting in declared}

    assert {"path", "seal", "tpm2_pcrs"} == names(filestore_hooks.SETTINGS)


VM = '[targets.vm]\nkind = "vm"\nsink = "fw-cfg"\n[targets.vm.launcher]\ntype = "qemu"\nkernel = "/k"\n'


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[sources.vault]\naddress = 5\n', "sources.vault.address", "non-empty string"),
        ('[sources.vault]\ntls_verify = "no"\n', "sources.vault.tls_verify", "true or false"),
        ("[sources.vault]\nretries = 11\n", "sources.vault.retries", "integer from 0 to 10"),
        ("[sources.vault]\nbackoff = -1\n", "sources.vault.backoff", "number from 0 to 86400"),
        ("[sources.vault]\nread_timeout = 0\n", "sources.vault.read_timeout", "positive number"),
        ('[sources.vault]\nca_cert = ""\n', "sources.vault.ca_cert", "non-empty path"),
        ('[sources.vault]\nauth = "token"\n', "sources.vault.auth", "must be a table"),
        (
            '[sources.aws-sm]\nretry_mode = "fast"\n',
            "sources.aws-sm.retry_mode",
            "must be one of standard, adaptive",
        ),
        (VM + 'memory = "lots"\n', "targets.vm.launcher.memory", 'a size like "512M"'),
        (VM + 'disks = "/d.img"\n', "targets.vm.launcher.disks", "must be an array"),
        ('[store]\npath = "~nosuchuser22a/x"\n', "store.path", "no user 'nosuchuser22a'"),
    ],
    ids=lambda v: v if isinstance(v, str) and "\n" not in v else None,
)
def test_each_kind_is_checked_when_the_config_loads(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    """A value of the wrong kind is refused by load_config, before any plugin is opened or
    any reference resolved: one line naming the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message
    assert "\n" not in message


def test_values_of_each_kind_are_read_with_their_defaults(tmp_path: Path) -> None:
    from credbridge.core.settings import read_settings

    declared = {
        s.name: s
        for s in (
            Setting("name", "string", doc="a name"),
            Setting("on", "bool", False),
            Setting("count", "integer", 2, minimum=1, maximum=9),
            Setting("ratio", "number", 0.5, maximum=1),
            Setting("wait", "duration", 5.0, maximum=60),
            Setting("limit", "size", 1024),
            Setting("dir", "path"),
            Setting("mode", "choice", "a", choices=("a", "b")),
            Setting("items", "list", []),
            Setting("extra", "table", {}),
        )
    }
    values = read_settings(
        declared,
        {"name": "x", "limit": "2K", "dir": "state", "mode": "b", "wait": 60},
        what="source 'demo'",
        file="c.toml",
        where="sources.demo",
        base=tmp_path,
    )
    assert values == {
        "name": "x",
        "on": False,
        "count": 2,
        "ratio": 0.5,
        "wait": 60.0,
        "limit": 2048,
        "dir": tmp_path / "state",
        "mode": "b",
        "items": [],
        "extra": {},
    }
    with pytest.raises(ConfigError, match=r"^c.toml: sources.demo.wait: .*at most 60$"):
        read_settings(
            declared, {"wait": 61}, what="x", file="c.toml", where="sources.demo", base=tmp_path
        )


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"name": "x", "kind": "float"}, "unknown kind 'float'"),
        ({"name": "x", "kind": "choice"}, "choices go with kind 'choice'"),
        ({"name": "x", "kind": "string", "choices": ("a",)}, "choices go with kind 'choice'"),
        ({"name": "x", "kind": "integer", "minimum": 0}, "needs minimum and maximum"),
        ({"name": "a.b"}, "invalid name"),
    ],
)
def test_a_bad_declaration_is_refused_when_the_plugin_loads(
    kwargs: dict[str, object], problem: str
) -> None:
    from credbridge.core import PluginError, SinkType

    with pytest.raises(ValueError, match=problem):
        Setting(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="declared twice"):
        SinkType(name="s", open=lambda ctx: None, settings=["a", Setting("a", "bool")])


def test_declared_defaults_are_what_the_implementations_use() -> None:
    """``plugins -v`` shows the declared defaults: they must be the ones the code applies."""
    from credbridge.backends import aws_settings, oem_strings, sops_cli, vault_settings, virtiofs
    from credbridge.backends.hooks import aws as aws_hooks
    from credbridge.backends.hooks import oem_strings as oem_hooks
    from credbridge.backends.hooks import sops as sops_hooks
    from credbridge.backends.hooks import vault as vault_hooks
    from credbridge.backends.hooks import virtiofs as virtiofs_hooks
    from credbridge.core.settings import declare
    from credbridge.core.types import SourceContext

    def defaults(declared: Iterable[Setting]) -> dict[str, object]:
        return {name: s.default for name, s in (declare(declared) or {}).items()}

    context = SourceContext(
        scheme="vault",
        settings={},
        config_dir=Path("/"),
        concurrency=16,
        resolve=lambda text: None,  # type: ignore[arg-type,return-value]
        store=lambda: None,  # type: ignore[arg-type,return-value]
    )
    loaded = vault_settings.VaultSettings.from_context(
        context, environ={}, home=Path("/nonexistent")
    )
    assert {k: v for k, v in defaults(vault_hooks.SETTINGS).items() if v not in (None, {})} == {
        "address": loaded.address,
        "tls_verify": loaded.verify,
        "connect_timeout": loaded.connect_timeout,
        "read_timeout": loaded.read_timeout,
        "retries": loaded.retries,
        "backoff": loaded.backoff,
    }
    settings = aws_settings.AwsSettings.read(
        SourceContext(
            scheme="aws-sm",
            settings={},
            config_dir=Path("/"),
            concurrency=16,
            resolve=lambda text: None,  # type: ignore[arg-type,return-value]
            store=lambda: None,  # type: ignore[arg-type,return-value]
        )
    )
    assert {k: v for k, v in defaults(aws_hooks.SETTINGS).items() if v is not None} == {
        "role_session_name": settings.role_session_name,
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
        "max_attempts": settings.max_attempts,
        "retry_mode": settings.retry_mode,
    }
    assert defaults(sops_hooks.SOURCE_SETTINGS)["timeout"] == sops_cli.DEFAULT_TIMEOUT
    assert defaults(oem_hooks.SETTINGS)["max_bytes"] == oem_strings.DEFAULT_MAX_BYTES
    assert declare(oem_hooks.SETTINGS)["max_bytes"].maximum == oem_strings.SMBIOS_TABLES_MAX  # type: ignore[index]
    assert defaults(virtiofs_hooks.SETTINGS)["tag"] == virtiofs.DEFAULT_TAG
    vm = defaults(qemu_hooks.SETTINGS)
    assert vm["memory"] == size_setting("512M", file="c.toml", key="memory")


def test_contexts_read_declared_settings_with_their_file_and_key(tmp_path: Path) -> None:
    from credbridge.core.types import SourceContext, StoreContext

    declared = [Setting("dir", "path"), Setting("wait", "duration", 5.0)]
    source = SourceContext(
        scheme="demo",
        settings={"dir": "sub"},
        config_dir=tmp_path,
        concurrency=1,
        resolve=lambda text: None,  # type: ignore[arg-type,return-value]
        store=lambda: None,  # type: ignore[arg-type,return-value]
        where="sources.demo",
        config_file="/etc/c.toml",
    )
    assert source.read_settings(declared) == {"dir": tmp_path / "sub", "wait": 5.0}
    store = StoreContext({"wiat": 1}, tmp_path, config_file="/etc/c.toml")
    with pytest.raises(ConfigError) as error:
        store.read_settings(declared, name="demo")
    assert str(error.value) == (
        "/etc/c.toml: store.wiat: unknown setting 'wiat' for store 'demo' "
        "(did you mean 'wait'? known: dir, wait)"
    )


def test_a_list_default_is_a_fresh_copy_for_each_reader(tmp_path: Path) -> None:
    from credbridge.core.settings import read_settings

    declared = {"items": Setting("items", "list", ["a"])}
    first = read_settings(declared, {}, what="x", file=None, where="w", base=tmp_path)
    first["items"].append("b")
    again = read_settings(declared, {}, what="x", file=None, where="w", base=tmp_path)
    assert again["items"] == ["a"] and declared["items"].default == ["a"]


def test_a_bad_setting_fails_every_command_with_one_line_and_exit_3(tmp_path: Path) -> None:
    from conftest import run_cli

    path = write(tmp_path, "[sources.vault]\nretries = 11\n")
    result = run_cli("-c", str(path), "check")
    assert result.returncode == 3
    assert result.stderr.decode().splitlines() == [
        f"credbridge: error: {path}: sources.vault.retries: must be an integer from 0 to 10"
    ]


@pytest.mark.parametrize(
    ("auth", "key", "problem"),
    [
        (
            'method = "approle"\nrole_idd = "env:R"\n',
            "sources.vault.auth.role_idd",
            "unknown setting 'role_idd' for approle auth (did you mean 'role_id'?",
        ),
        ('role = "r"\n', "sources.vault.auth.role", "unknown setting 'role' for token auth"),
        ('method = "ldap"\n', "sources.vault.auth.method", "must be one of token, approle"),
        ('method = "jwt"\nmount = 5\n', "sources.vault.auth.mount", "non-empty string"),
    ],
)
def test_the_keys_of_a_declared_table_are_checked_when_the_config_loads(
    tmp_path: Path, auth: str, key: str, problem: str
) -> None:
    """A nested table declared with ``fields`` (vault's ``auth``, one set per ``method``) is
    checked by every command, though no ``vault:`` reference is resolved."""
    from conftest import run_cli

    path = write(tmp_path, f"[sources.vault.auth]\n{auth}")
    result = run_cli("-c", str(path), "get", "env:HOME")
    assert result.returncode == 3
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith(f"credbridge: error: {path}: {key}: ")
    assert problem in line


def test_fields_and_selector_are_declared_together() -> None:
    with pytest.raises(ValueError, match="fields go with kind 'table'"):
        Setting("x", "list", fields=[Setting("a")])
    with pytest.raises(ValueError, match="a selector goes with fields given per variant"):
        Setting("x", "table", fields=[Setting("a")], selector="a")
    with pytest.raises(ValueError, match="does not declare the selector 'kind'"):
        Setting("x", "table", fields={"one": [Setting("a")]}, selector="kind")


def _source_context(scheme: str, table: dict[str, object], tmp_path: Path) -> object:
    from credbridge.core.types import SourceContext

    return SourceContext(
        scheme=scheme,
        settings=table,
        config_dir=tmp_path,
        concurrency=4,
        resolve=lambda text: None,  # type: ignore[arg-type,return-value]
        store=lambda: None,  # type: ignore[arg-type,return-value]
        config_file="/etc/c.toml",
    )


@pytest.mark.parametrize(
    ("plugin", "table"),
    [
        ("sops:store", {"path": "s.yaml", "age_recipients": "age1qqq"}),
        ("sops:store", {"path": "s.yaml", "timeout": 0}),
        ("sops:source", {"age_key_file": "k\n"}),
        ("sops:source", {"concurrency": 0}),
        ("clan:source", {"directory": ".", "machine": "web\n"}),
        ("clan:source", {"directory": ".", "timeout": "1m"}),
        ("filestore:store", {"path": 5}),
    ],
    ids=str,
)
def test_a_plugin_opened_directly_reads_its_table_as_the_loader_checks_it(
    tmp_path: Path, plugin: str, table: dict[str, object]
) -> None:
    """One reading of each setting: a plugin opened in code (credbridge.testing, an embedding
    program) refuses what the config loader refuses, with the loader's message."""
    import importlib

    from credbridge.core.settings import declare, read_settings
    from credbridge.core.types import StoreContext

    module, kind = plugin.split(":")
    implementation = importlib.import_module(f"credbridge.backends.{module}")
    hooks = importlib.import_module(f"credbridge.backends.hooks.{module}")
    if kind == "store":
        declared = getattr(hooks, "STORE_SETTINGS", getattr(hooks, "SETTINGS", None))
        name = {"sops": "sops", "filestore": "file"}[module]
        what, where = f"store {name!r}", "store"
        context: object = StoreContext(table, tmp_path, config_file="/etc/c.toml")
        opener = implementation.open_store
    else:
        declared = getattr(hooks, "SOURCE_SETTINGS", getattr(hooks, "SETTINGS", None))
        scheme = {"sops": "sops", "clan": "clan-vars"}[module]
        what, where = f"source {scheme!r}", f"sources.{scheme}"
        context = _source_context(scheme, table, tmp_path)
        opener = implementation.open_source
    with pytest.raises(ConfigError) as by_loader:
        read_settings(
            declare(declared) or {},
            table,
            what=what,
            file="/etc/c.toml",
            where=where,
            base=tmp_path,
        )
    with pytest.raises(ConfigError) as opened:
        opener(context)
    assert str(opened.value) == str(by_loader.value)
