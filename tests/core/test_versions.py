"""Versions of static values (``Secret.lease.version``), so a long-running run can tell a change.

Each backend's version is compared with what its own client reports for the same value: ``bao kv
metadata get`` for KV v2, ``describe-secret`` / ``get-parameter`` through botocore for AWS, and
``sha256sum`` of the encrypted file for sops.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import secret_value
from credbridge.core import Request, Secret, Session, parse_config, parse_reference
from support.age_sops import age_keygen_binary, clean_sops_env, encrypt, make_key
from support.aws_setup import clean_aws_env
from support.moto import MotoServer, moto
from support.openbao import DevServer, openbao
from support.servers import unique
from support.vault_setup import clean_vault_env

# Nothing of the developer's Vault, AWS or sops setup is used (the clean_*_env are autouse).
__all__ = ["clean_aws_env", "clean_sops_env", "clean_vault_env", "moto", "openbao"]


def read(config: Mapping[str, Any], *refs: str, directory: Path | None = None) -> list[Secret]:
    """Resolve through a real Session; every reference must give a value."""
    requests = [Request(parse_reference(r)) for r in refs]
    with Session(parse_config(dict(config), directory=directory)) as session:
        outcomes = session.resolve(requests)
    values = [outcomes[request] for request in requests]
    for ref, value in zip(refs, values, strict=True):
        assert isinstance(value, Secret), f"{ref}: {value}"
    return values  # type: ignore[return-value]


def version_of(value: Secret) -> str | None:
    return value.lease.version if value.lease is not None else None


# --------------------------------------------------------------------------- Vault / OpenBao


@pytest.mark.vault
def test_kv2_values_carry_the_version_bao_reports(openbao: DevServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(openbao.token)
    config = {
        "sources": {"vault": {"address": openbao.address, "auth": {"token_file": str(token)}}}
    }
    path = unique("versions")
    ref = f"vault:secret/{path}#password"
    client = openbao.client()

    def metadata() -> int:
        shown = openbao.bao("kv", "metadata", "get", "-format=json", "-mount=secret", path)
        return int(json.loads(shown.stdout)["data"]["current_version"])

    secret_value("first-pw")
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"password": "first-pw"})
    [first] = read(config, ref)
    assert first.reveal() == b"first-pw"
    assert version_of(first) == str(metadata()) == "1"

    secret_value("second-pw")
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"password": "second-pw"})
    [second, pinned] = read(config, ref, f"vault:secret/{path}?version=1#password")
    assert second.reveal() == b"second-pw"
    assert version_of(second) == str(metadata()) == "2"
    # A reference pinned to a version carries that version.
    assert pinned.reveal() == b"first-pw" and version_of(pinned) == "1"

    # KV v1 keeps no versions: its values carry none (a change shows in the value only).
    mount = unique("kv1")
    openbao.client().sys.enable_secrets_engine("kv", path=mount, options={"version": "1"})
    secret_value("kv1-pw")
    openbao.client().secrets.kv.v1.create_or_update_secret(
        path="app", secret={"password": "kv1-pw"}, mount_point=mount
    )
    [value] = read(config, f"vault:{mount}/app#password")
    assert value.reveal() == b"kv1-pw" and value.lease is None


# --------------------------------------------------------------------------- AWS (moto)


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    return moto


@pytest.mark.aws
def test_secrets_manager_values_carry_the_version_id(aws: MotoServer) -> None:
    sm = aws.client("secretsmanager")
    name = unique("app")
    secret_value("sm-one")
    sm.create_secret(Name=name, SecretString=json.dumps({"password": "sm-one"}))
    refs = (f"aws-sm:{name}#password", f"aws-sm:{name}")

    def current() -> str:
        stages = sm.describe_secret(SecretId=name)["VersionIdsToStages"]
        [found] = [v for v, s in stages.items() if "AWSCURRENT" in s]
        return str(found)

    first = read({}, *refs)
    assert first[0].reveal() == b"sm-one"
    assert {version_of(v) for v in first} == {current()}

    secret_value("sm-two")
    sm.put_secret_value(SecretId=name, SecretString=json.dumps({"password": "sm-two"}))
    second = read({}, *refs, f"aws-sm:{name}?version-stage=AWSPREVIOUS#password")
    assert second[0].reveal() == b"sm-two"
    assert version_of(second[0]) == version_of(second[1]) == current() != version_of(first[0])
    # The previous stage is read by GetSecretValue: it names its own version.
    assert second[2].reveal() == b"sm-one" and version_of(second[2]) == version_of(first[0])


@pytest.mark.aws
def test_parameter_store_values_carry_the_parameter_version(aws: MotoServer) -> None:
    ssm = aws.client("ssm")
    name = "/" + unique("app")
    secret_value("ssm-one")
    ssm.put_parameter(Name=name, Value="ssm-one", Type="SecureString")
    [first] = read({}, f"aws-ssm:{name}")
    reported = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Version"]
    assert first.reveal() == b"ssm-one" and version_of(first) == str(reported) == "1"

    secret_value("ssm-two")
    ssm.put_parameter(Name=name, Value="ssm-two", Type="SecureString", Overwrite=True)
    [second, old] = read({}, f"aws-ssm:{name}", f"aws-ssm:{name}:1")
    reported = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Version"]
    assert second.reveal() == b"ssm-two" and version_of(second) == str(reported) == "2"
    assert old.reveal() == b"ssm-one" and version_of(old) == "1"


# --------------------------------------------------------------------------- sops, file


def sha256sum(path: Path) -> str:
    """What ``sha256sum`` (coreutils) prints for the file."""
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return "sha256:" + out.stdout.split()[0]


def test_sops_values_carry_the_digest_of_the_encrypted_file(tmp_path: Path) -> None:
    key = make_key(age_keygen_binary(), tmp_path)
    config = {"sources": {"sops": {"age_key_file": str(key.path)}}}
    secret_value("sops-one")
    path = encrypt(tmp_path / "app.yaml", b"db:\n  password: sops-one\nother: x\n", key)
    blob = encrypt(tmp_path / "blob.bin", b"binary-one", key, kind="binary")
    refs = (f"sops:{path}#/db/password", f"sops:{path}#other", f"sops:{blob}")
    first = read(config, *refs)
    assert first[0].reveal() == b"sops-one" and first[2].reveal() == b"binary-one"
    assert version_of(first[0]) == version_of(first[1]) == sha256sum(path)
    assert version_of(first[2]) == sha256sum(blob)

    # Re-encrypting the same plaintext makes another file (new data key and nonces): a new
    # version, even with the same size and mtime.
    stat = path.stat()
    secret_value("sops-two")
    encrypt(path, b"db:\n  password: sops-two\nother: x\n", key)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = read(config, *refs)
    assert second[0].reveal() == b"sops-two"
    assert version_of(second[0]) == sha256sum(path) != version_of(first[0])
    assert version_of(second[2]) == version_of(first[2])


def test_file_values_carry_a_version_that_changes_with_the_bytes_only(tmp_path: Path) -> None:
    path = tmp_path / "pin"
    secret_value("1234")
    path.write_bytes(b"1234\n")
    [first, stripped] = read({}, f"file:{path}", f"file:{path}?strip=true")
    [again] = read({}, f"file:{path}")
    assert version_of(first) is not None and version_of(first) == version_of(again)
    assert version_of(stripped) not in (None, version_of(first))
    # The version shows nothing a guess of the value could be checked against.
    for guess in (b"1234\n", b"1234"):
        assert hashlib.sha256(guess).hexdigest()[:16] not in str(version_of(first))

    stat = path.stat()
    secret_value("5678")
    path.write_bytes(b"5678\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    [changed] = read({}, f"file:{path}")
    assert changed.reveal() == b"5678\n" and version_of(changed) != version_of(first)
