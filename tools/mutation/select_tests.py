"""cosmic-ray's test command: run only the tests that reach the mutated lines.

cosmic-ray writes one mutant into the workspace's copy of a module, runs this, and counts a
non-zero exit as *killed*. This finds the lines that differ from the pristine copy, looks
them up in the per-test coverage map (``map.json``, made by ``run.py``), and runs those
tests, fastest first, stopping at the first failure (``-x``). A mutant of a line that only
runs at import time (a constant, a decorator, a ``def``) runs every test that reaches the
module; a mutant of a line no test reaches survives without running anything, and says so
on stdout (kept in the session database for the report).
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

MAX_TESTS = 50
"""At most this many tests (the fastest) run per mutant."""
IMPORT_TIME = ""
"""The context of lines executed outside any test (imports during collection)."""
NO_TEST_MARK = "credbridge-mutation: no test reaches"
INTERNAL_ERROR = "credbridge-mutation: internal error"
ANNOTATION_ONLY = "credbridge-mutation: only an annotation changed (never evaluated)"
"""Reported, exit 0: run.py counts such mutants as errors, neither killed nor survived."""


def changed_lines(pristine: list[str], mutated: list[str]) -> set[int]:
    """1-based line numbers of ``pristine`` that the mutant replaced."""
    lines: set[int] = set()
    matcher = difflib.SequenceMatcher(a=pristine, b=mutated, autojunk=False)
    for tag, i1, i2, _j1, _j2 in matcher.get_opcodes():
        if tag != "equal":
            lines.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    return lines


def same_code(a: str, b: str) -> bool:
    """Whether two versions of a module differ only in annotations, which ``from __future__
    import annotations`` keeps as strings that nothing evaluates."""
    if "from __future__ import annotations" not in a:
        return False

    def stripped(source: str) -> str:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.arg):
                node.annotation = None
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                node.returns = None
            elif isinstance(node, ast.AnnAssign):
                node.annotation = ast.Constant(None)
        return ast.dump(tree)

    return stripped(a) == stripped(b)


def use_lines(source: str, lines: set[int]) -> tuple[set[int], set[str]]:
    """The lines that use what the module-level lines ``lines`` define (the body of a function
    whose signature or decorators they are, every use of a name they assign or define), and
    those names."""
    tree = ast.parse(source)
    uses: set[int] = set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if set(range(first, node.body[0].lineno)) & lines:
                uses |= set(range(node.body[0].lineno, (node.end_lineno or node.lineno) + 1))
                names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            span = set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
            if span & lines:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
                    names |= {n.attr for n in ast.walk(target) if isinstance(n, ast.Attribute)}
    # Follow module-level assignments from those names (NAME_MAX = FW_CFG_NAME_MAX - ...).
    assigned = {
        node: {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in getattr(tree, "body", [])
        if isinstance(node, ast.Assign)
    }
    while True:
        more = {
            target
            for node, targets in assigned.items()
            if {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)} & names
            for target in targets
        } - names
        if not more:
            break
        names |= more
    uses |= name_lines(source, names, tree)
    return uses - lines, names


def runs_at_import(source: str, lines: set[int]) -> bool:
    """Whether one of ``lines`` lies outside every function body (a module- or class-level
    statement, a signature, a decorator): it runs when the module is imported."""
    bodies: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            bodies |= set(range(node.body[0].lineno, (node.end_lineno or node.lineno) + 1))
    return bool(lines - bodies)


def name_lines(source: str, names: set[str], tree: ast.AST | None = None) -> set[int]:
    """The lines of ``source`` that name one of ``names``."""
    found = set()
    for node in ast.walk(tree if tree is not None else ast.parse(source)):
        if (isinstance(node, ast.Name) and node.id in names) or (
            isinstance(node, ast.Attribute) and node.attr in names
        ):
            found.add(node.lineno)
    return found


def main() -> int:
    work = Path(os.environ["CREDBRIDGE_MUTATION_WORK"])
    src = work / "src"
    pristine_dir = work / "pristine"
    mapping: dict[str, dict[str, list[str]]] = json.loads((work / "map.json").read_text())
    durations: dict[str, float] = json.loads((work / "durations.json").read_text())

    selected: set[str] = set()
    touched = []
    for module, by_line in mapping.items():
        pristine = (pristine_dir / module).read_text().splitlines()
        mutated = (src / module).read_text().splitlines()
        if pristine == mutated:
            continue
        lines = changed_lines(pristine, mutated)
        touched.append(f"{module}:{min(lines)}-{max(lines)}")
        if same_code("\n".join(pristine), "\n".join(mutated)):
            print(f"{ANNOTATION_ONLY} {touched[-1]}")
            return 0
        reached = {test for line in lines for test in by_line.get(str(line), [])}
        if IMPORT_TIME in reached or runs_at_import("\n".join(pristine), lines):
            # A line run at import (a signature, a decorator, a constant): the tests that run
            # what it defines, here and in the other modules of the map, else every test that
            # uses the module. Its own contexts say only which test happened to import the
            # module first (a lazy import inside a test), so they are kept but not trusted.
            uses, names = use_lines("\n".join(pristine), lines)
            reached = (reached - {IMPORT_TIME}) | {
                test for line in uses for test in by_line.get(str(line), [])
            }
            for other, other_lines in mapping.items():
                if other != module and names:
                    source = (pristine_dir / other).read_text()
                    for line in name_lines(source, names):
                        reached |= set(other_lines.get(str(line), []))
            if not reached - {IMPORT_TIME}:
                reached = {test for tests in by_line.values() for test in tests}
        selected |= reached - {IMPORT_TIME}
    selected &= set(durations)
    if not touched:
        print("credbridge-mutation: no mutated line found (baseline run)")
        return 0
    if not selected:
        print(f"{NO_TEST_MARK} {', '.join(touched)}")
        return 0
    ordered = sorted(selected, key=lambda test: (durations[test], test))
    if len(ordered) > MAX_TESTS:
        # Pessimistic, never flattering: a mutant only a slower test would kill is counted
        # as a survivor. It keeps a mutant of code every test reaches (fsutil, secret) to
        # about a minute on a 2-core machine.
        print(f"credbridge-mutation: {len(ordered)} tests reach it; the {MAX_TESTS} fastest run")
        ordered = ordered[:MAX_TESTS]
    budget = 60 + 3 * sum(durations[test] for test in ordered)
    print(f"credbridge-mutation: {', '.join(touched)}: {len(ordered)} tests, budget {budget:.0f}s")
    with tempfile.NamedTemporaryFile("w", suffix=".args", delete=False) as args:
        args.write("\n".join(ordered) + "\n")
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        f"@{args.name}",
    ]
    process = subprocess.Popen(argv, cwd=src, start_new_session=True)
    try:
        return process.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        print("credbridge-mutation: timed out (counted as killed)")
        return 3
    finally:
        Path(args.name).unlink()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 - never let our own bug count as a kill
        print(f"{INTERNAL_ERROR}: {type(error).__name__}: {error}")
        sys.exit(0)
