"""A software TPM 2.0 (``swtpm``, Debian package swtpm) for a QEMU guest.

    with software_tpm(state_dir) as qemu_args:
        run_host_guest(image, files, extra_args=qemu_args)

The TPM's state (its seeds, so every key it seals) lives in ``state_dir``: two directories
are two different TPMs, the same directory is the same TPM across boots. QEMU talks to it over
a unix socket (``-tpmdev emulator``) and the guest sees a TIS TPM (``-device tpm-tis``, the
kernel's built-in tpm_tis driver gives ``/dev/tpmrm0``); SeaBIOS sends TPM2_Startup.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .qemu import HarnessError

SWTPM = "swtpm"


@contextmanager
def software_tpm(state_dir: Path, *, wait: float = 15.0) -> Iterator[list[str]]:
    """Run swtpm on ``state_dir`` (created 0700 if missing); yield the QEMU arguments."""
    binary = shutil.which(SWTPM)
    if binary is None:
        raise HarnessError("swtpm not found (apt-get install swtpm)")
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket = state_dir / "swtpm.sock"
    socket.unlink(missing_ok=True)
    log = state_dir / "swtpm.log"
    proc = subprocess.Popen(
        [
            binary, "socket", "--tpm2",
            "--tpmstate", f"dir={state_dir}",
            "--ctrl", f"type=unixio,path={socket}",
            "--log", f"file={log},level=1",
            "--terminate",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + wait
        while not socket.exists():
            if proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise HarnessError(f"swtpm exited with {proc.returncode}: {text[-2000:]}")
            if time.monotonic() > deadline:
                raise HarnessError(f"swtpm did not create {socket} within {wait}s")
            time.sleep(0.05)
        chardev = f"tpmchr{proc.pid}"
        yield [
            "-chardev", f"socket,id={chardev},path={socket}",
            "-tpmdev", f"emulator,id=tpm0,chardev={chardev}",
            "-device", "tpm-tis,tpmdev=tpm0",
        ]  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
