"""systemd-creds on this machine, for the tests of encrypted credentials."""

from __future__ import annotations

import shutil
import subprocess


def null_key_name() -> str | None:
    """The ``--with-key`` that encrypts without a secret key on this systemd (``null`` from 256,
    ``tpm2-absent`` before), or None without systemd-creds."""
    if shutil.which("systemd-creds") is None:
        return None
    out = subprocess.run(
        ["systemd-creds", "--version"], capture_output=True, text=True, check=False
    ).stdout
    version = int(out.split()[1]) if out.startswith("systemd ") else 0
    return "null" if version >= 256 else "tpm2-absent"
