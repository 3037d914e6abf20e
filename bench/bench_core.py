"""Core benchmark: CLI start-up, and delivering N generated credentials beside the hand-made way.

The hand-made way is a shell script doing what operators do today: for each credential,
`openssl rand -base64 32` into a temp file and `install -m 0400` it into the credstore.
Start-up is measured against a bare `python -c pass` of the same interpreter.

Every row runs in the same loop, one after the other in each round (so a busy moment of the
machine hits all rows alike), with the default plugin settings and compiled bytecode in place.

Run:  python bench/bench_core.py [--runs 21]
Prints a Markdown table (median and p90 wall time, and median CPU time of the child processes,
over the runs) and the ratios of the medians. On a busy machine compare the CPU column.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CREDBRIDGE = [sys.executable, "-m", "credbridge.core.cli"]
SIZES = (10, 100)

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


def run(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cb-bench-", dir="/dev/shm"))
    # The plugin settings a user has by default; bytecode written as an installed package has.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CREDBRIDGE_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    rows: dict[str, tuple[Callable[[], None], Callable[[], None] | None]] = {}

    def shell_wipe(directory: Path) -> Callable[[], None]:
        return lambda: shutil.rmtree(directory, ignore_errors=True)

    rows["python -c pass (the floor)"] = (lambda: run([sys.executable, "-c", "pass"], env), None)
    rows["python -c 'import click, pluggy' (the libraries)"] = (
        lambda: run([sys.executable, "-c", "import click, pluggy"], env),
        None,
    )
    rows["credbridge --help"] = (lambda: run([*CREDBRIDGE, "--help"], env), None)
    rows["credbridge plugins"] = (lambda: run([*CREDBRIDGE, "plugins"], env), None)
    rows["credbridge get env:HOME"] = (lambda: run([*CREDBRIDGE, "get", "env:HOME"], env), None)
    for size in SIZES:
        names = [f"secret-{i:03d}" for i in range(size)]
        base = work / str(size)
        base.mkdir()
        config = base / "credbridge.toml"
        lines = [
            f'[store]\npath = "{base / "store"}"\n[sinks.credstore]\n',
            f'directory = "{base / "credstore"}"\n[targets."bench.service".credentials]\n',
        ]
        lines += [f'{name} = "generate:base64?bytes=32"\n' for name in names]
        config.write_text("".join(lines))
        script = base / "handmade.sh"
        script.write_text(SHELL.format(names=" ".join(names)))
        deliver = [*CREDBRIDGE, "-c", str(config), "deliver"]
        run(deliver, env)  # values generated and delivered once: the rows below keep them

        def new_values(base: Path = base) -> None:
            shutil.rmtree(base / "store", ignore_errors=True)
            shutil.rmtree(base / "credstore", ignore_errors=True)

        def deliver_again(deliver: list[str] = deliver) -> None:
            run(deliver, env)

        # "stored" runs before "new" in every round, and "new" leaves its values stored.
        rows[f"credbridge deliver, {size} stored (values kept)"] = (deliver_again, None)
        rows[f"credbridge deliver, {size} new (generate + persist + deliver)"] = (
            deliver_again,
            new_values,
        )
        shell_dir = base / "shell"
        rows[f"shell: openssl rand + install -m 0400, {size} new"] = (
            lambda script=script, out=shell_dir: run(["sh", str(script), str(out)], env),
            shell_wipe(shell_dir),
        )
    for action, _ in rows.values():  # warm-up: bytecode, page cache
        action()
    samples: dict[str, list[float]] = {name: [] for name in rows}
    cpu: dict[str, list[float]] = {name: [] for name in rows}
    try:
        for _ in range(args.runs):
            for name, (action, setup) in rows.items():
                if setup:
                    setup()
                used = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                action()
                samples[name].append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ms(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def median(name: str) -> float:
        return statistics.median(samples[name])

    print(f"runs per row: {args.runs}; python {sys.version.split()[0]}; {os.cpu_count()} cores\n")
    print("| command | median ms | p90 ms | CPU ms |")
    print("|---|---:|---:|---:|")
    for name, values in samples.items():
        print(
            f"| {name} | {1000 * statistics.median(values):.1f} | {ms(values, 0.9):.1f} "
            f"| {1000 * statistics.median(cpu[name]):.1f} |"
        )
    floor = median("python -c pass (the floor)")
    cpu_floor = statistics.median(cpu["python -c pass (the floor)"])
    print()
    for name in (
        "python -c 'import click, pluggy' (the libraries)",
        "credbridge --help",
        "credbridge plugins",
        "credbridge get env:HOME",
    ):
        print(
            f"ratio {name} / python -c pass: {median(name) / floor:.2f}x wall, "
            f"{statistics.median(cpu[name]) / cpu_floor:.2f}x CPU"
        )
    for size in SIZES:
        shell = median(f"shell: openssl rand + install -m 0400, {size} new")
        kept = median(f"credbridge deliver, {size} stored (values kept)")
        new = median(f"credbridge deliver, {size} new (generate + persist + deliver)")
        print(f"ratio credbridge deliver ({size} stored) / shell script: {kept / shell:.2f}x wall")
        print(f"ratio credbridge deliver ({size} new) / shell script: {new / shell:.2f}x wall")


if __name__ == "__main__":
    main()
