"""Records (``credbridge.core.records``) against ``dataclasses``, side by side in one run.

Three rows, each done both ways in alternation: making the classes (the shapes of the core's
records: slotted and ordered references, keyword-only plugin records with a base, a config
with factories), making instances of a request (2 positional fields) and of a credential
spec (8 fields, 3 given by keyword), and hashing plus comparing a request (what keying a dict
by requests costs). Classes are made from the same source text with the decorator swapped,
so both sides pay the same for ``class`` statements; the difference is the decorator.

Run:  python bench/bench_records.py [--runs 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import types
from collections.abc import Callable

from credbridge.core import records

DECLARATIONS = """
from __future__ import annotations
from typing import Any

@make(frozen=True, order=True, slots=True)
class Locator:
    scheme: str
    path: str
    options: tuple[tuple[str, str], ...] = ()

@make(frozen=True, order=True, slots=True)
class Reference:
    locator: Locator
    selector: str | None = None
    text: str = field(default="", compare=False)
    cached: str | None = field(default=None, init=False, repr=False, compare=False)

@make(frozen=True, slots=True)
class Request:
    reference: Any
    owner: str | None = None

@make(frozen=True, slots=True)
class CredentialSpec:
    name: str
    reference: Any
    optional: bool = False
    mode: int = 0o400
    owner: str | None = None
    group: str | None = None
    where: str = ""
    refresh: float | None = None

@make(frozen=True, eq=False, kw_only=True)
class PluginType:
    summary: str = ""
    settings: Any = None

@make(frozen=True, eq=False, kw_only=True)
class SourceType(PluginType):
    scheme: str
    open: Any
    options: Any = None
    selectors: bool = True

@make(frozen=True)
class Config:
    path: Any
    directory: Any
    targets: dict[str, Any]
    sources: dict[str, Any] = field(default_factory=dict)
    store_type: str = "file"
    concurrency: int = 16
    checked_with: Any = field(default=None, compare=False, repr=False)
"""

WAYS = {
    "dataclasses": (dataclasses.dataclass, dataclasses.field),
    "records": (records.record, records.field),
}
CLASSES_PER_DECLARATION = 7


def declare(way: str) -> dict[str, object]:
    make, field = WAYS[way]
    module = types.ModuleType(f"bench_{way}")
    module.__dict__.update(make=make, field=field)
    sys.modules[module.__name__] = module  # dataclasses look the module up
    exec(DECLARATIONS, module.__dict__)  # noqa: S102 - our own declarations
    return module.__dict__


def per_call(action: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        action()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    made = {way: declare(way) for way in WAYS}
    rows: dict[str, dict[str, Callable[[], float]]] = {}
    for way, names in made.items():
        request, spec = names["Request"], names["CredentialSpec"]
        assert callable(request)
        assert callable(spec)
        one, two = request("ref", "t/a"), request("ref", "t/a")
        rows.setdefault("make a record class (ms)", {})[way] = lambda way=way: (
            per_call(lambda: declare(way), 20) * 1000 / CLASSES_PER_DECLARATION
        )
        rows.setdefault("make a request, 2 positional (µs)", {})[way] = lambda request=request: (
            per_call(lambda: request("ref", "t/a"), 20000) * 1e6
        )
        rows.setdefault("make a credential spec, 3 keywords of 8 (µs)", {})[way] = (
            lambda spec=spec: (
                per_call(lambda: spec(name="a", reference="ref", where="targets.x"), 20000) * 1e6
            )
        )
        rows.setdefault("hash and compare a request (µs)", {})[way] = lambda one=one, two=two: (
            per_call(lambda: (hash(one), one == two), 20000) * 1e6
        )
    print(f"python {sys.version.split()[0]}; medians of {args.runs} rounds\n")
    print("| row | dataclasses | records | records / dataclasses |")
    print("|---|---:|---:|---:|")
    for row, ways in rows.items():
        samples: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.runs):
            for way, measure in ways.items():
                samples[way].append(measure())
        median = {way: statistics.median(values) for way, values in samples.items()}
        print(
            f"| {row} | {median['dataclasses']:.3f} | {median['records']:.3f} "
            f"| {median['records'] / median['dataclasses']:.2f}x |"
        )


if __name__ == "__main__":
    main()
