"""A loopback HTTP proxy that forwards to a real server and can answer some requests itself.

Tests put it between credbridge and a real server (moto, OpenBao) to inject what the real
server will not do on demand: throttling answers (``ThrottlingException``), or an error answer
that quotes part of a secret. ``rule(request)`` sees every request and returns ``None`` to
forward it, or a :class:`Reply` to answer instead; ``rewrite(request, body)`` may change the
body of a forwarded answer (an error added next to the real values). Every request is recorded.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def target(self) -> str:
        """The AWS JSON-protocol operation (``X-Amz-Target``), e.g. ``secretsmanager.GetSecretValue``."""
        return self.headers.get("x-amz-target", "")

    @property
    def operation(self) -> str:
        return self.target.rpartition(".")[2]


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    drip: float = 0
    """Seconds between the body's bytes (0: all at once): a server that is slow on purpose.
    A negative value drips the status line and headers too (``-drip`` seconds apart)."""

    @classmethod
    def aws_json(cls, status: int, code: str, message: str) -> Reply:
        """An AWS JSON-protocol (1.1) error answer, as Secrets Manager and SSM send them."""
        import json

        body = json.dumps({"__type": code, "message": message}).encode()
        return cls(
            status, body, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}
        )


Rule = Callable[[Request], "Reply | None"]
Rewrite = Callable[[Request, bytes], bytes]


class HttpProxy:
    """Listens on 127.0.0.1:RANDOM (or ``port``) and forwards to ``upstream_port`` unless
    ``rule`` answers."""

    def __init__(
        self,
        upstream_port: int,
        rule: Rule | None = None,
        *,
        hold: float = 0,
        port: int = 0,
        rewrite: Rewrite | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.rule: Rule = rule or (lambda _request: None)
        self.rewrite = rewrite
        self.hold = hold
        """Seconds each request is held before it is forwarded (to see calls overlap)."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen: list[tuple[Request, int, bool]] = []
        """(request, status, answered by the rule)"""
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _handler(self))
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def operations(self) -> list[str]:
        with self._lock:
            return [request.operation for request, _, _ in self.seen]

    def injected(self) -> int:
        with self._lock:
            return sum(1 for _, _, by_rule in self.seen if by_rule)

    def serve(self, request: Request) -> tuple[int, dict[str, str], bytes, float]:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold:
                time.sleep(self.hold)
            return self._serve(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _serve(self, request: Request) -> tuple[int, dict[str, str], bytes, float]:
        reply = self.rule(request)
        if reply is not None:
            with self._lock:
                self.seen.append((request, reply.status, True))
            return reply.status, reply.headers, reply.body, reply.drip
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            connection.putrequest(
                request.method, request.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in request.headers.items():
                if name not in {"connection", "keep-alive", "proxy-connection"}:
                    connection.putheader(name, value)
            connection.endheaders(request.body or None)
            answer = connection.getresponse()
            body = answer.read()
            headers = {
                k: v
                for k, v in answer.getheaders()
                if k.lower() not in {"connection", "transfer-encoding", "content-length"}
            }
            status = answer.status
        finally:
            connection.close()
        if self.rewrite is not None:
            body = self.rewrite(request, body)
        with self._lock:
            self.seen.append((request, status, False))
        return status, headers, body, 0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler(proxy: HttpProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(self.command, self.path, headers, body)
            drip = 0.0
            try:
                status, answer_headers, answer, drip = proxy.serve(request)
            except OSError:
                status, answer_headers, answer = 502, {}, b"upstream unreachable"
            if drip < 0:
                head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(answer)}"]
                head += [f"{name}: {value}" for name, value in answer_headers.items()]
                raw = ("\r\n".join(head) + "\r\n\r\n").encode() + answer
                with contextlib.suppress(OSError):
                    for index in range(len(raw)):
                        self.wfile.write(raw[index : index + 1])
                        self.wfile.flush()
                        time.sleep(-drip)
                self.close_connection = True
                return
            self.send_response(status)
            for name, value in answer_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            with contextlib.suppress(OSError):
                if not drip:
                    self.wfile.write(answer)
                    self.wfile.flush()
                for index in range(len(answer) if drip else 0):
                    self.wfile.write(answer[index : index + 1])
                    self.wfile.flush()
                    time.sleep(drip)

        do_GET = _serve
        do_POST = _serve
        do_PUT = _serve
        do_DELETE = _serve
        do_HEAD = _serve
        do_LIST = _serve  # Vault's list verb

        def log_message(self, format: str, *args: object) -> None:
            pass  # bodies may hold secrets; nothing is printed

    return Handler
