"""Concurrent runs: real credbridge processes racing on one credstore and one store.

Each round starts 2-8 processes at once (``deliver``, ``deliver a.service``, ``rotate``,
``unit --install``) and then checks what they left: every target a complete set of 0400 files,
no leftovers, every delivered value one the store holds, linked credentials equal wherever no
rotation intervened, one generated value per key. The default suite runs a few rounds; ``-m
stress`` (or ``CREDBRIDGE_STRESS=1``) runs many (docs/reliability.md).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.harness import LOCK, Setup


def check_round(setup: Setup, rotated: set[str], history: dict[str, set[bytes]]) -> None:
    """``history``: every value the store showed for a key after a round (a key is rotated at
    most once per round, so no value can come and go unseen within one)."""
    names = setup.names()
    a, b = setup.target("a.service"), setup.target("b.service")
    assert a is not None and b is not None
    assert set(a) == {"static", *names}, "a.service is not a complete set"
    assert set(b) == set(names), "b.service is not a complete set"
    assert not setup.leftovers()
    for name in names:
        key = f"a.service/{name}"
        current, previous = setup.stored(key), setup.stored(key, "previous")
        assert current is not None
        seen = history.setdefault(name, set())
        seen.update(v for v in (current, previous) if v is not None)
        assert a[name] in seen, f"a.service/{name} holds a value the store never had"
        assert b[name] in seen, f"b.service/{name} holds a value the store never had"
        if name not in rotated:
            # Never rotated: exactly one value was ever generated, everywhere the same.
            assert previous is None, f"{key} was generated twice"
            assert a[name] == b[name] == current


def run_round(setup: Setup, ops: list[list[str]]) -> list[subprocess.CompletedProcess[bytes]]:
    procs = [setup.start(*op) for op in ops]
    results = []
    for op, proc in zip(ops, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(op, proc.returncode, out, err))
    return results


def race(setup: Setup, rounds: int, max_procs: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    rotated: set[str] = set()
    history: dict[str, set[bytes]] = {}
    stats = {"rounds": 0, "runs": 0, "rotations": 0}
    for index in range(rounds):
        count = rng.randint(2, max_procs)
        if index == 0:
            ops = [["deliver"] for _ in range(count)]  # all race to generate every value
        else:
            ops = []
            keys = rng.sample(setup.names(), len(setup.names()))  # each rotated once at most
            for _ in range(count):
                kind = rng.choice(["deliver", "deliver-a", "rotate", "unit"])
                if kind == "deliver":
                    ops.append(["deliver"])
                elif kind == "deliver-a":
                    ops.append(["deliver", "a.service"])
                elif kind == "rotate" and keys:
                    name = keys.pop()
                    rotated.add(name)
                    ops.append(["rotate", "a.service", name])
                    stats["rotations"] += 1
                else:
                    ops.append(
                        ["unit", "a.service", "--install", "--unit-dir", str(setup.unit_dir)]
                    )
        for result in run_round(setup, ops):
            assert result.returncode == 0, (result.args, result.stderr.decode())
        check_round(setup, rotated, history)
        dropin = setup.unit_dir / "a.service.d" / "credbridge.conf"
        if dropin.exists():
            assert dropin.read_text().endswith(f"/c{setup.count - 1:03d}\n")
        stats["rounds"] += 1
        stats["runs"] += len(ops)
    # One more deliver converges everything on the store's current values.
    final = setup.run("deliver")
    assert final.returncode == 0, final.stderr.decode()
    a, b = setup.target("a.service"), setup.target("b.service")
    assert a is not None and b is not None
    for name in setup.names():
        assert a[name] == b[name] == setup.stored(f"a.service/{name}")
    return stats


def _race(tmp_path: Path, tmpfs_dir: Path, count: int, rounds: int, procs: int) -> None:
    setup = Setup(tmp_path, tmpfs_dir, count)
    setup.write()
    seed = int(os.environ.get("CREDBRIDGE_SEED", random.randrange(1 << 30)))
    started = time.monotonic()
    stats = race(setup, rounds, procs, seed)
    print(
        f"\nconcurrency: {count} credentials, seed {seed}: {stats['rounds']} rounds, "
        f"{stats['runs']} runs of 2-{procs} at once, {stats['rotations']} rotations, "
        f"0 torn sets, 0 divergent values, {time.monotonic() - started:.1f}s"
    )


@pytest.mark.parametrize(("count", "rounds"), [(10, 4), (100, 2)])
def test_parallel_runs_never_tear_a_set(
    tmp_path: Path, tmpfs_dir: Path, count: int, rounds: int
) -> None:
    _race(tmp_path, tmpfs_dir, count, rounds, 4)


@pytest.mark.stress
@pytest.mark.parametrize(("count", "rounds"), [(10, 40), (100, 15)])
def test_parallel_runs_never_tear_a_set_long(
    tmp_path: Path, tmpfs_dir: Path, count: int, rounds: int
) -> None:
    _race(tmp_path, tmpfs_dir, count, rounds, 8)


# --------------------------------------------------------------------------- lock waiting


def paused_deliver(setup: Setup) -> subprocess.Popen[bytes]:
    """A deliver stopped (SIGSTOP) right after staging: it holds the locks and a staging dir."""
    proc = setup.start("deliver", fault="credstore.staged@1:stop")
    deadline = time.monotonic() + 60
    while Path(f"/proc/{proc.pid}/stat").read_text().split()[2] != "T":
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the paused deliver never stopped"
        time.sleep(0.02)
    return proc


def read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What ``proc`` wrote to its stderr up to and including ``marker`` (or until it ended)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout}s: {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
    return seen


def test_a_live_run_keeps_its_staging_and_others_wait_or_give_up(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    setup = Setup(tmp_path, tmpfs_dir, 3)
    setup.write()
    assert setup.run("deliver").returncode == 0
    before = setup.target("a.service")
    setup.static_file.write_bytes(b"static-2")
    holder = paused_deliver(setup)
    try:
        staging = [p for p in tmpfs_dir.iterdir() if ".staging-" in p.name]
        assert len(staging) == 1
        # --no-wait: fails at once with its own exit code, naming the lock and its holder.
        quick = setup.run("deliver", "--no-wait")
        err = quick.stderr.decode()
        assert quick.returncode == 12, err
        assert f"{tmpfs_dir / LOCK} is locked by another credbridge run (pid {holder.pid})" in err
        assert "--no-wait" in err
        # --wait-lock: waits, says so, then gives up.
        started = time.monotonic()
        bounded = setup.run("deliver", "--wait-lock", "1.5")
        assert bounded.returncode == 12, bounded.stderr.decode()
        assert time.monotonic() - started >= 1.5
        assert b"waiting for" in bounded.stderr and b"gave up after 1.5s" in bounded.stderr
        rotate = setup.run("rotate", "a.service", "c000", "--no-wait")
        assert rotate.returncode == 12, rotate.stderr.decode()
        # The live run's staging directory was not touched by any of them.
        assert staging[0].exists()
        assert setup.target("a.service") == before
        # Default: wait as long as it takes.
        waiting = setup.start("deliver")
        # Read until it says it waits (its notice comes after 1 s of waiting), however long
        # its start takes on a loaded machine; it must still be running then.
        said = read_until(waiting, b"waiting for", timeout=60)
        assert waiting.poll() is None
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err.decode()
    _, rest = waiting.communicate(timeout=60)
    err = said + rest
    assert waiting.returncode == 0, err.decode()
    assert b"waiting for" in err and f"pid {holder.pid}".encode() in err
    after = setup.target("a.service")
    assert after is not None and after["static"] == b"static-2"
    assert not setup.leftovers()


def test_lock_options_are_checked(tmp_path: Path, tmpfs_dir: Path) -> None:
    setup = Setup(tmp_path, tmpfs_dir, 1)
    setup.write()
    both = setup.run("deliver", "--no-wait", "--wait-lock", "3")
    assert both.returncode == 2
    assert b"exclude each other" in both.stderr
    negative = setup.run("deliver", "--wait-lock", "-1")
    assert negative.returncode == 2
    for endless in ("nan", "inf"):  # nan used to wait forever
        refused = setup.run("deliver", "--wait-lock", endless)
        assert refused.returncode == 2, refused.stderr
        assert b"finite" in refused.stderr
    for command in (["rotate", "a.service", "c000"], ["launch", "x"], ["unit", "a.service"]):
        help_text = setup.run(*command, "--help").stdout
        assert b"--wait-lock" in help_text and b"--no-wait" in help_text


def test_unit_install_waits_for_the_drop_in_lock(tmp_path: Path, tmpfs_dir: Path) -> None:
    setup = Setup(tmp_path, tmpfs_dir, 1)
    setup.write()
    first = setup.start(
        "unit",
        "a.service",
        "--install",
        "--unit-dir",
        str(setup.unit_dir),
        fault="lock.acquired@1:stop",
    )
    deadline = time.monotonic() + 60
    while Path(f"/proc/{first.pid}/stat").read_text().split()[2] != "T":
        assert first.poll() is None, first.communicate()[1].decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        second = setup.run(
            "unit", "a.service", "--install", "--unit-dir", str(setup.unit_dir), "--no-wait"
        )
        assert second.returncode == 12, second.stderr.decode()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=60) == 0
    assert (setup.unit_dir / "a.service.d" / "credbridge.conf").exists()


def test_a_run_that_is_staging_is_waited_for_not_wiped(tmp_path: Path, tmpfs_dir: Path) -> None:
    """Issue 7, 1: a second deliver used to wipe the first one's staging directory, so the
    first failed ("cannot prepare ...") or committed a torn set. Freeze the first run while its
    staging directory exists, start a second one, then let the first go on."""
    setup = Setup(tmp_path, tmpfs_dir, 300)
    setup.write()
    assert setup.run("deliver").returncode == 0

    def partial_staging() -> bool:
        """A new set half written (not an old set being removed after the swap)."""
        if (tmpfs_dir / "a.service" / "static").read_bytes() != b"static-1":
            return False
        for entry in os.listdir(tmpfs_dir):
            if entry.startswith(".a.service.staging-"):
                with contextlib.suppress(FileNotFoundError):
                    return len(os.listdir(tmpfs_dir / entry)) < 301
        return False

    attempts = 0
    for attempts in range(1, 41):  # noqa: B007 - reported below
        setup.static_file.write_bytes(b"static-2")
        first = setup.start("deliver")
        # Freeze it while it writes its new set; on a busy machine the poll may miss that
        # window (or freeze it a moment too late): then try again.
        while not partial_staging() and first.poll() is None:
            pass
        if first.poll() is None:
            os.kill(first.pid, signal.SIGSTOP)
            while Path(f"/proc/{first.pid}/stat").read_text().split()[2] != "T":
                time.sleep(0.001)
            if partial_staging():
                break
            os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate()
        assert first.returncode == 0, err.decode()
        setup.static_file.write_bytes(b"static-1")
        assert setup.run("deliver").returncode == 0
    else:
        pytest.fail("never caught a deliver while it was staging")
    print(f"caught a staging deliver at attempt {attempts}")
    try:
        log = tmp_path / "second.err"
        with log.open("wb") as stderr:
            second = subprocess.Popen(setup.argv("deliver"), stderr=stderr, cwd=setup.cwd)
        # Let the second run do all it can: finish, or wait for the lock the first one holds.
        deadline = time.monotonic() + 120
        while second.poll() is None and b"waiting for" not in log.read_bytes():
            assert time.monotonic() < deadline, "the second run neither finished nor waited"
            time.sleep(0.05)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    assert second.wait(timeout=120) == 0, log.read_text()
    a, b = setup.target("a.service"), setup.target("b.service")
    assert a is not None and b is not None
    assert len(a) == 301 and len(b) == 300
    assert a["static"] == b"static-2"
    assert not setup.leftovers()


QEMU = shutil.which("qemu-system-x86_64")
KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))


@pytest.mark.skipif(QEMU is None or not KERNELS, reason="needs qemu-system-x86_64 and a kernel")
def test_launch_among_deliveries_and_rotations(tmp_path: Path, tmpfs_dir: Path) -> None:
    """A VM sharing a generated credential with a unit target is launched while deliveries
    and rotations run: everything ends whole and the VM got a value the store holds.
    (launch holds the store's lock only while it resolves, not while the VM runs.)"""
    setup = Setup(tmp_path, tmpfs_dir, 3)
    runtime = tmpfs_dir / "run" / "vm"
    setup.write(
        extra=f"""
[targets.vm]
kind = "vm"
sink = "oem-strings"
[targets.vm.launcher]
type = "qemu"
kernel = "{KERNELS[-1] if KERNELS else ""}"
cmdline = "console=ttyS0 panic=-1"
accel = "tcg"
memory = "128M"
serial = "null"
runtime_dir = "{runtime}"
[targets.vm.credentials]
shared = "target:a.service/c000"
"""
    )
    assert setup.run("deliver").returncode == 0
    launch = setup.start("launch", "vm", fault="runtime.hypervisor-started@1:stop")
    # One rotation: the value the VM got must still be the store's current or previous one.
    others = [
        setup.start("rotate", "a.service", "c000"),
        setup.start("rotate", "a.service", "c001"),
    ]
    others += [setup.start("deliver") for _ in range(3)]
    others.append(setup.start("unit", "a.service", "--install", "--unit-dir", str(setup.unit_dir)))
    deadline = time.monotonic() + 120
    while Path(f"/proc/{launch.pid}/stat").read_text().split()[2] != "T":
        assert launch.poll() is None, launch.communicate()[1].decode()
        assert time.monotonic() < deadline, "the launch never reached the hypervisor"
        time.sleep(0.02)
    oem = (runtime / "smbios" / "oem-000").read_bytes()
    for proc in others:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    os.kill(launch.pid, signal.SIGTERM)
    os.kill(launch.pid, signal.SIGCONT)
    _, err = launch.communicate(timeout=120)
    assert launch.returncode in (0, 128 + signal.SIGTERM), err.decode()
    assert not runtime.exists()
    held = {setup.stored("a.service/c000"), setup.stored("a.service/c000", "previous")}
    encoded = {base64.b64encode(v) for v in held if v is not None}
    assert any(value in oem for value in encoded), "the VM got a value the store does not hold"
    a = setup.target("a.service")
    assert a is not None and set(a) == {"static", *setup.names()}
    assert a["c000"] in held
    assert not setup.leftovers()
