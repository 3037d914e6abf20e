"""A recording ``systemctl`` for the tests of what credbridge asks systemd to do (restarts,
``is-active``): put the ``stub`` fixture's directory first on PATH and read ``calls(stub)``.

It logs every call with its argv and the SHA-256 of the watched credstore file at that moment
(``stub / "watch"`` names the file), answers ``is-active`` from ``stub / "active"``, and hangs or
fails for the units listed in ``stub / "slow"`` and ``stub / "fail"``. The fixtures are found by
pytest where a test module imports them (``outside_a_service`` is autouse).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

STUB = """#!/bin/sh
# Records one JSON line per call: argv and the SHA-256 of the watched credstore file then
# (a digest: the value itself must not land in a file or an argv, which the canary checks).
# The log goes into the stub's own directory, named when the stub is written: a path derived
# from $0 is "." when the script is run as `sh -c "$(cat systemctl)"` or through stdin, which
# once put a calls.jsonl into the checkout.
here=@HERE@
python3 - "$here" "$@" >>"$here/calls.jsonl" <<'EOF'
import hashlib, json, os, sys
here, watched = sys.argv[1], ""
if os.path.isfile(os.path.join(here, "watch")):
    try:
        with open(open(os.path.join(here, "watch")).read(), "rb") as handle:
            watched = hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        pass
print(json.dumps({"watched": watched, "argv": sys.argv[2:]}))
EOF
unit=""
for arg in "$@"; do unit="$arg"; done
case "$*" in
    *is-active*) grep -qx "$unit" "$here/active" 2>/dev/null; exit $? ;;
esac
if grep -qx "$unit" "$here/slow" 2>/dev/null; then
    : >"$here/slow-started"
    exec sleep 60
fi
if grep -qx "$unit" "$here/fail" 2>/dev/null; then
    echo "Job for $unit failed because the control process exited with error code." >&2
    exit 1
fi
exit 0
"""


@pytest.fixture(autouse=True)
def outside_a_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """As from a shell: a test runner started by systemd must not make restarts queued."""
    monkeypatch.delenv("INVOCATION_ID", raising=False)


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    """A directory holding the recording ``systemctl``; put it first on PATH."""
    if shutil.which("python3") is None:
        pytest.skip("python3 is needed by the stub")
    directory = tmp_path / "bin"
    directory.mkdir()
    script = directory / "systemctl"
    script.write_text(STUB.replace("@HERE@", shlex.quote(str(directory))))
    script.chmod(0o755)
    return directory


def calls(stub: Path) -> list[dict[str, Any]]:
    log = stub / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def verbs(stub: Path) -> list[tuple[str, str]]:
    """(verb, unit) of every call, options left out."""
    out = []
    for call in calls(stub):
        words = [a for a in call["argv"] if not a.startswith("-")]
        out.append((words[0], words[-1]))
    return out
