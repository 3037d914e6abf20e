"""File-system primitives for secret files: trusted 0700 dirs, 0400 files, atomic, no symlinks.

Every path is reached through a chain of directories only root or this user can change
(:mod:`credbridge.core.trusted_dirs`: walked from ``/`` with ``openat(O_NOFOLLOW|O_DIRECTORY)``,
each directory's owner and mode checked; its functions are importable from here too). The
helpers below build on such a chain or on a directory fd it gave: files are created
exclusively and never through a symlink, replaced atomically (temp file, fsync, rename, fsync
of the directory), read only when regular, removed without following links, and locked with
``flock`` on a lock file of their own.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import logging
import os
import pwd
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credbridge.core.errors import LockUnavailable
from credbridge.core.faults import point
from credbridge.core.records import record
from credbridge.core.trusted_dirs import (
    DIR_FLAGS,
    check_dir,
    check_path,
    check_trusted_file,
    ensure_private_dir,
    open_dir,
    open_dir_at,
    opened_dir,
    symlink_error,
)

log = logging.getLogger(__name__)

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
RENAME_EXCHANGE = 2
LOCK_NAME = ".credbridge.lock"
"""The lock file a credbridge run holds in a directory it changes (credstore base, store root)."""


if TYPE_CHECKING:
    import ctypes


def load_libc() -> ctypes.CDLL:
    """The C library, by soname: ``ctypes.util.find_library`` may run ``gcc``/``ld`` (with
    credbridge's environment) on systems without ``ldconfig``; the already-loaded libc of the
    interpreter (``dlopen(NULL)``) serves musl and others."""
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(None, use_errno=True)


@functools.cache
def c_library() -> ctypes.CDLL:
    """libc, loaded on first use: ``ctypes`` is not imported at start-up."""
    return load_libc()


def __getattr__(name: str) -> Any:
    # ``fsutil.libc``, as it was before it was loaded lazily.
    if name == "libc":
        return c_library()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def filesystem_type(path: Path) -> int:
    """The ``f_type`` magic of the file system holding ``path`` (statfs(2))."""
    import ctypes

    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]

    libc = c_library()
    buf = StatFs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(buf.f_type) & 0xFFFFFFFF


def is_memory_backed(path: Path) -> bool:
    """Whether ``path`` (or its nearest existing parent) is on tmpfs or ramfs."""
    probe = Path(os.path.abspath(path))
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return filesystem_type(probe) in (TMPFS_MAGIC, RAMFS_MAGIC)


def exchange_at(dir_fd: int, a: str, b: str) -> None:
    """Atomically swap entries ``a`` and ``b`` of the directory ``dir_fd``."""
    import ctypes

    libc = c_library()
    rc = libc.renameat2(dir_fd, os.fsencode(a), dir_fd, os.fsencode(b), RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), f"{a} <-> {b}")


def _numeric_id(text: str) -> bool:
    # Only ASCII digits: int() also reads Arabic-Indic or fullwidth digits, names here.
    return text.isascii() and text.isdigit()


def resolve_owner(user: str | None, group: str | None) -> tuple[int, int]:
    """Numeric ids for names (or numbers given as text); -1 means 'leave unchanged'."""
    uid = gid = -1
    if user is not None:
        uid = int(user) if _numeric_id(user) else pwd.getpwnam(user).pw_uid
    if group is not None:
        gid = int(group) if _numeric_id(group) else grp.getgrnam(group).gr_gid
    return uid, gid


# --------------------------------------------------------------------------- files


def write_new_file_at(
    dir_fd: int, name: str, data: bytes, *, mode: int = 0o400, uid: int = -1, gid: int = -1
) -> None:
    """Create ``name`` in the directory ``dir_fd`` exclusively, write, set owner/mode, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        point("write.created")
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        point("write.written")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def write_new_file(
    path: Path, data: bytes, *, mode: int = 0o400, uid: int = -1, gid: int = -1
) -> None:
    """Create ``path`` exclusively in a trusted directory (never following a symlink), write,
    fsync, set owner and mode."""
    with opened_dir(path.parent) as dir_fd:
        write_new_file_at(dir_fd, path.name, data, mode=mode, uid=uid, gid=gid)


TEMP_SUFFIX = ".tmp"


def temp_name(directory: Path, stem: str) -> Path:
    # os.urandom is what secrets.token_hex reads, without importing secrets (hmac, OpenSSL).
    return directory / f".{stem}.{os.urandom(6).hex()}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temp file of :func:`atomic_write` (a crash leftover when no run
    holds the lock)."""
    stem, dot, rest = name.rpartition(".")
    if not (name.startswith(".") and dot and rest == TEMP_SUFFIX[1:]):
        return False
    token = stem.rpartition(".")[2]
    return len(token) == 12 and all(c in "0123456789abcdef" for c in token)


def atomic_write(
    path: Path, data: bytes, *, mode: int = 0o400, uid: int = -1, gid: int = -1
) -> None:
    """Replace ``path`` atomically: temp file in the same (trusted) directory, fsync, rename,
    fsync the directory."""
    with opened_dir(path.parent) as dir_fd:
        atomic_write_at(dir_fd, path.name, data, mode=mode, uid=uid, gid=gid)


def atomic_write_at(
    dir_fd: int, name: str, data: bytes, *, mode: int = 0o400, uid: int = -1, gid: int = -1
) -> None:
    """:func:`atomic_write` of entry ``name`` of the trusted directory ``dir_fd``."""
    tmp = temp_name(Path(), name).name
    write_new_file_at(dir_fd, tmp, data, mode=mode, uid=uid, gid=gid)
    try:
        point("atomic.before-rename")
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    point("atomic.after-rename")
    os.fsync(dir_fd)


def read_file_at(dir_fd: int, name: str, path: str) -> bytes:
    """Read regular file ``name`` of ``dir_fd`` without following a symlink."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise symlink_error(path, dir_fd, name) from None
        raise OSError(error.errno, error.strerror, path) from None
    return read_open_file(fd, path)


def read_open_file(fd: int, path: str) -> bytes:
    """Read the open file ``fd`` (shown as ``path``), which must be a regular file; closes it."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@functools.cache
def _open_how_type() -> type[ctypes.Structure]:
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = [
            ("flags", ctypes.c_uint64),
            ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        ]

    return OpenHow


_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_openat2_works = True


def open_entry_below(dir_fd: int, dir_path: str, subdir: str, name: str) -> int | None:
    """Open regular-file entry ``name`` of directory ``subdir`` of the trusted ``dir_fd`` in
    one ``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)``, after checking ``subdir`` as
    :func:`open_dir` checks a directory (from its ``lstat``: only root or this user can
    replace it in a trusted ``dir_fd``, and the open follows no symlink whatever it finds).

    ``FileNotFoundError`` when either is missing; ``None`` when this cannot decide (no
    ``openat2``, a symlink, anything unexpected): walk with :func:`open_dir_at` and
    :func:`read_file_at` instead, which refuse with the full message."""
    global _openat2_works
    if not _openat2_works:
        return None
    info = os.stat(subdir, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):
        return None
    check_dir(f"{dir_path}/{subdir}", info, ancestor=False)
    import ctypes

    how = _open_how_type()(
        os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        0,
        _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS,
    )
    fd = c_library().syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(f"{subdir}/{name}")),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err == errno.ENOENT:
        raise FileNotFoundError(err, os.strerror(err), f"{dir_path}/{subdir}/{name}")
    if err in (errno.ENOSYS, errno.EPERM):  # an old kernel, or a seccomp filter without it
        _openat2_works = False
    return None


def read_private_file(path: Path) -> bytes:
    """Read a regular file through a trusted chain of directories, following no symlink."""
    with opened_dir(path.parent) as dir_fd:
        return read_file_at(dir_fd, path.name, str(path))


def remove_at(dir_fd: int, name: str) -> None:
    """Remove entry ``name`` of ``dir_fd`` and, for a directory, all below it (no symlink is
    followed; a symlink is removed itself)."""
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        point("remove.entry")
        return
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        for entry in os.listdir(fd):
            remove_at(fd, entry)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
    point("remove.entry")


def remove_tree(path: Path) -> None:
    """Remove a directory tree we created; never follows symlinks."""
    try:
        parent = open_dir(path.parent)
    except FileNotFoundError:
        return
    try:
        remove_at(parent, path.name)
    finally:
        os.close(parent)


# --------------------------------------------------------------------------- locks


@record(frozen=True)
class LockWait:
    """How long to wait for a lock another run holds: ``timeout`` seconds (``None``: as long
    as it takes, ``0``: not at all), telling ``notify`` once ``notify_after`` seconds passed."""

    timeout: float | None = None
    notify_after: float = 1.0
    notify: Callable[[str], None] | None = None


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
    return "?"


def _acquire(fd: int, path: Path, wait: LockWait) -> None:
    import fcntl

    started = time.monotonic()
    delay = 0.005
    notified = False
    while True:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        waited = time.monotonic() - started
        if wait.timeout is not None and waited >= wait.timeout:
            raise LockUnavailable(str(path), _holder(fd), wait.timeout)
        if not notified and waited >= wait.notify_after:
            notified = True
            message = (
                f"waiting for {path}, held by credbridge pid {_holder(fd)} "
                "(--wait-lock SECONDS or --no-wait to limit)"
            )
            (wait.notify or log.warning)(message)
        pause = delay if wait.timeout is None else min(delay, wait.timeout - waited)
        time.sleep(max(pause, 0.001))
        delay = min(delay * 2, 0.05)


def open_lock_file(dir_fd: int, name: str, path: Path) -> int:
    """The fd of lock file ``name`` in the trusted directory ``dir_fd`` (created 0600, never
    through a symlink; it must be a regular file). Close it when done."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "lock file is not a regular file", str(path))
    return fd


@contextlib.contextmanager
def hold_lock(fd: int, path: Path, *, wait: LockWait | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on the open lock file ``fd`` (shown as ``path``) while inside;
    waits as ``wait`` says (default: as long as it takes). ``fd`` stays open."""
    import fcntl

    _acquire(fd, path, wait or LockWait())
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        point("lock.acquired")
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def locked(lock_path: Path, *, wait: LockWait | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created 0600 in a trusted directory) for
    cross-process critical sections; waits as ``wait`` says (default: as long as it takes)."""
    with opened_dir(lock_path.parent) as dir_fd:
        fd = open_lock_file(dir_fd, lock_path.name, lock_path)
    try:
        with hold_lock(fd, lock_path, wait=wait):
            yield
    finally:
        os.close(fd)


__all__ = [
    "LOCK_NAME",
    "RAMFS_MAGIC",
    "RENAME_EXCHANGE",
    "TEMP_SUFFIX",
    "TMPFS_MAGIC",
    "LockWait",
    "atomic_write",
    "atomic_write_at",
    "c_library",
    "check_dir",
    "check_path",
    "check_trusted_file",
    "ensure_private_dir",
    "exchange_at",
    "filesystem_type",
    "hold_lock",
    "is_memory_backed",
    "is_temp_name",
    "load_libc",
    "locked",
    "open_dir",
    "open_dir_at",
    "open_entry_below",
    "open_lock_file",
    "opened_dir",
    "read_file_at",
    "read_open_file",
    "read_private_file",
    "remove_at",
    "remove_tree",
    "resolve_owner",
    "symlink_error",
    "temp_name",
    "write_new_file",
    "write_new_file_at",
]
