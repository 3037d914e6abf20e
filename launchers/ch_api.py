"""A client for cloud-hypervisor's REST API on its AF_UNIX socket (``--api-socket``).

Only what the launchers need: ``GET vmm.ping``, ``PUT`` with a JSON body (``vm.create``,
``vm.boot``, ``vm.add-net`` with file descriptors, ``vmm.shutdown``). Answers are bounded in
size and time; an error quotes an answer only when it cannot hold a credential.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from credbridge.core import Delivery, LaunchError
from credbridge.core.remote import (
    AnswerRefused,
    AnswerTooSlow,
    Redactor,
    read_answer,
    socket_deadline,
)
from credbridge.core.vm import VmChannel

API_PREFIX = "/api/v1/"
API_ANSWER_LIMIT = 1 << 20
"""Bytes an API answer may have (cloud-hypervisor's are a few KiB)."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over an AF_UNIX stream socket (cloud-hypervisor's API socket)."""

    def __init__(self, path: Path, timeout: float, fds: Sequence[int] = ()) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path
        self._fds = list(fds)

    def send(self, data: Any) -> None:
        """The request's first bytes carry ``fds`` (SCM_RIGHTS), as cloud-hypervisor's HTTP
        server expects for ``vm.add-net`` (it reads each request with its ancillary data)."""
        if not self._fds or not isinstance(data, bytes):
            super().send(data)
            return
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        fds, self._fds = self._fds, []
        sent = socket.send_fds(self.sock, [data], fds)
        self.sock.sendall(data[sent:])

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """Requests to cloud-hypervisor's REST API. Errors name the endpoint and the HTTP status.

    Request bodies never appear in an error or a log line; a response body is quoted only when
    it shares no 8-byte run with a value, its Base64 or hex (cloud-hypervisor may echo its
    config). The ``redactor`` keeps hashes of those runs, not the values.
    """

    def __init__(self, path: Path, timeout: float, redactor: Redactor | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.redactor = redactor if redactor is not None else Redactor(min_length=1)

    def call(
        self, method: str, endpoint: str, body: bytes | None = None, fds: Sequence[int] = ()
    ) -> tuple[int, bytes]:
        connection = _UnixHTTPConnection(self.path, self.timeout, fds)
        try:
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, API_PREFIX + endpoint, body=body, headers=headers)
            # The socket timeout bounds each read; the headers, then the body as a whole, get
            # the same time.
            with socket_deadline(connection.sock, self.timeout) as expired:
                try:
                    response = connection.getresponse()
                except (OSError, http.client.HTTPException):
                    if expired.is_set():
                        raise AnswerTooSlow(f"did not arrive within {self.timeout:g}s") from None
                    raise
            answer = read_answer(response.read1, timeout=self.timeout, limit=API_ANSWER_LIMIT)
            return response.status, answer
        finally:
            connection.close()

    def ping(self) -> bool:
        try:
            status, _ = self.call("GET", "vmm.ping")
        except (OSError, http.client.HTTPException, AnswerRefused):
            return False
        return status == 200

    def put(self, endpoint: str, body: bytes | None = None, fds: Sequence[int] = ()) -> None:
        try:
            status, answer = self.call("PUT", endpoint, body, fds)
        except AnswerRefused as error:
            raise LaunchError(
                f"cloud-hypervisor API PUT {API_PREFIX}{endpoint}: the answer {error.reason}"
            ) from None
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "strerror", None) or type(error).__name__
            raise LaunchError(
                f"cloud-hypervisor API PUT {API_PREFIX}{endpoint}: {reason}"
            ) from None
        if status not in (200, 204):
            raise LaunchError(
                f"cloud-hypervisor API PUT {API_PREFIX}{endpoint} failed: HTTP {status}"
                f"{self._quote(answer)}"
            )

    def _quote(self, answer: bytes) -> str:
        return self.redactor.quote(answer)


def answer_redactor(channel: VmChannel, deliveries: Sequence[Delivery]) -> Redactor:
    """What an API error answer must not quote: values (and their Base64/hex), OEM payloads."""
    # Even a short value counts: withholding a harmless answer is cheap, quoting a secret is not.
    redactor = Redactor(min_length=1)
    for delivery in deliveries:
        redactor.add(delivery.value)
    for text in channel.oem_strings:
        redactor.add(text.reveal().partition(b"=")[2], derived=False)
    return redactor
