"""Benchmark: 100 Secrets Manager secrets and 100 SSM parameters from a "remote" AWS, side by side.

A real moto server (AWS emulation) runs on loopback; every byte goes through the TCP proxy of
``delay_proxy.py`` (its own process), which delays each chunk by 5 ms in each direction, like
an endpoint 10 ms round trip away. Then, against the same server and proxy, in one run:

* credbridge: ``Session.resolve`` of 100 ``aws-sm:`` references, of 100 ``aws-ssm:``
  references, and of both together (a new session per run, so building the client and
  resolving credentials are included);
* the naive boto3 way: a sequential loop of ``get_secret_value`` / ``get_parameter`` calls
  (a new ``boto3.client`` per run, from boto3's default session, which caches the models).

Both are pointed at the proxy with ``AWS_ENDPOINT_URL``, as a user would point at LocalStack.
Run from the repository root with the project's venv::

    .venv/bin/python bench/bench_aws.py [--secrets 100] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from delay_proxy import start_proxy  # noqa: E402
from support.moto import MotoServer  # noqa: E402
from timing import measure, timed_resolve  # noqa: E402

DELAY = 0.005


def run_credbridge(refs: list[str], concurrency: int) -> float:
    return timed_resolve({"credbridge": {"concurrency": concurrency}}, refs)


def run_sm_loop(names: list[str]) -> float:
    import boto3

    start = time.perf_counter()
    client = boto3.client("secretsmanager")
    for name in names:
        assert client.get_secret_value(SecretId=name)["SecretString"]
    return time.perf_counter() - start


def run_ssm_loop(names: list[str]) -> float:
    import boto3

    start = time.perf_counter()
    client = boto3.client("ssm")
    for name in names:
        assert client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--secrets", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=DELAY * 1000)
    args = parser.parse_args()

    with MotoServer() as server:
        os.environ.update(server.env())
        sm, ssm = server.client("secretsmanager"), server.client("ssm")
        secrets = [f"bench/s{index:03d}" for index in range(args.secrets)]
        params = [f"/bench/p{index:03d}" for index in range(args.secrets)]
        for index, (secret, param) in enumerate(zip(secrets, params, strict=True)):
            sm.create_secret(Name=secret, SecretString=f'{{"value": "secret-{index}"}}')
            ssm.put_parameter(Name=param, Value=f"param-{index}", Type="SecureString")
        proxy, port = start_proxy(server.port, args.delay_ms / 1000)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        sm_refs = [f"aws-sm:{name}#value" for name in secrets]
        ssm_refs = [f"aws-ssm:{name}" for name in params]
        try:
            # One warm-up each: imports and model loading are not the point.
            run_credbridge([sm_refs[0], ssm_refs[0]], args.concurrency)
            run_sm_loop(secrets[:1])
            run_ssm_loop(params[:1])
            c = args.concurrency
            results: dict[str, dict[str, list[float]]] = {
                "Secrets Manager": {
                    f"credbridge (BatchGetSecretValue, concurrency {c})": measure(
                        lambda: run_credbridge(sm_refs, c), args.runs
                    ),
                    "boto3, sequential get_secret_value loop": measure(
                        lambda: run_sm_loop(secrets), args.runs
                    ),
                },
                "SSM Parameter Store": {
                    f"credbridge (GetParameters, concurrency {c})": measure(
                        lambda: run_credbridge(ssm_refs, c), args.runs
                    ),
                    "boto3, sequential get_parameter loop": measure(
                        lambda: run_ssm_loop(params), args.runs
                    ),
                },
                "both together": {
                    f"credbridge, {2 * args.secrets} references in one run": measure(
                        lambda: run_credbridge(sm_refs + ssm_refs, c), args.runs
                    ),
                    "boto3, both loops one after the other": measure(
                        lambda: run_sm_loop(secrets) + run_ssm_loop(params), args.runs
                    ),
                },
            }
        finally:
            proxy.terminate()
            proxy.wait()
    report(results, args)


def report(results: dict[str, dict[str, list[float]]], args: Any) -> None:
    print(
        f"\n{args.secrets} secrets / parameters from moto through a proxy adding "
        f"{args.delay_ms:g} ms each way (cpus: {os.cpu_count()})\n"
    )
    print("| service | method | median | runs (ms) | vs credbridge |\n|---|---|---|---|---|")
    for service, methods in results.items():
        medians = {name: statistics.median(times) for name, times in methods.items()}
        ours = next(iter(medians.values()))
        for name, median in medians.items():
            runs = ", ".join(f"{t * 1000:.0f}" for t in methods[name])
            print(
                f"| {service} | {name} | {median * 1000:.0f} ms | {runs} | {median / ours:.1f}x |"
            )


if __name__ == "__main__":
    main()
