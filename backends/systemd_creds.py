"""``systemd-creds`` keys: which ones a setting may name and which this machine can use.

The credstore sink (``encrypt``, ``with_key``, ``tpm2_pcrs``) and the sealed file store
(``seal``, ``tpm2_pcrs``) name the key ``systemd-creds encrypt --with-key=`` seals with; this is
what both check their settings with, and how they refuse a key the installed systemd is too old
for before anything is resolved.
"""

from __future__ import annotations

from typing import Any

from credbridge.core import ConfigError
from credbridge.core.process import child_env
from credbridge.core.settings import control_problem

#: The keys ``encrypt`` and ``seal`` name, as ``systemd-creds --with-key=`` spells them.
KEYS = ("host", "tpm2", "host+tpm2", "auto")
#: The first systemd whose ``systemd-creds encrypt`` takes each ``--with-key=`` value
#: (systemd-creds itself is new in 250; ``tpm2-absent`` came in 251 and was renamed ``null``
#: in 256, which keeps the old name as an alias: ../shared/research/systemd-versions.md).
KEY_MIN_SYSTEMD = {
    "host": 250,
    "tpm2": 250,
    "host+tpm2": 250,
    "tpm2+host": 250,
    "auto": 250,
    "auto-initrd": 250,
    "tpm2-absent": 251,
    "null": 256,
}
#: The first systemd proven to unseal a TPM2 credential bound to no PCR (``--tpm2-pcrs=``)
#: when a unit starts: 252 encrypts it and then cannot decrypt it (the versions in between are
#: untested, so they are refused too).
UNBOUND_TPM2_MIN_SYSTEMD = 257
#: Keys that seal to a TPM2, so ``tpm2_pcrs`` means something for them.
TPM2_KEYS = frozenset({"tpm2", "host+tpm2", "tpm2+host", "auto", "auto-initrd"})


def systemd_creds_version(binary: str, timeout: float) -> int | None:
    """The systemd version of ``binary`` (``systemd-creds --version``), None if unreadable."""
    import subprocess  # only encrypting sinks run it

    try:
        result = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            timeout=timeout,
            check=False,
            env=child_env(),
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    words = result.stdout.decode("utf-8", "replace").split()
    if result.returncode != 0 or len(words) < 2 or words[0] != "systemd":
        return None
    number = words[1].split(".")[0]
    return int(number) if number.isdigit() else None


def key_problem(
    binary: str,
    key: str,
    tpm2_pcrs: str | None,
    timeout: float,
    *,
    setting: str = "with_key",
) -> str | None:
    """Why ``binary`` (a systemd-creds) cannot seal with ``key`` and ``tpm2_pcrs`` so that
    this machine decrypts it again, naming the systemd version needed; ``None`` if it can, or
    if the key or the version is unknown (systemd-creds itself will then say)."""
    needed = KEY_MIN_SYSTEMD.get(key)
    if needed is None:
        return None
    version = systemd_creds_version(binary, timeout)
    if version is None:
        return None
    if version < needed:
        return f'{setting} "{key}" needs systemd {needed} or later; {binary} is systemd {version}'
    if tpm2_pcrs == "" and key in TPM2_KEYS and version < UNBOUND_TPM2_MIN_SYSTEMD:
        # 252 seals it, but PID 1 then fails the unit: "TPM2 PCR bank invalid or not
        # supported" (tests/backends/test_tpm_guest.py); 257 unseals it.
        return (
            f'tpm2_pcrs = "" (bound to no PCR) needs systemd {UNBOUND_TPM2_MIN_SYSTEMD} or '
            f"later to be decrypted; {binary} is systemd {version} (bind to PCRs, e.g. "
            'tpm2_pcrs = "7")'
        )
    return None


def read_key(value: Any, *, true_is_host: bool, file: str | None, key: str) -> str | None:
    """The key an ``encrypt`` or ``seal`` setting names (``None``: ``false``, no sealing);
    ``true`` is ``"host"`` where ``true_is_host``, refused otherwise."""
    if value is False:
        return None
    if value is True and true_is_host:
        return "host"
    if isinstance(value, str) and value in KEYS:
        return value
    choices = ", ".join(f'"{k}"' for k in KEYS)
    allowed = "true, false" if true_is_host else "false"
    raise ConfigError(f"must be {allowed} or one of {choices}", file=file, key=key)


def read_pcrs(value: Any, *, file: str | None, key: str) -> str | None:
    """A ``tpm2_pcrs`` setting as ``systemd-creds --tpm2-pcrs=`` takes it (``7`` is ``"7"``)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, str | int)
        or (isinstance(value, str) and control_problem(value) is not None)
    ):
        raise ConfigError('must be a string like "7" or "0+7"', file=file, key=key)
    return str(value)


def check_pcrs_key(
    tpm2_pcrs: str | None, sealing: str, *, naming: str, setting: str, file: str | None, key: str
) -> None:
    """Refuse PCRs given for a ``sealing`` key that uses no TPM2: systemd-creds would accept
    and ignore them, and the values would not be bound. ``naming`` shows where the key was
    set (``with_key "host"``), ``setting`` the one that picks a TPM2 key."""
    if tpm2_pcrs is not None and sealing not in TPM2_KEYS:
        raise ConfigError(
            f"binds a TPM2 key; {naming} does not use the TPM2 "
            f'({setting} = "tpm2", "host+tpm2" or "auto")',
            file=file,
            key=key,
        )
