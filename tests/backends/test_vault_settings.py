"""``[sources.vault]`` settings over the environment, and ``vault:`` reference syntax (no I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli
from credbridge.backends.hooks.vault import DEFAULT_ADDRESS
from credbridge.backends.vault_settings import VaultSettings
from credbridge.core import BadReference, ConfigError, Session, SourceContext, parse_reference


def load(
    settings: dict[str, Any], env: dict[str, str] | None = None, home: Path | None = None
) -> VaultSettings:
    context = SourceContext(
        scheme="vault",
        settings=settings,
        config_dir=Path("/etc/credbridge"),
        concurrency=16,
        resolve=lambda text: None,  # type: ignore[arg-type,return-value]
        store=lambda: None,  # type: ignore[arg-type,return-value]
        where="sources.vault",
        config_file="/etc/credbridge.toml",
    )
    return VaultSettings.from_context(context, environ=env or {}, home=home or Path("/nonexistent"))


def test_defaults() -> None:
    s = load({})
    assert (s.address, s.namespace, s.verify, s.cert, s.retries, s.concurrency) == (
        DEFAULT_ADDRESS,
        None,
        True,
        None,
        3,
        16,
    )
    assert s.auth.method == "token" and s.env_token is None


def test_environment_fallback_vault_before_bao(tmp_path: Path) -> None:
    env = {
        "VAULT_ADDR": "https://vault.example:8200/",
        "BAO_ADDR": "https://bao.example:8200",
        "BAO_TOKEN": "bao-token",
        "VAULT_NAMESPACE": "team1/",
        "VAULT_CAPATH": "/etc/ssl/vault",
        "BAO_CLIENT_CERT": "/c.pem",
        "BAO_CLIENT_KEY": "/k.pem",
    }
    s = load({}, env)
    assert s.address == "https://vault.example:8200"
    assert s.env_token == "bao-token"
    assert s.namespace == "team1"
    assert s.verify == "/etc/ssl/vault"
    assert s.cert == ("/c.pem", "/k.pem")
    # A CA file wins over a CA directory, like the vault CLI.
    assert load({}, {**env, "BAO_CACERT": "/ca.pem"}).verify == "/ca.pem"
    assert load({}, {"VAULT_SKIP_VERIFY": "true", "VAULT_CACERT": "/ca.pem"}).verify is False
    assert load({}, {"VAULT_SKIP_VERIFY": "0"}).verify is True
    (tmp_path / ".vault-token").write_text("from-file\n")
    assert load({}, {}, home=tmp_path).env_token == "from-file"


def test_config_wins_over_environment() -> None:
    env = {"VAULT_ADDR": "https://env:8200", "VAULT_CACERT": "/env-ca.pem", "VAULT_TOKEN": "t"}
    s = load(
        {
            "address": "https://conf:8200",
            "ca_cert": "ca.pem",
            "tls_verify": True,
            "auth": {"token_file": "token"},
        },
        env,
    )
    assert s.address == "https://conf:8200"
    assert s.verify == "/etc/credbridge/ca.pem"  # relative to the config's directory
    assert s.auth.token_file == Path("/etc/credbridge/token")
    assert s.env_token is None  # token_file given: the environment's token is not used


def test_repr_has_no_token() -> None:
    s = load({"auth": {"token": "inline-secret-token"}}, {"VAULT_TOKEN": "env-secret-token"})
    assert "secret-token" not in repr(s)
    s = load({}, {"VAULT_TOKEN": "env-secret-token"})
    assert "secret-token" not in repr(s)


@pytest.mark.parametrize(
    ("settings", "key", "text"),
    [
        ({"adress": "x"}, "sources.vault.adress", "unknown setting"),
        ({"address": "vault:8200"}, "sources.vault.address", "http:// or https://"),
        ({"retries": -1}, "sources.vault.retries", "integer from 0 to 10"),
        ({"retries": 11}, "sources.vault.retries", "integer from 0 to 10"),
        ({"read_timeout": 0}, "sources.vault.read_timeout", "positive number of seconds"),
        ({"concurrency": 0}, "sources.vault.concurrency", "1 to 256"),
        ({"tls_verify": "no"}, "sources.vault.tls_verify", "true or false"),
        ({"client_cert": "/c.pem"}, "sources.vault.client_cert", "go together"),
        ({"auth": "token"}, "sources.vault.auth", "table"),
        ({"auth": {"method": "ldap"}}, "sources.vault.auth.method", "one of"),
        ({"auth": {"method": "approle"}}, "sources.vault.auth.role_id", "needs role_id"),
        (
            {"auth": {"method": "approle", "role_id": "/etc/role"}},
            "sources.vault.auth.role_id",
            "must be a reference",
        ),
        (
            {"auth": {"method": "approle", "role_id": "vault:secret/x#y"}},
            "sources.vault.auth.role_id",
            "cannot come from vault",
        ),
        ({"auth": {"method": "jwt", "role": "r"}}, "sources.vault.auth.jwt", "needs jwt"),
        ({"auth": {"method": "kubernetes"}}, "sources.vault.auth.role", "needs the role"),
        (
            {"auth": {"token": "a", "token_file": "b"}},
            "sources.vault.auth.token_file",
            "only one",
        ),
        (
            {"auth": {"role": "x"}},
            "sources.vault.auth.role",
            "unknown setting 'role' for token auth",
        ),
    ],
)
def test_bad_settings_name_file_and_key(settings: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(settings)
    assert error.value.key == key
    assert error.value.file == "/etc/credbridge.toml"
    assert text in str(error.value)
    assert "\n" not in str(error.value)


def test_a_misspelt_auth_setting_is_named_with_the_closest_declared_one() -> None:
    with pytest.raises(ConfigError) as error:
        load({"auth": {"method": "approle", "role_idd": "env:ROLE_ID"}})
    assert error.value.key == "sources.vault.auth.role_idd"
    assert error.value.file == "/etc/credbridge.toml"
    assert "did you mean 'role_id'?" in str(error.value)


def test_each_auth_method_declares_the_keys_its_documented_table_lists() -> None:
    """docs/sources/vault.md has a table of keys under each ``method = "..."`` heading."""
    import re

    from credbridge.backends.hooks.vault import AUTH_SETTINGS

    docs = (REPO / "docs/sources/vault.md").read_text()
    documented: dict[str, set[str]] = {}
    for section in docs.split("\n### ")[1:]:
        heading = re.match(r'`method = "([a-z]+)"`', section)
        if heading:
            documented[heading[1]] = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    declared = {
        method: {s.name for s in settings} - {"method"}
        for method, settings in AUTH_SETTINGS.items()
    }
    assert documented == declared


def test_bad_environment_is_named() -> None:
    with pytest.raises(ConfigError, match="VAULT_SKIP_VERIFY"):
        load({}, {"VAULT_SKIP_VERIFY": "maybe"})
    with pytest.raises(ConfigError, match="BAO_ADDR"):
        load({}, {"BAO_ADDR": "vault.example"})


def test_kubernetes_defaults_to_the_service_account_token() -> None:
    s = load({"auth": {"method": "kubernetes", "role": "app"}})
    assert s.auth.mount == "kubernetes"
    assert s.auth.jwt == "file:/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert load({"auth": {"method": "approle", "role_id": "env:R"}}).auth.mount == "approle"


@pytest.mark.parametrize(
    "text",
    [
        "vault:secret/app/db#password",
        "vault:secret/app/db?version=3#/a/b",
        "vault:team/kv/app?kv=2",
        "vault:old/app?kv=1#x",
        "vault:secret/app?namespace=team1%2Fsub#x",
    ],
)
def test_good_references(text: str, fresh_plugins: None) -> None:
    Session().check_reference(parse_reference(text))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("vault:secret#x", "MOUNT/PATH"),
        ("vault:secret//x#y", "MOUNT/PATH"),
        ("vault:secret/../x#y", "MOUNT/PATH"),
        ("vault:secret/x?version=2147483649#y", "outside"),
        ("vault:secret/x?version=two#y", "not an integer"),
        ("vault:secret/x?kv=3#y", "kv must be 1 or 2"),
        ("vault:secret/x?kv=1&version=2#y", "KV v1 keeps no versions"),
        ("vault:secret/x?namespace=#y", "namespace"),
        ("vault:secret/x?mount=secret#y", "unknown option"),
    ],
)
def test_bad_references(text: str, problem: str, fresh_plugins: None) -> None:
    with pytest.raises(BadReference, match=problem):
        Session().check_reference(parse_reference(text))


def test_binary_token_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A token file that is not text fails before any request, without quoting its bytes."""
    (tmp_path / "tok").write_bytes(b"\xff\xfe-token-bytes")
    (tmp_path / "credbridge.toml").write_text(
        '[sources.vault]\naddress = "http://127.0.0.1:1"\nauth = { method = "token", token_file = "tok" }\n'
    )
    result = run_cli("-c", str(tmp_path / "credbridge.toml"), "get", "vault:secret/x#a")
    err = result.stderr.decode()
    assert result.returncode == 6, err
    assert "is not UTF-8 text" in err
    assert "Traceback" not in err
    assert "token-bytes" not in err
