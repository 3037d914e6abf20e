"""Core benchmark: CLI start-up and delivering 10 generated credentials, beside the hand-made way.

The hand-made way is a shell script doing what operators do today: for each credential,
`openssl rand -base64 32` into a temp file and `install -m 0400` it into the credstore.

Run:  python bench/bench_core.py [--runs 15]
Prints a Markdown table (median and p90 wall time over the runs) and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CREDENTIALS = [f"secret-{i:02d}" for i in range(10)]
CREDBRIDGE = [sys.executable, "-m", "credbridge.core.cli"]

SHELL = r"""
set -eu
dest="$1"
mkdir -p -m 0700 "$dest"
for name in {names}; do
  tmp=$(mktemp "$dest/.tmp.XXXXXX")
  openssl rand -base64 32 > "$tmp"
  install -m 0400 "$tmp" "$dest/$name"
  rm -f "$tmp"
done
"""


def timed(
    action: Callable[[], None], runs: int, setup: Callable[[], None] | None = None
) -> list[float]:
    samples = []
    for _ in range(runs):
        if setup:
            setup()
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return samples


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cb-bench-", dir="/dev/shm"))
    store = work / "store"
    credstore = work / "credstore"
    config = work / "credbridge.toml"
    lines = [
        f'[store]\npath = "{store}"\n[sinks.credstore]\ndirectory = "{credstore}"\n',
        '[targets."bench.service".credentials]\n',
    ]
    lines += [f'{name} = "generate:base64?bytes=32"\n' for name in CREDENTIALS]
    config.write_text("".join(lines))
    script = work / "handmade.sh"
    script.write_text(SHELL.format(names=" ".join(CREDENTIALS)))
    env = {**os.environ, "CREDBRIDGE_LOAD_PLUGINS": ""}

    def wipe() -> None:
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(credstore, ignore_errors=True)
        shutil.rmtree(work / "shell", ignore_errors=True)

    results: dict[str, list[float]] = {}
    try:
        results["credbridge --help"] = timed(lambda: run([*CREDBRIDGE, "--help"], env), args.runs)
        results["credbridge plugins"] = timed(lambda: run([*CREDBRIDGE, "plugins"], env), args.runs)
        results["credbridge deliver, 10 new (generate + persist + deliver)"] = timed(
            lambda: run([*CREDBRIDGE, "-c", str(config), "deliver"], env), args.runs, setup=wipe
        )
        results["credbridge deliver, 10 kept (values already stored)"] = timed(
            lambda: run([*CREDBRIDGE, "-c", str(config), "deliver"], env), args.runs
        )
        results["shell: openssl rand + install -m 0400, 10 new"] = timed(
            lambda: run(["sh", str(script), str(work / "shell")]), args.runs, setup=wipe
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ms(values: list[float], q: float) -> float:
        values = sorted(values)
        return 1000 * values[min(len(values) - 1, int(q * len(values)))]

    print(f"runs per row: {args.runs}; python {sys.version.split()[0]}; {os.cpu_count()} cores\n")
    print("| command | median ms | p90 ms |")
    print("|---|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {1000 * statistics.median(values):.1f} | {ms(values, 0.9):.1f} |")
    shell = statistics.median(results["shell: openssl rand + install -m 0400, 10 new"])
    new = statistics.median(results["credbridge deliver, 10 new (generate + persist + deliver)"])
    kept = statistics.median(results["credbridge deliver, 10 kept (values already stored)"])
    print(f"\nratio credbridge deliver (new) / shell script: {new / shell:.2f}x")
    print(f"ratio credbridge deliver (kept) / shell script: {kept / shell:.2f}x")


if __name__ == "__main__":
    main()
