"""Dynamic ``vault:`` secrets against a real OpenBao: PKI certificates and database credentials
(OpenBao's built-in postgresql-database-plugin on a real PostgreSQL cluster), with leases that
``renew`` extends and ``revoke`` ends."""

from __future__ import annotations

import datetime
import json
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from credbridge.core import (
    BadReference,
    Forbidden,
    InvalidValue,
    Lease,
    Mode,
    NotFound,
    Pending,
    Request,
    Secret,
    Session,
    parse_config,
    parse_reference,
)
from credbridge.core.errors import ExitCode
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support.httpproxy import HttpProxy, Reply
from support.httpproxy import Request as ProxyRequest
from support.openbao import DevServer, openbao
from support.postgres import Cluster, postgres
from support.reference_table import references, table_rows
from support.servers import unique
from support.vault_setup import clean_vault_env, root_config, token_file, vault_config, write_toml

pytestmark = pytest.mark.vault

__all__ = ["clean_vault_env", "openbao", "postgres"]  # fixtures, imported so pytest finds them here


# --------------------------------------------------------------------------- engines


def mount_pki(client: Any, mount: str, root: str, *, max_lease_ttl: str) -> None:
    """A PKI engine at ``mount`` with an internal root CA named ``root``."""
    client.sys.enable_secrets_engine("pki", path=mount)
    client.sys.tune_mount_configuration(mount, max_lease_ttl=max_lease_ttl)
    client.secrets.pki.generate_root("internal", root, mount_point=mount)


def pki_role(client: Any, mount: str, name: str, *, ttl: str, **settings: Any) -> None:
    """A role issuing certificates for example.com and its subdomains."""
    client.secrets.pki.create_or_update_role(
        name,
        extra_params={"allowed_domains": "example.com", "allow_subdomains": True, "ttl": ttl}
        | settings,
        mount_point=mount,
    )


def mount_postgres(
    client: Any, postgres: Cluster, mount: str, *, default_ttl: str, max_ttl: str
) -> None:
    """A database engine at ``mount`` on the PostgreSQL cluster, with the role ``app`` making
    login roles that expire with their lease."""
    client.sys.enable_secrets_engine("database", path=mount)
    client.secrets.database.configure(
        name="pg",
        plugin_name="postgresql-database-plugin",
        allowed_roles=["app"],
        connection_url=postgres.connection_url(),
        username=postgres.superuser,
        password=postgres.password,
        password_authentication="scram-sha-256",
        mount_point=mount,
    )
    client.secrets.database.create_role(
        name="app",
        db_name="pg",
        creation_statements=[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
            "VALID UNTIL '{{expiration}}';"
        ],
        default_ttl=default_ttl,
        max_ttl=max_ttl,
        mount_point=mount,
    )


@dataclass(frozen=True)
class Pki:
    mount: str
    role: str
    """A role with generate_lease (lease ids) and a 60-second TTL."""
    plain_role: str
    """A role without generate_lease: certificates with no lease id."""

    def ref(self, part: str, common_name: str = "app.example.com", role: str = "") -> str:
        return f"vault:{self.mount}/issue/{role or self.role}?common_name={common_name}#{part}"


@pytest.fixture(scope="module")
def pki(openbao: DevServer) -> Pki:
    client = openbao.client()
    mount = unique("pki")
    mount_pki(client, mount, "Credbridge Test Root", max_lease_ttl="24h")
    pki_role(client, mount, "web", ttl="60s", generate_lease=True)
    pki_role(client, mount, "plain", ttl="60s")
    return Pki(mount, "web", "plain")


@dataclass(frozen=True)
class Database:
    mount: str
    role: str
    """default_ttl 10s, max_ttl 120s."""

    def ref(self, part: str) -> str:
        return f"vault:{self.mount}/creds/{self.role}#{part}"


@pytest.fixture(scope="module")
def database(openbao: DevServer, postgres: Cluster) -> Database:
    mount = unique("db")
    mount_postgres(openbao.client(), postgres, mount, default_ttl="10s", max_ttl="120s")
    return Database(mount, "app")


def session_for(openbao: DevServer, tmp_path: Path, **settings: Any) -> Session:
    return Session(parse_config(root_config(openbao, tmp_path, **settings)))


def resolve(session: Session, *refs: str, mode: Mode = Mode.DELIVER) -> list[Any]:
    requests = [Request(parse_reference(r)) for r in refs]
    for request in requests:
        session.check_reference(request.reference)
    outcomes = session.resolve(requests, mode)
    return [outcomes[r] for r in requests]


def certificate(value: Secret) -> x509.Certificate:
    return x509.load_pem_x509_certificate(value.reveal())


def issued_serials(openbao: DevServer, mount: str) -> set[str]:
    listed = openbao.client().secrets.pki.list_certificates(mount_point=mount)
    return set(listed["data"]["keys"])


def live_leases(openbao: DevServer, prefix: str) -> set[str]:
    try:
        listed = openbao.client().sys.list_leases(prefix)
    except Exception:  # hvac raises InvalidPath when there is none
        return set()
    return {prefix + "/" + key for key in listed["data"]["keys"]}


# --------------------------------------------------------------------------- PKI


def test_pki_issue_gives_matching_parts_of_one_certificate_with_its_lease(
    openbao: DevServer, pki: Pki, tmp_path: Path
) -> None:
    before = issued_serials(openbao, pki.mount)
    with session_for(openbao, tmp_path) as session:
        cert, key, chain, ca = resolve(
            session, *(pki.ref(part) for part in ("cert", "key", "chain", "ca"))
        )
    assert all(isinstance(v, Secret) for v in (cert, key, chain, ca)), (cert, key, chain, ca)
    # Four references to one locator: one certificate was issued, and the key is its key.
    assert len(issued_serials(openbao, pki.mount) - before) == 1
    leaf = certificate(cert)
    private = serialization.load_pem_private_key(key.reveal(), password=None)
    public_pem = serialization.PublicFormat.SubjectPublicKeyInfo
    assert private.public_key().public_bytes(serialization.Encoding.PEM, public_pem) == (
        leaf.public_key().public_bytes(serialization.Encoding.PEM, public_pem)
    )
    assert leaf.subject.rfc4514_string() == "CN=app.example.com"
    root = certificate(ca)
    leaf.verify_directly_issued_by(root)
    assert chain.reveal() == cert.reveal() + ca.reveal()
    assert x509.load_pem_x509_certificates(chain.reveal()) == [leaf, root]
    # The lease: the certificate's expiry, its serial as the version, a lease id (the role
    # has generate_lease), not renewable; every part carries the same one.
    lease = cert.lease
    assert isinstance(lease, Lease)
    assert {v.lease for v in (key, chain, ca)} == {lease}
    assert lease.expires_at == leaf.not_valid_after_utc.timestamp()
    assert lease.version is not None
    assert int(lease.version.replace(":", ""), 16) == leaf.serial_number
    assert lease.lease_id is not None
    assert lease.lease_id.startswith(f"{pki.mount}/issue/{pki.role}/")
    assert lease.renewable is False
    assert lease.issued_at is not None
    assert lease.issued_at <= lease.expires_at <= lease.issued_at + 60 + 5


def test_pki_options_reach_the_certificate_and_a_role_without_lease_has_no_lease_id(
    openbao: DevServer, pki: Pki, tmp_path: Path
) -> None:
    ref = (
        f"vault:{pki.mount}/issue/{pki.plain_role}?common_name=api.example.com"
        "&alt_names=www.example.com,alt.example.com&ip_sans=10.0.0.7&ttl=30s#cert"
    )
    with session_for(openbao, tmp_path) as session:
        (cert,) = resolve(session, ref)
    assert isinstance(cert, Secret), cert
    leaf = certificate(cert)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "api.example.com",
        "www.example.com",
        "alt.example.com",
    }
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= datetime.timedelta(seconds=30 + 30)  # not_before is backdated 30s
    assert cert.lease is not None
    assert cert.lease.lease_id is None
    assert cert.lease.expires_at == leaf.not_valid_after_utc.timestamp()


def test_pki_fields_match_what_bao_write_prints(
    openbao: DevServer, pki: Pki, tmp_path: Path
) -> None:
    """The reference client, `bao write MOUNT/issue/ROLE`, prints the fields credbridge maps:
    certificate -> #cert, private_key -> #key, issuing_ca -> #ca, ca_chain -> the rest of
    #chain, expiration -> expires_at, serial_number -> version, lease_id -> lease_id."""
    printed = json.loads(
        openbao.bao(
            "write", "-format=json", f"{pki.mount}/issue/{pki.role}", "common_name=cli.example.com"
        ).stdout
    )
    data = printed["data"]
    assert {"certificate", "private_key", "issuing_ca", "ca_chain"} <= set(data)
    from_cli = x509.load_pem_x509_certificate(data["certificate"].encode())
    assert data["expiration"] == int(from_cli.not_valid_after_utc.timestamp())
    assert printed["lease_id"].startswith(f"{pki.mount}/issue/{pki.role}/")
    assert printed["renewable"] is False
    with session_for(openbao, tmp_path) as session:
        cert, ca = resolve(
            session, pki.ref("cert", "cli.example.com"), pki.ref("ca", "cli.example.com")
        )
    assert isinstance(cert, Secret) and isinstance(ca, Secret)
    assert ca.reveal_text() == data["issuing_ca"] + "\n"
    assert cert.lease is not None and cert.lease.version is not None
    # The same form of serial number ("xx:xx:..."), and the same shape of lease id.
    assert len(cert.lease.version) == len(data["serial_number"])
    assert cert.lease.lease_id is not None
    assert cert.lease.lease_id.rpartition("/")[0] == printed["lease_id"].rpartition("/")[0]


def test_two_credentials_of_one_delivery_share_one_certificate(
    openbao: DevServer, pki: Pki, tmp_path: Path, tmpfs_dir: Path
) -> None:
    """deliver plans first (dry run: Pending), then issues once for every credential that
    names the locator, in any target: the delivered key is the certificate's key."""
    data = root_config(openbao, tmp_path)
    data["sinks"] = {"credstore": {"directory": str(tmpfs_dir)}}
    data["targets"] = {
        "web": {"credentials": {"tls.crt": pki.ref("cert"), "tls.key": pki.ref("key")}},
        "proxy": {"credentials": {"fullchain": pki.ref("chain")}},
    }
    config = write_toml(tmp_path / "credbridge.toml", data)
    before = issued_serials(openbao, pki.mount)
    done = run_cli("-c", str(config), "deliver")
    assert done.returncode == 0, done.stderr
    assert len(issued_serials(openbao, pki.mount) - before) == 1
    leaf = x509.load_pem_x509_certificate((tmpfs_dir / "web" / "tls.crt").read_bytes())
    private = serialization.load_pem_private_key(
        (tmpfs_dir / "web" / "tls.key").read_bytes(), password=None
    )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert private.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    fullchain = x509.load_pem_x509_certificates((tmpfs_dir / "proxy" / "fullchain").read_bytes())
    assert fullchain[0] == leaf


def test_check_and_dry_run_issue_nothing(
    openbao: DevServer, pki: Pki, database: Database, tmp_path: Path, tmpfs_dir: Path
) -> None:
    data = root_config(openbao, tmp_path)
    data["sinks"] = {"credstore": {"directory": str(tmpfs_dir)}}
    data["targets"] = {
        "app": {"credentials": {"crt": pki.ref("cert"), "pw": database.ref("password")}}
    }
    config = write_toml(tmp_path / "credbridge.toml", data)
    certs = issued_serials(openbao, pki.mount)
    leases = live_leases(openbao, f"{database.mount}/creds/{database.role}")
    for command in (["check"], ["deliver", "--dry-run"]):
        done = run_cli("-c", str(config), *command)
        assert done.returncode == 0, done.stderr
        said = f"a certificate from {pki.mount}/issue/{pki.role}, issued on delivery"
        assert said in done.stdout.decode()
    with session_for(openbao, tmp_path) as session:
        got = resolve(session, pki.ref("key"), database.ref("username"), mode=Mode.DRY_RUN)
    assert all(isinstance(v, Pending) for v in got), got
    assert got[1].reason == (
        f"database credentials from {database.mount}/creds/{database.role}, issued on delivery"
    )
    assert issued_serials(openbao, pki.mount) == certs
    assert live_leases(openbao, f"{database.mount}/creds/{database.role}") == leases
    assert not (tmpfs_dir / "app").exists()


def test_revoking_a_certificate_with_or_without_a_lease(
    openbao: DevServer, pki: Pki, tmp_path: Path
) -> None:
    with session_for(openbao, tmp_path) as session:
        leased, plain = resolve(session, pki.ref("cert"), pki.ref("cert", role=pki.plain_role))
        assert isinstance(leased, Secret) and isinstance(plain, Secret)
        source = session.source("vault")
        for value, role in ((leased, pki.role), (plain, pki.plain_role)):
            assert value.lease is not None
            source.revoke(Request(parse_reference(pki.ref("cert", role=role))), value.lease)  # type: ignore[attr-defined]
        with pytest.raises(InvalidValue, match="not renewable"):
            source.renew(Request(parse_reference(pki.ref("cert"))), leased.lease)  # type: ignore[attr-defined]
    for value in (leased, plain):
        assert value.lease is not None and value.lease.version is not None
        read = openbao.client().secrets.pki.read_certificate(
            value.lease.version, mount_point=pki.mount
        )
        assert read["data"]["revocation_time"] > 0


def test_a_certificate_in_a_namespace_is_issued_and_revoked_there(
    openbao: DevServer, tmp_path: Path
) -> None:
    namespace = unique("ns")
    openbao.bao("namespace", "create", namespace)
    admin = openbao.client()
    admin.adapter.namespace = namespace
    mount_pki(admin, "pki", "Namespace Root", max_lease_ttl="1h")
    pki_role(admin, "pki", "web", ttl="60s")
    ref = f"vault:pki/issue/web?common_name=ns.example.com&namespace={namespace}#cert"
    with session_for(openbao, tmp_path) as session:
        (cert,) = resolve(session, ref)
        assert isinstance(cert, Secret) and cert.lease is not None, cert
        assert cert.lease.lease_id is None  # no generate_lease: revoked by serial
        session.source("vault").revoke(Request(parse_reference(ref)), cert.lease)  # type: ignore[attr-defined]
    assert cert.lease.version is not None
    read = admin.secrets.pki.read_certificate(cert.lease.version, mount_point="pki")
    assert read["data"]["revocation_time"] > 0
    assert certificate(cert).issuer.rfc4514_string() == "CN=Namespace Root"


# --------------------------------------------------------------------------- database


def test_database_credentials_log_in_renew_and_stop_working_when_revoked(
    openbao: DevServer, database: Database, postgres: Cluster, tmp_path: Path
) -> None:
    request = Request(parse_reference(database.ref("password")))
    with session_for(openbao, tmp_path) as session:
        username, password = resolve(session, database.ref("username"), database.ref("password"))
        assert isinstance(username, Secret) and isinstance(password, Secret), (username, password)
        lease = password.lease
        assert lease is not None and username.lease == lease
        assert lease.lease_id is not None
        assert lease.lease_id.startswith(f"{database.mount}/creds/{database.role}/")
        assert lease.renewable is True
        assert lease.issued_at is not None and lease.expires_at is not None
        assert lease.expires_at - lease.issued_at == pytest.approx(10)  # the role's default_ttl

        user = username.reveal_text()
        login = postgres.login(user, password.reveal_text())
        assert login.returncode == 0, login.stderr
        assert login.stdout.strip() == user

        before = openbao.client().sys.read_lease(lease.lease_id)["data"]
        assert before["ttl"] <= 10
        source = session.source("vault")
        renewed = source.renew(request, lease, increment=90)  # type: ignore[attr-defined]
        after = openbao.client().sys.read_lease(lease.lease_id)["data"]
        # The server extended it: from at most 10s left to the 90s asked for (max_ttl 120s).
        assert after["ttl"] > 60
        assert renewed.lease_id == lease.lease_id and renewed.renewable is True
        assert renewed.issued_at == lease.issued_at
        assert renewed.expires_at is not None and renewed.expires_at > lease.expires_at + 50
        expire_time = datetime.datetime.fromisoformat(after["expire_time"]).timestamp()
        assert abs(renewed.expires_at - expire_time) < 5
        # ... in PostgreSQL too: past the first expiry (VALID UNTIL, moved by the renewal),
        # the user still logs in.
        time.sleep(max(0.0, lease.expires_at + 1 - time.time()))
        assert postgres.login(user, password.reveal_text()).returncode == 0
        # An increment past the role's max_ttl (120s) is capped by the server, and the lease
        # says what the server gave, not what was asked.
        capped = source.renew(request, renewed, increment=3600)  # type: ignore[attr-defined]
        assert capped.expires_at is not None
        assert capped.expires_at <= lease.issued_at + 120 + 1
        assert openbao.client().sys.read_lease(lease.lease_id)["data"]["ttl"] <= 120

        source.revoke(request, capped)  # type: ignore[attr-defined]
        refused = postgres.login(user, password.reveal_text())
        assert refused.returncode != 0
        assert user in refused.stderr  # "password authentication failed for user ..."
        with pytest.raises(NotFound, match="does not exist"):
            source.renew(request, renewed)  # type: ignore[attr-defined]
    assert lease.lease_id not in live_leases(openbao, f"{database.mount}/creds/{database.role}")


def test_database_lease_matches_what_bao_read_prints(
    openbao: DevServer, database: Database, postgres: Cluster, tmp_path: Path
) -> None:
    """`bao read MOUNT/creds/ROLE` prints username and password (credbridge's #username and
    #password) and lease_id, lease_duration, renewable: credbridge's lease says the same."""
    printed = json.loads(
        openbao.bao("read", "-format=json", f"{database.mount}/creds/{database.role}").stdout
    )
    assert set(printed["data"]) == {"username", "password"}
    login = postgres.login(printed["data"]["username"], printed["data"]["password"])
    assert login.returncode == 0, login.stderr
    with session_for(openbao, tmp_path) as session:
        (password,) = resolve(session, database.ref("password"))
    assert isinstance(password, Secret) and password.lease is not None
    lease = password.lease
    assert lease.lease_id is not None
    assert lease.lease_id.rpartition("/")[0] == printed["lease_id"].rpartition("/")[0]
    assert lease.renewable is printed["renewable"] is True
    assert lease.expires_at is not None and lease.issued_at is not None
    assert lease.expires_at - lease.issued_at == pytest.approx(printed["lease_duration"])


def test_renew_and_revoke_without_sys_leases_capabilities_are_forbidden(
    openbao: DevServer, database: Database, tmp_path: Path
) -> None:
    policy = unique("creds-only")
    openbao.client().sys.create_or_update_policy(
        name=policy,
        policy=f'path "{database.mount}/creds/{database.role}" {{ capabilities = ["read"] }}',
    )
    # Without the default policy, which grants update on sys/leases/renew to every token.
    token = openbao.client().auth.token.create(policies=[policy], no_default_policy=True, ttl="5m")[
        "auth"
    ]["client_token"]
    config = vault_config(openbao.address, auth={"token_file": token_file(tmp_path, token)})
    request = Request(parse_reference(database.ref("password")))
    with Session(parse_config(config)) as session:
        (password,) = resolve(session, database.ref("password"))
        assert isinstance(password, Secret) and password.lease is not None, password
        source = session.source("vault")
        with pytest.raises(Forbidden, match="no 'update' on sys/leases/renew"):
            source.renew(request, password.lease, increment=30)  # type: ignore[attr-defined]
        with pytest.raises(Forbidden, match="no 'update' on sys/leases/revoke"):
            source.revoke(request, password.lease)  # type: ignore[attr-defined]
    assert password.lease.lease_id is not None
    openbao.client().sys.revoke_lease(password.lease.lease_id)


def test_each_delivery_issues_new_database_credentials(
    openbao: DevServer, database: Database, postgres: Cluster, tmp_path: Path, tmpfs_dir: Path
) -> None:
    data = root_config(openbao, tmp_path)
    data["sinks"] = {"credstore": {"directory": str(tmpfs_dir)}}
    data["targets"] = {
        "app": {"credentials": {"user": database.ref("username"), "pw": database.ref("password")}}
    }
    config = write_toml(tmp_path / "credbridge.toml", data)
    users = []
    for _ in range(2):
        done = run_cli("-c", str(config), "-vv", "deliver")
        assert done.returncode == 0, done.stderr
        user = (tmpfs_dir / "app" / "user").read_text()
        login = postgres.login(user, (tmpfs_dir / "app" / "pw").read_text())
        assert login.returncode == 0, login.stderr
        # The lease id is logged (it names a lease, it grants nothing); the value never is.
        assert f"lease {database.mount}/creds/{database.role}/".encode() in done.stderr
        users.append(user)
    assert users[0] != users[1]


# --------------------------------------------------------------------------- errors


def test_dynamic_errors_are_typed_and_name_the_reference(
    openbao: DevServer, pki: Pki, database: Database, tmp_path: Path
) -> None:
    kv = unique("app")
    openbao.client().secrets.kv.v2.create_or_update_secret(
        path=f"{kv}/issue/x", secret={"cert": "not-a-cert"}, mount_point="secret"
    )
    refs = [
        f"vault:{pki.mount}/issue/nope?common_name=a.example.com#cert",
        f"vault:{database.mount}/creds/nope#password",
        f"vault:{pki.mount}/sign/{pki.role}?common_name=a.example.com#cert",
        f"vault:{database.mount}/creds/{database.role}?common_name=x#password",
        f"vault:secret/{kv}/issue/x?common_name=a.example.com#cert",
        pki.ref("cert", common_name="evil.example.org"),
    ]
    with session_for(openbao, tmp_path) as session:
        got = resolve(session, *refs)
    assert [type(e) for e in got] == [
        NotFound,
        NotFound,
        InvalidValue,
        InvalidValue,
        InvalidValue,
        InvalidValue,
    ], got
    for ref, error in zip(refs, got, strict=True):
        assert str(error).startswith(str(parse_reference(ref)) + ": "), error
    assert f"no role 'nope' at {pki.mount}/" in str(got[0])
    assert f"credbridge reads vault:{pki.mount}/issue/ROLE?common_name=NAME#cert" in str(got[2])
    assert "is a KV secrets engine; common_name is an option of PKI" in str(got[4])
    # The server's refusal (the role does not allow the name) is disclosed: it quotes no value.
    assert f"{pki.mount}/issue/{pki.role} refused to issue a certificate (400)" in str(got[5])
    assert "common name evil.example.org not allowed by this role" in str(got[5])

    # A token that may see the paths but not issue (read, not update, on the PKI role; list,
    # not read, on the database role): forbidden, naming the capability it lacks.
    policy = unique("issue-denied")
    openbao.client().sys.create_or_update_policy(
        name=policy,
        policy=(
            f'path "{pki.mount}/issue/{pki.role}" {{ capabilities = ["read"] }}\n'
            f'path "{database.mount}/creds/{database.role}" {{ capabilities = ["list"] }}\n'
        ),
    )
    token = openbao.client().auth.token.create(policies=[policy], ttl="5m")["auth"]["client_token"]
    config = vault_config(openbao.address, auth={"token_file": token_file(tmp_path, token)})
    with Session(parse_config(config)) as session:
        denied = resolve(session, pki.ref("cert"), database.ref("password"))
    assert [type(e) for e in denied] == [Forbidden, Forbidden], denied
    assert (
        f"permission denied issuing a certificate from {pki.mount}/issue/{pki.role} "
        f"(no 'update' on {pki.mount}/issue/{pki.role} in the token's policies"
    ) in str(denied[0])
    assert (
        f"permission denied issuing database credentials from {database.mount}/creds/app "
        f"(no 'read' on {database.mount}/creds/app in the token's policies"
    ) in str(denied[1])


def test_a_malformed_issue_answer_is_an_invalid_value(
    openbao: DevServer, pki: Pki, database: Database, tmp_path: Path
) -> None:
    """An answer without the fields the engines promise (through a proxy that replaces it) is
    one typed line, never a traceback or an empty part."""
    answers = {
        f"/v1/{pki.mount}/issue/{pki.role}": {"data": {"certificate": "-----BEGIN X"}},
        f"/v1/{database.mount}/creds/{database.role}": {"data": {"username": None}},
    }

    def rule(request: ProxyRequest) -> Reply | None:
        answer = answers.get(request.path)
        if answer is None:
            return None
        return Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    with HttpProxy(openbao.port, rule) as proxy:
        config = vault_config(proxy.url, auth={"token_file": token_file(tmp_path, openbao.token)})
        with Session(parse_config(config)) as session:
            got = resolve(session, pki.ref("cert"), database.ref("username"))
    assert [type(e) for e in got] == [InvalidValue, InvalidValue], got
    assert str(got[0]).endswith(
        f"unexpected answer issuing a certificate from {pki.mount}/issue/{pki.role}"
    )
    assert str(got[1]).endswith(
        f"unexpected answer issuing database credentials from {database.mount}/creds/app"
    )


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("vault:pki/issue/web?common_name=a&ttl=soon#cert", "ttl must be seconds or a duration"),
        ("vault:pki/issue/web?common_name=#cert", "option common_name must not be empty"),
        ("vault:pki/issue/web?common_name=a&kv=2#cert", "kv is KV's"),
    ],
)
def test_bad_pki_options_exit_4_before_any_request(
    reference: str, problem: str, tmp_path: Path
) -> None:
    config = write_toml(tmp_path / "credbridge.toml", vault_config("http://127.0.0.1:9"))
    done = run_cli("-c", str(config), "get", reference)
    assert done.returncode == ExitCode.REFERENCE, done.stderr
    assert problem in done.stderr.decode()
    with (
        Session(parse_config(vault_config("http://127.0.0.1:9"))) as session,
        pytest.raises(BadReference),
    ):
        session.check_reference(parse_reference(reference))


def test_certificate_parts_are_public_and_the_key_is_not(tmp_path: Path) -> None:
    with Session(parse_config(vault_config("http://127.0.0.1:9"))) as session:
        public = {
            part: session.is_public(f"vault:pki/issue/web?common_name=a#{part}")
            for part in ("cert", "chain", "ca", "key")
        }
        assert public == {"cert": True, "chain": True, "ca": True, "key": False}
        for ref in ("vault:secret/issue/web#cert", "vault:db/creds/app#password"):
            assert session.is_public(ref) is False


# --------------------------------------------------------------------------- the reference client

DYNAMIC_ROWS = table_rows("Vault and OpenBao dynamic secrets")


@pytest.fixture(scope="module")
def table_bao(postgres: Cluster) -> Iterator[DevServer]:
    """A server of its own with the mounts the table names: pki/ (role web), database/ (app)."""
    with DevServer() as server:
        client = server.client()
        mount_pki(client, "pki", "Table Root", max_lease_ttl="24h")
        pki_role(client, "pki", "web", ttl="5m")
        mount_postgres(client, postgres, "database", default_ttl="5m", max_ttl="10m")
        yield server


def _names(cert: x509.Certificate) -> tuple[str, list[str], list[str]]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        cert.subject.rfc4514_string(),
        sorted(sans.get_values_for_type(x509.DNSName)),
        sorted(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)),
    )


def test_the_dynamic_table_has_rows() -> None:
    assert len(DYNAMIC_ROWS) >= 6
    assert {ref.rpartition("#")[2] for _cmd, cell in DYNAMIC_ROWS for ref in references(cell)} == {
        "cert",
        "key",
        "ca",
        "username",
        "password",
    }


@pytest.mark.parametrize(("command", "cell"), DYNAMIC_ROWS, ids=[r[0] for r in DYNAMIC_ROWS])
def test_dynamic_table_row(
    command: str, cell: str, table_bao: DevServer, postgres: Cluster, tmp_path: Path
) -> None:
    argv = shlex.split(command.strip("`"))
    assert argv[0] == "bao"
    printed = table_bao.bao(*argv[1:]).stdout.decode()
    field = next(a.partition("=")[2] for a in argv if a.startswith("-field="))
    (ref,) = references(cell)
    # The password's username comes from the same issue: both parts in one resolution.
    partner = [ref.replace("#password", "#username")] if field == "password" else []
    with session_for(table_bao, tmp_path) as session:
        value, *pair = resolve(session, ref, *partner)
    assert isinstance(value, Secret), value
    ours = value.reveal_text()
    if field == "certificate":
        theirs_cert = x509.load_pem_x509_certificate(printed.encode())
        our_cert = x509.load_pem_x509_certificate(ours.encode())
        assert _names(our_cert) == _names(theirs_cert)
        assert our_cert.issuer == theirs_cert.issuer
        lifetime = [c.not_valid_after_utc - c.not_valid_before_utc for c in (our_cert, theirs_cert)]
        assert abs(lifetime[0] - lifetime[1]) <= datetime.timedelta(seconds=2)
        assert ours.endswith("-----END CERTIFICATE-----\n")
    elif field == "private_key":
        theirs_key = serialization.load_pem_private_key(printed.encode(), password=None)
        our_key = serialization.load_pem_private_key(ours.encode(), password=None)
        assert type(our_key) is type(theirs_key)
        assert our_key.key_size == theirs_key.key_size  # type: ignore[union-attr]
        assert ours.splitlines()[0] == printed.splitlines()[0]  # the same PEM form
    elif field == "issuing_ca":
        assert ours == printed.rstrip("\n") + "\n"  # the CA is the same certificate
    elif field == "username":
        # v-TOKEN_NAME-ROLE-RANDOM-EPOCH: the same template, filled for the same role.
        assert ours.split("-")[:3] == printed.strip().split("-")[:3]
        assert ours != printed.strip()
    else:
        # The role's password policy (OpenBao's default: 20 of [A-Za-z0-9-]) made both.
        assert len(ours) == len(printed.strip())
        assert re.fullmatch(r"[A-Za-z0-9-]+", ours) and re.fullmatch(
            r"[A-Za-z0-9-]+", printed.strip()
        )
        (username,) = pair
        assert isinstance(username, Secret)
        login = postgres.login(username.reveal_text(), ours)
        assert login.returncode == 0, login.stderr


def test_the_plugin_accepts_every_certificate_option() -> None:
    """The registration (loaded without the implementation) lists the options itself."""
    from credbridge.backends import vault_dynamic
    from credbridge.backends.hooks.vault import OPTIONS

    assert vault_dynamic.PKI_OPTIONS <= OPTIONS
