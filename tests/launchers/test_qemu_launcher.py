"""The qemu launcher and launchers/runtime.py: argv, version fallback, runtime dir, signals.

Processes here are real: QEMU (TCG) booting the host's kernel, QEMU's virtiofsd, credbridge as
a child process. Nothing here waits for a guest to finish booting.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from credbridge.core.config import parse_config
from credbridge.core.engine import Session
from credbridge.core.errors import ConfigError, LaunchError
from credbridge.core.secret import Secret
from credbridge.core.types import Delivery
from credbridge.launchers.qemu import QemuLauncher, escape, parse_version
from credbridge.launchers.qemu import smbios_path_works as works
from credbridge.launchers.runtime import (
    LOCK_NAME,
    VmRuntime,
    child_env,
    exit_status,
    find_virtiofsd,
)
from support.proc import children as proc_children
from support.proc import descendants

QEMU = shutil.which("qemu-system-x86_64")
KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))


def _virtiofsd() -> str | None:
    """virtiofsd as the launcher finds it (PATH, /usr/libexec, /usr/lib/qemu)."""
    try:
        return find_virtiofsd().path
    except LaunchError:
        return None


VIRTIOFSD = _virtiofsd()
SECRET = b"sup3r-s3cret,value\n\xff"

needs_qemu = pytest.mark.skipif(
    QEMU is None or not KERNELS, reason="needs qemu-system-x86_64 and a kernel in /boot"
)


def launcher_for(
    runtime: Path, sink: str = "oem-strings", **launcher: Any
) -> tuple[QemuLauncher, Session]:
    data = {
        "targets": {
            "vm": {
                "kind": "vm",
                "sink": sink,
                "launcher": {
                    "type": "qemu",
                    "kernel": "/boot/vmlinuz",
                    "runtime_dir": str(runtime),
                    **launcher,
                },
            }
        }
    }
    session = Session(parse_config(data, directory=Path("/tmp")))
    result = session.launcher(session.config.target("vm"))
    assert isinstance(result, QemuLauncher)
    return result, session


# --------------------------------------------------------------------------- pure logic


def test_escape_doubles_commas() -> None:
    assert escape("/run/a,b/c") == "/run/a,,b/c"


@pytest.mark.parametrize(
    ("banner", "version", "fixed"),
    [
        ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", (7, 2, 22), True),
        ("QEMU emulator version 7.2.18", (7, 2, 18), True),
        ("QEMU emulator version 7.2.17", (7, 2, 17), False),
        ("QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1.11)", (8, 2, 2), True),
        ("QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1.10)", (8, 2, 2), False),
        ("QEMU emulator version 9.2.0", (9, 2, 0), False),
        ("QEMU emulator version 10.0.0", (10, 0, 0), True),
        ("QEMU emulator version 10.1.50 (v10.1.0-123-gdeadbeef)", (10, 1, 50), True),
        ("QEMU emulator version 5.1.0", (5, 1, 0), False),
        ("something else", None, False),
    ],
)
def test_smbios_path_bug_detection(banner: str, version: Any, fixed: bool) -> None:
    assert parse_version(banner) == version
    assert works(parse_version(banner), banner) is fixed


def test_exit_status() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGTERM) == 143


def test_child_env_is_an_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "hvs.secret")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = child_env({"EXTRA": "1"})
    assert "VAULT_TOKEN" not in env
    assert env["LC_ALL"] == "C.UTF-8" and env["EXTRA"] == "1" and "PATH" in env


# --------------------------------------------------------------------------- argv


def test_argv_carries_paths_never_values(tmpfs_dir: Path) -> None:
    runtime = tmpfs_dir / "run,time"
    launcher, _ = launcher_for(
        runtime,
        smbios_path=True,
        disks=[{"path": "/img/a,b.raw", "readonly": True}],
        net=[{"tap": "tap0", "mac": "02:00:00:00:00:01"}],
        extra_args=["-no-reboot"],
    )
    with VmRuntime("vm", runtime) as rt:
        channel = rt.prepare(launcher.sink, [Delivery("db", Secret(SECRET))])
        argv = launcher.argv(channel, [runtime / "smbios" / "oem-000"], {})
    joined = "\0".join(argv).encode()
    assert SECRET not in joined and b"sup3r" not in joined
    assert "type=11,path=" + str(runtime).replace(",", ",,") + "/smbios/oem-000" in argv
    assert "file=/img/a,,b.raw,if=none,id=disk0,format=raw,readonly=on" in argv
    assert "tap,id=net0,ifname=tap0,script=no,downscript=no" in argv
    assert argv[argv.index("-accel") + 1] == "kvm" and argv.count("-accel") == 2
    assert argv[-1] == "-no-reboot"


def test_fw_cfg_and_virtiofs_argv(tmpfs_dir: Path) -> None:
    launcher, _ = launcher_for(tmpfs_dir / "rt", sink="fw-cfg")
    channel = launcher.sink.preview(["db"], tmpfs_dir / "rt")
    argv = launcher.argv(channel, [], {})
    assert f"name=opt/io.systemd.credentials/db,file={tmpfs_dir}/rt/fw_cfg/db" in argv
    launcher, _ = launcher_for(tmpfs_dir / "rt", sink="virtiofs", memory="256M")
    channel = launcher.sink.preview(["db"], tmpfs_dir / "rt")
    argv = launcher.argv(channel, [], {"credbridge": tmpfs_dir / "s.sock"})
    assert "q35,memory-backend=credbridge-mem" in argv
    assert "memory-backend-memfd,id=credbridge-mem,size=256M,share=on" in argv
    assert "vhost-user-fs-pci,chardev=virtiofs0,tag=credbridge" in argv


@pytest.mark.parametrize(
    ("serial", "chardev"),
    [
        ("tty", "stdio,id=serial0"),
        ("null", "null,id=serial0"),
        ("pty", "pty,id=serial0"),
        ("file:/var/log/a,b.log", "file,id=serial0,path=/var/log/a,,b.log"),
        ("socket:/run/s.sock", "socket,id=serial0,path=/run/s.sock,server=on,wait=off"),
    ],
)
def test_each_serial_mode_is_its_chardev(tmpfs_dir: Path, serial: str, chardev: str) -> None:
    launcher, _ = launcher_for(tmpfs_dir / "rt", sink="fw-cfg", serial=serial)
    argv = launcher.argv(launcher.sink.preview([], tmpfs_dir / "rt"), [], {})
    assert argv[argv.index("-serial") - 1] == chardev
    assert argv[argv.index("-serial") + 1] == "chardev:serial0"


def test_launcher_settings_are_checked(tmpfs_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"targets\.vm\.launcher\.accel"):
        launcher_for(tmpfs_dir, accel="kvm:t c g")
    with pytest.raises(ConfigError, match=r"targets\.vm\.launcher\.smbios_path"):
        launcher_for(tmpfs_dir, smbios_path="maybe")
    with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
        launcher_for(tmpfs_dir, bogus=1)


def test_version_decides_between_smbios_and_fw_cfg(tmpfs_dir: Path, tmp_path: Path) -> None:
    # Two stand-in QEMU binaries that answer --version as QEMU 9.1 and 10.0 do.
    banners = {
        "qemu-old": "QEMU emulator version 9.1.0 (Debian 1:9.1.0+ds-1)",
        "qemu-new": "QEMU emulator version 10.0.2",
    }
    for name, banner in banners.items():
        stub = tmp_path / name
        stub.write_text(
            f"#!/bin/sh\necho '{banner}'\necho 'Copyright (c) 2003-2024 Fabrice Bellard'\n"
        )
        stub.chmod(0o755)
    old, _ = launcher_for(tmpfs_dir / "rt", binary=str(tmp_path / "qemu-old"))
    plan = dict(old.plan({"db": Secret(SECRET)}))
    assert plan["delivery"] == "fw-cfg (fallback from oem-strings)"
    assert "9.1.0" in plan["warnings"][0] and "fw_cfg" in plan["warnings"][0]
    assert "-smbios" not in plan["argv"] and "-fw_cfg" in plan["argv"]
    new, _ = launcher_for(tmpfs_dir / "rt", binary=str(tmp_path / "qemu-new"))
    plan = dict(new.plan({"db": Secret(SECRET)}))
    assert plan["delivery"] == "oem-strings" and plan["warnings"] == []
    assert "-smbios" in plan["argv"] and "-fw_cfg" not in plan["argv"]
    forced, _ = launcher_for(tmpfs_dir / "rt", binary=str(tmp_path / "qemu-old"), smbios_path=True)
    assert forced.use_smbios_path() == (True, None)
    assert not (tmpfs_dir / "rt").exists(), "a plan writes nothing"


# --------------------------------------------------------------------------- runtime dir


def test_runtime_refuses_persistent_storage(disk_dir: Path) -> None:
    from credbridge.core.fsutil import is_memory_backed

    assert not is_memory_backed(disk_dir)
    with pytest.raises(ConfigError) as error:
        VmRuntime("vm", disk_dir / "rt", config_file="c.toml", key="t.runtime_dir").__enter__()
    assert str(error.value).startswith("c.toml: t.runtime_dir: runtime directory")
    assert not (disk_dir / "rt").exists()


def test_runtime_dir_is_private_and_removed_on_exception(tmpfs_dir: Path) -> None:
    path = tmpfs_dir / "vm"
    seen: list[int] = []

    def body() -> None:
        with VmRuntime("vm", path) as rt:
            seen.append(stat.S_IMODE(os.lstat(path).st_mode))
            seen.append(stat.S_IMODE(os.lstat(rt.write_file("secret", b"x")).st_mode))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        body()
    assert seen == [0o700, 0o400]
    assert not path.exists()


def test_stale_runtime_dir_is_wiped(tmpfs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmpfs_dir / "vm"
    (path / "smbios").mkdir(parents=True)
    (path / "smbios" / "oem-000").write_bytes(b"left over by a crashed run")
    (path / LOCK_NAME).write_text("4242424\n")
    with VmRuntime("vm", path):
        assert not (path / "smbios").exists()
        assert (path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert "stale runtime directory" in caplog.text and "4242424" in caplog.text
    assert not path.exists()


def test_live_runtime_dir_is_refused(tmpfs_dir: Path) -> None:
    path = tmpfs_dir / "vm"
    with VmRuntime("vm", path):
        with pytest.raises(LaunchError, match=f"VM vm is already running .*pid {os.getpid()}"):
            VmRuntime("vm", path).__enter__()
        assert path.exists()
    assert not path.exists()


def test_foreign_directory_is_not_wiped(tmpfs_dir: Path) -> None:
    foreign = tmpfs_dir / "foreign"
    foreign.mkdir(mode=0o700)
    (foreign / "data").write_text("not ours")
    with pytest.raises(LaunchError, match="not made by credbridge"):
        VmRuntime("vm", foreign).__enter__()
    assert (foreign / "data").exists()


# --------------------------------------------------------------------------- processes


def children(pid: int) -> list[int]:
    return descendants(pid)


def direct_children(pid: int) -> list[int]:
    return proc_children(pid)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def catches(pid: int, signum: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask.split()[1], 16) & (1 << (signum - 1)))


def wait_for(predicate: Any, what: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def vm_config(tmpfs_dir: Path) -> tuple[Path, Path]:
    """A config whose VM boots the host kernel without a root fs: it runs until stopped."""
    runtime = tmpfs_dir / "run" / "vm"
    (tmpfs_dir / "secret").write_bytes(SECRET)

    def write(sink: str) -> Path:
        config = tmpfs_dir / f"{sink}.toml"
        config.write_text(
            f"""
[store]
path = "{tmpfs_dir / "store"}"
[targets.vm]
kind = "vm"
sink = "{sink}"
[targets.vm.launcher]
type = "qemu"
kernel = "{KERNELS[-1]}"
cmdline = "console=ttyS0 panic=-1"
accel = "tcg"
memory = "256M"
serial = "null"
runtime_dir = "{runtime}"
{f'virtiofsd = "{VIRTIOFSD}"' if VIRTIOFSD else ""}
[targets.vm.credentials]
db = "file:{tmpfs_dir / "secret"}"
"""
        )
        return config

    write("oem-strings")
    write("virtiofs")
    return tmpfs_dir, runtime


def start_launch(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "launch", "vm"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def qemu_child(proc: subprocess.Popen[bytes]) -> int:
    found: list[int] = []

    def ready() -> bool:
        # Not the short-lived "qemu-system-x86_64 --version": the VM has "-name".
        found[:] = [
            p
            for p in children(proc.pid)
            if comm(p).startswith("qemu-system") and b"\0-name\0" in cmdline(p)
        ]
        # Ready once QEMU handles SIGTERM itself (before that the signal's default kills it).
        return (bool(found) and catches(found[0], signal.SIGTERM)) or proc.poll() is not None

    wait_for(ready, "QEMU started by credbridge")
    assert found, proc.communicate()[1].decode()
    return found[0]


def test_dry_run_prints_plan_without_values(vm_config: tuple[Path, Path]) -> None:
    base, runtime = vm_config
    result = subprocess.run(
        [
            *(sys.executable, "-m", "credbridge.core.cli"),
            *("-c", str(base / "oem-strings.toml"), "launch", "vm", "--dry-run"),
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    plan = json.loads(result.stdout)
    assert plan["credentials"] == [
        {"credential": "db", "change": "add", "detail": "SMBIOS type 11 OEM string"}
    ]
    assert f"type=11,path={runtime}/smbios/oem-000" in plan["argv"]
    assert b"sup3r" not in result.stdout + result.stderr
    assert not runtime.exists()


@needs_qemu
def test_sigterm_is_forwarded_and_everything_cleaned(vm_config: tuple[Path, Path]) -> None:
    base, runtime = vm_config
    proc = start_launch(base / "oem-strings.toml")
    qemu = qemu_child(proc)
    smbios = runtime / "smbios" / "oem-000"
    assert stat.S_IMODE(os.lstat(runtime).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(smbios).st_mode) == 0o400
    assert b"sup3r" not in Path(f"/proc/{qemu}/cmdline").read_bytes()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # QEMU handles SIGTERM by shutting down with status 0; credbridge passes that on.
    assert proc.returncode == 0, err.decode()
    assert b"terminating on signal 15" in err
    assert gone(qemu)
    assert not runtime.exists()


@needs_qemu
def test_killed_hypervisor_gives_128_plus_signal(vm_config: tuple[Path, Path]) -> None:
    base, runtime = vm_config
    proc = start_launch(base / "oem-strings.toml")
    qemu = qemu_child(proc)
    os.kill(qemu, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL, err.decode()
    assert not runtime.exists()


@needs_qemu
@pytest.mark.skipif(VIRTIOFSD is None, reason="no virtiofsd found where the launcher looks")
def test_dead_virtiofsd_stops_the_vm(vm_config: tuple[Path, Path]) -> None:
    base, runtime = vm_config
    proc = start_launch(base / "virtiofs.toml")
    qemu = qemu_child(proc)
    # The C virtiofsd forks into its sandbox: kill the process credbridge started.
    (helper,) = [p for p in direct_children(proc.pid) if comm(p) == "virtiofsd"]
    share = runtime / "virtiofs" / "credbridge"
    assert stat.S_IMODE(os.lstat(share).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(share / "db").st_mode) == 0o400
    os.kill(helper, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 10, err.decode()
    errors = [line for line in err.decode().splitlines() if "error:" in line]
    assert errors == [
        "credbridge: error: virtiofsd for share 'credbridge' exited with status 137 while "
        "VM vm was running; the VM was stopped"
    ]
    assert gone(qemu)
    assert not runtime.exists()


@needs_qemu
def test_crash_of_credbridge_kills_children_and_next_start_cleans(
    vm_config: tuple[Path, Path],
) -> None:
    base, runtime = vm_config
    proc = start_launch(base / "oem-strings.toml")
    qemu = qemu_child(proc)
    proc.kill()
    proc.communicate()
    wait_for(lambda: gone(qemu), "QEMU dies with credbridge (PR_SET_PDEATHSIG)")
    assert (runtime / "smbios" / "oem-000").exists(), "a SIGKILLed credbridge cannot clean up"
    second = start_launch(base / "oem-strings.toml")
    qemu_child(second)
    second.send_signal(signal.SIGINT)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err.decode()
    assert f"removing stale runtime directory {runtime}".encode() in err
    assert not runtime.exists()


def test_runtime_run_returns_128_plus_n_for_a_forwarded_signal(tmpfs_dir: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from credbridge.launchers.runtime import VmRuntime\n"
        f"with VmRuntime('vm', Path({str(tmpfs_dir / 'rt')!r})) as rt:\n"
        "    sys.exit(rt.run(['sleep', '300']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    sleeper: list[int] = []

    def started() -> bool:
        sleeper[:] = [p for p in children(proc.pid) if comm(p) == "sleep"]
        return bool(sleeper)

    wait_for(started, "sleep started")
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 128 + signal.SIGHUP
    assert gone(sleeper[0])
    assert not (tmpfs_dir / "rt").exists()
