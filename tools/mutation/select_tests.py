"""cosmic-ray's test command: run only the tests that reach the mutated lines.

cosmic-ray writes one mutant into the workspace's copy of a module, runs this, and counts a
non-zero exit as *killed*. This finds the lines that differ from the pristine copy, looks
them up in the per-test coverage map (``map.json``, made by ``run.py``), and runs at most
``MAX_TESTS`` of those tests in a sandbox (``SANDBOX``), stopping at the first failure
(``-x``): first those whose file names the mutated function, then those that import its
module, fastest first within each. A line that runs at import time (a constant, a
decorator, a ``def``, a function the module calls while loading) runs the tests of what it
defines; a mutant of a line no test reaches survives without running anything, and says so
on stdout (kept in the session database for the report).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

MAX_TESTS = int(os.environ.get("CREDBRIDGE_MUTATION_MAX_TESTS", "30"))
"""At most this many tests run per mutant (the most relevant, then the fastest)."""
IMPORT_TIME = ""
"""The context of lines executed outside any test (imports during collection)."""
NO_TEST_MARK = "credbridge-mutation: no test reaches"
INTERNAL_ERROR = "credbridge-mutation: internal error"
ANNOTATION_ONLY = "credbridge-mutation: only an annotation changed (never evaluated)"
"""Reported, exit 0: run.py counts such mutants as errors, neither killed nor survived."""


SANDBOX_SCRIPT = """
set -e
mount --make-rprivate /
mount --bind "$SANDBOX_TMP" /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
for d in /var/tmp /run /etc /root /nix /nonexistent; do
    if [ -d "$d" ]; then mount --bind "$d" "$d"; fi
done
mount -o remount,bind,ro /
mount -o remount,bind,ro /dev
exec "$@"
"""
"""Mutants run as root, and a mutant of core/fsutil.py can chmod every directory on a test's
path (``/``, ``/var``, ``/tmp``, ``/dev``...), which breaks the machine and, through it, the
other workspace's tests. In a private mount namespace ``/`` and ``/dev`` are read-only and
``/tmp`` (disk-backed, a fresh directory of the workspace) and ``/dev/shm`` are the run's
own; what must stay writable (the workspace under /var/tmp, /run for virtiofsd, /etc for
groupadd, /root and /nix for caches and nix) is bound writable, and its modes are put back
after the run (:func:`restore_modes`)."""
SANDBOX = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", SANDBOX_SCRIPT, "sh")
GUARDED = ("/", "/var", "/var/tmp", "/run", "/etc", "/root", "/nix", "/tmp", "/dev", "/dev/shm")  # noqa: S108


def guarded_modes(work: Path) -> dict[str, list[int]]:
    """Mode, owner and group of the guarded directories, as first seen by any mutant's run
    (``WORK/guarded-modes.json``): what they are put back to."""
    baseline = work / "guarded-modes.json"
    with contextlib.suppress(FileNotFoundError):
        found: dict[str, list[int]] = json.loads(baseline.read_text())
        return found
    found = {}
    for path in GUARDED:
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            found[path] = [info.st_mode & 0o7777, info.st_uid, info.st_gid]
    baseline.write_text(json.dumps(found))
    return found


def restore_modes(modes: dict[str, list[int]]) -> None:
    for path, (mode, uid, gid) in modes.items():
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            if [info.st_mode & 0o7777, info.st_uid, info.st_gid] != [mode, uid, gid]:
                os.chown(path, uid, gid, follow_symlinks=False)
                os.chmod(path, mode)
                print(f"credbridge-mutation: the mutant changed {path}; put back")


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


def enclosing_names(source: str, lines: set[int]) -> set[str]:
    """The innermost function (or class) around each of ``lines``."""
    found: dict[int, tuple[int, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            span = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            for line in lines:
                if line in span and (line not in found or node.lineno > found[line][0]):
                    found[line] = (node.lineno, node.name)
    return {name for _, name in found.values() if name not in {"__init__", "main"}}


def import_time_callers(source: str, lines: set[int]) -> set[int]:
    """The module-level statements that call a function enclosing one of ``lines``."""
    tree = ast.parse(source)
    enclosing = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(node.body[0].lineno <= line <= (node.end_lineno or 0) for line in lines)
    }
    found: set[int] = set()
    for statement in getattr(tree, "body", []):
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for node in ast.walk(statement):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in enclosing
            ):
                end = statement.end_lineno or statement.lineno
                found |= set(range(statement.lineno, end + 1))
    return found


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
    words: set[str] = set()
    dotted: set[str] = set()
    for module, by_line in mapping.items():
        pristine = (pristine_dir / module).read_text().splitlines()
        mutated = (src / module).read_text().splitlines()
        if pristine == mutated:
            continue
        lines = changed_lines(pristine, mutated)
        touched.append(f"{module}:{min(lines)}-{max(lines)}")
        dotted.add("credbridge." + module.removesuffix(".py").replace("/", "."))
        words |= enclosing_names("\n".join(pristine), lines)
        if same_code("\n".join(pristine), "\n".join(mutated)):
            print(f"{ANNOTATION_ONLY} {touched[-1]}")
            return 0
        reached = {test for line in lines for test in by_line.get(str(line), [])}
        callers = import_time_callers("\n".join(pristine), lines)
        if callers:
            # A function the module calls while it is imported (libc = load_libc()): its
            # coverage says only which test imported first; what it returns is what counts.
            lines = lines | callers
        if IMPORT_TIME in reached or callers or runs_at_import("\n".join(pristine), lines):
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
    texts: dict[str, str] = {}

    def relevance(test: str) -> int:
        """0: the test's file names the mutated function or class; 1: it imports the mutated
        module; 2: it only reaches it (through the CLI, another module)."""
        path = test.split("::", 1)[0]
        if path not in texts:
            try:
                texts[path] = (src / path).read_text()
            except OSError:
                texts[path] = ""
        text = texts[path]
        if any(re.search(rf"\b{re.escape(word)}\b", text) for word in words):
            return 0
        return 1 if any(name in text for name in dotted) else 2

    ordered = sorted(selected, key=lambda test: (relevance(test), durations[test], test))
    if len(ordered) > MAX_TESTS:
        # Pessimistic, never flattering: a mutant only a later test would kill is counted as
        # a survivor. It keeps a mutant of code every test reaches (fsutil, secret) to well
        # under a minute on a 2-core machine.
        print(f"credbridge-mutation: {len(ordered)} tests reach it; the first {MAX_TESTS} run")
        ordered = ordered[:MAX_TESTS]
    budget = 60 + 3 * sum(durations[test] for test in ordered)
    print(f"credbridge-mutation: {', '.join(touched)}: {len(ordered)} tests, budget {budget:.0f}s")
    sandbox_tmp = Path(tempfile.mkdtemp(prefix="sandbox-tmp-", dir=work))
    sandbox_tmp.chmod(0o1777)
    args = sandbox_tmp / "tests.args"
    args.write_text("\n".join(ordered) + "\n")
    argv = [
        *SANDBOX,
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        f"@{args}",
    ]
    modes = guarded_modes(work)
    env = dict(os.environ, SANDBOX_TMP=str(sandbox_tmp))
    process = subprocess.Popen(argv, cwd=src, env=env, start_new_session=True)
    try:
        return process.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        print("credbridge-mutation: timed out (counted as killed)")
        return 3
    finally:
        restore_modes(modes)
        shutil.rmtree(sandbox_tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 - never let our own bug count as a kill
        print(f"{INTERNAL_ERROR}: {type(error).__name__}: {error}")
        sys.exit(0)
