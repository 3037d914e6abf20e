"""Shared parts of the crash and concurrency harnesses (docs/reliability.md).

Everything races real ``credbridge`` processes (``python -m credbridge.core.cli``), never
threads; the state left behind is read straight from the file system.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLI = [sys.executable, "-m", "credbridge.core.cli"]
LOCK = ".credbridge.lock"


def stress() -> bool:
    """The long versions run with ``-m stress`` or ``CREDBRIDGE_STRESS=1``."""
    return os.environ.get("CREDBRIDGE_STRESS", "") not in {"", "0"}


@dataclass
class Setup:
    """A config with two unit targets in one credstore: ``a.service`` holds ``count``
    generated credentials (and one ``file:`` value), ``b.service`` links to all of them."""

    root: Path
    credstore: Path
    count: int

    @property
    def config(self) -> Path:
        return self.root / "credbridge.toml"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def static_file(self) -> Path:
        return self.root / "static-input"

    @property
    def unit_dir(self) -> Path:
        return self.root / "units"

    def names(self) -> list[str]:
        return [f"c{index:03d}" for index in range(self.count)]

    def write(self, *, extra: str = "") -> Path:
        lines = [
            f'[store]\npath = "{self.store}"',
            f'[sinks.credstore]\ndirectory = "{self.credstore}"',
            '[targets."a.service".credentials]',
            f'static = "file:{self.static_file}"',
            *(f'{name} = "generate:hex?bytes=16"' for name in self.names()),
            extra,
            '[targets."b.service".credentials]',
            *(f'{name} = "target:a.service/{name}"' for name in self.names()),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        if not self.static_file.exists():
            self.static_file.write_bytes(b"static-1")
        return self.config

    def argv(self, *args: str, fault: str | None = None) -> list[str]:
        xopt = ["-X", f"credbridge-fault={fault}"] if fault else []
        return [sys.executable, *xopt, "-m", "credbridge.core.cli", "-c", str(self.config), *args]

    @property
    def cwd(self) -> Path:
        """Where the runs start: scanned for stray files like the rest of ``root``."""
        path = self.root / "cwd"
        path.mkdir(exist_ok=True)
        return path

    def run(
        self, *args: str, fault: str | None = None, xopts: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        argv = self.argv(*args, fault=fault)
        argv[1:1] = [part for x in xopts for part in ("-X", x)]
        return subprocess.run(argv, capture_output=True, check=False, cwd=self.cwd)

    def start(self, *args: str, fault: str | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv(*args, fault=fault),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
        )

    # ------------------------------------------------------------------ reading state

    def stored(self, key: str, which: str = "current") -> bytes | None:
        path = self.store / key / which
        return path.read_bytes() if path.exists() else None

    def target(self, name: str) -> dict[str, bytes] | None:
        """A target's files (None when it was never delivered); checks modes on the way."""
        directory = self.credstore / name
        if not os.path.lexists(directory):
            return None
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode), f"{directory} is not a directory"
        assert stat.S_IMODE(info.st_mode) == 0o700, f"{directory} mode {info.st_mode:o}"
        files = {}
        for entry in os.scandir(directory):
            assert entry.is_file(follow_symlinks=False), entry.path
            assert stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) == 0o400, entry.path
            files[entry.name] = Path(entry.path).read_bytes()
        return files

    def leftovers(self) -> list[str]:
        """Staging directories and temp files of interrupted runs."""
        found = [p.name for p in self.credstore.iterdir() if ".staging-" in p.name]
        if self.store.exists():
            found += [str(p) for p in self.store.rglob(".*.tmp")]
        return found

    def secrets(self) -> set[bytes]:
        """Every value the store holds now (current and previous) and the file: input."""
        values = {self.static_file.read_bytes()}
        if self.store.exists():
            for path in self.store.rglob("*"):
                if path.is_file() and path.name in {"current", "previous"}:
                    values.add(path.read_bytes())
        return values


def stray_secrets(roots: Sequence[Path], allowed: Sequence[Path], values: set[bytes]) -> list[str]:
    """Files under ``roots`` but outside ``allowed`` that hold one of ``values``."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if any(path == a or a in path.parents for a in allowed):
                continue
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(value in data for value in values if len(value) >= 8):
                    found.append(str(path))
    return found
