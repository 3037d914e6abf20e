"""Key generation benchmark: credbridge beside loops of the tools operators use today.

Three workloads, each producing private and public halves as files:

* 100 SSH Ed25519 keys — ``ssh-keygen -t ed25519`` in a shell loop;
* 100 WireGuard keys — ``wg genkey | tee KEY | wg pubkey > KEY.pub`` in a shell loop;
* 10 SSH RSA-3072 keys — ``ssh-keygen -t rsa -b 3072`` in a shell loop.

credbridge runs as the real command, ``credbridge deliver``, on a config with two credentials per
key (``generate:KIND?id=kN`` and ``...#public``): it generates, persists every key in its store
(fsync'd, under a lock) and delivers both halves as 0400 files in a credstore on tmpfs. Each run
starts from an empty store and credstore. The in-process figure is ``Session.resolve`` of the
same references (no process start-up, no delivery).

Run:  python bench/bench_keys.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CREDBRIDGE = [sys.executable, "-m", "credbridge.core.cli"]

WORKLOADS = {
    "ed25519": {
        "count": 100,
        "reference": "generate:ssh-ed25519",
        "shell": 'ssh-keygen -q -t ed25519 -N "" -C "" -f "$dest/k$i"',
        "label": "SSH Ed25519",
        "naive": "`ssh-keygen -t ed25519` loop",
    },
    "wireguard": {
        "count": 100,
        "reference": "generate:wireguard",
        "shell": 'wg genkey | tee "$dest/k$i" | wg pubkey > "$dest/k$i.pub"',
        "label": "WireGuard",
        "naive": "`wg genkey \\| wg pubkey` loop",
    },
    "rsa3072": {
        "count": 10,
        "reference": "generate:ssh-rsa?bits=3072",
        "shell": 'ssh-keygen -q -t rsa -b 3072 -N "" -C "" -f "$dest/k$i"',
        "label": "SSH RSA-3072",
        "naive": "`ssh-keygen -t rsa -b 3072` loop",
    },
}

SHELL = """set -eu
umask 077
dest="$1"
mkdir -p "$dest"
i=0
while [ "$i" -lt {count} ]; do
  {command}
  i=$((i + 1))
done
"""


def timed(action: Callable[[], None], runs: int, setup: Callable[[], None]) -> list[float]:
    samples = []
    for _ in range(runs):
        setup()
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return samples


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def reference(kind: str, index: int) -> str:
    base = str(WORKLOADS[kind]["reference"])
    joiner = "&" if "?" in base else "?"
    return f"{base}{joiner}id=k{index}"


def write_config(work: Path, kind: str, count: int) -> Path:
    lines = [
        f'[store]\npath = "{work / "store"}"\n',
        f'[sinks.credstore]\ndirectory = "{work / "credstore"}"\n',
        '[targets."bench.service".credentials]\n',
    ]
    for index in range(count):
        lines.append(f'k{index} = "{reference(kind, index)}"\n')
        lines.append(f'k{index}-pub = "{reference(kind, index)}#public"\n')
    config = work / f"{kind}.toml"
    config.write_text("".join(lines))
    return config


def in_process(work: Path, kind: str, count: int) -> None:
    from credbridge.core import Request, Session, parse_config, parse_reference

    config = parse_config({"store": {"path": str(work / "store")}})
    requests = [
        Request(parse_reference(reference(kind, i) + suffix))
        for i in range(count)
        for suffix in ("", "#public")
    ]
    with Session(config) as session:
        outcomes = session.resolve(requests)
    assert all(hasattr(v, "reveal") for v in outcomes.values()), "a key failed"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for tool in ("ssh-keygen", "wg"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install openssh-client wireguard-tools")
    work = Path(tempfile.mkdtemp(prefix="cb-bench-keys-", dir="/dev/shm"))
    env = {**os.environ, "CREDBRIDGE_LOAD_PLUGINS": ""}

    def wipe() -> None:
        for name in ("store", "credstore", "shell"):
            shutil.rmtree(work / name, ignore_errors=True)

    rows: list[tuple[str, str, float, float, float]] = []
    try:
        for kind, spec in WORKLOADS.items():
            count = int(str(spec["count"]))
            config = write_config(work, kind, count)
            script = work / f"{kind}.sh"
            script.write_text(SHELL.format(count=count, command=spec["shell"]))
            deliver = timed(
                lambda config=config: run([*CREDBRIDGE, "-c", str(config), "deliver"], env),
                args.runs,
                wipe,
            )
            assert len(list((work / "credstore" / "bench.service").iterdir())) == 2 * count
            api = timed(
                lambda kind=kind, count=count: in_process(work, kind, count), args.runs, wipe
            )
            shell = timed(
                lambda script=script: run(["sh", str(script), str(work / "shell")]), args.runs, wipe
            )
            label = f"{count} {spec['label']}"
            rows.append(
                (
                    label,
                    str(spec["naive"]),
                    statistics.median(deliver),
                    statistics.median(api),
                    statistics.median(shell),
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"runs per row: {args.runs}; python {sys.version.split()[0]}; {os.cpu_count()} cores\n")
    print(
        "| keys | credbridge deliver | credbridge in-process | hand-made | hand-made way "
        "| hand-made / deliver |"
    )
    print("|---|---:|---:|---:|---|---:|")
    for label, naive, deliver_s, api_s, shell_s in rows:
        print(
            f"| {label} | {1000 * deliver_s:.0f} ms | {1000 * api_s:.0f} ms | "
            f"{1000 * shell_s:.0f} ms | {naive} | {shell_s / deliver_s:.1f}x |"
        )


if __name__ == "__main__":
    main()
