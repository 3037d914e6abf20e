"""The suite's own rules (tests/conftest.py): under ``CI=true`` nothing skips but the opt-in
real cloud-hypervisor test; the long harnesses are deselected, not skipped."""

from __future__ import annotations

import ast
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


def imported_test_modules(path: Path) -> list[str]:
    """The test modules ``path`` imports (``import test_x``, ``from test_x import ...``), at any
    depth of the file: a helper two test modules need belongs in tests/support instead."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [f"line {node.lineno}: {name}" for name in names if name.startswith("test_")]
    return found


def test_no_test_module_imports_another() -> None:
    test_files = sorted((REPO / "tests").rglob("test_*.py"))
    assert len(test_files) > 50  # the scan sees the whole suite, every folder of it
    offenders = {
        str(path.relative_to(REPO)): imports
        for path in test_files
        if (imports := imported_test_modules(path))
    }
    assert offenders == {}


def test_the_import_rule_sees_every_spelling(tmp_path: Path) -> None:
    module = tmp_path / "test_spellings.py"
    module.write_text(
        "import os\nimport test_a\nfrom test_b import x\nfrom support.test_c import y\n"
        "from . import test_d\ndef f():\n    from test_e import z\n"
    )
    assert imported_test_modules(module) == ["line 2: test_a", "line 3: test_b", "line 7: test_e"]
