"""System calls a command makes, as strace logs them (strace is in the README's test command)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def strace_calls(calls: str, *argv: str) -> list[str]:
    """strace's lines for the system calls ``calls`` (comma-separated) of ``argv`` and its children."""
    # strace is in the README's test command: missing, it is an error, not a skip.
    assert shutil.which("strace") is not None, "needs strace (apt-get install strace)"
    with tempfile.NamedTemporaryFile() as log:
        subprocess.run(
            ["strace", "-f", "-y", "-qq", "-o", log.name, "-e", f"trace={calls}", *argv],
            check=True,
            capture_output=True,
        )
        return Path(log.name).read_text().splitlines()
