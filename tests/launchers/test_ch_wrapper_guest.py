"""End to end: microvm.nix's cloud-hypervisor argv -> credbridge-cloud-hypervisor -> a real guest.

The wrapper is started the way microvm-run execs cloud-hypervisor (the argv microvm.nix's own
runner gives, evaluated from ../shared/vendor/microvm.nix, the working directory as
microvm@NAME.service's), its "real" binary being the API stand-in in boot mode
(tests/support/ch_standin.py: a stand-in for cloud-hypervisor's API, not cloud-hypervisor),
which boots the requested kernel/initramfs under QEMU (TCG) with ``platform.oem_strings`` as
one SMBIOS type 11 structure and ``fs`` as vhost-user-fs devices. The Debian guest's systemd (252 and
257, each test once per release) imports the credentials; the probe prints them back. Wrap runs in
``flock /tmp/credbridge-qemu.lock``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from guest.image import RELEASES, GuestImage, Release, missing_for_probe_guest, release_id
from guest.parallel import probe_guest, side_by_side
from guest.qemu import kernel_cmdline, parse_probe_output, probe_cmdline
from support.ch_harness import (
    SECRETS,
    SPEC_MISSING,
    SPEC_PATH,
    process_name,
    process_tree,
    read_records,
    scan_all_cmdlines,
    secret_forms,
    write_standin,
    write_vm_config,
)
from support.microvm_runner import runner_argv
from support.nixeval import to_nix

pytestmark = [pytest.mark.guest]


def _missing() -> str | None:
    if not SPEC_PATH.is_file() and os.environ.get("CI") != "true":
        return SPEC_MISSING
    return missing_for_probe_guest()


needs_guest = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def guest_image(request: pytest.FixtureRequest) -> GuestImage:
    return probe_guest(request.param)


def guest_runner_argv(image: GuestImage, cmdline_extra: str, workdir: Path) -> list[str]:
    """The vendored microvm.nix runner's argv for vcpu = 1, mem = 512, vsock.cid = 3,
    balloon = true, storeOnDisk = false, no volumes or shares, the test guest's kernel and
    initramfs as the kernel and initrd packages; kernelParams drive the in-guest probe."""
    kernel, initrd = workdir / "kernel-dev", workdir / "initrd"
    for package, name, target in (
        (kernel, "vmlinux", image.kernel),
        (initrd, "initrd", image.initramfs),
    ):
        package.mkdir(exist_ok=True)
        (package / name).unlink(missing_ok=True)
        (package / name).symlink_to(target)
    options = (
        "{ microvm.vsock.cid = 3; microvm.balloon = true; microvm.storeOnDisk = false; "
        f"microvm.kernelParams = [ {to_nix(cmdline_extra)} ]; }}"
    )
    paths = {"linux-dev": str(kernel), "initrd": str(initrd)}
    return runner_argv(options, workdir, paths=paths)


@needs_guest
@pytest.mark.parametrize("sink", ["oem-strings", "virtiofs"])
def test_guest_reads_credentials_byte_exact(
    request: pytest.FixtureRequest, sink: str, guest_image: GuestImage
) -> None:
    def work(release: Release, tmp: Path) -> None:
        files = tmp / "f"  # the runtime is tmp itself: its sockets' paths must fit sun_path
        files.mkdir()
        reads_credentials_byte_exact(sink, probe_guest(release), files, tmp)

    side_by_side(request, guest_image.release, work)


def reads_credentials_byte_exact(
    sink: str, guest_image: GuestImage, tmp_path: Path, tmpfs_dir: Path
) -> None:
    workdir = tmp_path / "var-lib-microvms-test-vm"
    workdir.mkdir()
    record = tmpfs_dir / "record.jsonl"
    standin = write_standin(tmpfs_dir, mode="boot", record=record)
    tag = "credbridge" if sink == "virtiofs" else None
    sink_table: Any = {"type": "virtiofs", "tag": tag} if tag else "oem-strings"
    config = write_vm_config(tmp_path, SECRETS, sink=sink_table)
    extra = kernel_cmdline(probe_cmdline(list(SECRETS), tag))
    argv = guest_runner_argv(guest_image, extra, workdir)
    env = {
        **os.environ,
        "CREDBRIDGE_VM": "test-vm",
        "CREDBRIDGE_CONFIG": str(config),
        "CREDBRIDGE_CLOUD_HYPERVISOR": str(standin),
        "RUNTIME_DIRECTORY": str(tmpfs_dir),
    }
    wrapper = Path(sys.executable).parent / "credbridge-cloud-hypervisor"
    console = tmp_path / "console.log"
    with open(console, "wb") as out:
        proc = subprocess.Popen(
            [str(wrapper), *argv],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
        )
        try:
            while not any(process_name(p).startswith("qemu") for p in process_tree(proc.pid)):
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
            leaks = scan_all_cmdlines(secret_forms(SECRETS.values()))
            _, err = proc.communicate(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = console.read_bytes().decode("utf-8", "replace")
    report = parse_probe_output(text)
    describe = f"status={proc.returncode}\nstderr={err.decode()[-3000:]}\n---\n{text[-5000:]}"
    assert proc.returncode == 0, describe
    assert report.done, describe
    assert not report.errors, describe
    assert report.values == SECRETS, describe
    assert leaks == [], describe
    create = next(r for r in read_records(record) if r["path"].endswith("vm.create"))
    assert create["oem_names"][0] == "io.systemd.credential:vmm.notify_socket"
    if sink == "oem-strings":
        assert set(SECRETS) <= report.listed, describe
    else:
        # The runner said mergeable=on,shared=off (no shares); the credentials' share needs
        # shared memory, which cloud-hypervisor refuses to merge.
        assert create["memory_shared"] is True
        assert create["fs_tags"] == ["credbridge"]
        assert report.virtiofs_files == dict.fromkeys(SECRETS, "0400"), describe
    for form in secret_forms(SECRETS.values()):
        assert form not in err
