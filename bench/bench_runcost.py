"""Per-run cost of credbridge itself, side by side with the naive way in one run (issue 25).

Rows, round-robin within each group so a busy moment of the machine hits all rows alike:

- start-up: ``credbridge get env:HOME`` and ``credbridge --help`` against ``python -c pass`` of
  the same interpreter in a plain venv (created here: no site-packages, no editable-install
  finder) -- the floor -- and in credbridge's own venv; beside them, the least any command
  line built on click and pluggy costs (one click command calling one pluggy hook), run from
  the same venvs as credbridge;
- ``credbridge deliver`` of 10 kept credentials against a shell script that copies the same
  10 files into a staging directory, chmods them 0400 and swaps the directory in;
- first runs of 1,000 and N (default 10,000) generated credentials: the cost per credential
  beyond a first run of 10, and a kept run of N per credential;
- open/openat/openat2 calls per credential, counted with ``strace -f -c`` (the difference
  between 100 and 1,000 credentials, divided by 900): a first run, the first kept run
  after it, and a later kept run;
- peak RSS (``wait4``) of a kept run of 10 and of N credentials.

Each timed row also reports its CPU time (user + system of the child, from ``wait4``), which a
busy machine moves less than wall time. The start-up and 10-kept groups include rows that
take the time apart: ``python -c 'import click, pluggy'`` and ``python -c 'import ...'`` of
every module the command loads (measured here first), so what is left of a command's time
after its imports is its work. With ``--wheel`` the credbridge rows run a second time from a
venv where the checkout is installed as a built wheel (what a user installs: no
editable-install finder on ``sys.path``; its dependencies from pip's cache or index).

Run:  python bench/bench_runcost.py [--runs 11] [--big-runs 5] [--large 10000] [--wheel]
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
import venv
from collections.abc import Callable
from pathlib import Path

CREDBRIDGE = [sys.executable, "-m", "credbridge.core.cli"]

SWAP_SCRIPT = r"""
set -eu
src="$1"; base="$2"
stage=$(mktemp -d "$base/.stage.XXXXXX")
cp "$src"/* "$stage"/
chmod 0400 "$stage"/*
if [ -d "$base/live" ]; then mv "$base/live" "$base/.old"; fi
mv "$stage" "$base/live"
rm -rf "$base/.old"
"""


MINIMAL_CLI = r"""
import click, pluggy
spec, impl = pluggy.HookspecMarker("demo"), pluggy.HookimplMarker("demo")
class Spec:
    @spec
    def demo_value(self, name): ...
class Plugin:
    @impl
    def demo_value(self, name):
        return name.upper()
@click.command()
@click.argument("name")
def main(name):
    manager = pluggy.PluginManager("demo")
    manager.add_hookspecs(Spec)
    manager.register(Plugin())
    click.echo(manager.hook.demo_value(name=name)[0])
main()
"""
"""The least a command line built on click and pluggy costs: one click command calling one
pluggy hook of one plugin, and printing its answer."""

CPU: dict[str, list[float]] = {}
"""CPU seconds (user + system) of every timed row's runs, by row name."""


def run(argv: list[str], env: dict[str, str]) -> float:
    """Run ``argv``; its CPU seconds (user + system)."""
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _pid, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), argv)
    return usage.ru_utime + usage.ru_stime


def loaded_modules(python: str, argv: list[str], env: dict[str, str]) -> list[str]:
    """The modules ``credbridge ARGV`` has loaded when it is done (its import cost)."""
    probe = (
        "import sys\nfrom credbridge.core.cli import cli\n"
        f"try:\n    cli({argv!r}, prog_name='credbridge')\nexcept SystemExit:\n    pass\n"
        "print('@@modules', *sys.modules, file=sys.stderr)\n"
    )
    out = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stderr
    names = out[out.rindex("@@modules") :].split()[1:]
    return [m for m in names if m != "__main__"]


def import_row(python: str, modules: list[str]) -> list[str]:
    """``python -c`` importing ``modules`` in the order a run loaded them, and nothing else."""
    code = (
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    try:\n        importlib.import_module(name)\n    except ImportError:\n        pass\n"
    )
    return [python, "-c", code]


def peak_rss_kib(argv: list[str], env: dict[str, str]) -> int:
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _pid, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, argv
    return usage.ru_maxrss


def opens(argv: list[str], env: dict[str, str], log: Path) -> int:
    subprocess.run(
        ["strace", "-f", "-c", "-e", "trace=open,openat,openat2", "-o", str(log), *argv],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    total = 0
    for line in log.read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] in ("open", "openat", "openat2"):
            total += int(fields[3])
    return total


def write_config(base: Path, count: int) -> list[str]:
    base.mkdir(parents=True, exist_ok=True)
    config = base / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{base / "store"}"\n[sinks.credstore]\n'
        f'directory = "{base / "credstore"}"\n[targets."bench.service".credentials]\n'
        + "".join(f'secret-{i:05d} = "generate:base64?bytes=32"\n' for i in range(count))
    )
    return [*CREDBRIDGE, "-c", str(config), "deliver", "--no-restart"]


def wipe(base: Path) -> None:
    shutil.rmtree(base / "store", ignore_errors=True)
    shutil.rmtree(base / "credstore", ignore_errors=True)


def wheel_python(work: Path) -> str:
    """A venv with the checkout installed from a wheel built now (no editable finder)."""
    wheels = work / "wheels"
    checkout = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(checkout)],
        check=True,
    )
    target = work / "wheel-venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(target)
    python = str(target / "bin" / "python")
    wheel = next(wheels.glob("credbridge-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)
    return python


def timed_rounds(
    rows: dict[str, tuple[Callable[[], object], Callable[[], None] | None]], runs: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for action, setup in rows.values():  # warm-up: bytecode, page cache
        if setup:
            setup()
        action()
    for _ in range(runs):
        for name, (action, setup) in rows.items():
            if setup:
                setup()
            start = time.perf_counter()
            cpu = action()
            samples[name].append(time.perf_counter() - start)
            if isinstance(cpu, float):
                CPU.setdefault(name, []).append(cpu)
    return samples


def table(samples: dict[str, list[float]]) -> None:
    print("| command | median ms | min ms | max ms | CPU ms (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in samples.items():
        cpu = f"{1000 * statistics.median(CPU[name]):.1f}" if name in CPU else ""
        print(
            f"| {name} | {1000 * statistics.median(values):.1f} | {1000 * min(values):.1f} "
            f"| {1000 * max(values):.1f} | {cpu} |"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--big-runs", type=int, default=5)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument(
        "--wheel", action="store_true", help="also run credbridge installed from a built wheel"
    )
    args = parser.parse_args()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CREDBRIDGE_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    work = Path(tempfile.mkdtemp(prefix="cb-runcost-", dir="/dev/shm"))
    try:
        plain = work / "plain-venv"
        venv.EnvBuilder(with_pip=False, symlinks=True).create(plain)
        plain_python = str(plain / "bin" / "python")
        home = work / "home"  # no config there: get env:HOME is start-up and one lookup
        home.mkdir()
        cli_env = {**env, "HOME": str(home)}
        print(
            f"python {sys.version.split()[0]}; {os.cpu_count()} cores; "
            f"load average {os.getloadavg()[0]:.1f} at the start\n"
        )

        # ------------------------------------------------------------ start-up
        pythons = {"": sys.executable}
        if args.wheel:
            pythons[" (wheel venv)"] = wheel_python(work)
        get_imports = loaded_modules(sys.executable, ["get", "env:HOME"], cli_env)
        rows: dict[str, tuple[Callable[[], object], Callable[[], None] | None]] = {
            "python -c pass, plain venv (the floor)": (
                lambda: run([plain_python, "-c", "pass"], env),
                None,
            ),
            "python -c 'import click, pluggy'": (
                lambda: run([sys.executable, "-c", "import click, pluggy"], env),
                None,
            ),
            "python -c 'import' of every module get env:HOME loads": (
                lambda: run(import_row(sys.executable, get_imports), cli_env),
                None,
            ),
        }
        for suffix, python in pythons.items():
            rows[f"python -c pass, credbridge's venv{suffix}"] = (
                lambda python=python: run([python, "-c", "pass"], env),  # type: ignore[misc]
                None,
            )
            rows[f"a click command calling a pluggy hook{suffix}"] = (
                lambda python=python: run([python, "-c", MINIMAL_CLI, "home"], env),  # type: ignore[misc]
                None,
            )
            rows[f"credbridge --help{suffix}"] = (
                lambda python=python: run(  # type: ignore[misc]
                    [python, "-m", "credbridge.core.cli", "--help"], cli_env
                ),
                None,
            )
            rows[f"credbridge get env:HOME{suffix}"] = (
                lambda python=python: run(  # type: ignore[misc]
                    [python, "-m", "credbridge.core.cli", "get", "env:HOME"], cli_env
                ),
                None,
            )
        startup = timed_rounds(rows, args.runs)
        table(startup)
        floor = statistics.median(startup["python -c pass, plain venv (the floor)"])
        for suffix in pythons:
            for name in (
                "a click command calling a pluggy hook",
                "credbridge --help",
                "credbridge get env:HOME",
            ):
                ratio = statistics.median(startup[name + suffix]) / floor
                print(f"ratio {name}{suffix} / python -c pass (plain venv): {ratio:.2f}x")
        print()

        # ------------------------------------------------------------ 10 kept vs shell
        small = work / "small"
        deliver10 = write_config(small, 10)
        run(deliver10, env)
        source = small / "credstore" / "bench.service"
        shell_base = work / "shell"
        shell_base.mkdir(mode=0o700)
        script = work / "swap.sh"
        script.write_text(SWAP_SCRIPT)
        deliver_imports = loaded_modules(sys.executable, deliver10[3:], env)
        kept = timed_rounds(
            {
                "credbridge deliver, 10 kept": (lambda: run(deliver10, env), None),
                "python -c 'import' of the modules deliver loads": (
                    lambda: run(import_row(sys.executable, deliver_imports), env),
                    None,
                ),
                "shell: copy 10 files to staging, chmod 0400, swap": (
                    lambda: run(["sh", str(script), str(source), str(shell_base)], env),
                    None,
                ),
            },
            args.runs,
        )
        table(kept)
        ratio = statistics.median(kept["credbridge deliver, 10 kept"]) / statistics.median(
            kept["shell: copy 10 files to staging, chmod 0400, swap"]
        )
        print(f"ratio credbridge deliver (10 kept) / shell script: {ratio:.2f}x\n")

        # ------------------------------------------------------------ first runs, per credential
        sizes = (10, 1000, args.large)
        bases = {n: work / f"first-{n}" for n in sizes}
        delivers = {n: write_config(bases[n], n) for n in sizes}
        first_rows: dict[str, tuple[Callable[[], object], Callable[[], None] | None]] = {}
        for n in sizes:
            first_rows[f"credbridge deliver, {n} new"] = (
                lambda n=n: run(delivers[n], env),  # type: ignore[misc]
                lambda n=n: wipe(bases[n]),  # type: ignore[misc]
            )
        first = timed_rounds(first_rows, args.big_runs)
        run(delivers[args.large], env)  # the values kept: a kept run of N
        run(delivers[10], env)
        kept_rows: dict[str, tuple[Callable[[], object], Callable[[], None] | None]] = {
            f"credbridge deliver, {n} kept": (lambda n=n: run(delivers[n], env), None)  # type: ignore[misc]
            for n in (10, args.large)
        }
        kept_large = timed_rounds(kept_rows, args.big_runs)
        table({**first, **kept_large})
        base10 = statistics.median(first["credbridge deliver, 10 new"])
        per: dict[int, float] = {}
        for n in sizes[1:]:
            total = statistics.median(first[f"credbridge deliver, {n} new"])
            per[n] = 1000 * (total - base10) / (n - 10)
            print(f"first run, per credential beyond 10, at {n}: {per[n]:.3f} ms")
        print(f"ratio per credential {args.large} / 1000: {per[args.large] / per[1000]:.2f}x")
        kept_per = (
            1000
            * (
                statistics.median(kept_large[f"credbridge deliver, {args.large} kept"])
                - statistics.median(kept_large["credbridge deliver, 10 kept"])
            )
            / (args.large - 10)
        )
        print(f"kept run, per credential beyond 10, at {args.large}: {kept_per:.3f} ms\n")

        # ------------------------------------------------------------ opens per credential
        if shutil.which("strace") is None:
            print("strace not found: open counts skipped")
        else:
            counts: dict[int, list[int]] = {}
            for n in (100, 1000):
                base = work / f"strace-{n}"
                deliver = write_config(base, n)
                counts[n] = [opens(deliver, env, work / "strace.log") for _ in range(3)]
            for index, label in enumerate(("first run", "first kept run", "later kept run")):
                slope = (counts[1000][index] - counts[100][index]) / 900
                print(
                    f"open/openat/openat2 per credential, {label}: {slope:.2f} "
                    f"({counts[100][index]} at 100, {counts[1000][index]} at 1000)"
                )
            print()

        # ------------------------------------------------------------ peak memory
        for n in (10, args.large):
            rss = peak_rss_kib(delivers[n], env)
            print(f"peak RSS, kept run of {n}: {rss / 1024:.1f} MiB")
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
