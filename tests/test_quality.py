"""ruff and mypy --strict stay clean (the package dirs are mapped, so mypy sees a symlink root)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None and not (Path(sys.executable).parent / name).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", name]


def test_ruff_clean() -> None:
    ruff = _tool("ruff")
    check = subprocess.run(
        [*ruff, "check", "."], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [*ruff, "format", "--check", "core", "backends", "launchers"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_clean(tmp_path: Path) -> None:
    mypy = _tool("mypy")
    root = tmp_path / "root" / "credbridge"
    root.mkdir(parents=True)
    for folder in ("core", "backends", "launchers"):
        (root / folder).symlink_to(REPO / folder)
    result = subprocess.run(
        [
            *mypy,
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "-p",
            "credbridge.core",
            "-p",
            "credbridge.backends",
            "-p",
            "credbridge.launchers",
        ],
        cwd=root.parent,
        env={"MYPYPATH": str(root.parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
