"""A real moto server (AWS emulation over HTTP) for tests and the benchmark.

``moto_server`` from the ``moto[server]`` package listens on loopback on a random free port;
credbridge is pointed at it the way a user points the AWS SDKs at LocalStack: through
``AWS_ENDPOINT_URL`` (or the per-service variables) and dummy credentials. Stopped by PID.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.servers import free_port, spawn_logged, stop_by_pid, wait_until_answering

__all__ = ["ACCESS_KEY", "MotoServer", "free_port", "moto"]

ACCESS_KEY = "AKIAMOTOTESTING00001"
SECRET_KEY = "moto-secret-key-for-tests-0123456789abcd"


def moto_binary() -> list[str]:
    found = Path(sys.executable).parent / "moto_server"
    if found.exists():
        return [str(found)]
    which = shutil.which("moto_server")
    return [which] if which else [sys.executable, "-m", "moto.server"]


class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT``; a context manager, or start()/stop()."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.home = Path(tempfile.mkdtemp(prefix="credbridge-moto-"))
        self.log = self.home / "moto.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["HOME"] = str(self.home)
        argv = [*moto_binary(), "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = spawn_logged(argv, env, self.log)
        wait_until_answering(
            self.process, f"{self.url}/moto-api/", name="moto_server", log=self.log
        )
        return self

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback
            pass

    def stop(self) -> None:
        stop_by_pid(self.process)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, endpoint: str | None = None, region: str = "us-east-1") -> dict[str, str]:
        """What a user exports to point the AWS SDKs (and credbridge) at this server."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": region,
        }

    def client(self, service: str, region: str = "us-east-1") -> Any:
        """An admin client that talks to moto directly (for seeding data)."""
        import botocore.session

        session = botocore.session.Session()
        return _Quiet(
            session.create_client(
                service,
                region_name=region,
                endpoint_url=self.url,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            )
        )


class _Quiet:
    """A seeding client whose calls log nothing: botocore logs request bodies (the test's
    secret values) at DEBUG, and the suite's canary would take the test's own seeding for a
    leak by credbridge (whose own botocore clients never log below INFO)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def quietly(*args: Any, **kwargs: Any) -> Any:
            previous = logging.root.manager.disable
            logging.disable(logging.INFO)
            try:
                return attribute(*args, **kwargs)
            finally:
                logging.disable(previous)

        return quietly


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto server for the test session (import this fixture), stopped by PID at the end."""
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()
