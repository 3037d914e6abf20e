"""Shared fixtures. Tests never see third-party plugins installed on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

# Only credbridge's own plugins: a plugin installed on the developer's machine must not
# change what the tests see (tests that need a third-party plugin set this themselves).
os.environ["CREDBRIDGE_LOAD_PLUGINS"] = ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long harness runs (``stress``) only when asked for: ``-m stress`` or
    ``CREDBRIDGE_STRESS=1`` (docs/reliability.md)."""
    wanted = "stress" in (config.getoption("markexpr") or "")
    if wanted or os.environ.get("CREDBRIDGE_STRESS", "") not in {"", "0"}:
        return
    skip = pytest.mark.skip(reason="long harness: run with -m stress or CREDBRIDGE_STRESS=1")
    for item in items:
        if "stress" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A private directory on tmpfs (/dev/shm), as a credstore must be."""
    base = Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("/dev/shm (tmpfs) is not available")
    path = Path(tempfile.mkdtemp(prefix="credbridge-test-", dir=base))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """Reload the process-wide plugin manager before and after the test."""
    from credbridge.core.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield
    reset_plugin_manager()


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed ``credbridge`` command in a child process, as a user would."""
    merged = dict(os.environ)
    if env:
        merged.update(env)
    return subprocess.run(
        [sys.executable, "-m", "credbridge.core.cli", *args],
        capture_output=True,
        env=merged,
        cwd=cwd,
        input=input,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli():  # type: ignore[no-untyped-def]
    return run_cli
