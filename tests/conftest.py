"""Shared fixtures. Tests never see third-party plugins installed on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from support.canary import (  # the suite-wide secret canary (see its docstring)
    canary,
    pytest_runtest_makereport,
    run_cli_watched,
)
from support.canary import (
    current as current_canary,
)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

# Property-based tests (tests/test_properties.py) run each target under one of these profiles:
# "suite" in the default run, "fuzz" (at least 10,000 examples) with `pytest -m fuzz`.
settings.register_profile("suite", max_examples=300, deadline=None, database=None)
settings.register_profile("fuzz", max_examples=10_000, deadline=None, database=None)
_FUZZ_RUNS: list[tuple[str, str, int, float]] = []


def record_fuzz_run(target: str, profile: str, examples: int, seconds: float) -> None:
    """Remember how many examples a property target ran, for the terminal summary."""
    _FUZZ_RUNS.append((target, profile, examples, seconds))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FUZZ_RUNS:
        return
    terminalreporter.section("property-based targets (examples, seconds)")
    for target, profile, examples, seconds in _FUZZ_RUNS:
        terminalreporter.write_line(f"{profile:5} {examples:6d} {seconds:8.1f}s  {target}")

# Only credbridge's own plugins: a plugin installed on the developer's machine must not
# change what the tests see (tests that need a third-party plugin set this themselves).
os.environ["CREDBRIDGE_LOAD_PLUGINS"] = ""


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


def secret_value(value: str) -> str:
    """Register ``value`` with the running test's canary and return it (for test literals)."""
    watcher = current_canary()
    if watcher is not None:
        watcher.register(value)
    return value


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
    # The canary reads its output, its children's argv/environ and the files it left.
    return run_cli_watched(
        [sys.executable, "-m", "credbridge.core.cli", *args],
        args,
        env=merged,
        cwd=cwd,
        input=input,
        timeout=timeout,
    )


@pytest.fixture
def cli():  # type: ignore[no-untyped-def]
    return run_cli


__all__ = ["canary", "pytest_runtest_makereport"]
