"""Named write steps, and a test-only way to stop credbridge at one of them.

Every step that changes the file system calls :func:`point` with a stable name
(``atomic.before-rename``, ``credstore.commit.after-exchange``, ...). In production this is a
no-op: the switch is an interpreter option, not a credbridge flag or environment variable, so it
cannot reach credbridge through a config, a unit file or an inherited environment. The crash
harness (tests/core/test_crash.py, docs/reliability.md) starts the interpreter itself with it::

    python -X credbridge-fault=credstore.commit.after-exchange@1:kill -m credbridge.core.cli ...
    python -X credbridge-fault='*@17:term' -m credbridge.core.cli ...    # the 17th step reached
    python -X credbridge-fault-trace=/tmp/steps -m credbridge.core.cli ...  # list the steps

``POINT@N:ACTION`` acts the N-th time POINT is reached (``*`` counts every point). Actions:
``kill`` (SIGKILL itself), ``term`` (SIGTERM itself: handled like an operator's ``kill``),
``stop`` (SIGSTOP itself, for tests that race another run against a paused one) and ``error``
(raise ``OSError(EIO)``, a failing disk).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading

_SPEC = sys._xoptions.get("credbridge-fault")
_TRACE = sys._xoptions.get("credbridge-fault-trace")
_ACTIVE = isinstance(_SPEC, str) or isinstance(_TRACE, str)
_counts: dict[str, int] = {}
_guard = threading.Lock()


def _parse(spec: str) -> tuple[str, int, str]:
    target, _, action = spec.rpartition(":")
    name, _, count = target.partition("@")
    if not name or action not in {"kill", "term", "stop", "error"}:
        msg = f"bad -X credbridge-fault={spec!r}: expected POINT[@N]:kill|term|stop|error"
        raise SystemExit(msg)
    return name, int(count or 1), action


_WANTED = _parse(_SPEC) if isinstance(_SPEC, str) else None


def point(name: str) -> None:
    """Mark a write step named ``name`` (a no-op unless the test-only switch is given)."""
    if not _ACTIVE:
        return
    with _guard:
        _counts[name] = _counts.get(name, 0) + 1
        _counts["*"] = _counts.get("*", 0) + 1
        if isinstance(_TRACE, str):
            fd = os.open(_TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, f"{name}\n".encode())
            finally:
                os.close(fd)
        if _WANTED is None:
            return
        wanted, count, action = _WANTED
        if wanted not in (name, "*") or _counts[wanted] != count:
            return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        raise OSError(errno.EIO, f"injected fault at {name}")
