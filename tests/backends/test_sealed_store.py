"""The file store sealed with ``systemd-creds`` (``[store] seal``), with this machine's real
systemd-creds and host key (/var/lib/systemd/credential.secret; root). The TPM2 seals are
proven in tests/backends/test_tpm_guest.py, in the host guests with a software TPM.

Another machine is another host key: ``systemd-creds`` reads it from
``$SYSTEMD_CREDENTIAL_SECRET`` when that is set, which is how the tests make a value only
another machine could decrypt (credbridge never passes that variable on).
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

SYSTEMD_CREDS = shutil.which("systemd-creds")
HOST_KEY_HEADER = b"Whxqht+dQJax1aZeCGLx"
"""The first 20 Base64 characters systemd-creds writes for ``--with-key=host``."""

pytestmark = pytest.mark.skipif(
    SYSTEMD_CREDS is None or os.geteuid() != 0,
    reason="systemd-creds with the host key needs systemd-creds and root",
)

KEY = "app.service/api-key"


def write_config(tmp_path: Path, credstore: Path, store: str = 'seal = "host"') -> Path:
    path = tmp_path / "credbridge.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n{store}\n'
        f'[sinks.credstore]\ndirectory = "{credstore}"\n'
        '[targets."app.service".credentials]\n'
        'api-key = "generate:base64?bytes=32"\n'
        'ssh = "generate:ssh-ed25519"\n'
    )
    return path


def deliver(config: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("-c", str(config), "deliver", *extra)


def decrypt(path: Path, env: dict[str, str] | None = None) -> bytes:
    return subprocess.run(
        [str(SYSTEMD_CREDS), "decrypt", "--name=", str(path), "-"],
        capture_output=True,
        check=True,
        env=env,
    ).stdout


def store_files(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "store"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        # Lock files and the empty .swept mark (no crash leftovers) hold no value.
        if p.is_file() and not p.name.endswith(".lock") and p.name != ".swept"
    }


def test_generated_values_are_kept_sealed_and_delivered_as_they_were_made(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    config = write_config(tmp_path, tmpfs_dir)
    first = deliver(config)
    assert first.returncode == 0, first.stderr
    value = (tmpfs_dir / "app.service" / "api-key").read_bytes()
    private_key = (tmpfs_dir / "app.service" / "ssh").read_bytes()
    files = store_files(tmp_path)
    assert set(files) == {f"{KEY}/current.cred", "app.service/ssh/current.cred"}
    for name, data in files.items():
        assert data.startswith(HOST_KEY_HEADER), name
        assert value not in data and base64.b64encode(value) not in data
        assert b"PRIVATE KEY" not in data
        assert stat.S_IMODE((tmp_path / "store" / name).stat().st_mode) == 0o400
    assert decrypt(tmp_path / "store" / KEY / "current.cred") == value
    assert b"OPENSSH PRIVATE KEY" in private_key
    assert private_key in decrypt(tmp_path / "store" / "app.service/ssh/current.cred").replace(
        b"\\n", b"\n"
    )
    # The next run decrypts what it stored: the same values, nothing rewritten.
    again = deliver(config)
    assert again.returncode == 0, again.stderr
    assert (tmpfs_dir / "app.service" / "api-key").read_bytes() == value
    assert store_files(tmp_path) == files


def test_rotate_keeps_the_previous_value_sealed(tmp_path: Path, tmpfs_dir: Path) -> None:
    config = write_config(tmp_path, tmpfs_dir)
    assert deliver(config).returncode == 0
    old = (tmpfs_dir / "app.service" / "api-key").read_bytes()
    old_file = (tmp_path / "store" / KEY / "current.cred").read_bytes()
    rotated = run_cli("-c", str(config), "rotate", "app.service", "api-key")
    assert rotated.returncode == 0, rotated.stderr
    assert deliver(config).returncode == 0
    new = (tmpfs_dir / "app.service" / "api-key").read_bytes()
    assert new != old
    directory = tmp_path / "store" / KEY
    assert sorted(p.name for p in directory.iterdir()) == ["current.cred", "previous.cred"]
    assert (directory / "previous.cred").read_bytes() == old_file  # the ciphertext, as it was
    assert decrypt(directory / "previous.cred") == old
    assert decrypt(directory / "current.cred") == new


def test_a_value_sealed_by_another_machine_is_an_error_never_a_new_value(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    other_key = tmp_path / "other-machine.secret"
    other_key.write_bytes(os.urandom(4096))
    other_key.chmod(0o400)
    directory = tmp_path / "store" / KEY
    directory.mkdir(parents=True, mode=0o700)
    (tmp_path / "store").chmod(0o700)
    (tmp_path / "store" / "app.service").chmod(0o700)
    sealed = subprocess.run(
        [str(SYSTEMD_CREDS), "encrypt", "--name=", "--with-key=host", "-", "-"],
        input=b"the other machine's value",
        capture_output=True,
        check=True,
        env={**os.environ, "SYSTEMD_CREDENTIAL_SECRET": str(other_key)},
    ).stdout
    (directory / "current.cred").write_bytes(sealed)
    (directory / "current.cred").chmod(0o400)
    config = write_config(tmp_path, tmpfs_dir)
    result = deliver(config)
    assert result.returncode == 6, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert f"store key {KEY}: current.cred cannot be decrypted on this machine" in lines[0]
    assert "no new value is generated in its place" in lines[0]
    assert (directory / "current.cred").read_bytes() == sealed
    assert sorted(p.name for p in directory.iterdir()) == ["current.cred"]
    assert not (tmpfs_dir / "app.service").exists()
    # The machine that sealed it still reads it.
    assert (
        decrypt(
            directory / "current.cred", {**os.environ, "SYSTEMD_CREDENTIAL_SECRET": str(other_key)}
        )
        == b"the other machine's value"
    )


def test_a_store_without_seal_refuses_a_sealed_value_instead_of_generating_one(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    assert deliver(write_config(tmp_path, tmpfs_dir)).returncode == 0
    before = store_files(tmp_path)
    result = deliver(write_config(tmp_path, tmpfs_dir, store=""))
    assert result.returncode == 6, result.stderr
    reason = (
        "current.cred is sealed with systemd-creds, and [store] has no seal; set seal as it "
        "was to read it"
    )
    assert result.stderr.decode().splitlines() == [
        "credbridge: error: 2 credential(s) could not be resolved; nothing was delivered",
        "credbridge: error: app.service/api-key: generate:base64?bytes=32: forbidden: "
        f"store key app.service/api-key: {reason}",
        "credbridge: error: app.service/ssh: generate:ssh-ed25519: forbidden: "
        f"store key app.service/ssh: {reason}",
    ]
    assert store_files(tmp_path) == before


def test_plaintext_values_from_before_seal_are_sealed_by_the_next_run(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    plain = write_config(tmp_path, tmpfs_dir, store="")
    assert deliver(plain).returncode == 0
    assert run_cli("-c", str(plain), "rotate", "app.service", "api-key").returncode == 0
    assert deliver(plain).returncode == 0
    value = (tmpfs_dir / "app.service" / "api-key").read_bytes()
    previous = (tmp_path / "store" / KEY / "previous").read_bytes()
    assert deliver(write_config(tmp_path, tmpfs_dir)).returncode == 0
    assert (tmpfs_dir / "app.service" / "api-key").read_bytes() == value
    directory = tmp_path / "store" / KEY
    assert sorted(p.name for p in directory.iterdir()) == ["current.cred", "previous.cred"]
    assert decrypt(directory / "current.cred") == value
    assert decrypt(directory / "previous.cred") == previous
    assert sorted(store_files(tmp_path)) == [
        "app.service/api-key/current.cred",
        "app.service/api-key/previous.cred",
        "app.service/ssh/current.cred",
    ]


def test_a_run_killed_between_sealing_and_removing_the_plaintext_loses_nothing(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    """Killed right after the first sealed copy was renamed into place (the plaintext still
    beside it): the next run removes the plaintext and delivers the same value."""
    assert deliver(write_config(tmp_path, tmpfs_dir, store="")).returncode == 0
    value = (tmpfs_dir / "app.service" / "api-key").read_bytes()
    config = write_config(tmp_path, tmpfs_dir)
    killed = subprocess.run(
        [
            *(sys.executable, "-X", "credbridge-fault=atomic.after-rename@1:kill"),
            *("-m", "credbridge.core.cli", "-c", str(config), "deliver"),
        ],
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    left = sorted(store_files(tmp_path))
    assert len([name for name in left if name.endswith("/current.cred")]) == 1, left
    assert len([name for name in left if name.endswith("/current")]) == 2, left
    assert deliver(config).returncode == 0
    assert (tmpfs_dir / "app.service" / "api-key").read_bytes() == value
    assert sorted(store_files(tmp_path)) == [
        "app.service/api-key/current.cred",
        "app.service/ssh/current.cred",
    ]


def test_values_reach_systemd_creds_through_pipes_only(tmp_path: Path, tmpfs_dir: Path) -> None:
    """A spy named systemd-creds first on PATH records its argv, environment and what its
    stdin and stdout are, then runs the real one."""
    record = tmp_path / "record"
    spy_dir = tmp_path / "bin"
    spy_dir.mkdir()
    spy = spy_dir / "systemd-creds"
    spy.write_text(
        "#!/bin/sh\n"
        "in=$(readlink /proc/$$/fd/0); out=$(readlink /proc/$$/fd/1)\n"
        f'{{ printf "argv %s\\n" "$*"; tr "\\0" "\\n" < /proc/$$/environ;\n'
        '  echo "call $1 stdin=$in stdout=$out";'
        f' }} >> "{record}"\n'
        f'exec "{SYSTEMD_CREDS}" "$@"\n'
    )
    spy.chmod(0o755)
    config = write_config(tmp_path, tmpfs_dir)
    env = {"PATH": f"{spy_dir}:{os.environ['PATH']}"}
    assert run_cli("-c", str(config), "deliver", env=env).returncode == 0
    assert run_cli("-c", str(config), "rotate", "app.service", "api-key", env=env).returncode == 0
    assert run_cli("-c", str(config), "deliver", env=env).returncode == 0
    seen = record.read_bytes()
    assert b"argv encrypt --name= --with-key=host - -" in seen
    assert b"argv decrypt --name= - -" in seen
    calls = [line.split() for line in seen.splitlines() if line.startswith(b"call ")]
    crypto = [call for call in calls if call[1] in {b"encrypt", b"decrypt"}]
    assert len(crypto) >= 4, calls
    for call in crypto:
        assert call[2].startswith(b"stdin=pipe:") and call[3].startswith(b"stdout=pipe:"), call
    old = decrypt(tmp_path / "store" / KEY / "previous.cred")
    new = (tmpfs_dir / "app.service" / "api-key").read_bytes()
    for value in (old, new):
        assert value not in seen and base64.b64encode(value) not in seen


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ('seal = "yes"', 'store.seal: must be false or one of "host", "tpm2", "host+tpm2", "auto"'),
        (
            'seal = "host"\ntpm2_pcrs = "7"',
            'store.tpm2_pcrs: binds a TPM2 key; seal = "host" does not use the TPM2',
        ),
        ('tpm2_pcrs = "7"', "store.tpm2_pcrs: binds a sealed store to PCRs; set seal too"),
        ('seal = "tpm2"\ntpm2_pcrs = true', 'store.tpm2_pcrs: must be a string like "7"'),
    ],
)
def test_seal_settings_are_checked(
    tmp_path: Path, tmpfs_dir: Path, store: str, problem: str
) -> None:
    result = deliver(write_config(tmp_path, tmpfs_dir, store=store))
    assert result.returncode == 3, result.stderr
    assert problem in result.stderr.decode()
    assert not (tmp_path / "store").exists() or store_files(tmp_path) == {}


def test_a_seal_this_systemd_cannot_decrypt_is_refused_naming_the_version(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    """A TPM2 key bound to no PCR needs systemd 257 (tests/backends/test_tpm_guest.py): under an older
    systemd-creds (Debian 12's 252 here) the store is refused in one line before any value is
    generated."""
    out = subprocess.run(
        [str(SYSTEMD_CREDS), "--version"], capture_output=True, text=True, check=True
    ).stdout
    version = int(out.split()[1])
    if version >= 257:
        pytest.skip(f"systemd {version} seals and unseals a TPM2 key bound to no PCR")
    result = deliver(write_config(tmp_path, tmpfs_dir, store='seal = "tpm2"\ntpm2_pcrs = ""'))
    assert result.returncode == 9, result.stderr
    assert result.stderr.decode().splitlines() == [
        'credbridge: error: store: tpm2_pcrs = "" (bound to no PCR) needs systemd 257 or later '
        f"to be decrypted; {SYSTEMD_CREDS} is systemd {version} (bind to PCRs, e.g. "
        'tpm2_pcrs = "7")'
    ]
    assert not (tmp_path / "store").exists() or store_files(tmp_path) == {}
    assert not (tmpfs_dir / "app.service").exists()
