"""The Vault token over a long run (``VaultSource.auth``), against a real OpenBao dev server.

Tokens get TTLs of seconds; what the server says about them is read with ``bao token lookup
-accessor`` (the root token's view), never from credbridge. Sleeps only let a TTL run out for
sure; a renewal is made due by passing ``now``, not by waiting for it.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import secret_value
from credbridge.backends.vault import VaultSource
from credbridge.backends.vault_auth import VaultAuth
from credbridge.core import (
    Forbidden,
    Request,
    Secret,
    Session,
    parse_config,
    parse_reference,
)
from support.openbao import DevServer, openbao
from support.servers import unique
from support.vault_setup import clean_vault_env, jwt_mount, read_policy, rs256_jwt

pytestmark = pytest.mark.vault

__all__ = ["clean_vault_env", "openbao"]  # fixtures, imported so pytest finds them here


def token_info(server: DevServer, accessor: str) -> dict[str, Any] | None:
    """``bao token lookup -accessor`` as root: the token's data, or None when it is gone."""
    try:
        shown = server.bao("token", "lookup", "-format=json", "-accessor", accessor)
    except subprocess.CalledProcessError:
        return None
    data: dict[str, Any] = json.loads(shown.stdout)["data"]
    return data


def expire_time(info: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(str(info["expire_time"])).timestamp()


class AppRole:
    """An AppRole mount with one role whose tokens live ``ttl`` seconds (``max_ttl`` at most),
    allowed to read one KV v2 secret."""

    def __init__(self, server: DevServer, tmp_path: Path, ttl: int, max_ttl: int) -> None:
        client = server.client()
        self.mount = unique("approle")
        client.sys.enable_auth_method("approle", path=self.mount)
        self.path = unique("auth")
        secret_value("renewed-pw")
        client.secrets.kv.v2.create_or_update_secret(
            path=self.path, secret={"password": "renewed-pw"}
        )
        policy = read_policy(client, f"secret/data/{self.path}")
        client.auth.approle.create_or_update_approle(
            "svc",
            token_policies=[policy],
            token_ttl=f"{ttl}s",
            token_max_ttl=f"{max_ttl}s",
            mount_point=self.mount,
        )
        role_id = client.auth.approle.read_role_id("svc", mount_point=self.mount)["data"]
        secret_id = client.auth.approle.generate_secret_id("svc", mount_point=self.mount)
        secret_value(secret_id["data"]["secret_id"])
        self.inputs = tmp_path / "approle"  # where the login inputs are kept
        self.inputs.mkdir()
        (self.inputs / "role-id").write_text(role_id["role_id"])
        (self.inputs / "secret-id").write_text(secret_id["data"]["secret_id"])
        self.config = {
            "sources": {
                "vault": {
                    "address": server.address,
                    "retries": 0,
                    "auth": {
                        "method": "approle",
                        "mount": self.mount,
                        "role_id": f"file:{self.inputs / 'role-id'}",
                        "secret_id": f"file:{self.inputs / 'secret-id'}",
                    },
                }
            }
        }

    @property
    def reference(self) -> str:
        return f"vault:secret/{self.path}#password"


def read(session: Session, reference: str) -> Any:
    request = Request(parse_reference(reference))
    outcome = session.resolve([request])[request]
    return outcome.reveal() if isinstance(outcome, Secret) else outcome


def auth_of(session: Session) -> VaultAuth:
    source = session.source("vault")
    assert isinstance(source, VaultSource)
    return source.auth


def test_approle_token_is_renewed_at_two_thirds_of_its_ttl(
    openbao: DevServer, tmp_path: Path
) -> None:
    role = AppRole(openbao, tmp_path, ttl=4, max_ttl=120)
    with Session(parse_config(role.config)) as session:
        auth = auth_of(session)
        first = auth.ensure_fresh()
        accessor = auth.accessor
        assert accessor is not None and auth.logins == 1
        info = token_info(openbao, accessor)
        assert info is not None and info["renewable"] is True and info["creation_ttl"] == 4
        assert first.renewable and first.expires_at is not None and first.issued_at is not None
        assert abs(first.expires_at - expire_time(info)) < 2
        # Due after two thirds of the TTL the server reported (integer seconds left).
        due = auth.refresh_at
        assert due == first.issued_at + (first.expires_at - first.issued_at) * 2 / 3

        # Not due yet: nothing is asked (the server's view does not change).
        assert auth.ensure_fresh(now=due - 0.5) is first and auth.renewals == 0
        time.sleep(1.2)
        renewed = auth.ensure_fresh(now=due)
        assert auth.renewals == 1 and auth.logins == 1 and auth.accessor == accessor
        info = token_info(openbao, accessor)
        assert info is not None and info["last_renewal_time"]
        assert renewed.expires_at is not None and renewed.expires_at > first.expires_at
        assert abs(renewed.expires_at - expire_time(info)) < 2
        assert auth.expires_at == renewed.expires_at
        assert read(session, role.reference) == b"renewed-pw"


def test_a_token_past_its_max_ttl_is_replaced_by_a_new_login(
    openbao: DevServer, tmp_path: Path
) -> None:
    role = AppRole(openbao, tmp_path, ttl=2, max_ttl=3)
    with Session(parse_config(role.config)) as session:
        auth = auth_of(session)
        assert read(session, role.reference) == b"renewed-pw"
        old = auth.accessor
        assert old is not None and token_info(openbao, old) is not None
        time.sleep(3.5)  # past max_ttl: the server has revoked the token
        assert token_info(openbao, old) is None
        # The next read renews nothing (it cannot) and logs in again first.
        assert read(session, role.reference) == b"renewed-pw"
        assert auth.logins == 2 and auth.renewals == 0
        new = auth.accessor
        assert new is not None and new != old
        info = token_info(openbao, new)
        assert info is not None and abs(expire_time(info) - (auth.expires_at or 0)) < 2


def test_a_renewal_capped_by_max_ttl_is_followed_by_a_login(
    openbao: DevServer, tmp_path: Path
) -> None:
    role = AppRole(openbao, tmp_path, ttl=9, max_ttl=9)
    with Session(parse_config(role.config)) as session:
        auth = auth_of(session)
        auth.ensure_fresh()
        old = auth.accessor
        assert old is not None
        # After 7 of 9 s, renewing gives at most the 2 s left before max_ttl: less than
        # a third of the TTL, so the token is replaced rather than kept for a moment more.
        time.sleep(7)
        auth.ensure_fresh()
        assert auth.logins == 2 and auth.accessor != old
        assert read(session, role.reference) == b"renewed-pw"


def test_a_token_file_is_read_again_when_its_token_expires(
    openbao: DevServer, tmp_path: Path, canary: Any
) -> None:
    def create(ttl: str) -> str:
        made = openbao.bao("token", "create", "-format=json", f"-ttl={ttl}", "-renewable=false")
        token = str(json.loads(made.stdout)["auth"]["client_token"])
        secret_value(token)
        return token

    sink = tmp_path / "sink"  # where Vault Agent (or an operator) keeps the token: its home
    sink.mkdir()
    canary.allow(sink)
    token_file = sink / "token"
    token_file.write_text(create("2s"))
    config = {
        "sources": {"vault": {"address": openbao.address, "auth": {"token_file": str(token_file)}}}
    }
    with Session(parse_config(config)) as session:
        auth = auth_of(session)
        first = auth.ensure_fresh()
        assert first.renewable is False and first.expires_at is not None
        old = auth.accessor
        time.sleep(2.5)
        with pytest.raises(Forbidden) as raised:
            auth.ensure_fresh()
        assert "the Vault token has expired and cannot be renewed" in str(raised.value)
        # Something else (a Vault Agent sink, an operator) puts a new token in the file.
        token_file.write_text(create("1h"))
        lease = auth.ensure_fresh()
        assert auth.accessor != old and auth.logins == 2
        assert lease.expires_at is not None and lease.expires_at > time.time() + 3000


def test_jwt_login_is_made_again_once_the_token_is_past_its_max_ttl(
    openbao: DevServer, tmp_path: Path, canary: Any
) -> None:
    client = openbao.client()
    key, mount = jwt_mount(client)
    path = unique("jwt-secret")
    secret_value("jwt-renewed-pw")
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"password": "jwt-renewed-pw"})
    policy = read_policy(client, f"secret/data/{path}")
    client.auth.jwt.create_role(
        name="job",
        role_type="jwt",
        user_claim="sub",
        bound_audiences=["credbridge"],
        allowed_redirect_uris=[],
        token_policies=[policy],
        token_ttl="2s",
        token_max_ttl="3s",
        path=mount,
    )
    now = int(time.time())
    jwt = rs256_jwt(
        key, {"sub": "job-1", "aud": "credbridge", "iat": now, "nbf": now - 5, "exp": now + 600}
    )
    secret_value(jwt)
    home = tmp_path / "run"  # the JWT is kept where the job's runner writes it
    home.mkdir()
    canary.allow(home)
    (home / "jwt").write_text(jwt)
    config = {
        "sources": {
            "vault": {
                "address": openbao.address,
                "auth": {"method": "jwt", "mount": mount, "role": "job", "jwt": f"file:{home}/jwt"},
            }
        }
    }
    reference = f"vault:secret/{path}#password"
    with Session(parse_config(config)) as session:
        auth = auth_of(session)
        assert read(session, reference) == b"jwt-renewed-pw"
        old = auth.accessor
        assert old is not None and auth.logins == 1
        time.sleep(3.5)  # past max_ttl: the server has revoked the token
        assert token_info(openbao, old) is None
        assert read(session, reference) == b"jwt-renewed-pw"
        assert auth.logins == 2 and auth.accessor not in (None, old)


def test_a_failed_login_is_tried_again_in_a_long_run(
    openbao: DevServer, tmp_path: Path, canary: Any
) -> None:
    role = AppRole(openbao, tmp_path, ttl=60, max_ttl=120)
    canary.allow(role.inputs)
    secret_id = role.inputs / "secret-id"
    good = secret_id.read_text()
    secret_id.write_text(str(uuid.uuid4()))
    with Session(parse_config(role.config)) as session:
        auth = auth_of(session)
        with pytest.raises(Forbidden) as raised:
            auth.ensure_fresh()
        assert f"approle login at auth/{role.mount} failed (400)" in str(raised.value)
        assert isinstance(read(session, role.reference), Forbidden)
        # The operator puts the right secret_id in place: the next read logs in.
        secret_id.write_text(good)
        assert read(session, role.reference) == b"renewed-pw"
        assert auth.logins == 1 and auth.accessor is not None
