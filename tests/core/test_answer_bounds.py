"""A deadline and a size bound for every answer as a whole (issue 19, docs/reliability.md).

Client libraries apply ``read_timeout`` to each read, so a server sending one byte every half
second holds a 2 s timeout for minutes, with the run's locks held; and they read an answer of
any size into memory. A loopback proxy in front of the real OpenBao and moto
(tests/support/httpproxy.py) drips an answer or sends an oversized one; a loopback Unix socket
server does the same as cloud-hypervisor's API. Each run must end (``timeout`` marker: the
dripped answers would take minutes) with the typed error naming the reference.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from credbridge.core import InvalidValue, LaunchError, Timeout
from credbridge.core.process import OUTPUT_LIMIT
from credbridge.core.remote import ANSWER_LIMIT
from credbridge.launchers.ch_api import API_ANSWER_LIMIT, ApiClient
from support.age_sops import AgeKey, age_keygen, encrypt, key_config, keys
from support.aws_setup import aws, aws_config, clean_aws_env
from support.httpproxy import HttpProxy, Reply
from support.httpproxy import Request as ProxyRequest
from support.moto import MotoServer, moto
from support.openbao import DevServer, openbao
from support.servers import unique
from support.sessions import resolve_all
from support.vault_setup import put, token_file, vault_config

__all__ = ["age_keygen", "aws", "clean_aws_env", "keys", "moto", "openbao"]

DRIP = 0.5
"""Seconds between the bytes of a dripped answer: each read is well within read_timeout."""
PADDING = "x" * 400
"""Makes a dripped answer take 200 s: far beyond the test's own timeout."""


def oversized_json(wrap: Any) -> bytes:
    return json.dumps(wrap("y" * (ANSWER_LIMIT + 1024))).encode()


# --------------------------------------------------------------------------- Vault


def vault_through(
    openbao: DevServer, tmp_path: Path, reply: Reply, **settings: Any
) -> tuple[str, Any]:
    base = unique("bound")
    put(openbao, f"secret/{base}/a", password="pw")
    reference = f"vault:secret/{base}/a?kv=2#password"

    def rule(request: ProxyRequest) -> Reply | None:
        return reply if f"/{base}/a" in request.path else None

    with HttpProxy(openbao.port, rule) as proxy:
        auth = {"token_file": token_file(tmp_path, openbao.token)}
        (outcome,) = resolve_all(vault_config(proxy.url, auth=auth, **settings), reference)
        assert proxy.injected() >= 1
    return reference, outcome


@pytest.mark.vault
@pytest.mark.timeout(60)
def test_vault_answer_dripping_slowly_ends_at_read_timeout(
    openbao: DevServer, tmp_path: Path
) -> None:
    body = json.dumps({"data": {"data": {"password": "pw"}}, "padding": PADDING}).encode()
    reply = Reply(200, body, {"Content-Type": "application/json"}, drip=DRIP)
    reference, outcome = vault_through(openbao, tmp_path, reply, read_timeout=2)
    assert isinstance(outcome, Timeout), outcome
    assert str(outcome).startswith(f"{reference}: ")
    assert "did not arrive in full within 2s" in str(outcome)


@pytest.mark.vault
@pytest.mark.timeout(60)
def test_vault_answer_whose_headers_drip_slowly_ends_at_read_timeout(
    openbao: DevServer, tmp_path: Path
) -> None:
    body = json.dumps({"data": {"data": {"password": "pw"}}, "padding": PADDING}).encode()
    headers = {"Content-Type": "application/json", "X-Padding": PADDING}
    reply = Reply(200, body, headers, drip=-DRIP)
    reference, outcome = vault_through(openbao, tmp_path, reply, read_timeout=2, retries=0)
    assert isinstance(outcome, Timeout), outcome
    assert str(outcome).startswith(f"{reference}: ")
    assert "within 2s" in str(outcome)


@pytest.mark.vault
@pytest.mark.timeout(120)
def test_vault_oversized_answer_is_refused(openbao: DevServer, tmp_path: Path) -> None:
    body = oversized_json(lambda big: {"data": {"data": {"password": big}}})
    reply = Reply(200, body, {"Content-Type": "application/json"})
    reference, outcome = vault_through(openbao, tmp_path, reply)
    assert isinstance(outcome, InvalidValue), outcome
    assert str(outcome).startswith(f"{reference}: ")
    assert "is larger than 16 MiB" in str(outcome)


# --------------------------------------------------------------------------- AWS


def aws_through(aws: MotoServer, reply: Reply, **settings: Any) -> tuple[str, Any]:
    name = unique("bound")
    aws.client("secretsmanager").create_secret(Name=name, SecretString="pw")
    reference = f"aws-sm:{name}"

    def rule(request: ProxyRequest) -> Reply | None:
        return reply if "SecretValue" in request.operation else None

    with HttpProxy(aws.port, rule) as proxy:
        config = aws_config(proxy.url, 1)
        config["sources"]["aws-sm"].update(settings)
        (outcome,) = resolve_all(config, reference)
        assert proxy.injected() >= 1
    return reference, outcome


@pytest.mark.aws
@pytest.mark.timeout(60)
def test_aws_answer_dripping_slowly_ends_at_read_timeout(aws: MotoServer) -> None:
    body = json.dumps({"SecretValues": [], "Errors": [], "Padding": PADDING}).encode()
    reply = Reply(200, body, {"Content-Type": "application/x-amz-json-1.1"}, drip=DRIP)
    reference, outcome = aws_through(aws, reply, read_timeout=2)
    assert isinstance(outcome, Timeout), outcome
    assert str(outcome).startswith(f"{reference}: ")
    assert "did not arrive in full within 2s" in str(outcome)


@pytest.mark.aws
@pytest.mark.timeout(60)
def test_aws_answer_whose_headers_drip_slowly_ends_at_read_timeout(aws: MotoServer) -> None:
    body = json.dumps({"SecretValues": [], "Errors": []}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Padding": PADDING}
    reply = Reply(200, body, headers, drip=-DRIP)
    reference, outcome = aws_through(aws, reply, read_timeout=2)
    assert isinstance(outcome, Timeout), outcome
    assert str(outcome).startswith(f"{reference}: ")
    assert "within 2s" in str(outcome)


@pytest.mark.aws
@pytest.mark.timeout(120)
def test_aws_oversized_answer_is_refused(aws: MotoServer) -> None:
    body = oversized_json(lambda big: {"SecretValues": [], "Errors": [], "Padding": big})
    reply = Reply(200, body, {"Content-Type": "application/x-amz-json-1.1"})
    reference, outcome = aws_through(aws, reply)
    assert isinstance(outcome, InvalidValue), outcome
    assert str(outcome).startswith(f"{reference}: ")
    assert "is larger than 16 MiB" in str(outcome)


# --------------------------------------------------------------------------- cloud-hypervisor


@pytest.fixture
def api_socket(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A Unix socket answering each request with the next scripted raw HTTP answer; its body
    dripped byte by byte DRIP seconds apart after ``DRIP ``, all of it after ``DRIPALL ``."""
    path = tmp_path / "api.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    answers: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                answer = answers.pop(0)
                # "DRIP ": the body is dripped; "DRIPALL ": the status line and headers too.
                at_once = 0 if answer.startswith(b"DRIPALL ") else len(answer)
                if answer.startswith(b"DRIP"):
                    answer = answer.partition(b" ")[2]
                    at_once = min(at_once, answer.index(b"\r\n\r\n") + 4)
                try:
                    connection.sendall(answer[:at_once])
                    for index in range(at_once, len(answer)):
                        connection.sendall(answer[index : index + 1])
                        time.sleep(DRIP)
                except OSError:
                    continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, answers
    server.close()


def http_answer(status: int, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


@pytest.mark.timeout(60)
def test_cloud_hypervisor_api_answer_dripping_slowly_ends_at_the_timeout(
    api_socket: tuple[Path, list[bytes]],
) -> None:
    path, answers = api_socket
    answers.append(b"DRIP " + http_answer(500, PADDING.encode()))
    with pytest.raises(LaunchError, match=r"vm\.boot: the answer did not arrive in full within 2s"):
        ApiClient(path, 2).put("vm.boot")


@pytest.mark.timeout(60)
def test_cloud_hypervisor_api_status_line_dripping_slowly_ends_at_the_timeout(
    api_socket: tuple[Path, list[bytes]],
) -> None:
    path, answers = api_socket
    head = http_answer(500, b"").replace(b"\r\n\r\n", f"\r\nX-Padding: {PADDING}\r\n\r\n".encode())
    answers.append(b"DRIPALL " + head)
    with pytest.raises(LaunchError, match=r"vm\.boot: the answer did not arrive within 2s"):
        ApiClient(path, 2).put("vm.boot")


def test_cloud_hypervisor_oversized_api_answer_is_refused(
    api_socket: tuple[Path, list[bytes]],
) -> None:
    path, answers = api_socket
    answers.append(http_answer(200, b"z" * (API_ANSWER_LIMIT + 1)))
    with pytest.raises(LaunchError, match=r"vm\.boot: the answer is larger than 1 MiB"):
        ApiClient(path, 5).put("vm.boot")


# --------------------------------------------------------------------------- sops


@pytest.mark.timeout(120)
def test_sops_output_beyond_the_limit_is_refused(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path
) -> None:
    """A sops file whose value is larger than OUTPUT_LIMIT: the real sops decrypts it, and
    credbridge stops reading (and stops sops) at the limit instead of holding it all. (The
    whole-run deadline of a sops run is test_sops.py::test_timeout_ends_sops_and_its_helpers.)"""
    path = encrypt(tmp_path / "big.bin", os.urandom(OUTPUT_LIMIT + 1024), keys[0])
    reference = f"sops:{path}"
    (outcome,) = resolve_all(key_config(keys[0]), reference)
    assert isinstance(outcome, InvalidValue), outcome
    assert str(outcome) == f"{reference}: sops printed more than 16 MiB for {path}"
