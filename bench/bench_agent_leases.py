"""Agent benchmark: renewing 1,000 leases against OpenBao 10 ms away, and retries after an outage.

A real OpenBao dev server runs on loopback behind the delay proxy (5 ms each way, as in
bench_vault.py). A leased source registered in-process (as a plugin) issues one renewable
OpenBao child token per credential (``auth/token/create``, TTL ``--ttl``) and renews it by its
accessor (``auth/token/renew-accessor``). The agent's own round (``Agent._cycle``, the code
``credbridge agent`` runs at each deadline) is driven directly:

1. the first round delivers all the tokens (100 unit targets of 10, credstore on tmpfs);
2. every lease is made due at once and one round renews them all: its wall time is the time
   1,000 renewals take with ``[credbridge] concurrency`` (16) in flight -- to compare with the
   renewal window (a third of the TTL);
3. the spread of the next renewals that round scheduled (the jitter of the lifetime watcher's
   grace), and after an outage (the proxy stopped, every renewal failing at once) the spread
   of the retries it scheduled (backoff jitter): a storm that is spread, not synchronised.

Run:  python bench/bench_agent_leases.py [--leases 1000] [--ttl 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from delay_proxy import start_proxy  # noqa: E402
from support.openbao import DevServer  # noqa: E402

DELAY = 0.005


def child_token_plugin(address: str, token: str, ttl: int) -> object:
    import hvac
    import requests
    from credbridge.core import (
        Lease,
        LeasedSource,
        Mode,
        Outcome,
        Request,
        Secret,
        SourceType,
        Unreachable,
        hookimpl,
    )

    class ChildTokens(LeasedSource):
        def __init__(self) -> None:
            self.client = hvac.Client(url=address, token=token)

        def _issue(self, request: Request) -> Outcome:
            try:
                auth = self.client.auth.token.create(ttl=f"{ttl}s", renewable=True)["auth"]
            except requests.RequestException:
                return Unreachable(str(request.reference), "OpenBao is unreachable")
            now = time.time()
            lease = Lease(
                lease_id=auth["accessor"],
                issued_at=now,
                expires_at=now + auth["lease_duration"],
                renewable=True,
            )
            return Secret(auth["client_token"].encode(), lease=lease)

        def fetch(self, requests_: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
            with ThreadPoolExecutor(16) as pool:
                return dict(zip(requests_, pool.map(self._issue, requests_), strict=True))

        def renew(self, request: Request, lease: Lease, increment: float | None = None) -> Lease:
            try:
                answer = self.client.auth.token.renew_accessor(lease.lease_id, f"{ttl}s")
            except requests.RequestException:
                raise Unreachable(str(request.reference), "OpenBao is unreachable") from None
            auth = answer["auth"]
            expires = time.time() + auth["lease_duration"]
            return Lease(
                lease_id=lease.lease_id,
                issued_at=lease.issued_at,
                expires_at=expires,
                renewable=auth["renewable"],
            )

    class Plugin:
        @hookimpl
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="benchtoken", open=lambda _ctx: ChildTokens(), settings=())

    return Plugin()


def spread(deadlines: list[float]) -> str:
    """How widely monotonic deadlines are spread: from the first to the last, and how many
    distinct 10 ms slots they fall in."""
    first, last = min(deadlines), max(deadlines)
    slots = len({round((d - first) * 100) for d in deadlines})
    return f"over {last - first:.2f} s, in {slots} distinct 10 ms slots"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leases", type=int, default=1000)
    parser.add_argument("--ttl", type=int, default=60)
    args = parser.parse_args()
    from credbridge.core.agent import Agent
    from credbridge.core.plugins import get_plugin_manager

    work = Path(tempfile.mkdtemp(prefix="cb-bench-leases-", dir="/dev/shm"))
    server = DevServer().start()
    proxy, port = start_proxy(server.port, DELAY)
    try:
        address = f"http://127.0.0.1:{port}"
        get_plugin_manager().register(
            child_token_plugin(address, server.token, args.ttl), name="bench-benchtoken"
        )
        per_target = 10
        body = [
            f'[store]\npath = "{work / "store"}"',
            f'[sinks.credstore]\ndirectory = "{work / "credstore"}"',
            '[agent]\nretry_min = "1s"\nretry_max = "5m"',
        ]
        for t in range(max(1, args.leases // per_target)):
            body.append(f'[targets."bench{t}.service".credentials]')
            body += [f'c{c} = "benchtoken:{t}-{c}"' for c in range(per_target)]
        config = work / "credbridge.toml"
        config.write_text("\n".join(body) + "\n")
        os.environ.pop("NOTIFY_SOCKET", None)
        agent = Agent(config, restart=False)
        creds = [c for t in agent.targets.values() for c in t.credentials.values()]

        start = time.perf_counter()
        agent._cycle()
        first = time.perf_counter() - start
        assert all(c.action == "renew" for c in creds), {c.action for c in creds}

        now = time.monotonic()
        for cred in creds:
            cred.next_at = now
        start = time.perf_counter()
        agent._cycle()
        renewal = time.perf_counter() - start
        problems = {(c.action, c.last_error) for c in creds if c.action != "renew" or c.last_error}
        assert not problems, sorted(problems, key=str)[:3]
        scheduled = [c.next_at for c in creds]

        proxy.terminate()
        proxy.wait()
        now = time.monotonic()
        for cred in creds:
            cred.next_at = now
        agent._cycle()
        failed = [c for c in creds if c.last_error]
        retries = [c.next_at for c in failed]
        agent.session.close()

        rows: list[tuple[str, Any]] = [
            ("leases", len(creds)),
            ("first delivery (issue + deliver)", f"{first:.2f} s"),
            (
                f"one round renewing all (concurrency {agent.config.concurrency})",
                f"{renewal:.2f} s",
            ),
            ("renewal window (1/3 of the TTL)", f"{args.ttl / 3:.0f} s"),
            ("the next renewals, spread", spread(scheduled)),
            (f"retries after the outage ({len(failed)} failed), spread", spread(retries)),
        ]
        print("| measure | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
    finally:
        if proxy.poll() is None:
            proxy.terminate()
            proxy.wait()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
