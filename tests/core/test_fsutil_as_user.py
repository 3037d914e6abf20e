"""The file-system primitives run by a user other than root (the suite itself runs as root).

The child is Debian's /usr/bin/python3 running as ``nobody`` on a world-readable copy of
``credbridge.core`` (its file-system module needs nothing outside the standard library): it
must create, write and read through root's /tmp, own what it made, and never try to hand a
file to root (a chown to uid 0 is refused to other users).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

NOBODY = pwd.getpwnam("nobody")
SYSTEM_PYTHON = Path("/usr/bin/python3")

CHILD = """
import os, stat, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from credbridge.core.fsutil import (
    atomic_write, ensure_private_dir, read_private_file, write_new_file,
)
work = Path(sys.argv[2])
ensure_private_dir(work / "store" / "app")
write_new_file(work / "store" / "app" / "new", b"v1")
atomic_write(work / "store" / "app" / "current", b"v2")
assert read_private_file(work / "store" / "app" / "current") == b"v2"
for name in ("store", "store/app", "store/app/new", "store/app/current"):
    info = os.stat(work / name)
    print(name, info.st_uid, oct(stat.S_IMODE(info.st_mode)))
"""


@pytest.fixture
def readable_copy() -> Iterator[Path]:
    """A world-readable copy of the package's core (the checkout may sit under /root)."""
    base = Path(tempfile.mkdtemp(prefix="credbridge-user-", dir="/tmp"))
    try:
        core = base / "pkg" / "credbridge" / "core"
        core.mkdir(parents=True)
        for source in (REPO / "core").glob("*.py"):
            shutil.copy(source, core / source.name)
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_user_other_than_root_writes_and_owns_its_store(readable_copy: Path) -> None:
    assert SYSTEM_PYTHON.exists(), "Debian's python3 (installed with python3-venv) is needed"
    work = readable_copy / "work"
    work.mkdir(mode=0o700)
    os.chown(work, NOBODY.pw_uid, NOBODY.pw_gid)
    result = subprocess.run(
        [str(SYSTEM_PYTHON), "-I", "-c", CHILD, str(readable_copy / "pkg"), str(work)],
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    uid = NOBODY.pw_uid
    assert result.stdout.splitlines() == [
        f"store {uid} {oct(0o700)}",
        f"store/app {uid} {oct(0o700)}",
        f"store/app/new {uid} {oct(0o400)}",
        f"store/app/current {uid} {oct(0o400)}",
    ]
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
