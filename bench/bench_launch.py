"""Overhead of ``credbridge launch`` (qemu launcher) from start to the hypervisor's exec.

The "hypervisor" is a tiny shell script that records the time it was exec'd and exits, so
the figure is credbridge's own cost: Python start-up, plugin loading, config, resolving N
``credential:`` references, validating, writing N 0400 files in a fresh 0700 tmpfs runtime
directory, building the argv, spawning, then (after exit) clean-up. Beside it, the hand-made
flow a shell script would do: read N files from a credentials directory, base64 each, build
``-smbios type=11,value=...`` arguments (values in argv!) and exec.

    python bench/bench_launch.py [--runs 7] [--counts 10,100]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAMP_SCRIPT = """#!/bin/sh
date +%s%N > {stamp}
"""

HANDMADE = """#!/bin/sh
set -eu
args=""
for f in "$CREDENTIALS_DIRECTORY"/*; do
    args="$args -smbios type=11,value=io.systemd.credential.binary:${{f##*/}}=$(base64 -w0 "$f")"
done
# shellcheck disable=SC2086
exec {hypervisor} -name vm $args
"""


def setup(base: Path, count: int) -> tuple[Path, Path, Path]:
    creds = base / "creds"
    creds.mkdir(mode=0o700)
    for index in range(count):
        (creds / f"cred-{index:03d}").write_bytes(secrets.token_bytes(32))
    stamp = base / "stamp"
    hypervisor = base / "fake-qemu"
    hypervisor.write_text(STAMP_SCRIPT.format(stamp=stamp))
    hypervisor.chmod(0o755)
    lines = "\n".join(f'"cred-{i:03d}" = "credential:cred-{i:03d}"' for i in range(count))
    config = base / "credbridge.toml"
    config.write_text(
        f"""
[store]
path = "{base / "store"}"
[targets.vm]
kind = "vm"
sink = "oem-strings"
[targets.vm.launcher]
type = "qemu"
binary = "{hypervisor}"
smbios_path = true
kernel = "/boot/vmlinuz"
runtime_dir = "{base / "run"}"
[targets.vm.credentials]
{lines}
"""
    )
    handmade = base / "handmade.sh"
    handmade.write_text(HANDMADE.format(hypervisor=hypervisor))
    handmade.chmod(0o755)
    return config, handmade, stamp


def measure(argv: list[str], env: dict[str, str], stamp: Path) -> tuple[float, float]:
    """(ms from start to the hypervisor's exec, ms for the whole run incl. clean-up)."""
    stamp.unlink(missing_ok=True)
    start = time.time_ns()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    end = time.time_ns()
    exec_at = int(stamp.read_text())
    return (exec_at - start) / 1e6, (end - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--counts", default="10,100")
    args = parser.parse_args()
    credbridge = shutil.which("credbridge") or str(Path(sys.executable).parent / "credbridge")
    print(f"{'N':>4} {'flow':<22} {'to exec ms (median)':>20} {'total ms (median)':>18}")
    for count in map(int, args.counts.split(",")):
        base = Path(tempfile.mkdtemp(prefix="credbridge-bench-", dir="/dev/shm"))
        try:
            config, handmade, stamp = setup(base, count)
            env = dict(os.environ, CREDENTIALS_DIRECTORY=str(base / "creds"))
            flows = {
                "credbridge launch": [credbridge, "-c", str(config), "launch", "vm"],
                "hand-made shell": [str(handmade)],
            }
            for name, argv in flows.items():
                measure(argv, env, stamp)  # warm the page cache
                results = [measure(argv, env, stamp) for _ in range(args.runs)]
                to_exec = statistics.median(r[0] for r in results)
                total = statistics.median(r[1] for r in results)
                print(f"{count:>4} {name:<22} {to_exec:>20.1f} {total:>18.1f}")
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
