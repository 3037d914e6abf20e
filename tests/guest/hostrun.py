"""Boot the host guest (:mod:`tests.guest.hostimage`) once with a test payload.

The payload is a set of files packed into a tar archive and handed to the guest through
fw_cfg; on every boot ``cbhost-driver.service`` unpacks it into ``/run/cbhost`` and runs its
executable ``driver``. The driver reports on the serial console with lines
``CBHOST {json}`` and ends the run with ``CBHOST-DONE`` (then powers the guest off). A driver
may reboot the guest: QEMU resets and boots the same kernel from the same disk (a
``snapshot=on`` overlay, so the cached image is never written), and the driver runs again.

    image = ensure_host_guest(recipe)
    run = run_host_guest(image, {"driver": script.encode(), "app.toml": config})
    assert run.done, run.describe()
    events = run.events("deliver")
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hostimage import CONSOLE_PREFIX, DONE_MARKER, PAYLOAD_FW_CFG, HostGuestImage
from .qemu import QEMU_BINARY, HarnessError, qemu_binary, run_console, tcg_machine_argv

HOST_CMDLINE = (
    "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3 systemd.show_status=0 "
    "mitigations=off fsck.mode=skip"
)


@dataclass(frozen=True)
class HostRun:
    """What one QEMU process (any number of guest boots) printed."""

    argv: list[str]
    console: str
    returncode: int | None
    timed_out: bool
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    problems: list[str] = field(default_factory=list)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == kind]

    def event(self, kind: str) -> dict[str, Any]:
        found = self.events(kind)
        if len(found) != 1:
            raise AssertionError(
                f"expected one {kind!r} event, got {len(found)}\n{self.describe()}"
            )
        return found[0]

    def describe(self) -> str:
        crashes = [r for r in self.records if r.get("event") in {"crash", "error"}]
        return (
            f"qemu rc={self.returncode} timed_out={self.timed_out} done={self.done} "
            f"seconds={self.seconds:.0f} problems={self.problems} crashes={crashes}\n"
            f"--- console tail ---\n{self.console[-8000:]}"
        )


def finished(run: HostRun) -> HostRun:
    """``run``, checked to have ended as its driver meant: in time, with ``CBHOST-DONE``, no
    ``error`` event and every console record readable."""
    assert not run.timed_out, run.describe()
    assert run.done, run.describe()
    assert run.events("error") == [], run.describe()
    assert run.problems == [], run.describe()
    return run


def parse_console(text: str) -> tuple[list[dict[str, Any]], bool, list[str]]:
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    done = False
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        if DONE_MARKER in line:
            done = True
            continue
        pos = line.find(CONSOLE_PREFIX + " ")
        if pos < 0:
            continue
        body = line[pos + len(CONSOLE_PREFIX) + 1 :].strip()
        try:
            record = json.loads(body)
        except ValueError:
            problems.append(f"unparsable console line: {body[:200]!r}")
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            problems.append(f"console record is not an object: {body[:200]!r}")
    return records, done, problems


def payload_archive(files: Mapping[str, bytes], executable: Sequence[str] = ("driver",)) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o700 if name in executable else 0o600
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def host_qemu_argv(
    image: HostGuestImage,
    payload: Path,
    *,
    memory_mb: int = 1024,
    cpus: int = 2,
    qemu: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    return [
        *tcg_machine_argv(qemu, memory_mb=memory_mb, cpus=cpus),
        "-kernel", str(image.kernel),
        "-initrd", str(image.initramfs),
        "-append", HOST_CMDLINE,
        "-drive", f"file={image.disk},format=raw,if=virtio,snapshot=on",
        "-device", "virtio-rng-pci",
        "-fw_cfg", f"name={PAYLOAD_FW_CFG},file={payload}",
        *extra_args,
    ]  # fmt: skip


def run_host_guest(
    image: HostGuestImage,
    files: Mapping[str, bytes],
    *,
    timeout: float = 900,
    memory_mb: int = 1024,
    cpus: int = 2,
    extra_args: Sequence[str] = (),
) -> HostRun:
    """Boot the host guest with ``files`` as its payload (``driver`` must be among them);
    ``extra_args`` go to QEMU as they are (devices such as a TPM, :mod:`tests.guest.swtpm`)."""
    if "driver" not in files:
        raise ValueError("the payload needs an executable 'driver'")
    binary = qemu_binary()
    if binary is None:
        raise HarnessError(f"{QEMU_BINARY} not found (apt-get install qemu-system-x86)")
    with tempfile.TemporaryDirectory(prefix="cbhost-") as tmp:
        payload = Path(tmp) / "payload.tar"
        payload.write_bytes(payload_archive(files))
        argv = host_qemu_argv(
            image, payload, memory_mb=memory_mb, cpus=cpus, qemu=binary, extra_args=extra_args
        )
        run = run_console(argv, DONE_MARKER.encode(), timeout=timeout)
    records, done, problems = parse_console(run.console)
    return HostRun(
        argv=argv,
        console=run.console,
        returncode=run.returncode,
        timed_out=run.timed_out,
        seconds=run.seconds,
        records=records,
        done=done,
        problems=problems,
    )
