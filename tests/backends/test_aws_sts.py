"""``aws-sts:`` — temporary credentials from STS AssumeRole, against a real moto server.

The delivered credentials are checked with the AWS client itself: botocore signs
``GetCallerIdentity`` with them (and reads them through ``credential_process``), and moto
answers with the assumed role's session.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from credbridge.core import (
    BadReference,
    Pending,
    Request,
    Secret,
    Session,
    Unreachable,
    parse_config,
    parse_reference,
)
from credbridge.core.types import Mode
from support.aws_setup import aws, clean_aws_env
from support.httpproxy import HttpProxy
from support.moto import MotoServer, free_port, moto

pytestmark = pytest.mark.aws

__all__ = ["aws", "clean_aws_env", "moto"]  # fixtures, imported so pytest finds them here

ROLE = "arn:aws:iam::222222222222:role/deployer"
PARTS = ("access_key_id", "secret_access_key", "session_token")


def resolve(
    refs: list[str], mode: Mode = Mode.DELIVER, config: Mapping[str, Any] | None = None
) -> list[Any]:
    requests = [Request(parse_reference(r)) for r in refs]
    table = {"sources": {"aws-sts": {"max_attempts": 2, "connect_timeout": 2, **(config or {})}}}
    with Session(parse_config(table)) as session:
        for request in requests:
            session.check_reference(request.reference)
        outcomes = session.resolve(requests, mode)
    return [outcomes[request] for request in requests]


def caller_arn(moto: MotoServer, key_id: str, secret_key: str, token: str) -> str:
    """Who AWS (moto) says these credentials are, asked by botocore itself."""
    import botocore.session

    sts = botocore.session.Session().create_client(
        "sts",
        region_name="us-east-1",
        endpoint_url=moto.url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret_key,
        aws_session_token=token,
    )
    return str(sts.get_caller_identity()["Arn"])


def assume_calls(proxy: HttpProxy) -> list[bytes]:
    return [r.body for r, _, _ in proxy.seen if b"Action=AssumeRole" in r.body]


def test_the_parts_of_one_session_work_and_carry_its_expiry(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"aws-sts:{ROLE}?session-name=web-1&duration=15m"
    with HttpProxy(aws.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        values = resolve([f"{base}#{part}" for part in (*PARTS, "expiration")])
        calls = assume_calls(proxy)
    assert all(isinstance(v, Secret) for v in values), values
    key_id, secret_key, token, expiration = (v.reveal_text() for v in values)
    # One AssumeRole for every part of the same reference: the parts belong together.
    assert len(calls) == 1
    assert b"RoleSessionName=web-1" in calls[0] and b"DurationSeconds=900" in calls[0]
    assert key_id.startswith("ASIA")
    arn = caller_arn(aws, key_id, secret_key, token)
    assert arn == "arn:aws:sts::222222222222:assumed-role/deployer/web-1"

    lease = values[0].lease
    assert lease is not None and all(v.lease == lease for v in values)
    assert lease.renewable is False and lease.lease_id is None
    assert lease.expires_at is not None and lease.issued_at is not None
    shown = datetime.datetime.strptime(expiration, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )
    assert shown.timestamp() == int(lease.expires_at)
    # moto issues them for exactly DurationSeconds from the call.
    assert 900 - 60 < lease.expires_at - lease.issued_at <= 900 + 60
    assert secret_key not in repr(lease) and token not in repr(lease)


def test_another_session_name_is_another_session(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HttpProxy(aws.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        one, two = resolve(
            [f"aws-sts:{ROLE}#access_key_id", f"aws-sts:{ROLE}?session-name=other#access_key_id"]
        )
        calls = assume_calls(proxy)
    assert len(calls) == 2 and b"RoleSessionName=credbridge" in calls[0] + calls[1]
    assert isinstance(one, Secret) and isinstance(two, Secret)
    assert one.reveal() != two.reveal()


def test_credential_process_json_is_read_by_botocore(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [process] = resolve([f"aws-sts:{ROLE}?session-name=from-file#credential_process"])
    assert isinstance(process, Secret)
    document = json.loads(process.reveal_text())
    assert document["Version"] == 1 and set(document) == {
        "Version",
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    }
    delivered = tmp_path / "aws-credentials.json"
    delivered.write_bytes(process.reveal())
    config = tmp_path / "aws-config"
    config.write_text(f"[profile app]\ncredential_process = cat {delivered}\n")
    import botocore.session

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    session = botocore.session.Session(profile="app")
    sts = session.create_client("sts", region_name="us-east-1", endpoint_url=aws.url)
    arn = sts.get_caller_identity()["Arn"]
    assert arn == "arn:aws:sts::222222222222:assumed-role/deployer/from-file"


def test_dry_run_and_check_assume_no_role(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tmpfs_dir: Path
) -> None:
    with HttpProxy(aws.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        [pending] = resolve([f"aws-sts:{ROLE}#session_token"], Mode.DRY_RUN)
        assert isinstance(pending, Pending) and "sts:AssumeRole" in pending.reason
        config = tmp_path / "credbridge.toml"
        config.write_text(
            f'[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n'
            f'[targets.web.credentials]\ntoken = "aws-sts:{ROLE}#session_token"\n'
        )
        checked = run_cli("-c", str(config), "check")
        dry = run_cli("-c", str(config), "deliver", "--dry-run")
        assert assume_calls(proxy) == []
        done = run_cli("-c", str(config), "deliver")
        assert len(assume_calls(proxy)) == 1
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert b"sts:AssumeRole in a real run" in checked.stdout
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert done.returncode == 0, done.stderr
    assert (tmpfs_dir / "web" / "token").read_bytes()


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        (f"aws-sts:{ROLE}", "name the part to deliver"),
        (f"aws-sts:{ROLE}#password", "name the part to deliver"),
        ("aws-sts:arn:aws:iam::222222222222:user/bob#session_token", "expected aws-sts:arn:"),
        (f"aws-sts:{ROLE}?duration=10m#session_token", "duration must be from 900s"),
        (f"aws-sts:{ROLE}?duration=13h#session_token", "duration must be from 900s"),
        (f"aws-sts:{ROLE}?duration=1d#session_token", "duration must be seconds"),
        (f"aws-sts:{ROLE}?session-name=x#session_token", "session-name must be"),
    ],
)
def test_bad_references_are_named(reference: str, problem: str) -> None:
    with Session(parse_config({})) as session, pytest.raises(BadReference) as raised:
        session.check_reference(parse_reference(reference))
    assert problem in str(raised.value) and reference in str(raised.value)


def test_an_unreachable_sts_is_typed(monkeypatch: pytest.MonkeyPatch, moto: MotoServer) -> None:
    for name, value in moto.env(endpoint=f"http://127.0.0.1:{free_port()}").items():
        monkeypatch.setenv(name, value)
    [outcome] = resolve([f"aws-sts:{ROLE}#session_token"])
    assert isinstance(outcome, Unreachable), outcome
    assert f"sts:AssumeRole of {ROLE}" in str(outcome)


def test_role_arn_in_the_settings_is_assumed_first(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = "arn:aws:iam::333333333333:role/hop"
    with HttpProxy(aws.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        values = resolve(
            [f"aws-sts:{ROLE}?session-name=chained#{part}" for part in PARTS],
            config={"role_arn": first, "role_session_name": "hop-session"},
        )
        calls = assume_calls(proxy)
    assert [b"RoleSessionName=hop-session" in c for c in calls] == [True, False]
    assert b"RoleSessionName=chained" in calls[1]
    key_id, secret_key, token = (v.reveal_text() for v in values)
    arn = caller_arn(aws, key_id, secret_key, token)
    assert arn == "arn:aws:sts::222222222222:assumed-role/deployer/chained"
