"""The wheel installs one namespace, credbridge.*, and nothing at top level."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from support.venvs import purelib


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: a stale build/ in the checkout must not leak into the wheel.
    source = tmp_path_factory.mktemp("source") / "credbridge"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__")
    shutil.copytree(REPO, source, ignore=skip)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("credbridge-*.whl")
    return found


def source_modules(folder: str) -> set[str]:
    return {
        f"credbridge/{folder}/{p.relative_to(REPO / folder)}"
        for p in (REPO / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    }


def test_wheel_contains_exactly_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert tops == {"credbridge", next(t for t in tops if t.endswith(".dist-info"))}
    assert not any(
        n.startswith(("core/", "backends/", "launchers/", "testing/", "tests/", "bench/"))
        for n in names
    )
    py_files = {n for n in names if n.endswith(".py")}
    expected = set().union(
        *(source_modules(folder) for folder in ("core", "backends", "launchers", "testing"))
    )
    assert py_files == expected
    assert "credbridge/core/py.typed" in names
    assert "credbridge/__init__.py" not in names  # a namespace: plugins may not shadow it


def test_wheel_metadata(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    dist_info = next(n.split("/")[0] for n in archive.namelist() if ".dist-info/" in n)
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "credbridge = credbridge.core.cli:main" in entry_points
    assert "[credbridge]" in entry_points
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    for extra in ("vault", "aws", "sops", "all", "test"):
        assert f"Provides-Extra: {extra}" in metadata


def test_wheel_installs_and_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # Dependencies come from this environment; the wheel itself replaces the editable install.
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    site = purelib(venv / "bin" / "python")
    parent = purelib(sys.executable)
    # Dependencies (pluggy, click, ...) from the test environment, after the wheel's own files.
    Path(site, "zz_deps.pth").write_text(parent + "\n")
    result = subprocess.run(
        [str(venv / "bin" / "credbridge"), "get", "generate:hex?bytes=4"],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == 8
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import credbridge.core; print(credbridge.core.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(site)
