"""The environment credbridge gives every child process it starts, and how its output is read."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

OUTPUT_LIMIT = 16 << 20
"""Bytes a child may print on stdout before it is stopped (values are far smaller)."""
STDERR_KEPT = 1 << 16
"""Bytes of a child's stderr that are kept (it is only matched for known phrases)."""


class OutputTooLarge(Exception):
    """A child printed more than the limit on stdout."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit >> 20} MiB")
        self.limit = limit


ENV_ALLOW = ("PATH", "HOME", "LANG", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME")
"""Variables a child inherits; ``LC_*`` too. Everything else (tokens read by ``env:``
references, ``VAULT_TOKEN``, ...) stays in credbridge."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: an allow-list, so no source token is ever inherited."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW or k.startswith("LC_")}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if extra:
        env.update(extra)
    return env


def communicate(
    process: subprocess.Popen[bytes], stdin: bytes, *, timeout: float, limit: int = OUTPUT_LIMIT
) -> tuple[bytes, bytes]:
    """``process.communicate(stdin, timeout)`` with bounded memory.

    ``timeout`` is a deadline for the whole run (``subprocess.TimeoutExpired``). More than
    ``limit`` bytes on stdout raise :class:`OutputTooLarge` at once; stderr beyond
    :data:`STDERR_KEPT` bytes is read and dropped. The caller stops the child on either.
    """
    # Imported here: child_env is imported by modules (the credstore sink) whose everyday
    # runs start no child, and subprocess with selectors costs ~4 ms of every start-up.
    import select
    import selectors
    import subprocess

    if process.stdin is None or process.stdout is None or process.stderr is None:
        raise ValueError("communicate() needs stdin, stdout and stderr as pipes")
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    pending = memoryview(stdin)
    with selectors.DefaultSelector() as selector:
        if pending:
            selector.register(process.stdin, selectors.EVENT_WRITE)
        else:
            process.stdin.close()
        selector.register(process.stdout, selectors.EVENT_READ)
        selector.register(process.stderr, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(process.args, timeout)
            for key, _ in selector.select(remaining):
                if key.fileobj is process.stdin:
                    try:
                        # select says at least PIPE_BUF bytes fit without blocking.
                        pending = pending[os.write(key.fd, pending[: select.PIPE_BUF]) :]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(process.stdin)
                        process.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.fileobj is process.stdout:
                    out += chunk
                    if len(out) > limit:
                        raise OutputTooLarge(limit)
                elif len(err) < STDERR_KEPT:
                    err += chunk[: STDERR_KEPT - len(err)]
    process.wait(max(0.0, deadline - time.monotonic()))
    return bytes(out), bytes(err)
