"""A VM's private runtime directory: where it may be, and claiming it for one launch.

The directory (``runtime_dir``, default ``/run/credbridge/NAME``) holds the credentials' 0400
files, virtiofsd's shares and sockets and cloud-hypervisor's API socket for as long as the VM
runs. It must be on tmpfs or ramfs (unless ``allow_persistent``), reached without following a
symlink, and belong to credbridge:

* the lock file ``.credbridge.lock`` inside it (``flock``, holding the owner's pid) marks a
  directory in use; present but not locked, it marks one a crashed run left, which the next
  launch wipes;
* ``.NAME.claim`` beside it (in the parent directory) serialises launches claiming the same
  directory, so that a second launch cannot find the new directory before its lock is held and
  wipe it as stale. It is left in place: removing it would race with a launch waiting on it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from credbridge.core.errors import ConfigError, LaunchError
from credbridge.core.faults import point
from credbridge.core.fsutil import (
    LockWait,
    check_path,
    ensure_private_dir,
    is_memory_backed,
    locked,
    opened_dir,
    remove_tree,
)
from credbridge.core.vm import RUNTIME_LOCK

log = logging.getLogger(__name__)

LOCK_NAME = RUNTIME_LOCK


def check_runtime_dir(
    path: Path,
    *,
    allow_persistent: bool = False,
    config_file: str | None = None,
    key: str | None = None,
) -> None:
    """Refuse a runtime directory before anything is written: not on tmpfs/ramfs (unless
    ``allow_persistent``), or an existing part of its path that is unsafe (a symlink, another
    user's, group/world-writable). Launchers call it from ``Launcher.check()``."""
    try:
        check_path(path)
        persistent = not allow_persistent and not is_memory_backed(path)
    except OSError as error:
        raise ConfigError(
            f"runtime directory {path}: {error.strerror or error}", file=config_file, key=key
        ) from None
    if persistent:
        raise ConfigError(
            f"runtime directory {path} is not on tmpfs or ramfs; refusing to put secrets "
            "on persistent storage (set runtime_dir to a tmpfs path, or allow_persistent "
            "= true in the launcher table)",
            file=config_file,
            key=key,
        )


def claim_runtime_dir(path: Path, vm: str) -> int:
    """Create ``path`` (0700) for VM ``vm`` and return the descriptor of its held lock; call
    :func:`check_runtime_dir` first.

    A directory a crashed run left is wiped first; one a live credbridge holds, or one
    credbridge did not make, is refused (:class:`LaunchError`)."""
    # Parents are created 0700 through a trusted chain (no symlink, no foreign owner).
    with opened_dir(path.parent, create=True):
        pass
    with locked(path.parent / f".{path.name}.claim", wait=LockWait(notify_after=5.0)):
        fd = _claim_locked(path, vm)
    point("runtime.claimed")
    return fd


def _claim_locked(path: Path, vm: str) -> int:
    if os.path.lexists(path):
        _clear_stale(path, vm)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise LaunchError(
            f"runtime directory {path} appeared while starting VM {vm}: is it being launched twice?"
        ) from None
    try:
        ensure_private_dir(path)
        fd = os.open(
            path / LOCK_NAME,
            os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        remove_tree(path)
        raise
    return fd


def _clear_stale(path: Path, vm: str) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise LaunchError(f"runtime directory {path} exists and is not a directory")
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if any(os.scandir(path)):
            raise LaunchError(
                f"runtime directory {path} exists and was not made by credbridge; "
                "remove it or choose another runtime_dir"
            ) from None
        os.rmdir(path)
        return
    except OSError as error:
        # A symlink (ELOOP), a directory (EISDIR), ...: credbridge only ever makes a file.
        raise LaunchError(
            f"runtime directory {path} exists and was not made by credbridge "
            f"({LOCK_NAME}: {error.strerror}); remove it or choose another runtime_dir"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise LaunchError(
                f"VM {vm} is already running (credbridge pid {owner} holds {path})"
            ) from None
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        log.warning(
            "removing stale runtime directory %s of VM %s left by credbridge pid %s",
            path,
            vm,
            owner,
        )
        remove_tree(path)
    finally:
        os.close(fd)
