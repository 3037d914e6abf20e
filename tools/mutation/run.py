"""Mutation testing of the modules where a surviving mutant is a security or data-loss bug.

    python tools/mutation/run.py                 # every module in SCOPE
    python tools/mutation/run.py core/fsutil.py  # some of them
    python tools/mutation/run.py --report        # the table of the last runs, no new run
    python tools/mutation/run.py --retry-survivors  # after adding tests: the survivors again

Tool: cosmic-ray (docs/testing.md says why), which writes each mutant into the module's file
and runs a test command. Nothing here touches the checkout: a workspace (``--work``, default
``/var/tmp/credbridge-mutation``) holds a copy of it (``src/``), a venv with that copy
installed in editable mode, pristine copies of the modules, the per-test coverage map and one
cosmic-ray session per module. Steps:

1. copy the checkout into ``src/`` (tracked and untracked, not ignored, files);
2. map: run the default suite minus guests (``-m "not guest and not fuzz and not stress"``)
   once under coverage.py, each line recorded under the tests that ran it, in children too
   (``contexts.py``); redone when the copy changed;
3. per module: ``cosmic-ray init`` (a session is kept while the module's source is unchanged),
   then mark as skipped the mutants outside the module's scope (``SCOPE``) and those of
   operators outside ``OPERATORS``, then ``cosmic-ray exec`` with ``select_tests.py`` as the
   test command (only the tests that reach the mutant);
4. report: killed / survived per module, the survivors' diffs in ``WORK/report/MODULE.txt``.

Sequential (one mutant at a time): it fits a 2-core machine that also runs other things;
start it with ``nice -n 10``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_WORK = Path("/var/tmp/credbridge-mutation")  # noqa: S108 - disk-backed, root's own
MAP_MARKERS = "not guest and not fuzz and not stress"
TOOLS = ("cosmic-ray>=8.7", "coverage>=7.10")
"""Installed into the workspace venv only (not an extra: the NixOS package mirrors the extras)."""
# ruff and mypy: about types, not behaviour
MAP_IGNORE = ("--ignore=tests/project/test_quality.py",)

# Module -> the functions (cosmic-ray's innermost definition names) in scope; None: all.
SCOPE: dict[str, frozenset[str] | None] = {
    "core/fsutil.py": None,
    "core/secret.py": None,
    "core/reference.py": None,
    "core/vm.py": None,
    "core/settings.py": None,
    "core/remote.py": None,  # the redaction and retry helpers every networked source uses
    "core/engine.py": frozenset(
        {
            "deliver",
            "_commit",
            "_locked_run",
            "_lock_store",
            "_sink_call",
            "_signals_deferred",
            "_wipe",
            "rotate",
            "create",
            "recover",
        }
    ),
    "backends/credstore.py": None,
    "backends/filestore.py": None,
    "backends/oem_strings.py": None,
    "backends/fw_cfg.py": None,
    "backends/virtiofs.py": None,
    "backends/vm_sink.py": None,  # the plan of the three VM sinks above
    "backends/systemd_creds.py": None,  # the key rules of credstore.py and filestore.py
    "backends/vault_client.py": frozenset(
        {
            "_connect",
            "_login",
            "_read_token",
            "_material",
            "error",
            "hvac_failures",
            "_tls_reason",
            "close",
        }
    ),
    "backends/vault_kv.py": frozenset({"_mount_error", "not_found"}),
    "backends/aws.py": frozenset({"_sm_document", "_ssm_document", "close"}),
    "backends/aws_client.py": frozenset(
        {"_open_profile", "_new_client", "_config", "_credentials", "_assume_role", "close"}
    ),
    "backends/aws_errors.py": frozenset(
        {"coded", "typed", "_endpoint_of", "in_route", "error_code"}
    ),
    "backends/sops_cli.py": frozenset(
        {
            # the error classification (what stderr may reach a message) and timeout
            "classify",
            "run",
            "_kill_group",
            "_sealed_memfd",
        }
    ),
    "backends/sops.py": frozenset(
        {
            # the store
            "_check_key",
            "_check_directory",
            "_snapshot",
            "_entry",
            "read",
            "_read",
            "keys",
            "_exclusive",
            "create",
            "_create",
            "rotate",
            "_rotate",
            "_write",
            "_encrypt_new",
            "_set",
            "encode_value",
            "decode_value",
        }
    ),
    "launchers/runtime.py": None,
    # split out of runtime.py (measured with it in docs/testing.md)
    "launchers/runtime_dir.py": None,
    "launchers/processes.py": None,
    "launchers/virtiofsd.py": None,
}

# The operators kept: one replacement per arithmetic/bitwise operator, the boundary and the
# negation of each comparison, and the rest of cosmic-ray's core set except the variable
# replacer/inserter (random names, thousands of mutants that say little). cosmic-ray's full
# cross product (every operator for every other) mostly repeats what these already check.
OPERATORS = re.compile(
    r"core/(?:"
    r"ReplaceBinaryOperator_(?:Add_Sub|Sub_Add|Mult_Div|Mul_Div|Div_Mul|FloorDiv_Div|Mod_Mul"
    r"|Pow_Mul|BitOr_BitAnd|BitAnd_BitOr|BitXor_BitOr|LShift_RShift|RShift_LShift)"
    r"|ReplaceComparisonOperator_(?:Lt_LtE|Lt_GtE|LtE_Lt|LtE_Gt|Gt_GtE|Gt_LtE|GtE_Gt|GtE_Lt"
    r"|Eq_NotEq|NotEq_Eq|Is_IsNot|IsNot_Is|In_NotIn|NotIn_In)"
    r"|ReplaceUnaryOperator_(?:Delete_Not|USub_UAdd)"
    r"|AddNot|ReplaceTrueWithFalse|ReplaceFalseWithTrue|ReplaceAndWithOr|ReplaceOrWithAnd"
    r"|ReplaceBreakWithContinue|ReplaceContinueWithBreak|ExceptionReplacer|NumberReplacer"
    r"|RemoveDecorator|ZeroIterationForLoop"
    r")\Z"
)


ANNOTATION_SPANS = (
    "import ast, json, sys\n"
    "tree = ast.parse(open(sys.argv[1]).read())\n"
    "spans = []\n"
    "for node in ast.walk(tree):\n"
    "    found = []\n"
    "    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):\n"
    "        a = node.args\n"
    "        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:\n"
    "            if arg is not None and arg.annotation is not None:\n"
    "                found.append(arg.annotation)\n"
    "        if node.returns is not None:\n"
    "            found.append(node.returns)\n"
    "    elif isinstance(node, ast.AnnAssign):\n"
    "        found.append(node.annotation)\n"
    "    spans += [[n.lineno, n.col_offset, n.end_lineno, n.end_col_offset] for n in found]\n"
    "print(json.dumps(spans))\n"
)
"""Prints the spans of every annotation of a module. With ``from __future__ import
annotations`` (every module in scope) annotations are strings never evaluated: a mutant
inside one (``str | None`` to ``str & None``) is equivalent by construction."""


def in_spans(spans: list[list[int]], row: int, col: int) -> bool:
    return any((r0, c0) <= (row, col) < (r1, c1) for r0, c0, r1, c1 in spans)


def annotation_spans(python: Path, path: Path) -> list[list[int]]:
    out = subprocess.run(
        [str(python), "-c", ANNOTATION_SPANS, str(path)], capture_output=True, check=True
    ).stdout
    spans: list[list[int]] = json.loads(out)
    return spans


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def checkout_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in out.split("\0") if name and (REPO / name).is_file())


def sync(work: Path) -> str:
    """Copy the checkout into ``work/src``; return a hash of what was copied."""
    src = work / "src"
    files = checkout_files()
    listing = work / "files.txt"
    listing.write_text("\n".join(files) + "\n")
    src.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["rsync", "-a", "--delete", "--exclude=/.venv", f"--files-from={listing}", "./", f"{src}/"],
        cwd=REPO,
        check=True,
    )
    shared = REPO.parent / "shared"
    link = work / "shared"  # the tests read ../shared (the vendored API spec) beside the copy
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared)
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes())
    return digest.hexdigest()


def ensure_venv(work: Path) -> Path:
    venv = work / "venv"
    python = venv / "bin" / "python"
    stamp = venv / "pyproject.sha256"
    wanted = hashlib.sha256((work / "src" / "pyproject.toml").read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log("making the workspace venv (pip install -e 'src[test]' and the mutation tools)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", f"{work / 'src'}[test]", *TOOLS],
        check=True,
    )  # fmt: skip
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    sys.path.insert(0, str(HERE))
    from contexts import CHILD_HOOK

    Path(purelib, "zz_credbridge_mutation.pth").write_text(CHILD_HOOK)
    stamp.write_text(wanted)
    return python


def make_map(work: Path, python: Path, digest: str) -> None:
    stamp = work / "map.sha256"
    if stamp.exists() and stamp.read_text() == digest and (work / "map.json").exists():
        log("coverage map is current")
        return
    src = work / "src"
    data = work / "coverage"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    rc = work / "coveragerc"
    rc.write_text(
        "[run]\n"
        f"data_file = {data}/.coverage\n"
        "parallel = true\n"
        "patch = subprocess\n"
        f"source = {src}/core, {src}/backends, {src}/launchers\n"
    )
    log(f"mapping: the suite ({MAP_MARKERS}) under coverage, per test")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE)
    env["CREDBRIDGE_MUTATION_DURATIONS"] = str(work / "durations.json")
    env["COVERAGE_RCFILE"] = str(rc)
    result = subprocess.run(
        [str(python), "-m", "coverage", "run", f"--rcfile={rc}", "-m", "pytest", "-q",
         "-p", "contexts", "-p", "no:cacheprovider", "-m", MAP_MARKERS, *MAP_IGNORE],
        cwd=src,
        env=env,
        check=False,
    )  # fmt: skip
    if result.returncode not in (0, 1):
        sys.exit(f"the suite could not run under coverage (exit {result.returncode})")
    if result.returncode == 1:
        # Tests that watch imports (tests/core/test_startup.py) see coverage's own; what they ran
        # is still recorded, and mutants run them without coverage.
        log("some tests failed under coverage (listed above); their lines are still mapped")
    subprocess.run(
        [str(python), "-m", "coverage", "combine", f"--rcfile={rc}", "-q"],
        cwd=src,
        env=env,
        check=True,
    )
    script = (
        "import json, sys, coverage\n"
        "src, modules, out = sys.argv[1], sys.argv[2:-2], sys.argv[-1]\n"
        "data = coverage.CoverageData(basename=sys.argv[-2]); data.read()\n"
        "result = {}\n"
        "for module in modules:\n"
        "    by_line = data.contexts_by_lineno(f'{src}/{module}')\n"
        "    result[module] = {str(k): sorted(v) for k, v in by_line.items()}\n"
        "open(out, 'w').write(json.dumps(result))\n"
    )
    subprocess.run(
        [str(python), "-c", script, str(src), *SCOPE, f"{data}/.coverage", str(work / "map.json")],
        check=True,
    )
    stamp.write_text(digest)


def session_of(work: Path, module: str) -> Path:
    return work / "sessions" / (module.replace("/", "__") + ".sqlite")


def module_digest(work: Path, module: str) -> str:
    """What a module's mutants depend on: its source, its scope and the operators kept.
    The tests are not part of it: new tests only kill more (``--retry-survivors``)."""
    digest = hashlib.sha256((work / "pristine" / module).read_bytes())
    digest.update(repr((sorted(SCOPE[module] or ()), OPERATORS.pattern)).encode())
    return digest.hexdigest()


def retry_survivors(python: Path, session: Path) -> None:
    """Forget the survivors' results (and the sampled-out mutants'), so that
    ``cosmic-ray exec`` runs them again."""
    script = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1])\n"
        "n = db.execute(\"delete from work_results where test_outcome = 'SURVIVED'\"\n"
        "               \" or output = 'sampled out'\").rowcount\n"
        "db.commit(); print(n)\n"
    )
    out = subprocess.run(
        [str(python), "-c", script, str(session)], capture_output=True, text=True, check=True
    ).stdout.strip()
    log(f"{session.stem}: {out} survivor(s) and sampled-out mutant(s) to run again")


def sample_pending(python: Path, session: Path, fraction: float) -> None:
    """Keep only ``fraction`` of the module's mutants, chosen by a hash of their job id
    (random, and the same on every call): the others are marked sampled out, including any
    that already ran, so the score is that of an unbiased sample whatever ran before."""
    script = (
        "import hashlib, sys\n"
        "from cosmic_ray.work_db import use_db, WorkDB\n"
        "from cosmic_ray.work_item import WorkResult, WorkerOutcome\n"
        "fraction = float(sys.argv[2]); n = 0\n"
        "with use_db(sys.argv[1], WorkDB.Mode.open) as db:\n"
        "    done = {item.job_id: result for item, result in db.completed_work_items}\n"
        "    for item in db.work_items:\n"
        "        result = done.get(item.job_id)\n"
        "        if result is not None and result.worker_outcome == WorkerOutcome.SKIPPED:\n"
        "            continue  # out of scope, or sampled out already\n"
        "        draw = int(hashlib.sha256(item.job_id.encode()).hexdigest()[:8], 16) / 2**32\n"
        "        if draw >= fraction:\n"
        "            db.set_result(item.job_id, WorkResult(output='sampled out',\n"
        "                          worker_outcome=WorkerOutcome.SKIPPED)); n += 1\n"
        "print(n)\n"
    )
    out = subprocess.run(
        [str(python), "-c", script, str(session), str(fraction)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log(f"{session.stem}: {out} mutant(s) sampled out")


def run_module(
    work: Path, python: Path, module: str, *, retry: bool = False, sample: float = 1.0
) -> None:
    session = session_of(work, module)
    stamp = session.with_suffix(".sha256")
    config = session.with_suffix(".toml")
    session.parent.mkdir(exist_ok=True)
    select = f"{python} {HERE / 'select_tests.py'}"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        "timeout = 3600.0\n"
        "excluded-modules = []\n"
        f'test-command = "{select}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    digest = module_digest(work, module)
    if not (stamp.exists() and stamp.read_text() == digest and session.exists()):
        session.unlink(missing_ok=True)
        subprocess.run(
            [str(python.parent / "cosmic-ray"), "init", str(config), str(session)],
            cwd=work / "src",
            check=True,
        )
        filter_scope(python, session, module)
        stamp.write_text(digest)
    elif retry:
        retry_survivors(python, session)
    if sample < 1.0:
        sample_pending(python, session, sample)
    env = dict(os.environ)
    env["CREDBRIDGE_MUTATION_WORK"] = str(work)
    # The test command itself must work: on the pristine copy it finds no mutant and exits 0
    # (an error of its own would otherwise count every mutant as killed).
    baseline = subprocess.run(
        [str(python), str(HERE / "select_tests.py")],
        cwd=work / "src",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if baseline.returncode != 0 or "baseline run" not in baseline.stdout:
        sys.exit(
            f"the test command fails on the pristine copy:\n{baseline.stdout}{baseline.stderr}"
        )
    log(f"{module}: cosmic-ray exec")
    subprocess.run(
        [str(python.parent / "cosmic-ray"), "exec", str(config), str(session)],
        cwd=work / "src",
        env=env,
        check=True,
    )


def filter_scope(python: Path, session: Path, module: str) -> None:
    scope = SCOPE[module]
    script = (
        "import json, re, sys\n"
        "from cosmic_ray.work_db import use_db, WorkDB\n"
        "from cosmic_ray.work_item import WorkResult, WorkerOutcome\n"
        "scope = json.loads(sys.argv[2]); operators = re.compile(sys.argv[3])\n"
        "spans = json.loads(sys.argv[4])\n"
        "def annotated(row, col):\n"
        "    return any((a, b) <= (row, col) < (c, d) for a, b, c, d in spans)\n"
        "with use_db(sys.argv[1], WorkDB.Mode.open) as db:\n"
        "    for item in list(db.pending_work_items):\n"
        "        for m in item.mutations:\n"
        "            why = None\n"
        "            if not operators.match(m.operator_name):\n"
        "                why = 'operator not in the kept set'\n"
        "            elif scope is not None and m.definition_name not in scope:\n"
        "                why = 'outside the module scope'\n"
        "            elif annotated(*m.start_pos):\n"
        "                why = 'in an annotation (never evaluated)'\n"
        "            if why:\n"
        "                db.set_result(item.job_id, WorkResult(output=why,\n"
        "                              worker_outcome=WorkerOutcome.SKIPPED))\n"
        "                break\n"
    )
    subprocess.run(
        [
            str(python),
            "-c",
            script,
            str(session),
            json.dumps(None if scope is None else sorted(scope)),
            OPERATORS.pattern,
            json.dumps(annotation_spans(python, session.parents[1] / "pristine" / module)),
        ],
        check=True,
    )


def keyword_marker(source: list[str], row: dict[str, Any]) -> bool:
    """Whether a mutant turns the ``*`` of a signature (keyword-only marker) into ``/``:
    cosmic-ray takes it for a multiplication. Equivalent by construction: every parameter
    after ``*`` is passed by keyword, which ``/`` accepts as well."""
    if not row["op"].startswith("core/ReplaceBinaryOperator_Mul"):
        return False
    text = source[row["line"] - 1][row["col"] :]
    return text.startswith("*") and text[1:].lstrip().startswith(",")


def report(work: Path, python: Path, modules: Iterable[str]) -> None:
    script = (
        "import json, sys\n"
        "from cosmic_ray.work_db import use_db, WorkDB\n"
        "rows = []\n"
        "with use_db(sys.argv[1], WorkDB.Mode.open) as db:\n"
        "    for item, result in db.completed_work_items:\n"
        "        m = item.mutations[0]\n"
        "        rows.append({'job': item.job_id, 'worker': result.worker_outcome.value,\n"
        "                     'test': result.test_outcome.value if result.test_outcome else None,\n"
        "                     'op': m.operator_name, 'line': m.start_pos[0],\n"
        "                     'col': m.start_pos[1],\n"
        "                     'definition': m.definition_name, 'diff': result.diff or '',\n"
        "                     'output': (result.output or '')[-400:]})\n"
        "    pending = db.num_work_items - db.num_results\n"
        "print(json.dumps({'rows': rows, 'pending': pending}))\n"
    )
    out_dir = work / "report"
    out_dir.mkdir(exist_ok=True)
    table = [
        "| module | mutants | killed | survived | not reached | score | pending | sampled out |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for module in modules:
        session = session_of(work, module)
        if not session.exists():
            continue
        data = json.loads(
            subprocess.run(
                [str(python), "-c", script, str(session)], capture_output=True, check=True
            ).stdout
        )
        spans = annotation_spans(python, work / "pristine" / module)
        source = (work / "pristine" / module).read_text().splitlines()
        sampled = sum(1 for r in data["rows"] if r["output"] == "sampled out")
        rows = [
            r
            for r in data["rows"]
            if r["worker"] != "skipped"
            and not in_spans(spans, r["line"], r["col"])
            and not keyword_marker(source, r)
        ]
        killed = [r for r in rows if r["test"] == "killed"]
        survived = [r for r in rows if r["test"] == "survived"]
        errors = [r for r in rows if r["test"] not in {"killed", "survived"}]
        errors += [r for r in survived if "internal error" in r["output"]]
        survived = [r for r in survived if r not in errors]
        unreached = [r for r in survived if "no test reaches" in r["output"]]
        judged = len(killed) + len(survived)
        score = f"{100 * len(killed) / judged:.1f}%" if judged else "-"
        table.append(
            f"| {module} | {judged} | {len(killed)} | {len(survived)} | {len(unreached)} "
            f"| {score} | {data['pending'] + len(errors)} | {sampled} |"
        )
        lines = []
        for r in sorted(survived, key=lambda r: r["line"]):
            reached = "not reached" if r in unreached else "reached"
            lines.append(f"## {module}:{r['line']} {r['definition']} {r['op']} ({reached})")
            lines.append(r["diff"])
        (out_dir / (module.replace("/", "__") + ".txt")).write_text("\n".join(lines) + "\n")
    text = "\n".join(table)
    (out_dir / "summary.md").write_text(text + "\n")
    print(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules of SCOPE (default: all)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get(
        "CREDBRIDGE_MUTATION_WORK", DEFAULT_WORK)))  # fmt: skip
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument(
        "--retry-survivors",
        action="store_true",
        help="run the survivors (and sampled-out mutants) of the kept sessions again",
    )
    parser.add_argument(
        "--sample",
        type=float,
        default=1.0,
        metavar="FRACTION",
        help="run only this random fraction of each module's pending mutants (the rest are "
        "reported as sampled out)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with the workspace as it is: no copy of the checkout, no new map",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in SCOPE]
    if unknown:
        parser.error(f"not in scope: {', '.join(unknown)} (known: {', '.join(SCOPE)})")
    modules = args.modules or list(SCOPE)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.report:
        report(work, work / "venv" / "bin" / "python", modules)
        return 0
    pristine = work / "pristine"
    if args.resume:
        python = work / "venv" / "bin" / "python"
        for module in SCOPE:  # a run stopped mid-mutant leaves that mutant in the copy
            shutil.copy2(pristine / module, work / "src" / module)
    else:
        digest = sync(work)
        python = ensure_venv(work)
        shutil.rmtree(pristine, ignore_errors=True)
        for module in SCOPE:
            (pristine / module).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / "src" / module, pristine / module)
        make_map(work, python, digest)
    for module in modules:
        run_module(work, python, module, retry=args.retry_survivors, sample=args.sample)
        report(work, python, modules)
    log(f"done: {sysconfig.get_python_version()} / results in {work / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
