"""Boot the test guest under QEMU (TCG only) and parse what the probe reports.

Typical use::

    image = ensure_guest()
    result = boot(image, ["-fw_cfg", f"name=opt/io.systemd.credentials/beta,file={path}"],
                  cmdline_extra=probe_cmdline(["beta"]))
    assert result.values["beta"] == b"..."
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .image import GuestImage
from .probe import PROBE_PREFIX

QEMU_BINARY = "qemu-system-x86_64"
#: Seconds QEMU gets to power off by itself after ``CBPROBE done`` before it is killed.
POWEROFF_GRACE = 20.0
#: Base kernel command line; systemd runs from the initramfs as a normal system.
BASE_CMDLINE = (
    "console=ttyS0 rdinit=/sbin/init panic=-1 quiet loglevel=3 "
    "systemd.show_status=0 mitigations=off"
)
DEFAULT_VIRTIOFS_TAG = "credbridge"

_LINE_RE = re.compile(PROBE_PREFIX + r" (\S+)(?: (.*))?$")


class HarnessError(RuntimeError):
    """The harness cannot run here (missing binary, virtiofsd failed, ...)."""


@dataclass(frozen=True)
class ProbeReport:
    """What the in-guest probe printed, parsed."""

    listed: set[str] = field(default_factory=set)
    values: dict[str, bytes] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    virtiofs_files: dict[str, str] = field(default_factory=dict)
    virtiofs_mounted: bool = False
    #: ``CBPROBE unit NAME STATE``: state of a shipped unit (``credbridge.units=1``).
    units: dict[str, str] = field(default_factory=dict)
    #: ``CBPROBE mount WHERE FSTYPE OPTIONS``: WHERE -> (FSTYPE, OPTIONS).
    mounts: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: ``CBPROBE requires-mounts-for UNIT PATHS``: effective RequiresMountsFor= of a unit.
    requires_mounts_for: dict[str, str] = field(default_factory=dict)
    #: ``credbridge.files=``: PATH -> (MODE, OWNER:GROUP, CONTENT); directories have no content.
    files: dict[str, tuple[str, str, bytes | None]] = field(default_factory=dict)
    #: ``CBPROBE systemd-version N``: the guest's systemd version.
    systemd_version: int | None = None
    started: bool = False
    done: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BootResult:
    """Outcome of one guest boot."""

    argv: list[str]
    console: str
    returncode: int | None
    timed_out: bool
    seconds: float
    #: Seconds from QEMU start until ``CBPROBE done`` appeared (None if it never did).
    seconds_to_done: float | None
    listed: set[str]
    values: dict[str, bytes]
    missing: set[str]
    virtiofs_files: dict[str, str]
    virtiofs_mounted: bool
    done: bool
    errors: list[str]
    units: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, tuple[str, str]] = field(default_factory=dict)
    requires_mounts_for: dict[str, str] = field(default_factory=dict)
    #: The guest's systemd version, as the probe read it from ``systemctl --version``.
    systemd_version: int | None = None

    def describe(self) -> str:
        """Short text for assertion messages: the tail of the console."""
        tail = self.console[-6000:]
        return (
            f"qemu rc={self.returncode} timed_out={self.timed_out} done={self.done} "
            f"errors={self.errors}\n--- console tail ---\n{tail}"
        )


def qemu_binary() -> str | None:
    """Path of ``qemu-system-x86_64`` or None."""
    return shutil.which(QEMU_BINARY)


def probe_cmdline(
    names: Sequence[str],
    virtiofs_tag: str | None = None,
    *,
    units: bool = False,
    files: Sequence[str] = (),
) -> str:
    """Kernel command line words that drive the in-guest probe.

    ``units=True`` makes the probe use the shipped guest files (``run-credbridge.mount``,
    tag ``credbridge``, and the ``credbridge-credentials.conf`` drop-in pattern) instead
    of mounting the share itself; it excludes ``virtiofs_tag``.
    """
    if units and virtiofs_tag is not None:
        raise ValueError("units=True mounts the share through run-credbridge.mount: no tag")
    for name in names:
        if not name or "," in name or any(c.isspace() for c in name):
            raise ValueError(f"credential name unusable on the kernel command line: {name!r}")
    words = [f"credbridge.probe={','.join(names)}"]
    if virtiofs_tag is not None:
        words.append(f"credbridge.virtiofs={virtiofs_tag}")
    if units:
        words.append("credbridge.units=1")
    if files:
        for path in files:
            if not path.startswith("/") or "," in path or any(c.isspace() for c in path):
                raise ValueError(f"path unusable on the kernel command line: {path!r}")
        words.append(f"credbridge.files={','.join(files)}")
    return " ".join(words)


def kernel_cmdline(cmdline_extra: str = "") -> str:
    return f"{BASE_CMDLINE} {cmdline_extra}".strip()


def tcg_machine_argv(qemu: str | None, *, memory_mb: int, cpus: int) -> list[str]:
    """QEMU with its machine under TCG, no default devices, the serial console on stdout."""
    return [
        qemu or qemu_binary() or QEMU_BINARY,
        "-accel", "tcg",
        "-cpu", "max",
        "-M", "q35",
        "-smp", str(cpus),
        "-m", str(memory_mb),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-monitor", "none",
        "-serial", "stdio",
    ]  # fmt: skip


def qemu_argv(
    image: GuestImage,
    extra_args: Sequence[str] = (),
    *,
    cmdline_extra: str = "",
    memory_mb: int = 512,
    shared_memory: bool = False,
    cpus: int = 2,
    qemu: str | None = None,
    reboot: bool = False,
) -> list[str]:
    """The exact argv :func:`boot` runs (serial console on stdout).

    ``reboot=True`` lets a guest reboot (QEMU resets and boots the same kernel again)
    instead of making QEMU exit.
    """
    argv = [
        *tcg_machine_argv(qemu, memory_mb=memory_mb, cpus=cpus),
        *([] if reboot else ["-no-reboot"]),
        "-kernel", str(image.kernel),
        "-initrd", str(image.initramfs),
        "-append", kernel_cmdline(cmdline_extra),
    ]  # fmt: skip
    if shared_memory:
        argv += [
            "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
            "-numa", "node,memdev=mem",
        ]  # fmt: skip
    argv += list(extra_args)
    return argv


def parse_probe_output(text: str) -> ProbeReport:
    """Parse ``CBPROBE`` lines (anywhere on a line, ``\\r`` tolerated)."""
    report = ProbeReport()
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        pos = line.find(PROBE_PREFIX + " ")
        if pos < 0:
            continue
        match = _LINE_RE.match(line[pos:].rstrip())
        if match is None:
            continue
        kind, rest = match.group(1), match.group(2) or ""
        if kind == "list":
            words = rest.split()
            if words:
                report.listed.add(words[0])
        elif kind == "value":
            name, _, data = rest.partition(" ")
            try:
                report.values[name] = base64.b64decode(data.strip(), validate=True)
            except (binascii.Error, ValueError):
                report.errors.append(f"undecodable value line for {name!r}: {data[:80]!r}")
        elif kind == "missing":
            report.missing.add(rest.strip())
        elif kind == "virtiofs-file":
            name, _, mode = rest.rpartition(" ")
            report.virtiofs_files[name] = mode
        elif kind == "unit":
            name, _, state = rest.partition(" ")
            report.units[name] = state.strip()
        elif kind == "requires-mounts-for":
            name, _, paths = rest.partition(" ")
            report.requires_mounts_for[name] = paths.strip()
        elif kind == "mount":
            words = rest.split(" ", 2)
            if len(words) == 3:
                report.mounts[words[0]] = (words[1], words[2].strip())
            else:
                report.errors.append(line[pos:].strip())
        elif kind in {"file", "dir", "nofile"}:
            words = rest.split(" ")
            if kind == "file" and len(words) == 4:
                try:
                    content = base64.b64decode(words[3], validate=True)
                except (binascii.Error, ValueError):
                    report.errors.append(f"undecodable file line for {words[0]!r}")
                    continue
                report.files[words[0]] = (words[1], words[2], content)
            elif kind == "file" and len(words) == 3:  # an empty file
                report.files[words[0]] = (words[1], words[2], b"")
            elif kind == "dir" and len(words) == 3:
                report.files[words[0]] = (words[1], words[2], None)
            elif kind != "nofile":
                report.errors.append(line[pos:].strip())
        elif kind == "systemd-version":
            if rest.strip().isdigit():
                object.__setattr__(report, "systemd_version", int(rest.strip()))
        elif kind == "virtiofs-mounted":
            object.__setattr__(report, "virtiofs_mounted", True)
        elif kind == "start":
            object.__setattr__(report, "started", True)
        elif kind == "done":
            object.__setattr__(report, "done", True)
        else:
            report.errors.append(line[pos:].strip())
    return report


def boot(
    image: GuestImage,
    extra_args: Sequence[str],
    *,
    cmdline_extra: str = "",
    timeout: float = 180,
    memory_mb: int = 512,
    shared_memory: bool = False,
    cpus: int = 2,
) -> BootResult:
    """Boot the guest, capture the serial console, wait for exit (kill on timeout).

    Once the probe printed ``CBPROBE done`` QEMU gets :data:`POWEROFF_GRACE`
    seconds to power off before it is killed (the result is complete by then).
    ``cpus=2`` is measurably faster than 1 under multi-threaded TCG (~11 s vs ~14 s).
    """
    binary = qemu_binary()
    if binary is None:
        raise HarnessError(f"{QEMU_BINARY} not found (apt-get install qemu-system-x86)")
    argv = qemu_argv(
        image,
        extra_args,
        cmdline_extra=cmdline_extra,
        memory_mb=memory_mb,
        shared_memory=shared_memory,
        cpus=cpus,
        qemu=binary,
    )
    run = run_console(argv, f"{PROBE_PREFIX} done".encode(), timeout=timeout)
    console = run.console
    report = parse_probe_output(console)
    return BootResult(
        argv=argv,
        console=console,
        returncode=run.returncode,
        timed_out=run.timed_out,
        seconds=run.seconds,
        seconds_to_done=run.seconds_to_done,
        listed=report.listed,
        values=report.values,
        missing=report.missing,
        virtiofs_files=report.virtiofs_files,
        virtiofs_mounted=report.virtiofs_mounted,
        done=report.done,
        errors=report.errors,
        units=report.units,
        mounts=report.mounts,
        requires_mounts_for=report.requires_mounts_for,
        systemd_version=report.systemd_version,
    )


@dataclass(frozen=True)
class ConsoleRun:
    """A QEMU run: its whole serial console and how it ended."""

    console: str
    returncode: int | None
    timed_out: bool
    seconds: float
    #: Seconds from QEMU start until the done marker appeared (None if it never did).
    seconds_to_done: float | None


def run_console(
    argv: Sequence[str], done_marker: bytes, *, timeout: float, grace: float = POWEROFF_GRACE
) -> ConsoleRun:
    """Run QEMU with the serial console on stdout until it exits (kill on timeout).

    Once ``done_marker`` appeared QEMU gets ``grace`` seconds to power off before it is
    killed (the result is complete by then).
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    chunks: list[bytes] = []
    done_at: list[float] = []
    done_event = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        pending = b""
        while True:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            chunks.append(data)
            pending = (pending + data)[-4096:]
            if not done_event.is_set() and done_marker in pending:
                done_at.append(time.monotonic() - started)
                done_event.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    timed_out = False
    deadline = started + timeout
    while True:
        now = time.monotonic()
        limit = deadline
        if done_event.is_set():
            limit = min(deadline, started + done_at[0] + grace)
        try:
            proc.wait(timeout=max(0.0, min(limit - now, 0.5)))
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() >= limit:
                timed_out = not done_event.is_set()
                _kill(proc)
                break
    thread.join(timeout=10)
    return ConsoleRun(
        console=b"".join(chunks).decode("utf-8", errors="replace"),
        returncode=proc.returncode,
        timed_out=timed_out,
        seconds=time.monotonic() - started,
        seconds_to_done=done_at[0] if done_at else None,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --- virtiofs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Virtiofsd:
    """A virtiofsd binary and its command line flavour (``"rust"`` or ``"c"``)."""

    path: str
    flavour: str


def find_virtiofsd() -> Virtiofsd | None:
    """Locate virtiofsd: the Rust one (PATH, /usr/libexec) preferred over QEMU's old C one."""
    candidates: list[str] = []
    on_path = shutil.which("virtiofsd")
    if on_path:
        candidates.append(on_path)
    candidates += ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"]
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run(
                [path, "--help"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=10,
                check=False,
            ).stdout.decode(errors="replace")
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "--shared-dir" in out:
            return Virtiofsd(path, "rust")
        if "source=" in out or "-o " in out:
            return Virtiofsd(path, "c")
    return None


def virtiofsd_argv(daemon: Virtiofsd, shared_dir: Path, socket_path: Path) -> list[str]:
    if daemon.flavour == "rust":
        return [
            daemon.path,
            f"--socket-path={socket_path}",
            f"--shared-dir={shared_dir}",
            "--cache=never",
            "--sandbox=chroot",
        ]
    return [
        daemon.path,
        f"--socket-path={socket_path}",
        "-o", f"source={shared_dir}",
        "-o", "cache=none",
        "-o", "sandbox=chroot",
    ]  # fmt: skip


def start_virtiofsd(
    shared_dir: Path, socket_path: Path, *, wait: float = 15.0
) -> subprocess.Popen[bytes]:
    """Start virtiofsd serving ``shared_dir`` on ``socket_path``; returns once the socket exists.

    Its output goes to ``<socket_path>.log``.  The caller terminates it (it also
    exits by itself when QEMU disconnects).
    """
    daemon = find_virtiofsd()
    if daemon is None:
        raise HarnessError(
            "no virtiofsd found (Debian 12: /usr/lib/qemu/virtiofsd, package qemu-system-x86)"
        )
    if socket_path.exists():
        socket_path.unlink()
    log_path = socket_path.with_name(socket_path.name + ".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            virtiofsd_argv(daemon, shared_dir, socket_path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + wait
    while not socket_path.exists():
        if proc.poll() is not None:
            out = log_path.read_text(errors="replace")
            raise HarnessError(f"virtiofsd exited with {proc.returncode}: {out[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise HarnessError(f"virtiofsd did not create {socket_path} within {wait}s")
        time.sleep(0.05)
    return proc


def virtiofs_qemu_args(
    socket_path: Path, tag: str = DEFAULT_VIRTIOFS_TAG, chardev_id: str = "vfs"
) -> list[str]:
    """QEMU args for a vhost-user-fs device (needs ``boot(..., shared_memory=True)``)."""
    return [
        "-chardev", f"socket,id={chardev_id},path={socket_path}",
        "-device", f"vhost-user-fs-pci,chardev={chardev_id},tag={tag}",
    ]  # fmt: skip
