"""Benchmark: 100 KV v2 secrets from a "remote" OpenBao, three ways, side by side.

A real OpenBao dev server runs on loopback; every byte goes through a TCP proxy (its own
process) that delays each chunk by 5 ms in each direction, like a server 10 ms round trip away.
Then, against the same server and proxy:

* credbridge: ``Session.resolve`` of 100 ``vault:`` references (a new session per run, so it
  includes building the client and the mount lookup);
* a sequential hvac loop, the naive Python way (a new client per run);
* a loop of ``bao kv get -field=value ...``, the shell-script way (token in the environment).

Run from the repository root with the project's venv::

    /tmp/venv/bin/python bench/bench_vault.py [--secrets 100] [--runs 5] [--bao-runs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


from delay_proxy import start_proxy  # noqa: E402
from support.openbao import DevServer, bao_binary  # noqa: E402
from timing import measure, timed_resolve  # noqa: E402

DELAY = 0.005


# --------------------------------------------------------------------------- the three ways


def run_credbridge(address: str, token_path: Path, refs: list[str], concurrency: int) -> float:
    return timed_resolve(
        {
            "credbridge": {"concurrency": concurrency},
            "sources": {"vault": {"address": address, "auth": {"token_file": str(token_path)}}},
        },
        refs,
    )


def run_hvac_loop(address: str, token: str, paths: list[str]) -> float:
    import hvac

    start = time.perf_counter()
    client = hvac.Client(url=address, token=token)
    for path in paths:
        answer = client.secrets.kv.v2.read_secret_version(
            path=path, mount_point="secret", raise_on_deleted_version=True
        )
        assert answer["data"]["data"]["value"]
    return time.perf_counter() - start


def run_bao_loop(address: str, token: str, paths: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(VAULT_ADDR=address, VAULT_TOKEN=token, HOME=os.environ.get("HOME", "/tmp"))
    binary = bao_binary()
    start = time.perf_counter()
    for path in paths:
        subprocess.run(
            [binary, "kv", "get", "-mount=secret", "-field=value", path],
            env=env,
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--secrets", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5, help="runs of credbridge and hvac")
    parser.add_argument("--bao-runs", type=int, default=1, help="runs of the bao loop (slow)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=DELAY * 1000)
    args = parser.parse_args()

    with DevServer() as server:
        client = server.client()
        paths = [f"bench/s{index:03d}" for index in range(args.secrets)]
        for index, path in enumerate(paths):
            client.secrets.kv.v2.create_or_update_secret(
                path=path, secret={"value": f"value-{index}", "other": "x"}, mount_point="secret"
            )
        token_path = server.home / "bench-token"
        token_path.write_text(server.token)
        proxy, port = start_proxy(server.port, args.delay_ms / 1000)
        address = f"http://127.0.0.1:{port}"
        refs = [f"vault:secret/{path}#value" for path in paths]
        try:
            # One warm-up each: imports and the server's first-touch costs are not the point.
            run_credbridge(address, token_path, refs[:2], args.concurrency)
            run_hvac_loop(address, server.token, paths[:2])
            results: dict[str, list[float]] = {
                f"credbridge (concurrency {args.concurrency})": measure(
                    lambda: run_credbridge(address, token_path, refs, args.concurrency), args.runs
                ),
                "hvac, sequential loop": measure(
                    lambda: run_hvac_loop(address, server.token, paths), args.runs
                ),
            }
            if args.bao_runs:
                results["bao kv get -field, shell loop"] = measure(
                    lambda: run_bao_loop(address, server.token, paths), args.bao_runs
                )
        finally:
            proxy.terminate()
            proxy.wait()

    report(results, args)


def report(results: dict[str, list[float]], args: Any) -> None:
    medians = {name: statistics.median(times) for name, times in results.items()}
    ours = next(iter(medians.values()))
    print(
        f"\n{args.secrets} KV v2 secrets through a proxy adding {args.delay_ms:g} ms each way "
        f"(cpus: {os.cpu_count()})\n"
    )
    print("| method | median | runs | per secret | vs credbridge |\n|---|---|---|---|---|")
    for name, median in medians.items():
        runs = ", ".join(f"{t * 1000:.0f}" for t in results[name])
        print(
            f"| {name} | {median * 1000:.0f} ms | {runs} | "
            f"{median * 1000 / args.secrets:.1f} ms | {median / ours:.1f}x |"
        )


if __name__ == "__main__":
    main()
