"""The host guest of tests/core/test_host_guest.py and tests/nix/test_nixos_host_guest.py: what
their recipe adds to the image (microvm.nix's user, group and layout, the cloud-hypervisor API
stand-in as ``cloud-hypervisor``) and what building it needs on this machine. Both tests boot
the same recipe, so one cached image serves both."""

from __future__ import annotations

from support.ch_harness import REPO, SPEC_MISSING, SPEC_PATH

from guest.hostimage import GuestFile, HostGuestRecipe, missing_for_host_guest

STANDIN_WRAPPER = """#!/bin/sh
# A stand-in for cloud-hypervisor's API, not cloud-hypervisor (credbridge's test host guest).
# Recording mode: it answers the API, keeps the vm.create body in /run/ch-standin, boots nothing.
exec /opt/ch-standin/bin/python /usr/local/lib/ch-standin/ch_standin.py \\
    --standin-spec=/usr/local/lib/ch-standin/openapi.yaml --standin-mode=noboot \\
    --standin-record=/run/ch-standin/record.jsonl --standin-capture=/run/ch-standin "$@"
"""

MICROVM_RUN = """#!/bin/sh
# microvm.nix's runner would start the VM here; the credbridge drop-in replaces ExecStart=.
echo "microvm-run must not run: credbridge launches this VM" >&2
exit 1
"""


def recipe() -> HostGuestRecipe:
    dummy = b"not a kernel: the stand-in boots nothing\n"
    current = "/var/lib/microvms/test-vm/current"
    return HostGuestRecipe(
        commands=(
            ("sh", "-c", "getent group kvm >/dev/null || groupadd --system kvm"),
            (
                "useradd",
                "--system",
                "--gid",
                "kvm",
                "--home-dir",
                "/var/lib/microvms",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "microvm",
            ),
        ),
        venvs=(("/opt/ch-standin", ("pyyaml>=6", "openapi-schema-validator>=0.6")),),
        files=(
            GuestFile(
                "/usr/local/lib/ch-standin/ch_standin.py",
                (REPO / "tests" / "support" / "ch_standin.py").read_bytes(),
            ),
            GuestFile("/usr/local/lib/ch-standin/openapi.yaml", SPEC_PATH.read_bytes()),
            GuestFile("/usr/local/bin/cloud-hypervisor", STANDIN_WRAPPER.encode(), 0o755),
            GuestFile("/etc/tmpfiles.d/ch-standin.conf", b"d /run/ch-standin 0700 microvm kvm -\n"),
            GuestFile(f"{current}/kernel", dummy),
            GuestFile(f"{current}/initrd", dummy),
            GuestFile(f"{current}/bin/microvm-run", MICROVM_RUN.encode(), 0o755),
        ),
    )


def host_guest_missing() -> str | None:
    if not SPEC_PATH.is_file():
        return SPEC_MISSING
    return missing_for_host_guest("systemctl")
