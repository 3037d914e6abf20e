"""What the real servers the tests start (moto, OpenBao) have in common: a child in its own
session logging to a file, polled on loopback until it answers, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path


def unique(prefix: str = "t") -> str:
    """A name no other test uses on the shared server (a path, a mount, a secret, a role)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn_logged(argv: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, stdout and stderr into ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
        )


def wait_until_answering(
    process: subprocess.Popen[bytes],
    url: str,
    *,
    name: str,
    log: Path,
    want_status: int | None = None,
    deadline: float = 60.0,
) -> None:
    """Poll ``url`` until it answers (with ``want_status``, if given): a start-up wait, not a
    test. A server that exits or never answers is an error quoting the end of its log."""
    end = time.monotonic() + deadline
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - loopback
                if want_status is None or answer.status == want_status:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def stop_by_pid(process: subprocess.Popen[bytes] | None, *, grace: float = 15.0) -> None:
    """SIGTERM by PID, SIGKILL after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def established_connections(port: int) -> int:
    """Established TCP connections this process holds to 127.0.0.1:``port``."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and inode in inodes and int(remote.split(":")[1], 16) == port:
            count += 1
    return count
