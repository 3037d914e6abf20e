"""Agent soak: memory of ``credbridge agent`` over a long run of short leases.

The agent loop (``Agent.run``, as ``credbridge agent`` runs it) keeps ``--leases`` OpenBao child
tokens (TTL ``--ttl`` seconds, renewed by accessor; the source of bench_agent_leases.py,
registered in-process) and ``--static`` ``file:`` credentials re-read every second, for
``--minutes``. The resident set size (VmRSS) is read after the first delivery and at the end,
and the renewals counted from the agent's log.

``--samples N`` reads the RSS N times over the run (a rise that stops is the allocator's
warm-up, a steady one a leak); ``--tracemalloc`` also diffs Python's allocations between the
second sample and the end, largest first (what grew, by source line).

Run:  python bench/bench_agent_soak.py [--minutes 30] [--leases 100] [--ttl 10]
      [--samples 6] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench_agent_leases import child_token_plugin  # noqa: E402
from support.openbao import DevServer  # noqa: E402


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.renewals = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.renewals += "lease renewed until" in message


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--leases", type=int, default=100)
    parser.add_argument("--static", type=int, default=100)
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start(8)
    from credbridge.core.agent import Agent
    from credbridge.core.plugins import get_plugin_manager

    counter = Counter()
    logging.getLogger("credbridge").addHandler(counter)
    logging.getLogger("credbridge").setLevel(logging.INFO)
    work = Path(tempfile.mkdtemp(prefix="cb-bench-soak-", dir="/dev/shm"))
    server = DevServer().start()
    try:
        get_plugin_manager().register(
            child_token_plugin(server.address, server.token, args.ttl), name="bench-benchtoken"
        )
        values = work / "values"
        values.mkdir()
        body = [
            f'[store]\npath = "{work / "store"}"',
            f'[sinks.credstore]\ndirectory = "{work / "credstore"}"',
            '[sources.file]\nrefresh = "1s"',
        ]
        for t in range(max(1, args.leases // 10)):
            body.append(f'[targets."lease{t}.service".credentials]')
            body += [f'c{c} = "benchtoken:{t}-{c}"' for c in range(10)]
        for t in range(max(1, args.static // 10)):
            body.append(f'[targets."static{t}.service".credentials]')
            for c in range(10):
                (values / f"{t}-{c}").write_text(f"value-{t}-{c}")
                body.append(f'c{c} = "file:{values / f"{t}-{c}"}"')
        config = work / "credbridge.toml"
        config.write_text("\n".join(body) + "\n")
        os.environ.pop("NOTIFY_SOCKET", None)
        agent = Agent(config, restart=False)
        samples: list[tuple[float, int]] = []
        snapshots: list[tracemalloc.Snapshot] = []

        def watch() -> None:
            while not agent.ready:
                time.sleep(0.1)
            count = max(2, args.samples)
            for index in range(count):
                if index:
                    time.sleep(args.minutes * 60 / (count - 1))
                samples.append((time.monotonic(), rss_kib()))
                if args.tracemalloc and index in {1, count - 1}:
                    snapshots.append(tracemalloc.take_snapshot())
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True).start()
        agent.run()
        (start, rss_start), (end, rss_end) = samples[0], samples[-1]
        print("| measure | value |\n|---|---|")
        print(
            f"| leases (TTL {args.ttl} s) + static values (refresh 1 s) | "
            f"{args.leases} + {args.static} |"
        )
        print(f"| run | {(end - start) / 60:.1f} min |")
        print(f"| renewals | {counter.renewals} |")
        print(f"| RSS after the first delivery | {rss_start / 1024:.1f} MiB |")
        print(f"| RSS at the end | {rss_end / 1024:.1f} MiB |")
        print(
            "\nRSS samples (min: MiB): "
            + ", ".join(f"{(t - start) / 60:.1f}: {kib / 1024:.1f}" for t, kib in samples)
        )
        if len(snapshots) == 2:
            stats = snapshots[1].compare_to(snapshots[0], "lineno")
            grown = sum(s.size_diff for s in stats)
            print(f"\ntracemalloc, second sample to the end: {grown / 1024:+.1f} KiB in all")
            for stat in stats[:15]:
                print(f"  {stat}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
