from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import secret_value
from credbridge.core import (
    Change,
    ConfigError,
    DeliveryError,
    ResolutionFailed,
    Session,
    UnsafePath,
    deliver,
    load_config,
)
from support.systemd_creds import null_key_name


def make_config(tmp_path: Path, credstore: Path, body: str, sink_extra: str = "") -> Path:
    path = tmp_path / "credbridge.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        f'[sinks.credstore]\ndirectory = "{credstore}"\n{sink_extra}\n' + body
    )
    return path


BODY = """
[targets."app.service".credentials]
api-key = "generate:base64?bytes=32"
static = "env:CB_TEST_STATIC"
[targets."worker.service".credentials]
api-key = "target:app.service/api-key"
"""


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".credbridge.lock"
    }


def delivered(tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """BODY delivered once (CB_TEST_STATIC=v1): its config."""
    monkeypatch.setenv("CB_TEST_STATIC", "v1")
    config = make_config(tmp_path, tmpfs_dir, BODY)
    deliver(config)
    return config


def encrypted_config(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch, static: str
) -> Path:
    """BODY into an encrypted credstore (the key systemd-creds seals with without a secret),
    CB_TEST_STATIC=static; a skip without systemd-creds."""
    key = null_key_name()
    if key is None:
        pytest.skip("systemd-creds is not installed")
    monkeypatch.setenv("CB_TEST_STATIC", static)
    return make_config(tmp_path, tmpfs_dir, BODY, f'encrypt = true\nwith_key = "{key}"')


def systemd_creds_decrypt(blob: Path) -> bytes:
    """What ``systemd-creds decrypt`` reads from an encrypted credential."""
    return subprocess.run(
        ["systemd-creds", "decrypt", "--name=static", str(blob), "-"],
        capture_output=True,
        check=True,
    ).stdout


def redeliver_with_fault(config: Path, fault: str) -> subprocess.CompletedProcess[bytes]:
    """``credbridge deliver`` of a changed value (CB_TEST_STATIC=v2), with a fault injected
    through the test-only switch of docs/reliability.md (``POINT@N:ACTION``)."""
    return subprocess.run(
        [
            sys.executable,
            "-X",
            f"credbridge-fault={fault}",
            *("-m", "credbridge.core.cli", "-c", str(config), "deliver"),
        ],
        capture_output=True,
        env={**os.environ, "CB_TEST_STATIC": "v2"},
        check=False,
    )


def test_deliver_writes_0400_files_in_0700_dirs(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", secret_value("static-value"))
    report = deliver(make_config(tmp_path, tmpfs_dir, BODY))
    assert {(e.target, e.credential, e.change) for e in report.entries} == {
        ("app.service", "api-key", Change.ADD),
        ("app.service", "static", Change.ADD),
        ("worker.service", "api-key", Change.ADD),
    }
    app = tmpfs_dir / "app.service"
    assert stat.S_IMODE(tmpfs_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(app.stat().st_mode) == 0o700
    for f in app.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o400
    assert (app / "static").read_bytes() == b"static-value"
    assert (app / "api-key").read_bytes() == (tmpfs_dir / "worker.service" / "api-key").read_bytes()
    # Second run: same generated value, nothing changes.
    again = deliver(make_config(tmp_path, tmpfs_dir, BODY))
    assert {e.change for e in again.entries} == {Change.KEEP}


def test_failed_source_leaves_previous_set(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = delivered(tmp_path, tmpfs_dir, monkeypatch)
    before = snapshot(tmpfs_dir)
    monkeypatch.delenv("CB_TEST_STATIC")
    with pytest.raises(ResolutionFailed) as info:
        deliver(config)
    message = str(info.value)
    assert "app.service/static" in message
    assert "env:CB_TEST_STATIC" in message
    assert info.value.exit_code == 5
    assert snapshot(tmpfs_dir) == before


def test_failed_commit_rolls_back_every_target(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = delivered(tmp_path, tmpfs_dir, monkeypatch)
    before = snapshot(tmpfs_dir)
    # The second target's swap fails (a disk error, injected through the test-only switch
    # of docs/reliability.md) after the first one was swapped: both must be put back.
    result = redeliver_with_fault(config, "credstore.commit.before-swap@2:error")
    assert result.returncode == 9, result.stderr
    # One line: the failure; both rollbacks went through (a failed one would be logged).
    assert result.stderr.decode().splitlines() == [
        f"credbridge: error: cannot commit {tmpfs_dir / 'worker.service'}: injected fault at "
        "credstore.commit.before-swap"
    ]
    assert snapshot(tmpfs_dir) == before
    assert sorted(os.listdir(tmpfs_dir)) == [".credbridge.lock", "app.service", "worker.service"]


def test_symlinked_target_directory_is_refused_before_anything_changes(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = delivered(tmp_path, tmpfs_dir, monkeypatch)
    monkeypatch.setenv("CB_TEST_STATIC", "v2")
    decoy = tmp_path / "decoy"
    shutil.copytree(tmpfs_dir / "worker.service", decoy)
    shutil.rmtree(tmpfs_dir / "worker.service")
    (tmpfs_dir / "worker.service").symlink_to(decoy)
    before = snapshot(tmpfs_dir)
    with pytest.raises(UnsafePath, match=r"worker\.service: is a symlink"):
        deliver(config)
    assert snapshot(tmpfs_dir) == before
    assert (tmpfs_dir / "worker.service").is_symlink()
    assert sorted(os.listdir(tmpfs_dir)) == [".credbridge.lock", "app.service", "worker.service"]


def test_unknown_owner_fails_before_anything_changes(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", "v1")
    deliver(make_config(tmp_path, tmpfs_dir, BODY))
    before = snapshot(tmpfs_dir)
    bad = BODY.replace(
        'static = "env:CB_TEST_STATIC"',
        'static = { ref = "env:CB_TEST_STATIC", owner = "no-such-user-cb" }',
    )
    monkeypatch.setenv("CB_TEST_STATIC", "v2")
    with pytest.raises(DeliveryError, match="no-such-user-cb"):
        deliver(make_config(tmp_path, tmpfs_dir, bad))
    assert snapshot(tmpfs_dir) == before


def test_stale_staging_dirs_are_cleaned(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", "v1")
    stale = tmpfs_dir / ".app.service.staging-deadbeef0000"
    stale.mkdir(parents=True)
    (stale / "leftover").write_bytes(b"x")
    deliver(make_config(tmp_path, tmpfs_dir, BODY))
    assert not stale.exists()


def test_refuses_persistent_disk_without_opt_in(
    tmp_path: Path, disk_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", "v1")
    disk = disk_dir / "credstore"
    from credbridge.core.fsutil import is_memory_backed

    assert not is_memory_backed(disk_dir)
    with pytest.raises(DeliveryError, match="not on tmpfs or ramfs"):
        deliver(make_config(tmp_path, disk, BODY))
    assert not disk.exists()
    report = deliver(make_config(tmp_path, disk, BODY, "allow_persistent = true"))
    assert len(report.entries) == 3


def test_dry_run_changes_nothing(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", "v1")
    report = deliver(make_config(tmp_path, tmpfs_dir, BODY), dry_run=True)
    assert report.dry_run
    assert all(e.change is Change.ADD for e in report.entries)
    assert list(tmpfs_dir.iterdir()) == []
    assert not (tmp_path / "store").exists()


def test_plan_reports_change_and_remove(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", "v1")
    deliver(make_config(tmp_path, tmpfs_dir, BODY))
    monkeypatch.setenv("CB_TEST_STATIC", "v2")
    smaller = BODY.replace('api-key = "generate:base64?bytes=32"\n', "", 1).replace(
        '[targets."worker.service".credentials]\napi-key = "target:app.service/api-key"\n', ""
    )
    report = deliver(make_config(tmp_path, tmpfs_dir, smaller), dry_run=True)
    changes = {(e.target, e.credential): e.change for e in report.entries}
    assert changes == {
        ("app.service", "static"): Change.CHANGE,
        ("app.service", "api-key"): Change.REMOVE,
    }


def test_unit_dropin(tmp_path: Path, tmpfs_dir: Path) -> None:
    body = (
        BODY
        + '[targets."opt.service".credentials]\nmaybe = { ref = "env:CB_NOPE", optional = true }\n'
    )
    with Session(load_config(make_config(tmp_path, tmpfs_dir, body))) as session:
        _, text = session.unit_dropin("app.service")
        _, optional = session.unit_dropin("opt.service")
    lines = text.splitlines()
    assert "[Service]" in lines
    assert f"LoadCredential=api-key:{tmpfs_dir}/app.service/api-key" in lines
    assert f"LoadCredential=static:{tmpfs_dir}/app.service/static" in lines
    # No SetCredential= default (systemd 252 refuses an empty one): a missing optional
    # credential is an empty directory at this path (tests/backends/test_host_credentials.py).
    assert optional.splitlines()[-1:] == [f"LoadCredential=maybe:{tmpfs_dir}/opt.service/maybe"]
    assert "SetCredential" not in optional


def test_optional_missing_credential_is_skipped(tmp_path: Path, tmpfs_dir: Path) -> None:
    body = '[targets."opt.service".credentials]\nmaybe = { ref = "env:CB_NOPE", optional = true }\nk = "generate:uuid"\n'
    report = deliver(make_config(tmp_path, tmpfs_dir, body))
    assert report.skipped == ["opt.service/maybe"]
    target = tmpfs_dir / "opt.service"
    assert sorted(os.listdir(target)) == ["k", "maybe"]
    # maybe: an empty 0700 directory, which systemd's LoadCredential= loads nothing from.
    assert stat.S_ISDIR(os.lstat(target / "maybe").st_mode)
    assert stat.S_IMODE(os.lstat(target / "maybe").st_mode) == 0o700
    assert os.listdir(target / "maybe") == []
    # Nothing to do the next time; once the source has it, the file replaces the directory.
    again = deliver(make_config(tmp_path, tmpfs_dir, body))
    assert {(e.credential, e.change) for e in again.entries} == {("k", Change.KEEP)}
    os.environ["CB_NOPE"] = "now-here"
    try:
        found = deliver(make_config(tmp_path, tmpfs_dir, body))
    finally:
        del os.environ["CB_NOPE"]
    assert ("maybe", Change.ADD) in {(e.credential, e.change) for e in found.entries}
    assert (target / "maybe").read_bytes() == b"now-here"
    gone = deliver(make_config(tmp_path, tmpfs_dir, body))
    assert ("maybe", Change.REMOVE) in {(e.credential, e.change) for e in gone.entries}
    assert stat.S_ISDIR(os.lstat(target / "maybe").st_mode)


def test_encrypted_credstore_round_trips_through_systemd_creds(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = encrypted_config(tmp_path, tmpfs_dir, monkeypatch, "line1\nline2\n")
    deliver(config, ["app.service"])
    blob = tmpfs_dir / "app.service" / "static"
    assert b"line1" not in blob.read_bytes()
    plain = systemd_creds_decrypt(blob)
    assert plain == b"line1\nline2\n"
    with Session(load_config(config)) as session:
        _, text = session.unit_dropin("app.service")
    assert f"LoadCredentialEncrypted=static:{blob}" in text.splitlines()


def test_with_key_chooses_the_key_systemd_creds_seals_with(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first 16 bytes of an encrypted credential name the sealing key (base64: the first
    20 characters): each with_key gives the header systemd-creds itself writes for it."""
    null_key = null_key_name()
    if null_key is None:
        pytest.skip("systemd-creds is not installed")
    monkeypatch.setenv("CB_TEST_STATIC", "v")
    for key in ("host", null_key):
        shutil.rmtree(tmp_path / "store", ignore_errors=True)
        config = make_config(tmp_path, tmpfs_dir, BODY, f'encrypt = true\nwith_key = "{key}"')
        deliver(config, ["app.service"])
        reference = subprocess.run(
            ["systemd-creds", "encrypt", "--name=static", f"--with-key={key}", "-", "-"],
            input=b"v",
            capture_output=True,
            check=True,
        ).stdout
        delivered = (tmpfs_dir / "app.service" / "static").read_bytes()
        assert delivered[:20] == reference[:20], key
    assert delivered[:20] != b"Whxqht+dQJax1aZeCGLx"  # the host key's id: the loop saw both


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ('allow_persistent = "false"', "allow_persistent: must be true or false"),
        (
            'encrypt = "yes"',
            'encrypt: must be true, false or one of "host", "tpm2", "host+tpm2", "auto"',
        ),
        (
            'encrypt = "tpm2"\nwith_key = "host"',
            'with_key: names another key than encrypt = "tpm2"; give one',
        ),
        (
            'encrypt = "host"\ntpm2_pcrs = "7"',
            'tpm2_pcrs: binds a TPM2 key; with_key "host" does not use the TPM2',
        ),
        ('timeout = "abc"', "timeout: must be a positive number"),
        ("timeout = -1", "timeout: must be a positive number"),
        ("owner = [1]", "owner: must be a user/group name or numeric id"),
    ],
)
def test_sink_settings_are_type_checked(
    tmp_path: Path, tmpfs_dir: Path, setting: str, problem: str
) -> None:
    """A string "false" must never switch the tmpfs guard off."""
    with pytest.raises(ConfigError) as info:
        deliver(make_config(tmp_path, tmpfs_dir, BODY, setting), dry_run=True)
    assert f": sinks.credstore.{problem}" in str(info.value)


@pytest.mark.parametrize(
    ("setting", "argv"),
    [
        ("encrypt = true", ["--with-key=host"]),
        ('encrypt = true\nwith_key = "host+tpm2"', ["--with-key=host+tpm2"]),
        ('encrypt = "tpm2"\ntpm2_pcrs = ""', ["--with-key=tpm2", "--tpm2-pcrs="]),
        ('encrypt = "host+tpm2"\ntpm2_pcrs = "0+7"', ["--with-key=host+tpm2", "--tpm2-pcrs=0+7"]),
        ('encrypt = "auto"', ["--with-key=auto"]),
    ],
)
def test_encrypt_names_the_key_systemd_creds_is_given(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch, setting: str, argv: list[str]
) -> None:
    """``encrypt`` takes systemd-creds' key names (``true`` is the host key); a recording
    systemd-creds (it answers ``--version`` as systemd 257) shows the flags it was given."""
    record = tmp_path / "argv"
    stub = tmp_path / "systemd-creds"
    stub.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "systemd 257 (257.13-1~deb13u1)"; exit 0; fi\n'
        f'printf "%s\\n" "$@" >> "{record}"\n'
        "cat >/dev/null\necho ciphertext\n"
    )
    stub.chmod(0o755)
    monkeypatch.setenv("CB_TEST_STATIC", "v")
    deliver(make_config(tmp_path, tmpfs_dir, BODY, f'{setting}\nsystemd_creds = "{stub}"'))
    calls = record.read_text().split("encrypt\n")[1:]
    assert calls, "systemd-creds encrypt never ran"
    for call in calls:
        assert call.splitlines()[1:-2] == argv, call


def test_a_key_newer_than_the_machines_systemd_is_refused_naming_the_version(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``null`` came in systemd 256: under the real systemd-creds of an older machine (Debian
    12's 252 here) deliver refuses it in one line before anything is generated; from 256 on
    it is accepted."""
    real = shutil.which("systemd-creds")
    if real is None:
        pytest.skip("systemd-creds is not installed")
    out = subprocess.run([real, "--version"], capture_output=True, text=True, check=True).stdout
    version = int(out.split()[1])
    monkeypatch.setenv("CB_TEST_STATIC", "v")
    config = make_config(tmp_path, tmpfs_dir, BODY, 'encrypt = true\nwith_key = "null"')
    if version >= 256:
        deliver(config, ["app.service"])
        return
    with pytest.raises(DeliveryError) as error:
        deliver(config, ["app.service"])
    assert str(error.value) == (
        f'sinks.credstore: with_key "null" needs systemd 256 or later; {real} is systemd {version}'
    )
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*"))
    assert not (tmpfs_dir / "app.service").exists()


@pytest.mark.parametrize("version", [252, 256, 257])
def test_a_tpm2_key_bound_to_no_pcr_needs_systemd_257(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """systemd 252 seals with ``--tpm2-pcrs=`` but its PID 1 cannot unseal the result
    (tests/backends/test_tpm_guest.py): refused below 257, the first version proven to unseal it."""
    stub = tmp_path / "systemd-creds"
    stub.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "systemd {version} ({version}.1-1)"; exit 0; fi\n'
        "cat >/dev/null\necho ciphertext\n"
    )
    stub.chmod(0o755)
    monkeypatch.setenv("CB_TEST_STATIC", "v")
    config = make_config(
        tmp_path, tmpfs_dir, BODY, f'encrypt = "tpm2"\ntpm2_pcrs = ""\nsystemd_creds = "{stub}"'
    )
    if version >= 257:
        deliver(config, ["app.service"])
        return
    with pytest.raises(DeliveryError) as error:
        deliver(config, ["app.service"])
    assert str(error.value) == (
        'sinks.credstore: tpm2_pcrs = "" (bound to no PCR) needs systemd 257 or later to be '
        f'decrypted; {stub} is systemd {version} (bind to PCRs, e.g. tpm2_pcrs = "7")'
    )
    assert not (tmpfs_dir / "app.service").exists()


def test_systemd_creds_gets_no_secret_environment(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real systemd-creds runs through a spy that records the environment it was given."""
    key = null_key_name()
    real = shutil.which("systemd-creds")
    if key is None or real is None:
        pytest.skip("systemd-creds is not installed")
    record = tmp_path / "environ"
    spy = tmp_path / "systemd-creds-spy"
    spy.write_text(f'#!/bin/sh\ncat /proc/$$/environ >> "{record}"\nexec "{real}" "$@"\n')
    spy.chmod(0o755)
    monkeypatch.setenv("CB_TEST_STATIC", secret_value("env-secret-value-1"))
    monkeypatch.setenv("VAULT_TOKEN", secret_value("vault-token-value-2"))
    config = make_config(
        tmp_path, tmpfs_dir, BODY, f'encrypt = true\nwith_key = "{key}"\nsystemd_creds = "{spy}"'
    )
    deliver(config, ["app.service"])
    seen = record.read_bytes()
    assert b"PATH=" in seen  # the spy really ran
    assert b"env-secret-value-1" not in seen
    assert b"vault-token-value-2" not in seen


@pytest.fixture
def real_group() -> Iterator[grp.struct_group]:
    """A real group of this machine (made with groupadd, removed afterwards)."""
    assert os.geteuid() == 0, "owner/group delivery is tested as root"
    name = f"cbtest{os.getpid() % 100000}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def test_mode_owner_and_group_end_on_the_delivered_files(
    tmp_path: Path, tmpfs_dir: Path, real_group: grp.struct_group, cli: Any
) -> None:
    """The README's tls-key: ``mode = "0440", group = "app"`` (and an owner), for real."""
    nobody = pwd.getpwnam("nobody")
    key = tmp_path / "app.key"
    key.write_text(secret_value("tls-private-key-material"))
    body = f"""
[targets."app.service".credentials]
tls-key = {{ ref = "file:{key}", mode = "0440", group = "{real_group.gr_name}" }}
owned = {{ ref = "file:{key}", owner = "nobody", group = "{real_group.gr_name}" }}
plain = "file:{key}"
"""
    config = make_config(
        tmp_path, tmpfs_dir, body, f'owner = "nobody"\ngroup = "{real_group.gr_name}"'
    )
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 0, result.stderr
    target = tmpfs_dir / "app.service"

    def owner_mode(path: Path) -> tuple[int, int, int]:
        info = os.lstat(path)
        return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)

    assert owner_mode(target / "tls-key") == (0, real_group.gr_gid, 0o440)
    assert owner_mode(target / "owned") == (nobody.pw_uid, real_group.gr_gid, 0o400)
    assert owner_mode(target / "plain") == (0, 0, 0o400)
    # The sink's owner/group hand the target directory over (0700: its owner reads it).
    assert owner_mode(target) == (nobody.pw_uid, real_group.gr_gid, 0o700)
    # A second delivery keeps them (nothing changed, nothing rewritten wrongly).
    again = cli("-c", str(config), "deliver")
    assert again.returncode == 0, again.stderr
    assert owner_mode(target / "tls-key") == (0, real_group.gr_gid, 0o440)
    assert owner_mode(target) == (nobody.pw_uid, real_group.gr_gid, 0o700)


def test_a_disk_error_between_two_swaps_is_a_delivery_failure(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError in the engine itself (not in a sink) during the commit: every target put
    back, exit 9 with one line, never an internal error."""
    config = delivered(tmp_path, tmpfs_dir, monkeypatch)
    before = snapshot(tmpfs_dir)
    result = redeliver_with_fault(config, "engine.commit@2:error")
    assert result.returncode == 9, result.stderr
    assert result.stderr.decode().splitlines() == [
        "credbridge: error: delivery failed, nothing changed: injected fault at engine.commit"
    ]
    assert snapshot(tmpfs_dir) == before


def test_the_api_delivers_unless_asked_for_a_dry_run(tmp_path: Path, tmpfs_dir: Path) -> None:
    os.environ["CB_TEST_STATIC"] = "api"
    try:
        with Session(load_config(make_config(tmp_path, tmpfs_dir, BODY))) as session:
            report = session.deliver()
    finally:
        del os.environ["CB_TEST_STATIC"]
    assert not report.dry_run
    assert (tmpfs_dir / "app.service" / "static").read_bytes() == b"api"


def test_a_failed_cleanup_of_the_old_set_keeps_the_delivery(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new sets are live when removing an old one fails: exit 0, a warning naming the
    target, and the next run removes what was left."""
    monkeypatch.setenv("CB_TEST_STATIC", "v1")
    config = make_config(tmp_path, tmpfs_dir, BODY)
    deliver(config)
    result = redeliver_with_fault(config, "credstore.finalize@1:error")
    assert result.returncode == 0, result.stderr
    assert (
        "cleaning up the previous set of app.service failed: injected fault at credstore.finalize"
    ) in result.stderr.decode()
    assert (tmpfs_dir / "app.service" / "static").read_bytes() == b"v2"
    assert (tmpfs_dir / "worker.service" / "api-key").exists()
    monkeypatch.setenv("CB_TEST_STATIC", "v2")
    deliver(config)
    assert sorted(os.listdir(tmpfs_dir)) == [".credbridge.lock", "app.service", "worker.service"]


@pytest.mark.parametrize("which", ["owner", "group"])
def test_the_sink_owner_or_group_alone_is_applied_to_the_target_directory(
    tmp_path: Path, tmpfs_dir: Path, real_group: grp.struct_group, cli: Any, which: str
) -> None:
    nobody = pwd.getpwnam("nobody")
    setting = 'owner = "nobody"' if which == "owner" else f'group = "{real_group.gr_name}"'
    (tmp_path / "v").write_text("value")
    body = f'[targets."app.service".credentials]\nk = "file:{tmp_path / "v"}"\n'
    result = cli("-c", str(make_config(tmp_path, tmpfs_dir, body, setting)), "deliver")
    assert result.returncode == 0, result.stderr
    info = os.lstat(tmpfs_dir / "app.service")
    expected = (nobody.pw_uid, 0) if which == "owner" else (0, real_group.gr_gid)
    assert (info.st_uid, info.st_gid) == expected


def test_a_write_error_while_staging_names_the_target_and_leaves_nothing(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", "v1")
    config = make_config(tmp_path, tmpfs_dir, BODY)
    deliver(config)  # the generated value is in the store: the next write is the credstore's
    before = snapshot(tmpfs_dir)
    result = redeliver_with_fault(config, "write.created@1:error")
    assert result.returncode == 9, result.stderr
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith(f"credbridge: error: app.service: cannot write {tmpfs_dir}/.app.service")
    assert line.endswith(": injected fault at write.created")
    assert snapshot(tmpfs_dir) == before
    assert sorted(os.listdir(tmpfs_dir)) == [".credbridge.lock", "app.service", "worker.service"]


def test_a_hanging_systemd_creds_times_out(tmp_path: Path, tmpfs_dir: Path) -> None:
    hang = tmp_path / "systemd-creds"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    extra = f'encrypt = true\nsystemd_creds = "{hang}"\ntimeout = 1'
    os.environ["CB_TEST_STATIC"] = "v1"
    try:
        with pytest.raises(DeliveryError) as error:
            deliver(make_config(tmp_path, tmpfs_dir, BODY, extra))
    finally:
        del os.environ["CB_TEST_STATIC"]
    assert str(error.value).endswith("systemd-creds encrypt timed out")
    assert sorted(os.listdir(tmpfs_dir)) == [".credbridge.lock"]


def test_a_changed_delivery_says_only_what_changed(
    tmp_path: Path, tmpfs_dir: Path, cli: Any
) -> None:
    """The old set is removed without a word: no warning, no staging directory left."""
    (tmp_path / "v").write_text("one")
    body = f'[targets."app.service".credentials]\nk = "file:{tmp_path / "v"}"\n'
    config = make_config(tmp_path, tmpfs_dir, body)
    assert cli("-c", str(config), "deliver").returncode == 0
    (tmp_path / "v").write_text("two")
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines() == [
        f"credbridge: app.service: 1 changed (credstore: {tmpfs_dir / 'app.service'})"
    ]
    assert sorted(os.listdir(tmpfs_dir)) == [".credbridge.lock", "app.service"]


def test_a_credstore_path_through_a_file_is_named_with_the_reason(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", "v")
    (tmpfs_dir / "file").write_text("")
    credstore = tmpfs_dir / "file" / "credstore"
    with pytest.raises(DeliveryError) as error:
        deliver(make_config(tmp_path, credstore, BODY))
    assert str(error.value) == f"cannot use {credstore}: Not a directory"
    assert not (tmp_path / "store").exists(), "generated before the refusal"


@pytest.mark.parametrize(
    ("pcrs", "accepted"), [("7", True), ("0+7", True), (7, True), ("7\n", False)]
)
def test_tpm2_pcrs_is_a_plain_string_or_number(
    tmp_path: Path, tmpfs_dir: Path, pcrs: object, accepted: bool
) -> None:
    value = f'"{pcrs}"'.replace("\n", "\\n") if isinstance(pcrs, str) else str(pcrs).lower()
    config = load_config(make_config(tmp_path, tmpfs_dir, BODY, f"tpm2_pcrs = {value}"))
    with Session(config) as session:
        if accepted:
            session.sink(config.target("app.service"))
            return
        with pytest.raises(ConfigError, match='tpm2_pcrs: must be a string like "7" or "0\\+7"'):
            session.sink(config.target("app.service"))


@pytest.mark.parametrize("owner", ["daemon", "nobody"])
def test_a_target_directory_handed_to_its_owner_is_trusted_on_the_next_run(
    tmp_path: Path, tmpfs_dir: Path, cli: Any, owner: str
) -> None:
    """The live directory belongs to ``owner`` after a delivery (uid 1 for daemon, like any
    other): the next delivery replaces it instead of refusing it as someone else's."""
    value = tmp_path / "v"
    value.write_text("first")
    body = f'[targets."app.service".credentials]\nk = "file:{value}"\n'
    config = make_config(tmp_path, tmpfs_dir, body, f'owner = "{owner}"')
    assert cli("-c", str(config), "deliver").returncode == 0
    assert os.lstat(tmpfs_dir / "app.service").st_uid == pwd.getpwnam(owner).pw_uid
    value.write_text("second")
    again = cli("-c", str(config), "deliver")
    assert again.returncode == 0, again.stderr
    assert (tmpfs_dir / "app.service" / "k").read_text() == "second"


def failing_systemd_creds(tmp_path: Path, stderr: str) -> Path:
    stub = tmp_path / "systemd-creds"
    stub.write_text(f"#!/bin/sh\ncat >/dev/null\nprintf '{stderr}' >&2\nexit 3\n")
    stub.chmod(0o755)
    return stub


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        ("Loading key failed\\nTPM2 not available\\n", "TPM2 not available"),
        ("Loading key failed\\nretrying\\nTPM2 not available\\n", "TPM2 not available"),
        ("", "no message"),
    ],
)
def test_a_failing_systemd_creds_encrypt_is_named_with_its_last_line(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch, stderr: str, reason: str
) -> None:
    monkeypatch.setenv("CB_TEST_STATIC", "v")
    stub = failing_systemd_creds(tmp_path, stderr)
    config = make_config(tmp_path, tmpfs_dir, BODY, f'encrypt = true\nsystemd_creds = "{stub}"')
    with pytest.raises(DeliveryError) as error:
        deliver(config, ["app.service"])
    assert str(error.value) in {
        f"app.service/{name}: systemd-creds encrypt failed (exit 3): {reason}"
        for name in ("api-key", "static")
    }
    assert sorted(os.listdir(tmpfs_dir)) == [".credbridge.lock"]


def test_a_systemd_creds_message_quoting_the_value_is_withheld(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd-creds read the value on stdin: a message that quotes it is not shown."""
    from credbridge.core.remote import WITHHELD

    value = f"static-value-{uuid.uuid4().hex}"
    monkeypatch.setenv("CB_TEST_STATIC", value)
    stub = tmp_path / "systemd-creds"
    stub.write_text("#!/bin/sh\nprintf 'bad input: ' >&2\ncat >&2\nexit 3\n")
    stub.chmod(0o755)
    config = make_config(tmp_path, tmpfs_dir, BODY, f'encrypt = true\nsystemd_creds = "{stub}"')
    with pytest.raises(DeliveryError) as error:
        deliver(config, ["app.service"])
    assert str(error.value).endswith(f"systemd-creds encrypt failed (exit 3): {WITHHELD}")
    assert value[6:18] not in str(error.value)


def test_an_encrypted_credential_that_no_longer_decrypts_is_replaced(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable blob (corrupted, or sealed with a key since replaced) compares as
    changed: the next delivery writes a good one instead of failing."""
    config = encrypted_config(tmp_path, tmpfs_dir, monkeypatch, "v")
    deliver(config, ["app.service"])
    blob = tmpfs_dir / "app.service" / "static"
    blob.chmod(0o600)
    blob.write_bytes(b"corrupted")
    report = deliver(config, ["app.service"])
    assert ("static", Change.CHANGE) in {(e.credential, e.change) for e in report.entries}
    plain = systemd_creds_decrypt(blob)
    assert plain == b"v"


def test_a_numeric_owner_is_a_uid_and_a_flag_is_refused(tmp_path: Path, tmpfs_dir: Path) -> None:
    (tmp_path / "v").write_text("value")
    body = f'[targets."app.service".credentials]\nk = "file:{tmp_path / "v"}"\n'
    deliver(make_config(tmp_path, tmpfs_dir, body, "owner = 65534"))
    assert os.lstat(tmpfs_dir / "app.service").st_uid == 65534
    with pytest.raises(ConfigError, match=r"owner: must be a user/group name or numeric id"):
        deliver(make_config(tmp_path, tmpfs_dir, body, "owner = true"))


def test_a_credstore_that_cannot_be_made_is_named_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "v").write_text("value")
    body = f'[targets."app.service".credentials]\nk = "file:{tmp_path / "v"}"\n'
    base = Path("/proc/credbridge-cannot-exist")
    config = make_config(tmp_path, base, body, "allow_persistent = true")
    with pytest.raises(DeliveryError) as error:
        deliver(config)
    assert str(error.value) == f"cannot prepare {base}: No such file or directory"


@pytest.mark.parametrize(
    ("extra", "directory"),
    [("", "/run/credstore"), ("encrypt = true", "/etc/credstore.encrypted")],
)
def test_the_default_credstore_follows_systemd_and_encryption(
    tmp_path: Path, extra: str, directory: str
) -> None:
    path = tmp_path / "credbridge.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "store"}"\n[sinks.credstore]\n{extra}\n{BODY}')
    with Session(load_config(path)) as session:
        _, text = session.unit_dropin("app.service")
    directive = "LoadCredentialEncrypted" if extra else "LoadCredential"
    assert f"{directive}=static:{directory}/app.service/static" in text.splitlines()


def test_delivery_puts_the_callers_signal_handlers_back(
    tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedding program's handlers (and Python's own SIGINT handler) are in place again
    after the commit that held the signals."""
    import signal

    monkeypatch.setenv("CB_TEST_STATIC", "v")

    def on_hup(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGHUP, on_hup)
    try:
        before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        deliver(make_config(tmp_path, tmpfs_dir, BODY))
        after = {s: signal.getsignal(s) for s in before}
    finally:
        signal.signal(signal.SIGHUP, previous)
    # A handler installed outside Python reads as None and can only be put back as SIG_DFL.
    assert after == {s: signal.SIG_DFL if h is None else h for s, h in before.items()}
    assert after[signal.SIGHUP] is on_hup


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("relative/store", "must be absolute and normalized"),
        ("/run/credstore/../x", "must be absolute and normalized"),
        ("/run/cred\nstore", "cannot go into a unit file"),
    ],
)
def test_a_load_credential_path_systemd_would_ignore_is_refused(path: str, problem: str) -> None:
    """The last line of defence for sinks built in code: systemd ignores a LoadCredential=
    path that is not absolute and normalized, so such a path is never written."""
    from credbridge.backends.credstore import unit_path_value

    with pytest.raises(DeliveryError, match=problem):
        unit_path_value(Path(path))
    assert unit_path_value(Path("/run/credstore/100%")) == "/run/credstore/100%%"
