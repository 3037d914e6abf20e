"""What the remote-source benchmarks (bench_aws, bench_vault, bench_sops) measure the same way."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any


def timed_resolve(config: Mapping[str, Any], refs: list[str]) -> float:
    """Seconds one new ``Session`` takes to resolve ``refs`` (building its clients and finding
    credentials included); every reference must give a value."""
    from credbridge.core import Request, Secret, Session, parse_config, parse_reference

    parsed = parse_config(config)
    requests = [Request(parse_reference(r)) for r in refs]
    start = time.perf_counter()
    with Session(parsed) as session:
        outcomes = session.resolve(requests)
    elapsed = time.perf_counter() - start
    bad = [r for r in requests if not isinstance(outcomes[r], Secret)]
    assert not bad, f"{len(bad)} failed: {outcomes[bad[0]]}"
    return elapsed


def measure(fn: Callable[[], float], runs: int) -> list[float]:
    return [fn() for _ in range(runs)]
