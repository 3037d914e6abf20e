"""How the VM launchers start and watch children: never with credbridge's environment, dying
with credbridge (``PR_SET_PDEATHSIG``), waited for through pidfds, with shell-style statuses."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Callable, Sequence

from credbridge.core.fsutil import libc
from credbridge.core.process import child_env

_PR_SET_PDEATHSIG = 1


def exit_status(returncode: int) -> int:
    """A shell-style exit status: ``128+N`` for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child die (SIGKILL) when the thread that started it
    does, and exit at once if ``parent`` is gone already."""

    def setup() -> None:
        # Children of a SIGKILLed credbridge must not outlive it holding the runtime dir.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (readable once it exits), or ``None`` where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError) as error:
        if isinstance(error, OSError) and error.errno not in (
            errno.ENOSYS,
            errno.EPERM,
            errno.EINVAL,
            errno.ESRCH,
        ):
            raise
        return None


def probe(argv: Sequence[str], *, timeout: float) -> bytes:
    """What a program prints about itself (``--version``, ``--help``): stdout then stderr.

    Raises ``OSError`` (``FileNotFoundError`` for a missing program) or
    ``subprocess.TimeoutExpired``; callers name the program in their own error."""
    result = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
        env=child_env(),
    )
    return result.stdout + result.stderr
