"""Which modules a real ``credbridge`` command imports: the CLI run in a fresh interpreter,
which then reports ``sys.modules`` (the lazy-import promises: hvac, botocore, the launchers
only when a reference or a VM needs them)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PROBE = """
import json, sys
from credbridge.core.cli import cli
code = 0
try:
    cli(sys.argv[1:], prog_name="credbridge")
except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
print()
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""


@dataclass(frozen=True)
class CliImports:
    exit_code: int
    modules: frozenset[str]
    stderr: str

    def which(self, names: Sequence[str]) -> dict[str, bool]:
        """``{name: imported?}`` for top-level or dotted module names."""
        return {name: name in self.modules for name in names}


def cli_imports(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
) -> CliImports:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env),
        timeout=120,
        check=False,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return CliImports(report["exit"], frozenset(report["modules"]), done.stderr)
