"""Runs of the ``credbridge`` command that several tests read the same way."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import run_cli


def every_command_verbose(config: Path, reference: str) -> list[subprocess.CompletedProcess[bytes]]:
    """``deliver``, ``deliver --dry-run``, ``check``, ``check --json``, then ``get REFERENCE``:
    each with ``config`` at ``-vv`` (DEBUG), where a value would leak if anything leaked it."""
    runs = [
        run_cli("-c", str(config), "-vv", "deliver"),
        run_cli("-c", str(config), "-vv", "deliver", "--dry-run"),
        run_cli("-c", str(config), "-vv", "check"),
        run_cli("-c", str(config), "-vv", "check", "--json"),
    ]
    return [*runs, run_cli("-c", str(config), "-vv", "get", reference)]
