"""Apply one mutant by hand, run some tests, put the module back: does a test kill it?

    python tools/mutation/check_mutant.py MODULE OLD NEW TEST...

``OLD`` must occur exactly once in ``MODULE`` (a path of the checkout, e.g. ``core/fsutil.py``);
it is replaced by ``NEW`` for the run of ``pytest -x TEST...`` and restored afterwards, even on
an interrupt. Prints ``KILLED`` (a test failed) or ``SURVIVED``; exits 0 either way, 2 on bad
arguments. docs/testing.md lists survivors as *killed since* when this kills them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    module, old, new, *tests = argv
    path = REPO / module
    original = path.read_text()
    if original.count(old) != 1:
        print(f"{old!r} occurs {original.count(old)} times in {module}", file=sys.stderr)
        return 2
    try:
        path.write_text(original.replace(old, new))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=REPO,
            capture_output=True,
            check=False,
        )
    finally:
        path.write_text(original)
    print(f"{'KILLED' if result.returncode else 'SURVIVED'}: {old!r} -> {new!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
