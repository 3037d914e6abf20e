"""docs/sources/vault.md's promises, each against the real OpenBao (issue 13, items 2, 6, 8).

* Retries: reads (GET) are retried on 429/502/503/504 with ``Retry-After`` honoured, 4xx never;
  a login (POST) only when no connection could be made. A loopback proxy in front of the
  real server answers a set number of times itself (tests/support/httpproxy.py).
* No error echoes the token or the login material, even when the server's answer quotes it.
* Mutual TLS (``client_cert``/``client_key``) and ``ca_path`` against a listener that
  requires a client certificate.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import secret_value
from credbridge.core import (
    Forbidden,
    InvalidValue,
    NotFound,
    Request,
    Secret,
    Session,
    Unreachable,
)
from credbridge.core.config import parse_config
from credbridge.core.reference import parse_reference
from support.httpproxy import HttpProxy, Reply
from support.httpproxy import Request as ProxyRequest
from support.openbao import DevServer, free_port_pair, openbao
from support.servers import established_connections, unique
from support.sessions import resolve_text as resolve
from support.testca import TestCA
from support.vault_setup import approle_app, put, token_file, vault_config

pytestmark = pytest.mark.vault
__all__ = ["openbao"]


class Script:
    """A proxy rule: answer the first ``times`` GETs of one path with ``status`` itself."""

    def __init__(
        self, path: str, status: int, times: int, headers: dict[str, str] | None = None
    ) -> None:
        self.path = path
        self.status = status
        self.times = times
        self.headers = headers or {}
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, request: ProxyRequest) -> Reply | None:
        if self.path not in request.path:
            return None
        with self._lock:
            self.arrivals.append(time.monotonic())
            if len(self.arrivals) > self.times:
                return None
        body = json.dumps({"errors": [f"injected {self.status}"]}).encode()
        return Reply(self.status, body, {"Content-Type": "application/json", **self.headers})


def read_through(
    openbao: DevServer, tmp_path: Path, script: Script, **settings: Any
) -> tuple[Any, HttpProxy]:
    base = unique("retry")
    put(openbao, f"secret/{base}/db", password="retry-pw")
    script.path = f"/v1/secret/data/{base}/db"
    auth = {"token_file": token_file(tmp_path, openbao.token)}
    with HttpProxy(openbao.port, script) as proxy:
        config = vault_config(proxy.url, auth=auth, **settings)
        (outcome,) = resolve(config, f"vault:secret/{base}/db?kv=2#password").values()
    return outcome, proxy


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_reads_are_retried_on_throttling_and_gateway_statuses(
    openbao: DevServer, tmp_path: Path, status: int
) -> None:
    script = Script("", status, times=2)
    outcome, _ = read_through(openbao, tmp_path, script, retries=3, backoff=0.01)
    assert outcome == "retry-pw"
    assert len(script.arrivals) == 3  # two answered by the proxy, the third by OpenBao


def test_retries_stop_at_the_configured_count(openbao: DevServer, tmp_path: Path) -> None:
    script = Script("", 503, times=100)
    outcome, proxy = read_through(openbao, tmp_path, script, retries=2, backoff=0.01)
    assert isinstance(outcome, Unreachable)
    assert outcome.problem == f"{proxy.url} is unavailable (503)"
    assert len(script.arrivals) == 3  # the request and 2 retries
    none = Script("", 503, times=100)
    outcome, _ = read_through(openbao, tmp_path, none, retries=0, backoff=0.01)
    assert isinstance(outcome, Unreachable)
    assert len(none.arrivals) == 1


def test_retry_after_is_honoured(openbao: DevServer, tmp_path: Path) -> None:
    script = Script("", 429, times=1, headers={"Retry-After": "2"})
    outcome, _ = read_through(openbao, tmp_path, script, retries=3, backoff=0.01)
    assert outcome == "retry-pw"
    assert len(script.arrivals) == 2
    assert script.arrivals[1] - script.arrivals[0] >= 1.9


@pytest.mark.parametrize(
    ("status", "kind"), [(400, Unreachable), (403, Forbidden), (404, NotFound)]
)
def test_4xx_answers_are_never_retried(
    openbao: DevServer, tmp_path: Path, status: int, kind: type[Exception]
) -> None:
    script = Script("", status, times=100)
    outcome, _ = read_through(openbao, tmp_path, script, retries=3, backoff=0.01)
    assert isinstance(outcome, kind), outcome
    assert len(script.arrivals) == 1


def approle(openbao: DevServer, tmp_path: Path) -> tuple[str, dict[str, Any], str, str]:
    """An AppRole login config (role_id and secret_id in files); returns the secret_id too."""
    mount, base, role_id, secret_id = approle_app(openbao)
    secret_value(role_id)
    (tmp_path / "role-id").write_text(role_id)
    (tmp_path / "secret-id").write_text(secret_id)
    auth = {
        "method": "approle",
        "mount": mount,
        "role_id": f"file:{tmp_path / 'role-id'}",
        "secret_id": f"file:{tmp_path / 'secret-id'}",
    }
    return f"vault:secret/{base}/db#password", auth, role_id, secret_id


def test_a_login_answered_503_is_not_retried(openbao: DevServer, tmp_path: Path) -> None:
    ref, auth, _, _ = approle(openbao, tmp_path)
    logins: list[str] = []

    def rule(request: ProxyRequest) -> Reply | None:
        if request.method == "POST" and request.path.endswith("/login"):
            logins.append(request.path)
            return Reply(503, b'{"errors":["standby"]}', {"Content-Type": "application/json"})
        return None

    with HttpProxy(openbao.port, rule) as proxy:
        (outcome,) = resolve(
            vault_config(proxy.url, auth=auth, retries=3, backoff=0.01), ref
        ).values()
    assert isinstance(outcome, Unreachable), outcome
    assert outcome.problem.endswith("is unavailable (503)"), outcome.problem
    assert len(logins) == 1


def test_a_login_is_retried_when_no_connection_could_be_made(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Nothing listens on the address at first; the proxy comes up while credbridge retries
    (urllib3's backoff: 0, 1, 2 s with backoff = 0.5): the login goes through."""
    ref, auth, _, _ = approle(openbao, tmp_path)
    port = free_port_pair()
    started: list[HttpProxy] = []

    def come_up() -> None:
        time.sleep(0.6)
        started.append(HttpProxy(openbao.port, port=port))

    thread = threading.Thread(target=come_up)
    thread.start()
    try:
        config = vault_config(f"http://127.0.0.1:{port}", auth=auth, retries=4, backoff=0.5)
        (outcome,) = resolve(config, ref).values()
    finally:
        thread.join()
        for proxy in started:
            proxy.close()
    assert outcome == "approle-pw"
    (proxy,) = started
    assert [r.method for r, _, _ in proxy.seen].count("POST") == 1


def test_login_errors_never_echo_the_login_material(openbao: DevServer, tmp_path: Path) -> None:
    """The server's answer to a failed login quotes the secret_id, the role_id and a token:
    the error names the login and the status, and withholds the answer."""
    from credbridge.core.remote import WITHHELD

    ref, auth, role_id, secret_id = approle(openbao, tmp_path)
    token = openbao.token

    def rule(request: ProxyRequest) -> Reply | None:
        if request.method == "POST" and request.path.endswith("/login"):
            quoted = f"invalid secret_id {secret_id} for role {role_id} (token {token})"
            body = json.dumps({"errors": [quoted]}).encode()
            return Reply(400, body, {"Content-Type": "application/json"})
        return None

    with HttpProxy(openbao.port, rule) as proxy:
        (outcome,) = resolve(vault_config(proxy.url, auth=auth), ref).values()
        assert proxy.injected() == 1
    assert isinstance(outcome, Forbidden), outcome
    text = str(outcome)
    assert f"approle login at auth/{auth['mount']} failed (400)" in text
    assert text.endswith(WITHHELD)
    for material in (secret_id, role_id, token, secret_id[4:16], role_id[8:20]):
        assert material not in text


def test_token_quoted_in_a_read_error_is_withheld(openbao: DevServer, tmp_path: Path) -> None:
    from credbridge.core.remote import WITHHELD

    token = f"quoted-token-{uuid.uuid4().hex}"
    openbao.client().auth.token.create(id=token, policies=["root"], ttl="1h")
    base = unique("q")
    put(openbao, f"secret/{base}/db", password="pw")

    def rule(request: ProxyRequest) -> Reply | None:
        if request.method == "GET" and f"/{base}/db" in request.path:
            body = json.dumps({"errors": [f"token {token} lacks policy"]}).encode()
            return Reply(500, body, {"Content-Type": "application/json"})
        return None

    with HttpProxy(openbao.port, rule) as proxy:
        config = vault_config(proxy.url, auth={"token_file": token_file(tmp_path, token)})
        (outcome,) = resolve(config, f"vault:secret/{base}/db?kv=2#password").values()
    assert isinstance(outcome, Unreachable)
    assert str(outcome).endswith(f"answered 500 for secret/{base}/db: {WITHHELD}")
    assert token not in str(outcome) and token[13:25] not in str(outcome)


# --------------------------------------------------------------------------- mutual TLS


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """OpenBao with a TLS listener that requires a client certificate signed by the test CA."""
    directory = tmp_path_factory.mktemp("mtls")
    ca = TestCA("credbridge mTLS test CA")
    files = {"ca.pem": ca.pem}
    files["server.pem"], files["server-key.pem"] = ca.issue("127.0.0.1")
    files["client.pem"], files["client-key.pem"] = ca.issue("credbridge")
    for file_name, data in files.items():
        (directory / file_name).write_bytes(data)
    (directory / "client-key.pem").chmod(0o600)
    capath = directory / "capath"
    capath.mkdir()
    (capath / "test-ca.pem").write_bytes(files["ca.pem"])
    subprocess.run(["openssl", "rehash", str(capath)], check=True, capture_output=True)
    port = free_port_pair()
    extra = (
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
        f'  cluster_address = "127.0.0.1:{port + 1}"\n'
        f'  tls_cert_file = "{directory / "server.pem"}"\n'
        f'  tls_key_file = "{directory / "server-key.pem"}"\n'
        "  tls_require_and_verify_client_cert = true\n"
        f'  tls_client_ca_file = "{directory / "ca.pem"}"\n}}\n'
    )
    with DevServer(extra_config=extra) as server:
        put(server, "secret/app/mtls", password="mtls-pw")
        yield {"server": server, "address": f"https://127.0.0.1:{port}", "dir": directory}


def test_mutual_tls_with_client_certificate_and_ca_path(
    mtls_server: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    server: DevServer = mtls_server["server"]
    directory: Path = mtls_server["dir"]
    address: str = mtls_server["address"]
    ref = "vault:secret/app/mtls#password"
    auth = {"token_file": token_file(tmp_path, server.token)}
    client = {
        "client_cert": str(directory / "client.pem"),
        "client_key": str(directory / "client-key.pem"),
    }
    with_cert = vault_config(address, auth=auth, ca_cert=str(directory / "ca.pem"), **client)
    assert list(resolve(with_cert, ref).values()) == ["mtls-pw"]
    by_ca_path = vault_config(address, auth=auth, ca_path=str(directory / "capath"), **client)
    assert list(resolve(by_ca_path, ref).values()) == ["mtls-pw"]
    # Without the client certificate the listener refuses the handshake.
    (without,) = resolve(
        vault_config(address, auth=auth, ca_cert=str(directory / "ca.pem")), ref
    ).values()
    assert isinstance(without, Unreachable), without
    assert without.problem.startswith(f"TLS with {address} failed: "), without.problem
    assert without.problem.endswith(
        "the server requires a client certificate (set client_cert and client_key)"
    ), without.problem
    # An empty CA directory trusts nothing: the server's certificate is refused.
    empty = tmp_path / "empty-capath"
    empty.mkdir()
    (untrusted,) = resolve(
        vault_config(address, auth=auth, ca_path=str(empty), **client), ref
    ).values()
    assert isinstance(untrusted, Unreachable)
    assert "certificate verify failed" in untrusted.problem
    assert not isinstance(untrusted, Secret)


def test_closing_the_session_closes_the_connections(openbao: DevServer, tmp_path: Path) -> None:
    base = unique("close")
    put(openbao, f"secret/{base}/db", password="pw")
    config = vault_config(openbao.address, auth={"token_file": token_file(tmp_path, openbao.token)})
    requests = [Request(parse_reference(f"vault:secret/{base}/db#password"))]
    session = Session(parse_config(config))
    try:
        assert [v.reveal_text() for v in session.resolve(requests).values()] == ["pw"]
        assert established_connections(openbao.port) >= 1  # kept alive for the next read
    finally:
        session.close()
    assert established_connections(openbao.port) == 0


def test_a_closed_source_holds_no_connection_even_while_referenced(
    openbao: DevServer, tmp_path: Path
) -> None:
    """``Source.close()`` releases the pool itself: an embedding program may keep the source
    object (and so its session) alive after closing it."""
    base = unique("close")
    put(openbao, f"secret/{base}/db", password="pw")
    config = vault_config(openbao.address, auth={"token_file": token_file(tmp_path, openbao.token)})
    requests = [Request(parse_reference(f"vault:secret/{base}/db#password"))]
    with Session(parse_config(config)) as session:
        assert [v.reveal_text() for v in session.resolve(requests).values()] == ["pw"]
        source = session.source("vault")
        assert established_connections(openbao.port) >= 1
        source.close()
        assert established_connections(openbao.port) == 0


def test_requests_ca_bundle_variables_are_honoured_without_a_configured_ca(
    mtls_server: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: DevServer = mtls_server["server"]
    directory: Path = mtls_server["dir"]
    auth = {"token_file": token_file(tmp_path, server.token)}
    config = vault_config(
        mtls_server["address"],
        auth=auth,
        client_cert=str(directory / "client.pem"),
        client_key=str(directory / "client-key.pem"),
    )
    ref = "vault:secret/app/mtls#password"
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        monkeypatch.setenv(variable, str(directory / "ca.pem"))
        assert list(resolve(config, ref).values()) == ["mtls-pw"], variable


def test_netrc_credentials_are_never_sent(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests would add ~/.netrc's password for the host as an Authorization header when it
    reads the environment per request; credbridge reads proxies once and nothing else."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-password-0123\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NETRC", raising=False)
    base = unique("netrc")
    put(openbao, f"secret/{base}/db", password="pw")
    with HttpProxy(openbao.port) as proxy:
        config = vault_config(proxy.url, auth={"token_file": token_file(tmp_path, openbao.token)})
        assert list(resolve(config, f"vault:secret/{base}/db#password").values()) == ["pw"]
        headers = [request.headers for request, _, _ in proxy.seen]
    assert headers
    assert all("authorization" not in h for h in headers), headers


def test_a_login_answer_without_a_token_is_forbidden(openbao: DevServer, tmp_path: Path) -> None:
    ref, auth, _, _ = approle(openbao, tmp_path)

    def rule(request: ProxyRequest) -> Reply | None:
        if request.method == "POST" and request.path.endswith("/login"):
            body = json.dumps({"auth": {"client_token": "", "policies": []}}).encode()
            return Reply(200, body, {"Content-Type": "application/json"})
        return None

    with HttpProxy(openbao.port, rule) as proxy:
        (outcome,) = resolve(vault_config(proxy.url, auth=auth), ref).values()
    assert isinstance(outcome, Forbidden), outcome
    assert outcome.problem == f"approle login at auth/{auth['mount']}: the server returned no token"


def test_login_material_that_cannot_be_read_is_named(openbao: DevServer, tmp_path: Path) -> None:
    ref, auth, _, _ = approle(openbao, tmp_path)
    missing = {**auth, "role_id": f"file:{tmp_path / 'no-such-file'}"}
    (outcome,) = resolve(vault_config(openbao.address, auth=missing), ref).values()
    assert isinstance(outcome, NotFound), outcome
    assert outcome.problem.startswith(f"auth role_id from file:{tmp_path / 'no-such-file'}: ")
    (tmp_path / "binary-secret-id").write_bytes(b"\xff\xfe\x00not text")
    binary = {**auth, "secret_id": f"file:{tmp_path / 'binary-secret-id'}"}
    (outcome,) = resolve(vault_config(openbao.address, auth=binary), ref).values()
    assert isinstance(outcome, InvalidValue), outcome
    assert (
        outcome.problem == f"auth secret_id from file:{tmp_path / 'binary-secret-id'} is not text"
    )
    (tmp_path / "bad-ref").write_text("x")
    bad = {**auth, "role_id": "nosuchscheme:x"}
    (outcome,) = resolve(vault_config(openbao.address, auth=bad), ref).values()
    assert isinstance(outcome, Forbidden), outcome
    assert outcome.problem.startswith("auth role_id from nosuchscheme:x: ")
