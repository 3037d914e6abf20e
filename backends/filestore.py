"""The built-in ``file`` store: generated values as 0400 files in a 0700 directory tree.

Layout: ``ROOT/KEY/current`` and ``ROOT/KEY/previous`` where KEY is ``TARGET/CREDENTIAL``
(or the ``?id=`` of the reference). Writes are atomic and durable (temp file, fsync, rename,
fsync of every directory that gained an entry up to the root), serialised by ``ROOT/.lock``, so
two runs never generate two values for one key. ``ROOT/.credbridge.lock`` is the run lock that
``deliver``, ``rotate`` and ``launch`` hold while they use the store; under it the temp files of
a crashed run (``.current.*.tmp``) are removed. Every directory on the way is checked and no
symlink is followed (:mod:`credbridge.core.fsutil`).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from credbridge.backends.hooks.filestore import SETTINGS
from credbridge.core import Secret, Store, StoreContext
from credbridge.core.config import DEFAULT_STORE
from credbridge.core.fsutil import (
    LOCK_NAME,
    atomic_write,
    ensure_private_dir,
    is_temp_name,
    locked,
    opened_dir,
    read_private_file,
    remove_at,
)
from credbridge.core.settings import path_setting

_SEGMENT = re.compile(r"[A-Za-z0-9_.@:\\-]{1,255}")
WRITE_LOCK = ".lock"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


class FileStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        # flock excludes other processes; threads of this one are excluded here.
        with _thread_locks_guard:
            self._thread_lock = _thread_locks.setdefault(os.path.abspath(root), threading.Lock())

    def _dir(self, key: str) -> Path:
        parts = key.split("/")
        if not all(_SEGMENT.fullmatch(p) and p not in {".", ".."} for p in parts):
            msg = f"invalid store key {key!r}"
            raise ValueError(msg)
        return self.root.joinpath(*parts)

    def _ensure(self, directory: Path) -> None:
        # Missing directories are created 0700 and their parents fsynced, up to the root.
        ensure_private_dir(self.root)
        ensure_private_dir(directory)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self._thread_lock, locked(self.root / WRITE_LOCK):
            yield

    def read(self, key: str, *, previous: bool = False) -> Secret | None:
        path = self._dir(key) / ("previous" if previous else "current")
        try:
            return Secret(read_private_file(path))
        except FileNotFoundError:
            return None

    def create(self, key: str, value: Secret) -> Secret:
        directory = self._dir(key)
        self._ensure(directory)
        with self._writing():
            existing = self.read(key)
            if existing is not None:
                return existing
            atomic_write(directory / "current", value.reveal())
        return value

    def rotate(self, key: str, value: Secret) -> None:
        directory = self._dir(key)
        self._ensure(directory)
        with self._writing():
            old = self.read(key)
            if old is not None:
                # previous first: a crash in between leaves current == previous, never a loss.
                atomic_write(directory / "previous", old.reveal())
                old.wipe()
            atomic_write(directory / "current", value.reveal())

    def lock_file(self) -> Path:
        ensure_private_dir(self.root)
        return self.root / LOCK_NAME

    def recover(self) -> None:
        """Remove temp files a killed run left (a full value each) anywhere in the store."""
        with self._writing(), opened_dir(self.root) as root:
            _sweep(root)

    def keys(self) -> list[str]:
        found: list[str] = []
        if not self.root.is_dir():
            return found
        for dirpath, _dirs, files in os.walk(self.root):
            if "current" in files:
                found.append(str(Path(dirpath).relative_to(self.root)))
        return sorted(found)

    def location(self) -> str:
        return str(self.root)


def open_store(context: StoreContext) -> Store:
    path = context.read_settings(SETTINGS, name="file")["path"]
    if path is None:
        raw = os.environ.get("CREDBRIDGE_STORE", DEFAULT_STORE)
        path = path_setting(raw, base=context.config_dir, file=None, key="CREDBRIDGE_STORE")
    return FileStore(path)


def _sweep(dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        info = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISDIR(info.st_mode):
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _sweep(child)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode) and is_temp_name(name):
            remove_at(dir_fd, name)
