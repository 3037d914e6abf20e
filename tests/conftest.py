"""Shared fixtures. Tests never see third-party plugins installed on the machine.

The suite leaves nothing behind in /tmp or /dev/shm: every temporary file of the run, the
tests' and their children's (``TMPDIR``), lives under one session directory in each, and a
check at the end of the session fails the run if anything of ours is left outside them, or
inside them besides pytest's own ``tmp_path`` tree; then both are removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
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
SHM = Path("/dev/shm")
SESSION_PREFIX = "credbridge-tests-"
OURS = ("credbridge-demo", "cb-ch-conf")
"""Fixed paths in /tmp or /dev/shm that the code this suite runs could create by default; all
else the suite makes is under the session directories (other programs on the machine may
create other names in /tmp meanwhile, so only these are watched outside)."""

# Property-based tests (tests/core/test_properties.py) run each target under one of these profiles:
# "suite" in the default run, "fuzz" (at least 10,000 examples) with `pytest -m fuzz`.
settings.register_profile("suite", max_examples=300, deadline=None, database=None)
# CREDBRIDGE_FUZZ_EXAMPLES=N raises (or lowers) the fuzz budget of every target for one run.
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("CREDBRIDGE_FUZZ_EXAMPLES", "10000")),
    deadline=None,
    database=None,
)
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

# A run started in the background of a non-interactive shell (`.ci/run &`) inherits SIGINT
# ignored, and every child would too: the tests that interrupt credbridge need the default.
# A handler here becomes SIG_DFL in each child at exec, where Python installs its own again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_session: dict[str, object] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    system_tmp = Path(tempfile.gettempdir())
    watched = [d for d in (system_tmp, SHM) if d.is_dir()]
    _session["before"] = {d: set(os.listdir(d)) for d in watched}
    root = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=system_tmp))
    roots = [root]
    if SHM.is_dir():
        roots.append(Path(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=SHM)))
    _session["roots"] = roots
    # Children (credbridge, QEMU, pip, OpenBao) inherit it; tempfile in this process too.
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = str(root)
    if config.option.basetemp is None:
        config.option.basetemp = str(root / "pytest")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    problem = ci_skip_problem(_skipped, os.environ)
    if problem is not None:
        _report(session, problem)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    roots: list[Path] = _session.get("roots", [])  # type: ignore[assignment]
    if not roots:
        return
    left: list[str] = []
    for root in roots:
        for name in sorted(os.listdir(root)):
            if not (root == roots[0] and name == "pytest"):
                left.append(str(root / name))
    before: dict[Path, set[str]] = _session["before"]  # type: ignore[assignment]
    for directory, names in before.items():
        for name in sorted(set(os.listdir(directory)) - names):
            if name.startswith(OURS):
                left.append(str(directory / name))
    for root in roots:
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
    if left:
        lines = ["the test run left files behind:", *(f"  {path}" for path in left)]
        _report(session, "\n".join(lines))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _report(session: pytest.Session, text: str) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text, red=True)
    else:
        sys.stderr.write(text + "\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long harness runs (``stress``) only when asked for: ``-m stress`` or
    ``CREDBRIDGE_STRESS=1`` (docs/reliability.md). Otherwise they are deselected, as ``fuzz``
    is by ``addopts``: not run, and not counted as skipped."""
    wanted = "stress" in (config.getoption("markexpr") or "")
    if wanted or os.environ.get("CREDBRIDGE_STRESS", "") not in {"", "0"}:
        return
    deselected = [item for item in items if "stress" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "stress" not in item.keywords]


# The one test that may skip under CI=true: it runs the real cloud-hypervisor, which needs
# KVM and a binary this machine cannot have (docs/testing.md).
OPT_IN_SKIPS = frozenset({"tests/launchers/test_cloud_hypervisor_guest.py::test_real_cloud_hypervisor"})
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def ci_skip_problem(skipped: list[str], environ: Mapping[str, str]) -> str | None:
    """Why the run must fail: a test other than the opt-in one skipped under ``CI=true``."""
    if environ.get("CI") != "true":
        return None
    # The opt-in test runs once per guest release (``[systemd252]``, ...): any of them may skip.
    unexpected = sorted({n for n in skipped if n.partition("[")[0] not in OPT_IN_SKIPS})
    if not unexpected:
        return None
    return "\n".join(
        ["CI=true: nothing may skip but the opt-in real cloud-hypervisor test; skipped:"]
        + [f"  {nodeid}" for nodeid in unexpected]
    )


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    """The CLI sets umask 077 when a test runs it in-process; later tests get theirs back."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    """A private directory on a disk-backed file system (``/var/tmp``), for what must not be
    on tmpfs (``/tmp`` may be tmpfs: the tests make their own instead of skipping)."""
    base = Path("/var/tmp")
    path = Path(tempfile.mkdtemp(prefix="credbridge-test-", dir=base))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A private directory on tmpfs (/dev/shm), as a credstore must be."""
    roots: list[Path] = _session.get("roots", [])  # type: ignore[assignment]
    base = next((r for r in roots if r.is_relative_to(SHM)), None)
    if base is None:
        pytest.skip("/dev/shm (tmpfs) is not available")
    path = Path(tempfile.mkdtemp(prefix="test-", dir=base))
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
