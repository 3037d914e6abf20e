"""The suite's own rules (tests/conftest.py): under ``CI=true`` nothing skips but the opt-in
real cloud-hypervisor test; the long harnesses are deselected, not skipped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import OPT_IN_SKIPS, REPO, ci_skip_problem

INNER_CONFTEST = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("suite_conftest", {str(REPO / "tests" / "conftest.py")!r})
suite = importlib.util.module_from_spec(spec)
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
spec.loader.exec_module(suite)
pytest_runtest_logreport = suite.pytest_runtest_logreport
pytest_sessionfinish = suite.pytest_sessionfinish
pytest_collection_modifyitems = suite.pytest_collection_modifyitems

def pytest_configure(config):
    config.addinivalue_line("markers", "stress: long")
"""

INNER_TESTS = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("a prerequisite is missing")

@pytest.mark.stress
def test_long_harness():
    pass
"""


def inner_run(tmp_path: Path, ci: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(INNER_CONFTEST))
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_skip_fails_the_run_under_ci(tmp_path: Path) -> None:
    result = inner_run(tmp_path, "true", "test_inner.py")
    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 skipped, 1 deselected" in result.stdout
    assert (
        "CI=true: nothing may skip but the opt-in real cloud-hypervisor test; skipped:\n"
        "  test_inner.py::test_skips"
    ) in result.stdout


def test_a_skip_is_only_reported_outside_ci(tmp_path: Path) -> None:
    result = inner_run(tmp_path, None, "test_inner.py")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped, 1 deselected" in result.stdout
    assert "CI=true" not in result.stdout


def test_stress_is_deselected_not_skipped_and_runs_when_asked(tmp_path: Path) -> None:
    result = inner_run(tmp_path, "true", "test_inner.py", "-m", "stress")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 deselected" in result.stdout
    assert "PASSED test_inner.py::test_long_harness" in result.stdout


def test_only_the_real_cloud_hypervisor_test_may_skip() -> None:
    (opt_in,) = OPT_IN_SKIPS
    path, _, name = opt_in.partition("::")
    assert f"def {name}(" in (REPO / path).read_text()  # the exemption names a real test
    assert ci_skip_problem([opt_in], {"CI": "true"}) is None
    # Once per guest release; another test's parametrized ids are not exempt.
    assert ci_skip_problem([f"{opt_in}[systemd252]", f"{opt_in}[systemd257]"], {"CI": "true"}) is None
    assert ci_skip_problem([f"{path}::test_other[systemd252]"], {"CI": "true"}) is not None
    assert ci_skip_problem([opt_in, "tests/test_x.py::test_y"], {"CI": "true"}) == (
        "CI=true: nothing may skip but the opt-in real cloud-hypervisor test; skipped:\n"
        "  tests/test_x.py::test_y"
    )
    assert ci_skip_problem(["tests/test_x.py::test_y"], {"CI": "false"}) is None
