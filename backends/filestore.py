"""The built-in ``file`` store: generated values as 0400 files in a 0700 directory tree.

Layout: ``ROOT/KEY/current`` and ``ROOT/KEY/previous`` where KEY is ``TARGET/CREDENTIAL``
(or the ``?id=`` of the reference). Writes are atomic and durable, serialised by a lock file,
so two runs never generate two values for one key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from credbridge.core import ConfigError, Secret, Store, StoreContext
from credbridge.core.config import DEFAULT_STORE
from credbridge.core.fsutil import (
    atomic_write,
    ensure_private_dir,
    fsync_dir,
    locked,
    read_private_file,
)
from credbridge.core.settings import path_setting

_SEGMENT = re.compile(r"[A-Za-z0-9_.@:\\-]{1,255}")


class FileStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, key: str) -> Path:
        parts = key.split("/")
        if not all(_SEGMENT.fullmatch(p) and p not in {".", ".."} for p in parts):
            msg = f"invalid store key {key!r}"
            raise ValueError(msg)
        return self.root.joinpath(*parts)

    def _ensure(self, directory: Path) -> None:
        ensure_private_dir(self.root)
        current = self.root
        for part in directory.relative_to(self.root).parts:
            current = current / part
            ensure_private_dir(current)

    def read(self, key: str, *, previous: bool = False) -> Secret | None:
        path = self._dir(key) / ("previous" if previous else "current")
        try:
            return Secret(read_private_file(path))
        except FileNotFoundError:
            return None

    def create(self, key: str, value: Secret) -> Secret:
        directory = self._dir(key)
        self._ensure(directory)
        with locked(self.root / ".lock"):
            existing = self.read(key)
            if existing is not None:
                return existing
            atomic_write(directory / "current", value.reveal())
            fsync_dir(directory.parent)
        return value

    def rotate(self, key: str, value: Secret) -> None:
        directory = self._dir(key)
        self._ensure(directory)
        with locked(self.root / ".lock"):
            old = self.read(key)
            if old is not None:
                # previous first: a crash in between leaves current == previous, never a loss.
                atomic_write(directory / "previous", old.reveal())
                old.wipe()
            atomic_write(directory / "current", value.reveal())

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
    unknown = set(context.settings) - {"path"}
    if unknown:
        raise ConfigError(
            f"unknown setting {sorted(unknown)[0]!r} for the file store", key=context.where
        )
    if "path" in context.settings:
        raw, key = context.settings["path"], f"{context.where}.path"
    else:
        raw, key = os.environ.get("CREDBRIDGE_STORE", DEFAULT_STORE), "CREDBRIDGE_STORE"
    return FileStore(path_setting(raw, base=context.config_dir, file=None, key=key))
