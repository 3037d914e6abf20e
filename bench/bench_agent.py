"""Agent benchmark: the CPU `credbridge agent` spends idle, with 1,000 credentials configured.

100 unit targets of 10 `file:` credentials each (1,000 values) are delivered to a credstore on
tmpfs; the agent then waits for the next refresh (`refresh = "1h"`). The CPU time of the agent
process (user + system, from /proc/PID/stat) is read once the first delivery is done (READY=1 on
a notify socket) and again after the idle window; the difference per minute is the idle cost.
The issue's limit is 0.1 CPU-second per minute.

Run:  python bench/bench_agent.py [--credentials 1000] [--idle 60]
Prints a Markdown table: the first delivery's wall time, its CPU time, and the idle CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--credentials", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle to measure")
    args = parser.parse_args()
    per_target = 10
    targets = max(1, args.credentials // per_target)
    work = Path(tempfile.mkdtemp(prefix="cb-bench-agent-", dir="/dev/shm"))
    try:
        values = work / "values"
        values.mkdir()
        body = [
            f'[store]\npath = "{work / "store"}"',
            f'[sinks.credstore]\ndirectory = "{work / "credstore"}"',
            '[sources.file]\nrefresh = "1h"',
        ]
        for t in range(targets):
            body.append(f'[targets."bench{t}.service".credentials]')
            for c in range(per_target):
                name = f"v{t}-{c}"
                (values / name).write_text(uuid.uuid4().hex)
                body.append(f'c{c} = "file:{values / name}"')
        config = work / "credbridge.toml"
        config.write_text("\n".join(body) + "\n")

        notify_name = f"\0cb-bench-agent-{uuid.uuid4().hex}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(notify_name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBRIDGE_")}
        env["NOTIFY_SOCKET"] = "@" + notify_name[1:]
        env.pop("INVOCATION_ID", None)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "agent"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            listener.settimeout(600)
            while b"READY=1" not in listener.recv(4096):
                pass
            delivered = time.monotonic() - started
            before = cpu_seconds(proc.pid)
            time.sleep(args.idle)
            idle = cpu_seconds(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait(timeout=120)
            listener.close()
        per_minute = idle * 60 / args.idle
        window = f"idle CPU per minute ({args.idle:g} s measured)"
        print(f"| credentials | first delivery (wall) | its CPU | {window} |")
        print("|---|---|---|---|")
        print(
            f"| {targets * per_target} | {delivered:.2f} s | {before:.2f} s | {per_minute:.3f} s |"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
