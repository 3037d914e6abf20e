"""``credbridge launch`` with the qemu launcher, proven inside real Debian guests (TCG):
Debian 12 (systemd 252) and Debian 13 (systemd 257), each test once per release.

For each channel the real CLI runs as a child process with a config using ``credential:``,
``file:`` and ``generate:`` sources; the guest's probe reports what systemd imported and what
a ``LoadCredential=`` service read. While the VM runs, every process credbridge started is
scanned for the values (raw and base64) in its argv and environment, and the runtime files
are checked for 0400 in 0700 directories; after exit they must be gone.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from guest.image import (  # noqa: E402
    EXAMPLES_GUEST_DIR,
    RELEASES,
    GuestImage,
    missing_for_probe_guest,
    release_id,
)
from guest.parallel import probe_guest, side_by_side  # noqa: E402
from guest.qemu import BASE_CMDLINE, ProbeReport, parse_probe_output, probe_cmdline  # noqa: E402
from support.proc import descendants  # noqa: E402


def _missing() -> str | None:
    if problem := missing_for_probe_guest():
        return problem
    if not Path("/dev/shm").is_dir():
        return "/dev/shm (tmpfs) is not available"
    return None


_SKIP = _missing()
pytestmark = [pytest.mark.guest, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

BINARY = bytes(range(256)) + b"\n\xff\x00\xff\n"
MULTILINE = b"first line\nsecond, with comma\n\nlast line\n"
NAMES = ["bin.key", "motd", "token"]
LAUNCH_TIMEOUT = 400.0


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def guest_image(request: pytest.FixtureRequest) -> GuestImage:
    return probe_guest(request.param)


class Watch:
    """Snapshots argv/environ of credbridge's process tree and the runtime dir while it runs."""

    def __init__(self, pid: int, runtime: Path) -> None:
        self.pid = pid
        self.runtime = runtime
        self.blobs: dict[int, bytes] = {}
        self.commands: set[str] = set()
        self.modes: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in [self.pid, *descendants(self.pid)]:
                for part in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{part}").read_bytes()
                    except (FileNotFoundError, ProcessLookupError, PermissionError):
                        continue
                    self.blobs[hash((pid, part, data))] = data
                with contextlib.suppress(FileNotFoundError):
                    self.commands.add(Path(f"/proc/{pid}/comm").read_text().strip())
            for root, dirs, files in os.walk(self.runtime):
                for name in dirs + files:
                    path = Path(root, name)
                    try:
                        mode = stat.S_IMODE(os.lstat(path).st_mode)
                    except FileNotFoundError:
                        continue
                    self.modes[str(path.relative_to(self.runtime))] = mode
            time.sleep(0.25)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()


def write_config(
    base: Path, sink: str, image: GuestImage, *, units: bool = False, **extra: str
) -> Path:
    creds = base / "creds"
    creds.mkdir(mode=0o700)
    (creds / "bin.key").write_bytes(BINARY)
    (base / "motd.txt").write_bytes(MULTILINE)
    if units:  # the guest's shipped run-credbridge.mount mounts the share (default tag)
        probe = probe_cmdline(NAMES, units=True)
    else:
        probe = probe_cmdline(NAMES, "credbridge" if sink == "virtiofs" else None)
    lines = "\n".join(f"{k} = {v}" for k, v in extra.items())
    config = base / "credbridge.toml"
    config.write_text(
        f"""
[store]
path = "{base / "store"}"

[targets.vm]
kind = "vm"
sink = "{sink}"

[targets.vm.launcher]
type = "qemu"
kernel = "{image.kernel}"
initramfs = "{image.initramfs}"
cmdline = "{BASE_CMDLINE} {probe}"
memory = "512M"
accel = "tcg"
runtime_dir = "{base / "run"}"
extra_args = ["-no-reboot"]
{lines}

[targets.vm.credentials]
"bin.key" = "credential:bin.key"
motd = "file:motd.txt"
token = "generate:hex?bytes=24"
"""
    )
    return config


def launch(config: Path, runtime: Path, creds: Path) -> tuple[int, str, str, Watch]:
    env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds))
    proc = subprocess.Popen(
        [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "launch", "vm"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    watch = Watch(proc.pid, runtime)
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate()
    finally:
        watch.finish()
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), watch


def forms(value: bytes) -> list[bytes]:
    """The value as it could leak: raw, each line, and base64 (also as part of a longer one)."""
    encoded = base64.b64encode(value)
    out = [value, encoded, encoded[:-4] if len(encoded) > 8 else encoded]
    out += [line for line in value.split(b"\n") if len(line) >= 6]
    return out


def run_channel(tmp: Path, sink: str, image: GuestImage, **extra: str) -> str:
    return run_channel_report(tmp, sink, image, **extra)[0]


def run_channel_report(
    tmp: Path, sink: str, image: GuestImage, *, units: bool = False, **extra: str
) -> tuple[str, ProbeReport]:
    config = write_config(tmp, sink, image, units=units, **extra)
    runtime = tmp / "run"
    rc, out, err, watch = launch(config, runtime, tmp / "creds")
    report = parse_probe_output(out)
    context = f"rc={rc}\nstderr:\n{err}\nconsole tail:\n{out[-4000:]}"
    assert rc == 0, context
    assert report.done, context
    token = subprocess.run(
        [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "get", "target:vm/token"],
        capture_output=True,
        check=True,
    ).stdout
    assert len(token) == 48
    expected = {"bin.key": BINARY, "motd": MULTILINE, "token": token}

    # Inside the guest: a LoadCredential= service read exactly the delivered bytes.
    assert report.values == expected, context
    assert not report.missing, context
    if sink == "virtiofs":
        assert report.virtiofs_mounted, context
        assert report.virtiofs_files == dict.fromkeys(NAMES, "0400"), context
    else:
        assert set(NAMES) <= report.listed, context

    # On the host: no value in any argv/environment of credbridge's process tree.
    assert "qemu-system-x86" in watch.commands, watch.commands
    for name, value in expected.items():
        for form in forms(value):
            for blob in watch.blobs.values():
                assert form not in blob, f"value of {name} visible in /proc/*/cmdline|environ"
    # While it ran: every runtime file 0400, every directory 0700; afterwards nothing left.
    dirs = {p for p in watch.modes if p in {"smbios", "fw_cfg", "virtiofs", "sockets"}}
    dirs |= {"virtiofs/credbridge"} & set(watch.modes)
    assert set(watch.modes) - dirs, f"{sink}: no runtime file seen while running"
    check_modes(watch.modes, dirs)
    assert not runtime.exists(), "runtime directory left behind"
    return err, report


def check_modes(watch_modes: dict[str, int], directories: set[str]) -> None:
    for path, mode in watch_modes.items():
        want = 0o700 if path in directories or path == "." else 0o400
        if path.endswith(".sock") or path.startswith(".credbridge.lock"):
            continue
        assert mode == want, f"{path}: {oct(mode)}"


def test_oem_strings_reach_the_guest(
    request: pytest.FixtureRequest, guest_image: GuestImage
) -> None:
    err = side_by_side(
        request,
        guest_image.release,
        lambda release, tmp: run_channel(tmp, "oem-strings", probe_guest(release)),
    )
    assert "fw_cfg" not in err  # 7.2.22 has the path= fix: no fallback


def test_fw_cfg_reaches_the_guest(request: pytest.FixtureRequest, guest_image: GuestImage) -> None:
    side_by_side(
        request,
        guest_image.release,
        lambda release, tmp: run_channel(tmp, "fw-cfg", probe_guest(release)),
    )


def test_oem_strings_fall_back_to_fw_cfg(
    request: pytest.FixtureRequest, guest_image: GuestImage
) -> None:
    err = side_by_side(
        request,
        guest_image.release,
        lambda release, tmp: run_channel(
            tmp, "oem-strings", probe_guest(release), smbios_path="false"
        ),
    )
    assert "delivered through fw_cfg" in err


@pytest.mark.skipif(
    not Path("/usr/lib/qemu/virtiofsd").exists() and shutil.which("virtiofsd") is None,
    reason="no virtiofsd",
)
def test_virtiofs_reaches_the_guest(
    request: pytest.FixtureRequest, guest_image: GuestImage
) -> None:
    side_by_side(
        request,
        guest_image.release,
        lambda release, tmp: run_channel(tmp, "virtiofs", probe_guest(release)),
    )


@pytest.mark.skipif(
    not Path("/usr/lib/qemu/virtiofsd").exists() and shutil.which("virtiofsd") is None,
    reason="no virtiofsd",
)
def test_virtiofs_through_the_shipped_guest_units(
    request: pytest.FixtureRequest, guest_image: GuestImage
) -> None:
    """examples/guest/ as shipped: run-credbridge.mount plus the credentials drop-in pattern.

    The probe does not mount the share itself: it starts run-credbridge.mount and gives
    the values service only the shipped drop-in (``RequiresMountsFor=/run/credbridge``,
    its ``LoadCredential=`` lines re-pointed at the probed names in the same pattern).
    """
    dropin = (EXAMPLES_GUEST_DIR / "credbridge-credentials.conf").read_text()
    assert re.search(r"^RequiresMountsFor=/run/credbridge$", dropin, re.M)
    loads = re.findall(r"^LoadCredential=(.*)$", dropin, re.M)
    assert loads, "the shipped drop-in has no LoadCredential= line"
    for load in loads:  # the pattern the probe applies to its names
        name, _, path = load.partition(":")
        assert path == f"/run/credbridge/{name}", load

    _err, report = side_by_side(
        request,
        guest_image.release,
        lambda release, tmp: run_channel_report(tmp, "virtiofs", probe_guest(release), units=True),
    )
    context = f"report: {report}"
    assert report.units == {"run-credbridge.mount": "active"}, context
    fstype, options = report.mounts["/run/credbridge"]
    assert fstype == "virtiofs", context
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(options.split(",")), context
    # The values service got the shipped drop-in's [Unit] part too.
    values_unit = "credbridge-probe-values.service"
    assert report.requires_mounts_for == {values_unit: "/run/credbridge"}, context
