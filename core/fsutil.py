"""File-system primitives for secret files: 0700 dirs, 0400 files, atomic, no symlinks."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
RENAME_EXCHANGE = 2
_AT_FDCWD = -100

# The process's own symbols include libc's (statfs, renameat2); ctypes.util.find_library
# would run ldconfig in a subprocess on every start (~10 ms).
_libc = ctypes.CDLL(None, use_errno=True)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]


def filesystem_type(path: Path) -> int:
    """The ``f_type`` magic of the file system holding ``path`` (statfs(2))."""
    buf = _StatFs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(buf.f_type) & 0xFFFFFFFF


def is_memory_backed(path: Path) -> bool:
    """Whether ``path`` (or its nearest existing parent) is on tmpfs or ramfs."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return filesystem_type(probe) in (TMPFS_MAGIC, RAMFS_MAGIC)


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE): both must exist."""
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), f"{a} <-> {b}")


def resolve_owner(user: str | None, group: str | None) -> tuple[int, int]:
    """Numeric ids for names (or numbers given as text); -1 means 'leave unchanged'."""
    uid = gid = -1
    if user is not None:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    if group is not None:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


def ensure_private_dir(path: Path, *, mode: int = 0o700, uid: int = -1, gid: int = -1) -> None:
    """Create ``path`` (and parents) if missing; refuse symlinks; force mode and owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "not a real directory (symlink or file)", str(path))
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)
    if (uid != -1 and info.st_uid != uid) or (gid != -1 and info.st_gid != gid):
        os.chown(path, uid, gid, follow_symlinks=False)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(
    path: Path, data: bytes, *, mode: int = 0o400, uid: int = -1, gid: int = -1
) -> None:
    """Create ``path`` exclusively (never following a symlink), write, fsync, set owner."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def temp_name(directory: Path, stem: str) -> Path:
    # os.urandom is what secrets.token_hex reads, without importing secrets (hmac, OpenSSL).
    return directory / f".{stem}.{os.urandom(6).hex()}.tmp"


def atomic_write(
    path: Path, data: bytes, *, mode: int = 0o400, uid: int = -1, gid: int = -1
) -> None:
    """Replace ``path`` atomically: temp file in the same directory, fsync, rename, fsync dir."""
    tmp = temp_name(path.parent, path.name)
    write_new_file(tmp, data, mode=mode, uid=uid, gid=gid)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def read_private_file(path: Path) -> bytes:
    """Read a file without following a final symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a directory tree we created; never follows symlinks."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    for entry in os.scandir(path):
        child = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            remove_tree(child)
        else:
            os.unlink(child)
    os.rmdir(path)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` for cross-process critical sections."""
    import fcntl

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
