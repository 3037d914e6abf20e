"""A symlink swapped in between planning and commit is refused, never written through (issue 26).

Planning refuses a symlinked directory (tests/core/test_hostile_fs.py); these tests put the symlink
in *after* that check. ``credbridge`` is started with the test-only switch
``-X credbridge-fault=POINT@N:stop`` (docs/reliability.md), so it stops itself (SIGSTOP) at one
write step; the test then moves the real directory aside, puts a symlink to a victim directory
in its place and lets the run go on (SIGCONT). This is done at every write step from the end of
resolving to the last step before the directory is committed, for every sink that writes a
directory: the credstore target directory and the drop-in directory of ``unit --install``.
Each run must exit 13 with the documented line ``unsafe path PATH: is a symlink (to VICTIM)``,
leave the victim as it was and the symlink in place (refused, not replaced), and deliver
all-or-nothing: every other target keeps its old set, and no staging directory is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.harness import CLI, Setup

VICTIM_FILE = "victim-file"


def stopped(process: subprocess.Popen[bytes]) -> None:
    """Wait until ``process`` stopped itself at its fault point."""
    deadline = time.monotonic() + 60
    while Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "the run never reached its fault point"
        time.sleep(0.01)


def swap_in_symlink(directory: Path, victim: Path) -> None:
    """What an attacker who could write the parent would do: the real directory aside, a
    symlink in its place (``directory`` may not exist yet)."""
    if directory.exists():
        directory.rename(directory.with_name(directory.name + ".moved-aside"))
    directory.symlink_to(victim)


def make_victim(root: Path) -> dict[str, bytes]:
    root.mkdir()
    (root / VICTIM_FILE).write_bytes(b"the victim's own file\n")
    return snapshot(root)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else b"<dir>"
        for path in sorted(root.rglob("*"))
    }


def run_with_swap(
    argv: list[str], point: str, directory: Path, victim: Path, cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (a credbridge command line without the interpreter), stopping at
    ``point``; swap the symlink in there; let it finish."""
    process = subprocess.Popen(
        [CLI[0], "-X", f"credbridge-fault={point}:stop", *CLI[1:], *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    try:
        stopped(process)
        swap_in_symlink(directory, victim)
        os.kill(process.pid, signal.SIGCONT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def assert_refused(
    result: subprocess.CompletedProcess[bytes],
    directory: Path,
    victim: Path,
    victim_before: dict[str, bytes],
) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == 13, stderr
    assert f"unsafe path {directory}: is a symlink (to {victim})" in stderr, stderr
    assert "Traceback" not in stderr
    assert directory.is_symlink() and os.readlink(directory) == str(victim), "link replaced"
    assert snapshot(victim) == victim_before, "something was written through the link"


# --------------------------------------------------------------------------- credstore

# The write steps of a second ``deliver`` (a.service: 3 credentials, one changed; b.service: 2)
# after resolving: staging a, staging b, then the commit of a and of b. What each is for is
# in docs/reliability.md; test_the_points_are_every_step_before_the_commit keeps the list
# in step with the code.
STEPS_BEFORE_A_COMMITS = [
    "engine.resolved@1",  # planning comes next
    "write.created@1",
    "write.written@1",
    "write.created@2",
    "write.written@2",
    "write.created@3",
    "write.written@3",
    "credstore.staged@1",
    "write.created@4",
    "write.written@4",
    "write.created@5",
    "write.written@5",
    "credstore.staged@2",
    "engine.commit@1",
    "credstore.commit.before-swap@1",  # after a's directory was checked, before the swap
]
STEPS_AFTER_A_COMMITS = [
    "credstore.commit.after-swap@1",
    "engine.commit@2",
    "credstore.commit.before-swap@2",
]


def delivered_setup(root: Path, credstore: Path) -> Setup:
    """Both targets delivered once, then the ``file:`` value changed: the next deliver
    replaces a.service's set (and swaps b.service's unchanged one)."""
    from credbridge.core.config import load_config
    from credbridge.core.engine import Session

    setup = Setup(root, credstore, 2)
    setup.write()
    with Session(load_config(setup.config)) as session:  # in-process: no interpreter start
        session.deliver()
    setup.static_file.write_bytes(b"static-2")
    return setup


def test_the_points_are_every_step_before_the_commit(tmp_path: Path, tmpfs_dir: Path) -> None:
    """The lists above are the real steps of that deliver, from resolving to b's commit."""
    setup = delivered_setup(tmp_path, tmpfs_dir / "cs")
    trace = tmp_path / "trace"
    result = setup.run("deliver", xopts=[f"credbridge-fault-trace={trace}"])
    assert result.returncode == 0, result.stderr.decode()
    steps = trace.read_text().split()
    counted: list[str] = []
    seen: dict[str, int] = {}
    for step in steps:
        seen[step] = seen.get(step, 0) + 1
        counted.append(f"{step}@{seen[step]}")
    start = counted.index("engine.resolved@1")
    end = counted.index("credstore.commit.before-swap@2")
    assert counted[start : end + 1] == STEPS_BEFORE_A_COMMITS + STEPS_AFTER_A_COMMITS


@pytest.mark.parametrize(
    ("target", "point"),
    [("a.service", point) for point in STEPS_BEFORE_A_COMMITS]
    + [("b.service", point) for point in STEPS_AFTER_A_COMMITS],
)
def test_a_symlink_swapped_in_for_a_target_directory_is_refused(
    tmp_path: Path, tmpfs_dir: Path, target: str, point: str
) -> None:
    setup = delivered_setup(tmp_path, tmpfs_dir / "cs")
    before = {name: setup.target(name) for name in ("a.service", "b.service")}
    victim = tmp_path / "victim"
    victim_before = make_victim(victim)
    live = setup.credstore / target
    result = run_with_swap(["-c", str(setup.config), "deliver"], point, live, victim, setup.cwd)
    assert_refused(result, live, victim, victim_before)
    other = "b.service" if target == "a.service" else "a.service"
    assert setup.target(other) == before[other], "the delivery was not all-or-nothing"
    moved = live.with_name(target + ".moved-aside")
    assert setup.target(moved.name) == before[target], "the moved-aside set was changed"
    assert not setup.leftovers(), "staging directories left behind"


@pytest.mark.parametrize("point", ["engine.commit@1", "credstore.commit.before-swap@1"])
def test_a_symlink_to_a_file_is_refused_as_a_symlink(
    tmp_path: Path, tmpfs_dir: Path, point: str
) -> None:
    """The commit looks at the entry itself (``lstat``), not at what a link points to: a
    link to a file is a symlink, not "not a directory"."""
    setup = delivered_setup(tmp_path, tmpfs_dir / "cs")
    before = setup.target("b.service")
    victim = tmp_path / "victim-file"
    victim.write_bytes(b"the victim's own file\n")
    live = setup.credstore / "a.service"
    result = run_with_swap(["-c", str(setup.config), "deliver"], point, live, victim, setup.cwd)
    stderr = result.stderr.decode()
    assert result.returncode == 13, stderr
    assert f"unsafe path {live}: is a symlink (to {victim})" in stderr, stderr
    assert live.is_symlink() and victim.read_bytes() == b"the victim's own file\n"
    assert setup.target("b.service") == before
    assert not setup.leftovers()


@pytest.mark.parametrize("point", ["engine.commit@1", "credstore.commit.before-swap@1"])
def test_a_symlink_where_no_target_directory_was_yet_is_refused(
    tmp_path: Path, tmpfs_dir: Path, point: str
) -> None:
    """The first delivery of a target: the symlink appears where its directory would go."""
    setup = delivered_setup(tmp_path, tmpfs_dir / "cs")
    for name in ("a.service", "b.service"):
        for entry in (setup.credstore / name).iterdir():
            entry.chmod(0o600)
            entry.unlink()
        (setup.credstore / name).rmdir()
    victim = tmp_path / "victim"
    victim_before = make_victim(victim)
    live = setup.credstore / "a.service"
    result = run_with_swap(["-c", str(setup.config), "deliver"], point, live, victim, setup.cwd)
    assert_refused(result, live, victim, victim_before)
    assert setup.target("b.service") is None, "the delivery was not all-or-nothing"
    assert not setup.leftovers(), "staging directories left behind"


# --------------------------------------------------------------------------- unit --install

UNIT_INSTALL_STEPS = [
    "lock.acquired@1",
    "write.created@1",
    "write.written@1",
    "atomic.before-rename@1",
]


def unit_install_setup(root: Path, credstore: Path) -> tuple[Setup, Path]:
    setup = Setup(root, credstore, 1)
    setup.write()
    units = root / "units"
    units.mkdir()
    result = setup.run("unit", "a.service", "--install", "--unit-dir", str(units))
    assert result.returncode == 0, result.stderr.decode()
    return setup, units


def test_the_unit_install_points_are_every_step_before_the_rename(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    setup, units = unit_install_setup(tmp_path, tmpfs_dir / "cs")
    trace = tmp_path / "trace"
    result = setup.run(
        "unit",
        "a.service",
        "--install",
        "--unit-dir",
        str(units),
        xopts=[f"credbridge-fault-trace={trace}"],
    )
    assert result.returncode == 0, result.stderr.decode()
    steps = trace.read_text().split()
    assert [f"{step}@1" for step in steps[: steps.index("atomic.after-rename")]] == (
        UNIT_INSTALL_STEPS
    )


@pytest.mark.parametrize("point", UNIT_INSTALL_STEPS)
def test_a_symlink_swapped_in_for_the_drop_in_directory_is_refused(
    tmp_path: Path, tmpfs_dir: Path, point: str
) -> None:
    setup, units = unit_install_setup(tmp_path, tmpfs_dir / "cs")
    dropin_dir = units / "a.service.d"
    victim = tmp_path / "victim"
    victim_before = make_victim(victim)
    result = run_with_swap(
        ["-c", str(setup.config), "unit", "a.service", "--install", "--unit-dir", str(units)],
        point,
        dropin_dir,
        victim,
        setup.cwd,
    )
    assert_refused(result, dropin_dir, victim, victim_before)
    assert b"installed" not in result.stderr


# --------------------------------------------------------------------------- virtiofs

# The write steps of ``launch`` with a virtiofs sink (two credentials) after the share directory
# was made (``mkdir@2``), up to the last one before virtiofsd is started on it (``mkdir@3``:
# the sockets directory).
VIRTIOFS_STEPS = [
    "mkdir@2",
    "write.created@1",
    "write.written@1",
    "write.created@2",
    "write.written@2",
    "mkdir@3",
]
VM_SECRETS = {"API_KEY": b"k3y-Zq8mW2vXr7tPa9LdNe4s", "DB_PASSWORD": b"password-Hq2Lr8Vd"}


def virtiofs_launch(tmpfs_dir: Path) -> tuple[list[str], Path, Path]:
    """``credbridge launch`` of a VM through the cloud-hypervisor stand-in (API only, exits
    at once after booting) with its credentials in a virtiofs share served by the real
    virtiofsd: the command line, the share directory and the stand-in's request record."""
    from support.ch_harness import write_config, write_standin

    record = tmpfs_dir / "record.jsonl"
    binary = write_standin(tmpfs_dir, exit_code=0, record=record)
    runtime = tmpfs_dir / "run"
    launcher = {"kernel": "/var/lib/microvms/test-vm/vmlinux", "binary": str(binary)}
    config = write_config(
        tmpfs_dir, {**launcher, "runtime_dir": str(runtime)}, VM_SECRETS, sink="virtiofs"
    )
    return ["-c", str(config), "launch", "test-vm"], runtime / "virtiofs" / "credbridge", record


def test_the_virtiofs_points_are_every_step_before_virtiofsd_starts(tmpfs_dir: Path) -> None:
    argv, _, _ = virtiofs_launch(tmpfs_dir)
    trace = tmpfs_dir / "trace"
    result = subprocess.run(
        [CLI[0], "-X", f"credbridge-fault-trace={trace}", *CLI[1:], *argv],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    counted: list[str] = []
    seen: dict[str, int] = {}
    for step in trace.read_text().split():
        seen[step] = seen.get(step, 0) + 1
        counted.append(f"{step}@{seen[step]}")
    start = counted.index("mkdir@2")
    assert counted[start : counted.index("runtime.hypervisor-started@1")] == VIRTIOFS_STEPS


@pytest.mark.parametrize("point", VIRTIOFS_STEPS)
def test_a_symlink_swapped_in_for_the_virtiofs_share_is_refused(
    tmp_path: Path, tmpfs_dir: Path, point: str
) -> None:
    """virtiofsd follows a symlink given as its shared directory: the guest would see the
    victim's files. The launch must stop before virtiofsd starts, and the VM never boot."""
    argv, share, record = virtiofs_launch(tmpfs_dir)
    victim = tmp_path / "victim"
    victim_before = make_victim(victim)
    result = run_with_swap(argv, point, share, victim, tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 13, stderr
    assert f"unsafe path {share}: is a symlink (to {victim})" in stderr, stderr
    assert snapshot(victim) == victim_before, "something was written through the link"
    assert not record.exists() or b"vm.create" not in record.read_bytes(), "the VM was created"
    assert not share.parent.parent.exists(), "the runtime directory was left behind"
