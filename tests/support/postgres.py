"""A throw-away PostgreSQL cluster from Debian's ``postgresql`` package, for tests.

``initdb`` makes a cluster in a private temporary directory and ``postgres`` serves it on
127.0.0.1 on a random free port (no Unix socket), with scram-sha-256 password logins only.
PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to
``nobody`` and both programs run as ``nobody`` (``user=``/``group=`` of the child, as the
other tests that act as an unprivileged user do). The server is stopped by PID.

``login()`` runs Debian's ``psql`` and says whether a username/password pair gets in: what
the dynamic database credentials of OpenBao are checked with.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.servers import free_port, stop_by_pid

SUPERUSER = "credbridge_admin"


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` and ``postgres``."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    found = [p for p in found if (p / "initdb").exists()]
    return found[-1] if found else None


class Cluster:
    """initdb + postgres on loopback; use as a context manager or call start()/stop()."""

    def __init__(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin_dir = bin_dir
        # Directly in /tmp: the suite's TMPDIR is root's private directory, closed to nobody.
        self.home = Path(tempfile.mkdtemp(prefix="credbridge-postgres-", dir="/tmp"))
        self.data = self.home / "data"
        self.superuser = SUPERUSER
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.home / "server.log"
        self._ids: dict[str, int] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._ids = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            os.chown(self.home, nobody.pw_uid, nobody.pw_gid)

    def _run(self, *argv: str) -> None:
        subprocess.run(
            list(argv),
            check=True,
            capture_output=True,
            timeout=120,
            env=self._env(),
            cwd=self.home,
            **self._ids,  # type: ignore[arg-type]
        )

    def _env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.home)}

    def start(self) -> Cluster:
        password_file = self.home / "superuser-password"
        password_file.write_text(self.password + "\n")
        if self._ids:
            os.chown(password_file, self._ids["user"], self._ids["group"])  # type: ignore[arg-type]
        password_file.chmod(0o400)
        try:
            self._run(
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                self.superuser,
                "--pwfile",
                str(password_file),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-sync",
            )
        finally:
            password_file.unlink()
        self.port = free_port()
        argv = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            "",  # no Unix socket: loopback TCP only
            "-c",
            "fsync=off",
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.home,
                start_new_session=True,
                **self._ids,  # type: ignore[arg-type]
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """A start-up wait (pg_isready until it accepts connections), not a test."""
        end = time.monotonic() + 60
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def connection_url(self) -> str:
        """The template OpenBao's postgresql-database-plugin connects with."""
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.port}/postgres"

    def login(self, username: str, password: str) -> subprocess.CompletedProcess[str]:
        """``psql`` as ``username``: returncode 0 and ``current_user`` on stdout when it gets in.

        The password goes in the child's environment (PGPASSWORD), never in argv."""
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PGPASSWORD": password,
            "PGCONNECT_TIMEOUT": "10",
            "HOME": str(self.home),
        }
        return subprocess.run(
            [
                "psql",
                "--no-psqlrc",
                "--no-password",
                "--tuples-only",
                "--no-align",
                f"host=127.0.0.1 port={self.port} dbname=postgres user={username}",
                "--command",
                "SELECT current_user",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for the
            # connections OpenBao's database plugin keeps open.
            os.kill(self.process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        stop_by_pid(self.process)  # SIGTERM, then SIGKILL, if it is still there
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """One cluster for the test session (import this fixture), stopped by PID at the end."""
    if shutil.which("psql") is None or postgres_bin() is None:
        pytest.skip("needs Debian's postgresql package (initdb, postgres, psql)")
    cluster = Cluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


__all__ = ["Cluster", "postgres"]
