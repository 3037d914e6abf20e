"""``[sources.vault]`` over the environment: where the server is, how to trust it, how to log in.

Every key is declared once, as a :class:`~credbridge.core.settings.Setting`: the table's in
backends/hooks/vault.py, the ``auth`` table's too, one set per login method (``AUTH_SETTINGS``):
the config loader checks both tables against them when the config loads. Both are
read through those declarations only; what remains here are the rules between keys (a client
certificate needs its key, one token source at most) and what a key's kind cannot say (an
``http(s)://`` address, a login input given as a reference). Every error names the file and the
key (exit 3).

A key the table leaves unset falls back to the environment the ``vault`` and ``bao`` CLIs read
(``VAULT_ADDR``, then ``BAO_ADDR``, ...), then to its declared default (docs/sources/vault.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from credbridge.backends.hooks.vault import AUTH_METHOD, AUTH_SETTINGS, SETTINGS
from credbridge.core import ConfigError, SourceContext
from credbridge.core.reference import parse_flag
from credbridge.core.settings import control_problem, declare, read_settings

_REFERENCES = frozenset({"token_ref", "role_id", "secret_id", "jwt"})
"""Auth keys whose value is a reference to the login input, never the input itself."""
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """``VAULT_NAME``, else ``BAO_NAME``: the first one set and not empty, with its name."""
    for prefix in ("VAULT_", "BAO_"):
        value = environ.get(prefix + name)
        if value:
            return prefix + name, value
    return None


def _env_error(name: str, message: str) -> ConfigError:
    return ConfigError(f"environment variable {name}: {message}")


@dataclass(frozen=True)
class AuthSettings:
    method: str = "token"
    mount: str = ""
    token: str | None = None
    token_file: Path | None = None
    token_ref: str | None = None
    role: str | None = None
    role_id: str | None = None
    secret_id: str | None = None
    jwt: str | None = None

    def __repr__(self) -> str:  # the inline token must never show up in a repr
        return f"AuthSettings(method={self.method!r}, mount={self.mount!r})"


@dataclass(frozen=True)
class VaultSettings:
    """Connection and auth settings: the ``[sources.vault]`` table over the environment."""

    address: str
    namespace: str | None
    verify: bool | str
    cert: tuple[str, str] | None
    connect_timeout: float
    read_timeout: float
    retries: int
    backoff: float
    concurrency: int
    auth: AuthSettings
    env_token: str | None = field(default=None, repr=False)
    """Token from VAULT_TOKEN / BAO_TOKEN / ~/.vault-token, when auth has none of its own."""

    @classmethod
    def from_context(
        cls,
        context: SourceContext,
        *,
        environ: Mapping[str, str] | None = None,
        home: Path | None = None,
    ) -> VaultSettings:
        """The settings of the source ``context`` opens; ``environ`` (``os.environ``) and
        ``home`` (``$HOME``) supply what the table leaves unset."""
        env = os.environ if environ is None else environ
        where = context.where or "sources.vault"
        values = context.read_settings(SETTINGS)

        def given(key: str) -> bool:
            # read_settings fills an absent key with its default; the environment comes first.
            return context.settings.get(key) is not None

        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(message, file=context.config_file or None, key=f"{where}.{key}")

        def path(key: str, env_name: str) -> str | None:
            if given(key):
                return str(values[key])
            found = _env(env, env_name)
            return found[1] if found else None

        address: str = values["address"]
        if not given("address") and (found := _env(env, "ADDR")):
            address = found[1]
            if urlsplit(address).scheme not in {"http", "https"} or control_problem(address):
                raise _env_error(found[0], "must be an http:// or https:// URL")
        if urlsplit(address).scheme not in {"http", "https"} or not urlsplit(address).netloc:
            raise fail("address", "must be an http:// or https:// URL")

        namespace: str | None = values["namespace"]
        if not given("namespace") and (found := _env(env, "NAMESPACE")):
            namespace = found[1]
            if control_problem(namespace) is not None:
                raise _env_error(found[0], "must not contain control characters")

        verify: bool | str = True
        ca_cert, ca_path = path("ca_cert", "CACERT"), path("ca_path", "CAPATH")
        # Like the vault CLI: a CA file wins over a CA directory.
        if ca_cert or ca_path:
            verify = str(ca_cert or ca_path)
        if given("tls_verify"):
            if not values["tls_verify"]:
                verify = False
        elif found := _env(env, "SKIP_VERIFY"):
            skip = parse_flag(found[1])
            if skip is None:
                raise _env_error(found[0], "must be true or false")
            if skip:
                verify = False

        client_cert, client_key = (
            path("client_cert", "CLIENT_CERT"),
            path("client_key", "CLIENT_KEY"),
        )
        if bool(client_cert) != bool(client_key):
            raise fail("client_cert", "client_cert and client_key go together")
        cert = (client_cert, client_key) if client_cert and client_key else None

        auth = _read_auth(context, values["auth"], f"{where}.auth")
        env_token = None
        if auth.method == "token" and not (auth.token or auth.token_file or auth.token_ref):
            env_token = _token_from_environment(env, home)
        concurrency = values["concurrency"]
        return cls(
            address=address.rstrip("/"),
            namespace=namespace.strip("/") or None if namespace else None,
            verify=verify,
            cert=cert,
            connect_timeout=values["connect_timeout"],
            read_timeout=values["read_timeout"],
            retries=values["retries"],
            backoff=values["backoff"],
            concurrency=context.concurrency if concurrency is None else concurrency,
            auth=auth,
            env_token=env_token,
        )


def _token_from_environment(environ: Mapping[str, str], home: Path | None) -> str | None:
    found = _env(environ, "TOKEN")
    if found:
        return found[1].strip()
    try:
        base = home if home is not None else Path(environ.get("HOME") or Path.home())
    except RuntimeError:  # no $HOME and no home directory: there is no ~/.vault-token
        return None
    try:
        return (base / ".vault-token").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _read_auth(context: SourceContext, table: Mapping[str, Any], where: str) -> AuthSettings:
    """``[sources.vault.auth]``, read through the declarations of its ``method``."""
    file = context.config_file or None

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=file, key=f"{where}.{key}")

    method = AUTH_METHOD.parse(
        table.get("method", AUTH_METHOD.default),
        base=context.config_dir,
        file=file,
        key=f"{where}.method",
    )
    values = read_settings(
        declare(AUTH_SETTINGS[method]) or {},
        table,
        what=f"{method} auth",
        file=file,
        where=where,
        base=context.config_dir,
    )
    for key, value in values.items():
        if isinstance(value, str) and not value.strip():
            raise fail(key, "must be a non-empty string")
        if key in _REFERENCES and value is not None:
            scheme, colon, _ = value.partition(":")
            if not colon or not _SCHEME.fullmatch(scheme):
                raise fail(
                    key, "must be a reference such as 'file:/etc/credbridge/x' or 'credential:x'"
                )
            if scheme == "vault":
                raise fail(key, "cannot come from vault itself")
    if method == "token":
        given = [k for k in ("token", "token_file", "token_ref") if values[k] is not None]
        if len(given) > 1:
            raise fail(given[1], "give only one of token, token_file, token_ref")
        return AuthSettings(
            method=method,
            token=values["token"],
            token_file=values["token_file"],
            token_ref=values["token_ref"],
        )
    mount = values["mount"].strip("/")
    if method == "approle":
        if values["role_id"] is None:
            raise fail("role_id", "approle auth needs role_id (a reference)")
        return AuthSettings(
            method=method, mount=mount, role_id=values["role_id"], secret_id=values["secret_id"]
        )
    if values["role"] is None:
        raise fail("role", f"{method} auth needs the role to log in as")
    if values["jwt"] is None:
        raise fail("jwt", "jwt auth needs jwt (a reference, e.g. 'env:CI_JOB_JWT')")
    return AuthSettings(method=method, mount=mount, role=values["role"], jwt=values["jwt"])
