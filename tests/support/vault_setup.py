"""Vault (OpenBao) set-up shared by the tests of ``vault:``: a clean environment, KV values
written as the canary's secrets, token files and configs pointing at a server.

``clean_vault_env`` is an autouse fixture: a test module that imports it (and names it in its
``__all__``) runs every test without the developer's Vault environment.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import secret_value

from support.openbao import DevServer
from support.servers import unique


@pytest.fixture(autouse=True)
def clean_vault_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's Vault environment must not change what the tests see."""
    for name in list(os.environ):
        if name.startswith(("VAULT_", "BAO_")) or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def put(server: DevServer, path: str, **fields: Any) -> None:
    for value in fields.values():
        if isinstance(value, str):
            secret_value(value)  # every value written to Vault is a secret to the canary
    server.client().secrets.kv.v2.create_or_update_secret(
        path=path.partition("/")[2], secret=fields, mount_point=path.partition("/")[0]
    )


def token_file(tmp_path: Path, token: str) -> str:
    secret_value(token)
    path = tmp_path / f"token-{uuid.uuid4().hex[:6]}"
    path.write_text(token + "\n")
    return str(path)


def read_policy(client: Any, path: str) -> str:
    """A new policy that may read ``path`` (a KV v2 data path, ``*`` allowed): its name."""
    policy = unique("pol")
    client.sys.create_or_update_policy(
        name=policy, policy=f'path "{path}" {{ capabilities = ["read"] }}'
    )
    return policy


def approle_app(server: DevServer) -> tuple[str, str, str, str]:
    """A new AppRole mount whose role ``app`` may read ``secret/BASE/*``, where ``BASE/db``
    holds ``password = approle-pw``: (mount, BASE, role_id, secret_id)."""
    client = server.client()
    mount = unique("approle")
    client.sys.enable_auth_method("approle", path=mount)
    base = unique("ar")
    put(server, f"secret/{base}/db", password="approle-pw")
    policy = read_policy(client, f"secret/data/{base}/*")
    client.auth.approle.create_or_update_approle("app", token_policies=[policy], mount_point=mount)
    role_id = client.auth.approle.read_role_id("app", mount_point=mount)["data"]["role_id"]
    secret_id = secret_value(
        client.auth.approle.generate_secret_id("app", mount_point=mount)["data"]["secret_id"]
    )
    return mount, base, role_id, secret_id


def jwt_mount(client: Any) -> tuple[Any, str]:
    """A new JWT auth mount that trusts a new RSA key: (the private key, the mount)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mount = unique("jwt")
    client.sys.enable_auth_method("jwt", path=mount)
    client.auth.jwt.configure(jwt_validation_pubkeys=[public.decode()], path=mount)
    return key, mount


def vault_config(
    address: str, *, auth: Mapping[str, Any] | None = None, **settings: Any
) -> dict[str, Any]:
    table: dict[str, Any] = {"address": address, "retries": 1, "backoff": 0.0, **settings}
    if auth is not None:
        table["auth"] = dict(auth)
    return {"sources": {"vault": table}}


def root_config(server: DevServer, tmp_path: Path, **settings: Any) -> dict[str, Any]:
    return vault_config(
        server.address, auth={"token_file": token_file(tmp_path, server.token)}, **settings
    )


def write_toml(path: Path, data: Mapping[str, Any]) -> Path:
    """A tiny TOML writer for the configs these tests use (strings, numbers, bools, tables)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(str(v))

    def table(prefix: list[str], body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, Mapping) or k == "auth"}
        if prefix:
            lines.append("[" + ".".join(json.dumps(p) for p in prefix) + "]")
        for k, v in scalars.items():
            lines.append(f"{json.dumps(k)} = {value(v)}")
        for k, v in body.items():
            if isinstance(v, Mapping) and k != "auth":
                table([*prefix, k], v)

    table([], data)
    path.write_text("\n".join(lines) + "\n")
    return path


def rs256_jwt(key: Any, claims: Mapping[str, Any]) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(dict(claims)).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(signature)}"
