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


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The credbridge modules ``path`` imports at run time, at any depth (function-level
    imports too; ``if TYPE_CHECKING:`` blocks are not run, so they do not count)."""
    import ast

    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for statement in child.orelse:
                    visit(statement)
                continue
            if isinstance(child, ast.ImportFrom) and child.module:
                submodules = {f"{child.module}.{alias.name}" for alias in child.names}
                found.update(submodules & modules or {child.module})
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found & modules


def test_the_import_graph_has_no_cycle() -> None:
    """Layers point one way: a module never imports (even inside a function) one that imports
    it back, e.g. config -> validation -> plugins -> types, never validation -> config."""
    files = {
        "credbridge." + ".".join(path.relative_to(REPO).with_suffix("").parts): path
        for package in ("core", "backends", "launchers")
        for path in (REPO / package).rglob("*.py")
    }
    files = {name.removesuffix(".__init__"): path for name, path in files.items()}
    graph = {name: _imports(path, set(files)) for name, path in files.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            module, trail = stack.pop()
            for imported in graph[module]:
                if imported == start:
                    return [*trail, start]
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, [*trail, imported]))
        return None

    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(name))]
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)
