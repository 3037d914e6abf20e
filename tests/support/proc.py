"""The process tree of a PID, read from /proc (for the argv/environ leak scans)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def parent(pid: int) -> int:
    """The parent PID of ``pid`` (0 when it is gone)."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name is in parentheses and may contain spaces: parse after the last ')'.
    return int(line[line.rfind(")") + 2 :].split()[1])


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from every process's parent in /proc/*/stat.

    (``/proc/PID/task/TID/children`` misses children of threads that have exited.)
    """
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and parent(int(entry.name)) == pid
    ]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, alive now."""
    found: list[int] = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant alive now."""
    return [root, *descendants(root)]


def is_stopped(pid: int) -> bool:
    """``pid`` is stopped (SIGSTOP): state ``T`` in /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "T"


def deliver_stopped_once_resolved(config: Path) -> subprocess.Popen[bytes]:
    """``credbridge -c CONFIG deliver``, stopped (SIGSTOP, the test-only fault switch of
    docs/reliability.md) once every value is resolved and before anything is committed:
    stopped when this returns; SIGCONT lets it go on."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "credbridge-fault=engine.resolved@1:stop",
            "-m",
            "credbridge.core.cli",
            "-c",
            str(config),
            "deliver",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while not is_stopped(process.pid):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process
