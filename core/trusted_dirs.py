"""Directories credbridge may trust: opened from ``/`` one checked component at a time.

Every path is walked from ``/`` one component at a time with ``openat(O_NOFOLLOW|O_DIRECTORY)``
(:func:`open_dir`): no symlink is followed anywhere along it, and every directory on the way
must be owned by root or by the user credbridge runs as and must not be group- or
world-writable -- root-owned sticky directories such as ``/tmp`` and ``/dev/shm`` are accepted
as ancestors, never as the directory written into (like OpenSSH's ``StrictModes``). A path that
fails this raises :class:`~credbridge.core.errors.UnsafePath` naming the path, owner and mode.
Once a chain is trusted only root or this user can change it, so later steps may use it: a
directory fd opened this way may be held and entries opened relative to it
(:func:`open_dir_at`), each further directory checked the same way. (``openat2
(RESOLVE_NO_SYMLINKS)`` refuses links in one call but checks no owner or mode, so the walk opens
one component at a time; :func:`credbridge.core.fsutil.open_entry_below` uses it for a file
one checked directory below a trusted fd.)

Directories credbridge creates get explicit modes whatever the umask, and the directory that
received a new entry is fsynced, so a created chain survives power loss up to its root.

The file helpers built on these (atomic writes, reads, removal, locks) are in
:mod:`credbridge.core.fsutil`, which also re-exports this module's functions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

from credbridge.core.errors import UnsafePath
from credbridge.core.faults import point

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""How every directory of a walk is opened: never through a symlink."""


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _components(path: os.PathLike[str] | str) -> list[str]:
    # Lexical normalisation is exact here: the walk refuses every symlink it meets.
    return [part for part in os.path.abspath(path).split("/") if part]


def check_dir(
    path: str, info: os.stat_result, *, ancestor: bool, also_trust: Collection[int] = ()
) -> None:
    """Refuse a directory someone else could change (see the module docstring)."""
    euid = os.geteuid()
    mode = stat.S_IMODE(info.st_mode)
    owner = info.st_uid
    if owner not in (0, euid, *also_trust):
        trusted = "root" if euid == 0 else f"root or by {_user(euid)}"
        raise UnsafePath(
            path,
            f"owned by {_user(owner)}, mode {mode:04o}; credbridge trusts only directories "
            f"owned by {trusted}",
        )
    if mode & 0o022 and not (ancestor and mode & stat.S_ISVTX and owner in (0, euid)):
        who = {0o002: "others", 0o020: "its group", 0o022: "its group and others"}
        raise UnsafePath(
            path,
            f"owned by {_user(owner)}, mode {mode:04o}: writable by {who[mode & 0o022]}; "
            "check its contents, then remove group/other write permission (chmod go-w)",
        )


def symlink_error(path: str, dir_fd: int, name: str) -> UnsafePath:
    """The refusal of entry ``name`` of ``dir_fd`` (shown as ``path``), a symlink."""
    try:
        target = os.readlink(name, dir_fd=dir_fd)
    except OSError:
        target = "?"
    return UnsafePath(
        path, f"is a symlink (to {target}); credbridge follows no symlink along a path"
    )


def _open_child(dir_fd: int, name: str, path: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(error.errno, error.strerror, path) from None
        info = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISLNK(info.st_mode):
            raise symlink_error(path, dir_fd, name) from None
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path) from None


def _open_root(parts: Sequence[str]) -> int:
    """An fd of ``/``, checked as the first directory of a walk through ``parts``."""
    fd = os.open("/", DIR_FLAGS)
    try:
        check_dir("/", os.fstat(fd), ancestor=bool(parts))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir(
    path: os.PathLike[str] | str,
    *,
    create: bool = False,
    mode: int = 0o700,
    parents_mode: int = 0o700,
    also_trust: Collection[int] = (),
    read_only: bool = False,
) -> int:
    """An ``O_DIRECTORY`` fd of ``path``, reached from ``/`` without following any symlink,
    every directory on the way checked (see the module docstring). Close it when done.

    With ``create``, missing directories are made: the last with ``mode``, the others with
    ``parents_mode`` (exactly, whatever the umask); each parent that gained an entry is fsynced.
    ``also_trust`` adds owners accepted for the last directory only (e.g. a credstore target
    directory handed to a service user). ``read_only``: the last directory is only read
    from, so a root-owned sticky one is accepted as for ancestors (see
    :func:`check_trusted_file`). Raises :class:`UnsafePath`, ``FileNotFoundError`` (without
    ``create``) or ``NotADirectoryError``.
    """
    parts = _components(path)
    return open_dir_at(
        _open_root(parts),
        "",
        parts,
        create=create,
        mode=mode,
        parents_mode=parents_mode,
        also_trust=also_trust,
        read_only=read_only,
        close_start=True,
    )


def open_dir_at(
    start_fd: int,
    start_path: str,
    parts: Sequence[str],
    *,
    create: bool = False,
    mode: int = 0o700,
    parents_mode: int = 0o700,
    also_trust: Collection[int] = (),
    read_only: bool = False,
    close_start: bool = False,
) -> int:
    """:func:`open_dir` of ``parts`` below ``start_fd``, a directory already opened and checked
    by :func:`open_dir` (shown as ``start_path`` in messages): the same checks for every
    component, without walking from ``/`` again. ``start_fd`` stays open unless
    ``close_start``; with no ``parts`` a new fd of it is returned."""
    fd = start_fd if close_start else os.dup(start_fd)
    current = start_path
    try:
        for index, name in enumerate(parts):
            last = index == len(parts) - 1
            current = f"{current}/{name}"
            created = False
            try:
                child = _open_child(fd, name, current)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
                    created = True
                    point("mkdir")
                child = _open_child(fd, name, current)
            try:
                if created:
                    os.fchmod(child, mode if last else parents_mode)
                    os.fsync(fd)
                check_dir(
                    current,
                    os.fstat(child),
                    ancestor=not last or read_only,
                    also_trust=also_trust if last else (),
                )
            except BaseException:
                os.close(child)
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class OpenOptions(TypedDict, total=False):
    """The keyword arguments of :func:`open_dir`, for the functions that pass them on."""

    create: bool
    mode: int
    parents_mode: int
    also_trust: Collection[int]
    read_only: bool


@contextlib.contextmanager
def opened_dir(path: os.PathLike[str] | str, **options: Unpack[OpenOptions]) -> Iterator[int]:
    """:func:`open_dir` as a context manager (the same keyword arguments)."""
    fd = open_dir(path, **options)
    try:
        yield fd
    finally:
        os.close(fd)


def check_trusted_file(path: Path) -> None:
    """Refuse a file another user could have chosen, before a program reads it by name (sops).

    The chain of directories is walked as :func:`open_dir` does, except that the file's own
    directory may be a root-owned sticky one like ``/nix/store`` (it is only read from, and
    nobody else can replace a file there that root or this user owns); the file must be a
    regular file (not a symlink) owned by root or this user. Raises :class:`UnsafePath`,
    ``FileNotFoundError`` or ``NotADirectoryError``; once it returns, only root or this user
    can change what the path names.
    """
    parent = open_dir(path.parent, read_only=True)
    try:
        info = os.lstat(path.name, dir_fd=parent)
        if stat.S_ISLNK(info.st_mode):
            raise symlink_error(str(path), parent, path.name)
    finally:
        os.close(parent)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if info.st_uid not in (0, os.geteuid()):
        trusted = "root" if os.geteuid() == 0 else f"root or by {_user(os.geteuid())}"
        raise UnsafePath(
            str(path),
            f"owned by {_user(info.st_uid)}; credbridge reads secrets only from files owned "
            f"by {trusted}",
        )


def check_path(path: os.PathLike[str] | str) -> None:
    """Check the existing part of ``path`` like :func:`open_dir` does, creating nothing.

    For refusing early, before anything is written: a missing tail is fine.
    """
    parts = _components(path)
    fd = _open_root(parts)
    current = ""
    try:
        for index, name in enumerate(parts):
            current = f"{current}/{name}"
            try:
                child = _open_child(fd, name, current)
            except FileNotFoundError:
                return
            os.close(fd)
            fd = child
            check_dir(current, os.fstat(fd), ancestor=index < len(parts) - 1)
    finally:
        os.close(fd)


def ensure_private_dir(
    path: Path,
    *,
    mode: int = 0o700,
    uid: int = -1,
    gid: int = -1,
    parents_mode: int = 0o700,
) -> None:
    """Create ``path`` (and parents) if missing, through a trusted chain; force mode and owner.

    An existing directory keeps its contents; its mode is set to ``mode`` only when it was safe
    already (a group- or world-writable one is refused: someone may have planted entries).
    """
    with opened_dir(path, create=True, mode=mode, parents_mode=parents_mode) as fd:
        info = os.fstat(fd)
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
        if (uid != -1 and info.st_uid != uid) or (gid != -1 and info.st_gid != gid):
            os.fchown(fd, uid, gid)
