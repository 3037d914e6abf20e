"""End to end: ``credbridge launch`` -> cloud-hypervisor API stand-in -> a real guest (QEMU TCG).

The stand-in (tests/support/ch_standin.py; a stand-in for cloud-hypervisor's API, not
cloud-hypervisor) is started by the launcher exactly as the real binary would be, validates
each request against the vendored OpenAPI spec and boots the requested kernel/initramfs, with
``platform.oem_strings`` as one SMBIOS type 11 structure and ``fs`` as vhost-user-fs devices.
The Debian guest's systemd (252 and 257, each test once per release) imports the credentials; the probe prints them back.

Also here: the opt-in run against a real ``cloud-hypervisor`` (needs the binary on PATH and a
usable /dev/kvm; skipped otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from guest.image import RELEASES, GuestImage, missing_for_probe_guest, release_id
from guest.parallel import probe_guest, side_by_side
from guest.qemu import kernel_cmdline, parse_probe_output, probe_cmdline
from support.ch_harness import (
    check_runtime_modes,
    process_name,
    process_tree,
    scan_tree,
    write_config,
    write_standin,
)

pytestmark = [pytest.mark.guest]
needs_guest = pytest.mark.skipif(
    missing_for_probe_guest() is not None, reason=missing_for_probe_guest() or ""
)

SECRETS: dict[str, bytes] = {
    "API_KEY": b"k3y-Zq8mW2vXr7tPa9LdNe4s",
    "MULTILINE": b'first line\nsecond line = with, commas [and] "quotes"\n\n',
    "BINARY": bytes(range(256)) + b"\x00\xff\x00",
}


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def guest_image(request: pytest.FixtureRequest) -> GuestImage:
    return probe_guest(request.param)


def run_launch(
    config: Path, console: Path, secrets: dict[str, bytes], run_dir: Path, vmm: str = "qemu"
) -> tuple[int, str, list[str], list[int]]:
    """Launch, scan the process tree once the VMM runs, wait; return status, stderr, leaks, pids."""
    env = dict(os.environ, CREDBRIDGE_LOAD_PLUGINS="")
    with open(console, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "launch", "test-vm"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            # Wait (no time limit: pytest-timeout bounds the test) until QEMU is running.
            while not any(process_name(p).startswith(vmm) for p in process_tree(proc.pid)):
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
            pids, leaks = scan_tree(proc.pid, secrets.values())
            modes = check_runtime_modes(run_dir) if run_dir.exists() else ["no runtime dir"]
            _, err = proc.communicate(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, err.decode(errors="replace"), leaks + modes, pids


@needs_guest
@pytest.mark.parametrize("sink", ["oem-strings", "virtiofs"])
def test_credentials_arrive_byte_exact_in_guest(
    request: pytest.FixtureRequest, sink: str, guest_image: GuestImage
) -> None:
    side_by_side(
        request,
        guest_image.release,
        lambda release, tmp: arrive_byte_exact_in_guest(sink, probe_guest(release), tmp),
    )


def arrive_byte_exact_in_guest(sink: str, guest_image: GuestImage, tmpfs_dir: Path) -> None:
    run_dir = tmpfs_dir / "run"
    record = tmpfs_dir / "record.jsonl"
    binary = write_standin(tmpfs_dir, mode="boot", record=record)
    tag = "credbridge" if sink == "virtiofs" else None
    settings: dict[str, Any] = {
        "binary": str(binary),
        "kernel": str(guest_image.kernel),
        "initramfs": str(guest_image.initramfs),
        "cmdline": kernel_cmdline(probe_cmdline(list(SECRETS), tag)),
        "memory": "512M",
        "cpus": 1,
        "serial": "tty",
        "console": "off",
        "runtime_dir": str(run_dir),
    }
    sink_table: Any = {"type": "virtiofs", "tag": tag} if tag else "oem-strings"
    config = write_config(tmpfs_dir, settings, SECRETS, sink=sink_table)
    console = tmpfs_dir / "console.log"
    status, err, problems, pids = run_launch(config, console, SECRETS, run_dir)
    text = console.read_bytes().decode("utf-8", "replace")
    report = parse_probe_output(text)
    describe = f"status={status}\nstderr={err[-3000:]}\n--- console tail ---\n{text[-5000:]}"
    assert status == 0, describe
    assert report.done, describe
    assert not report.errors, describe
    assert report.values == SECRETS, describe
    assert report.missing == set(), describe
    if sink == "oem-strings":
        assert set(SECRETS) <= report.listed, describe
    else:
        assert report.virtiofs_mounted, describe
        assert report.virtiofs_files == dict.fromkeys(SECRETS, "0400"), describe
    # While QEMU ran: no value in any argv/environ, runtime files 0400 in 0700 dirs.
    assert problems == [], describe
    assert any(process_name(p).startswith("qemu") for p in pids) or len(pids) >= 3
    assert not run_dir.exists()
    for value in SECRETS.values():
        assert value not in err.encode()


# --------------------------------------------------------------------------- real binary


def _real_binary_missing() -> str | None:
    if shutil.which("cloud-hypervisor") is None:
        return "no cloud-hypervisor binary on PATH (this opt-in test runs the real one)"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return f"/dev/kvm is not usable ({error.strerror}); cloud-hypervisor needs KVM"
    os.close(fd)
    return missing_for_probe_guest()


@pytest.mark.skipif(_real_binary_missing() is not None, reason=_real_binary_missing() or "")
def test_real_cloud_hypervisor(guest_image: GuestImage, tmpfs_dir: Path) -> None:
    """The same launch against the real cloud-hypervisor (opt-in: binary + KVM needed)."""
    run_dir = tmpfs_dir / "run"
    settings: dict[str, Any] = {
        "binary": shutil.which("cloud-hypervisor") or "cloud-hypervisor",
        "kernel": str(guest_image.kernel),
        "initramfs": str(guest_image.initramfs),
        "cmdline": kernel_cmdline(probe_cmdline(list(SECRETS))),
        "memory": "512M",
        "serial": "tty",
        "console": "off",
        "runtime_dir": str(run_dir),
    }
    config = write_config(tmpfs_dir, settings, SECRETS)
    console = tmpfs_dir / "console.log"
    status, err, problems, _ = run_launch(config, console, SECRETS, run_dir, "cloud-hyperviso")
    text = console.read_bytes().decode("utf-8", "replace")
    report = parse_probe_output(text)
    describe = f"status={status}\nstderr={err[-3000:]}\n--- console ---\n{text[-5000:]}"
    assert status == 0, describe
    assert report.values == SECRETS, describe
    assert problems == [], describe
    assert not run_dir.exists()
