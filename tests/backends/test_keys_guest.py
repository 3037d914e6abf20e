"""Generated SSH keys delivered into the real Debian guests (QEMU TCG; Debian 12 with systemd
252 and Debian 13 with 257) over OEM strings.

The operator's public key goes in as the system credential ``ssh.authorized_keys.root``;
systemd's own ``tmpfiles.d/provision.conf`` (systemd 252+) writes it to
``/root/.ssh/authorized_keys`` at boot. The VM's SSH host key goes in as a credential that a
``LoadCredential=`` service reads (sshd takes host keys from credentials only from systemd 256
on; on 252 a unit copies it into /etc/ssh, see docs/sources/generate.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from guest.image import RELEASES, GuestImage, missing_for_probe_guest, release_id  # noqa: E402
from guest.parallel import probe_guest, side_by_side  # noqa: E402
from guest.qemu import BASE_CMDLINE, parse_probe_output, probe_cmdline  # noqa: E402

_SKIP = missing_for_probe_guest("ssh-keygen")
pytestmark = [pytest.mark.guest, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

AUTHORIZED = "ssh.authorized_keys.root"
HOST_KEY = "ssh-host-ed25519"
OPERATOR = "generate:ssh-ed25519?id=operator/ssh&comment=operator%40example"
HOST = "generate:ssh-ed25519?id=vm/ssh-host&comment=root%40vm"
FILES = ["/root/.ssh", "/root/.ssh/authorized_keys", "/usr/lib/tmpfiles.d/provision.conf"]


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def guest_image(request: pytest.FixtureRequest) -> GuestImage:
    return probe_guest(request.param)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=400,
        check=False,
    )


def test_authorized_key_and_host_key_reach_the_guest(
    request: pytest.FixtureRequest, guest_image: GuestImage
) -> None:
    side_by_side(
        request,
        guest_image.release,
        lambda release, tmp: keys_reach_the_guest(tmp, probe_guest(release)),
    )


def keys_reach_the_guest(tmpfs_dir: Path, guest_image: GuestImage) -> None:
    probe = probe_cmdline([AUTHORIZED, HOST_KEY], files=FILES)
    config = tmpfs_dir / "credbridge.toml"
    config.write_text(
        f"""
[store]
path = "{tmpfs_dir / "store"}"

[targets.vm]
kind = "vm"
sink = "oem-strings"

[targets.vm.launcher]
type = "qemu"
kernel = "{guest_image.kernel}"
initramfs = "{guest_image.initramfs}"
cmdline = "{BASE_CMDLINE} {probe}"
memory = "512M"
accel = "tcg"
runtime_dir = "{tmpfs_dir / "run"}"
extra_args = ["-no-reboot"]

[targets.vm.credentials]
"{AUTHORIZED}" = "{OPERATOR}#public"
"{HOST_KEY}" = "{HOST}"
"""
    )
    launched = cli(config, "launch", "vm")
    console = launched.stdout.decode(errors="replace")
    context = f"rc={launched.returncode}\nstderr:\n{launched.stderr.decode()}\n{console[-4000:]}"
    assert launched.returncode == 0, context
    report = parse_probe_output(console)
    assert report.done, context

    operator_public = cli(config, "get", OPERATOR + "#public").stdout
    host_private = cli(config, "get", HOST).stdout
    host_public = cli(config, "get", HOST + "#public").stdout
    assert operator_public.startswith(b"ssh-ed25519 ") and operator_public.endswith(
        b" operator@example\n"
    )
    # Both credentials arrived as system credentials, byte for byte.
    assert report.values == {AUTHORIZED: operator_public, HOST_KEY: host_private}, context

    # The release's own systemd (252 or 257): its provision.conf turned the credential into
    # root's authorized_keys.
    assert report.systemd_version == guest_image.release.systemd, context
    provision = report.files["/usr/lib/tmpfiles.d/provision.conf"][2] or b""
    assert b"f^ /root/.ssh/authorized_keys :0600 root :root - ssh.authorized_keys.root" in (
        provision
    )
    assert report.files["/root/.ssh"][:2] == ("0700", "root:root"), context
    assert report.files["/root/.ssh/authorized_keys"] == (
        "0600",
        "root:root",
        operator_public,
    ), context

    # The host key the guest got is the private half of the stored #public.
    key_file = tmpfs_dir / "host_key"
    key_file.write_bytes(host_private)
    key_file.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, check=True
    ).stdout
    assert derived == host_public
