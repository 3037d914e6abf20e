"""End-to-end checks of the guest harness with plain QEMU arguments (no credbridge code).

Each test boots a real Debian guest under QEMU TCG, once per release (Debian 12 with systemd
252, Debian 13 with systemd 257; the test ids say ``systemd252``/``systemd257``), and checks
that a credential delivered over one channel reaches a service byte-exact.
The first run builds the guest image (about half a minute, needs root and the
Debian mirror); later runs reuse the cache.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

# The harness lives in tests/guest/ and is imported as the top-level package ``guest``
# (tests/ has no __init__.py; pytest's default import mode puts tests/ on sys.path too).
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from guest.image import (  # noqa: E402
    RELEASES,
    GuestBuildError,
    GuestImage,
    HostKernel,
    Release,
    boot_kernel,
    find_host_kernel,
    has_pvh_entry,
    missing_for_probe_guest,
    release_id,
    uncompressed_kernel,
)
from guest.parallel import probe_guest, side_by_side  # noqa: E402
from guest.qemu import (  # noqa: E402
    BootResult,
    boot,
    parse_probe_output,
    probe_cmdline,
    qemu_argv,
    start_virtiofsd,
    virtiofs_qemu_args,
)

_SKIP = missing_for_probe_guest()

pytestmark = pytest.mark.guest
needs_guest = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def guest_image(request: pytest.FixtureRequest) -> GuestImage:
    return probe_guest(request.param)


def _assert_clean(result: BootResult, image: GuestImage) -> None:
    assert result.done, result.describe()
    assert not result.timed_out, result.describe()
    assert not result.errors, result.describe()
    # The guest runs the systemd its release ships, not the other one.
    assert result.systemd_version == image.release.systemd, result.describe()


def test_parse_probe_output_tolerates_noise() -> None:
    text = (
        "SeaBIOS noise\r\n"
        "CBPROBE start\r\n"
        "CBPROBE list alpha  secure 5B /run/credentials/@system/alpha\r\n"
        "[    4.1] kernel: CBPROBE value alpha Yf8KYgo=\r\n"
        "CBPROBE value empty \r\n"
        "CBPROBE missing nope\n"
        "CBPROBE virtiofs-mounted cb\n"
        "CBPROBE virtiofs-file a b 0400\n"
        "CBPROBE done\n"
    )
    report = parse_probe_output(text)
    assert report.started
    assert report.done
    assert report.listed == {"alpha"}
    assert report.values == {"alpha": b"a\xff\nb\n", "empty": b""}
    assert report.missing == {"nope"}
    assert report.virtiofs_mounted
    assert report.virtiofs_files == {"a b": "0400"}
    assert not report.errors


def test_probe_cmdline_rejects_unusable_names() -> None:
    assert probe_cmdline(["a", "b.c"], "tag") == "credbridge.probe=a,b.c credbridge.virtiofs=tag"
    with pytest.raises(ValueError, match="unusable"):
        probe_cmdline(["a,b"])


def test_find_host_kernel_picks_newest_6x(tmp_path: Path) -> None:
    boot_dir, modules = tmp_path / "boot", tmp_path / "modules"
    boot_dir.mkdir()
    for version in ("5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64", "6.12.0-1-amd64"):
        (boot_dir / f"vmlinuz-{version}").write_bytes(b"k")
        if version != "6.12.0-1-amd64":  # no modules: not usable
            (modules / version).mkdir(parents=True)
            (modules / version / "modules.dep").write_text("")
    assert find_host_kernel(boot_dir, modules).version == "6.1.0-56-amd64"
    with pytest.raises(GuestBuildError, match=r"no installed Linux 6\.x kernel"):
        find_host_kernel(tmp_path / "empty", modules)


@needs_guest
def test_guests_boot_the_host_kernel_uncompressed_through_pvh(tmp_path: Path) -> None:
    kernel = find_host_kernel()
    booted = boot_kernel(kernel, tmp_path)
    vmlinux = booted.read_bytes()
    # Linux itself (the ELF image the bzImage unpacks), with the PVH entry QEMU starts it at.
    assert vmlinux.startswith(b"\x7fELF") and has_pvh_entry(vmlinux)
    assert vmlinux == uncompressed_kernel(kernel.vmlinuz.read_bytes())
    assert not has_pvh_entry(kernel.vmlinuz.read_bytes())
    assert boot_kernel(kernel, tmp_path) == booted  # cached, not unpacked again
    # A kernel that cannot be read that way is booted as it is.
    odd = tmp_path / "boot" / "vmlinuz-6.1.0-odd"
    odd.parent.mkdir()
    odd.write_bytes(b"MZ" + b"\0" * 4096)
    assert uncompressed_kernel(odd.read_bytes()) is None
    assert boot_kernel(HostKernel("6.1.0-odd", odd, kernel.modules_dir), tmp_path) == odd


@needs_guest
def test_argv_is_tcg_and_carries_extra_args(guest_image: GuestImage) -> None:
    argv = qemu_argv(
        guest_image, ["-smbios", "type=11,value=x"], cmdline_extra="foo=bar", shared_memory=True
    )
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-enable-kvm" not in argv
    assert argv[-2:] == ["-smbios", "type=11,value=x"]
    append = argv[argv.index("-append") + 1]
    assert "rdinit=/sbin/init" in append
    assert append.endswith("foo=bar")
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in argv


@needs_guest
def test_smbios_binary_credentials_arrive_byte_exact(
    request: pytest.FixtureRequest, guest_image: GuestImage
) -> None:
    alpha = b"first line\n\xff\x00\x01 second line\n"
    other = b"\nplain-ish text with = and , inside\n"

    def work(release: Release, _tmp: Path) -> BootResult:
        return boot(
            probe_guest(release),
            [
                "-smbios",
                "type=11,value=io.systemd.credential.binary:alpha="
                + base64.b64encode(alpha).decode(),
                "-smbios",
                "type=11,value=io.systemd.credential.binary:other="
                + base64.b64encode(other).decode(),
            ],
            cmdline_extra=probe_cmdline(["alpha", "other", "absent"]),
        )

    result = side_by_side(request, guest_image.release, work)
    _assert_clean(result, guest_image)
    assert {"alpha", "other"} <= result.listed, result.describe()
    assert result.values.get("alpha") == alpha, result.describe()
    assert result.values.get("other") == other, result.describe()
    assert result.missing == {"absent"}, result.describe()


@needs_guest
def test_fw_cfg_credential_arrives_byte_exact(
    request: pytest.FixtureRequest, guest_image: GuestImage
) -> None:
    beta = b"be\x00ta\n\xff\xfe tail"

    def work(release: Release, tmp: Path) -> BootResult:
        secret = tmp / "beta"
        secret.write_bytes(beta)
        secret.chmod(0o400)
        return boot(
            probe_guest(release),
            ["-fw_cfg", f"name=opt/io.systemd.credentials/beta,file={secret}"],
            cmdline_extra=probe_cmdline(["beta"]),
        )

    result = side_by_side(request, guest_image.release, work)
    _assert_clean(result, guest_image)
    assert "beta" in result.listed, result.describe()
    assert result.values.get("beta") == beta, result.describe()
    assert not result.missing, result.describe()


@pytest.fixture
def virtiofsd_found() -> None:
    from credbridge.core.errors import LaunchError
    from credbridge.launchers.runtime import find_virtiofsd as launcher_finds_virtiofsd

    try:  # where the launcher looks (PATH, /usr/libexec, /usr/lib/qemu), as a user's VM would
        launcher_finds_virtiofsd()
    except LaunchError as error:
        pytest.skip(str(error))


@needs_guest
@pytest.mark.usefixtures("virtiofsd_found")
def test_virtiofs_credential_arrives_byte_exact(
    request: pytest.FixtureRequest, guest_image: GuestImage
) -> None:
    files = {"gamma": b"gam\x00ma\n\xff", "delta.key": b"-----BEGIN-----\nabc\n-----END-----\n"}

    def work(release: Release, tmp: Path) -> BootResult:
        shared, sock = tmp / "share", tmp / "virtiofsd.sock"
        shared.mkdir(mode=0o700)
        for name, data in files.items():
            path = shared / name
            path.write_bytes(data)
            path.chmod(0o400)
        daemon = start_virtiofsd(shared, sock)
        try:
            return boot(
                probe_guest(release),
                virtiofs_qemu_args(sock, tag="cbtest"),
                cmdline_extra=probe_cmdline(sorted(files), virtiofs_tag="cbtest"),
                shared_memory=True,
            )
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()

    result = side_by_side(request, guest_image.release, work)
    _assert_clean(result, guest_image)
    assert result.virtiofs_mounted, result.describe()
    assert result.virtiofs_files == {name: "0400" for name in files}, result.describe()
    assert result.values == files, result.describe()
    assert not result.missing, result.describe()
