"""Agent soak: memory of ``credbridge agent`` over a long run of short leases.

The agent loop (``Agent.run``, as ``credbridge agent`` runs it) keeps ``--leases`` OpenBao child
tokens (TTL ``--ttl`` seconds, renewed by accessor; the source of bench_agent_leases.py,
registered in-process) and ``--static`` ``file:`` credentials re-read every second, for
``--minutes``. The resident set size (VmRSS) is read after the first delivery and at the end,
and the renewals counted from the agent's log.

Run:  python bench/bench_agent_soak.py [--minutes 30] [--leases 100] [--ttl 10]
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
    args = parser.parse_args()
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

        def watch() -> None:
            while not agent.ready:
                time.sleep(0.1)
            samples.append((time.monotonic(), rss_kib()))
            time.sleep(args.minutes * 60)
            samples.append((time.monotonic(), rss_kib()))
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True).start()
        agent.run()
        (start, rss_start), (end, rss_end) = samples
        print("| measure | value |\n|---|---|")
        print(
            f"| leases (TTL {args.ttl} s) + static values (refresh 1 s) | "
            f"{args.leases} + {args.static} |"
        )
        print(f"| run | {(end - start) / 60:.1f} min |")
        print(f"| renewals | {counter.renewals} |")
        print(f"| RSS after the first delivery | {rss_start / 1024:.1f} MiB |")
        print(f"| RSS at the end | {rss_end / 1024:.1f} MiB |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
