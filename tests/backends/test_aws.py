"""``aws-sm:`` and ``aws-ssm:`` against a real moto server (AWS emulation over HTTP, loopback).

credbridge is pointed at moto the way a user points the AWS SDKs at LocalStack: through
``AWS_ENDPOINT_URL`` (or the per-service variables) and credentials in the environment. Faults
moto does not produce on demand (throttling, denied batch calls, KMS failures, error answers
quoting secrets) are injected by a loopback HTTP proxy in front of it (support/httpproxy.py).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from credbridge.core import (
    Forbidden,
    InvalidValue,
    NotFound,
    ResolutionFailed,
    Session,
    SourceError,
    Timeout,
    Unreachable,
    parse_config,
)
from credbridge.core.errors import ExitCode
from credbridge.core.remote import WITHHELD
from support.aws_setup import aws, clean_aws_env, config_file, resolve, sources
from support.cli_runs import every_command_verbose
from support.httpproxy import HttpProxy, Reply
from support.moto import ACCESS_KEY, MotoServer, free_port, moto
from support.servers import established_connections, unique

pytestmark = pytest.mark.aws

__all__ = ["aws", "clean_aws_env", "moto"]  # fixtures, imported so pytest finds them here


# --------------------------------------------------------------------------- reading


def test_string_json_binary_secrets_and_version_stages(aws: MotoServer) -> None:
    sm = aws.client("secretsmanager")
    name = unique("app")
    sm.create_secret(Name=f"{name}/db", SecretString=json.dumps({"password": "pw-1", "port": 5432}))
    sm.create_secret(Name=f"{name}/blob", SecretBinary=b"\x00\xff\x10binary")
    created = sm.create_secret(Name=f"{name}/api", SecretString="api-v1")
    first_version = created["VersionId"]
    sm.put_secret_value(SecretId=f"{name}/api", SecretString="api-v2")  # a rotation
    arn = created["ARN"]
    got = resolve(
        sources(),
        f"aws-sm:{name}/db#password",
        f"aws-sm:{name}/db#/port",
        f"aws-sm:{name}/blob",
        f"aws-sm:{name}/api",
        f"aws-sm:{name}/api?version-stage=AWSPREVIOUS",
        f"aws-sm:{name}/api?version-stage=AWSCURRENT",
        f"aws-sm:{name}/api?version-id={first_version}",
        f"aws-sm:{arn}",
        f"aws-sm:{arn[:-7]}",  # a partial ARN (without the random suffix)
    )
    assert got == [
        b"pw-1",
        b"5432",
        b"\x00\xff\x10binary",
        b"api-v2",
        b"api-v1",
        b"api-v2",
        b"api-v1",
        b"api-v2",
        b"api-v2",
    ]
    selector_on_binary = resolve(sources(), f"aws-sm:{name}/blob#x")[0]
    assert isinstance(selector_on_binary, InvalidValue)


def test_ssm_securestring_versions_and_labels(aws: MotoServer) -> None:
    ssm = aws.client("ssm")
    base = f"/{unique('svc')}"
    ssm.put_parameter(Name=f"{base}/db", Value="ssm-v1", Type="SecureString")
    ssm.put_parameter(Name=f"{base}/db", Value="ssm-v2", Type="SecureString", Overwrite=True)
    ssm.label_parameter_version(Name=f"{base}/db", ParameterVersion=1, Labels=["stable"])
    ssm.put_parameter(Name=f"{base}/json", Value='{"user":"app"}', Type="SecureString")
    ssm.put_parameter(Name=f"{base}/plain", Value="not-secret", Type="String")
    got = resolve(
        sources(),
        f"aws-ssm:{base}/db",
        f"aws-ssm:{base}/db:1",
        f"aws-ssm:{base}/db:stable",
        f"aws-ssm:{base}/db?version=2",
        f"aws-ssm:{base}/json#user",
        f"aws-ssm:{base}/plain",
        f"aws-ssm:{base}/db:9",
    )
    assert got[:6] == [b"ssm-v2", b"ssm-v1", b"ssm-v1", b"ssm-v2", b"app", b"not-secret"]
    assert isinstance(got[6], NotFound)
    assert got[6].problem == f"no parameter {base}/db with version or label '9'"


def test_batches_of_20_and_10_one_call_per_chunk(aws: MotoServer) -> None:
    sm, ssm = aws.client("secretsmanager"), aws.client("ssm")
    prefix = unique("many")
    for index in range(45):
        sm.create_secret(Name=f"{prefix}/s{index}", SecretString=f"sv{index}")
    for index in range(25):
        ssm.put_parameter(Name=f"/{prefix}/p{index}", Value=f"pv{index}", Type="SecureString")
    refs = [f"aws-sm:{prefix}/s{index}" for index in range(45)]
    refs += [f"aws-ssm:/{prefix}/p{index}" for index in range(25)]
    # Each call is held 0.3 s at the proxy, so calls made concurrently are seen in flight together.
    with HttpProxy(aws.port, hold=0.3) as proxy:
        got = resolve(sources(endpoint_url=proxy.url), *refs)
        calls = sorted(proxy.operations())
    # 4 of the 6 at once means calls of one service overlapped, not only the two services.
    assert proxy.max_in_flight >= 4, proxy.max_in_flight
    assert got == [f"sv{i}".encode() for i in range(45)] + [f"pv{i}".encode() for i in range(25)]
    # 45 secrets: 20 + 20 + 5; 25 parameters: 10 + 10 + 5. Nothing one by one.
    assert calls == ["BatchGetSecretValue"] * 3 + ["GetParameters"] * 3
    sizes = sorted(
        len(json.loads(r.body)["SecretIdList"])
        for r, _, _ in proxy.seen
        if r.operation == "BatchGetSecretValue"
    )
    assert sizes == [5, 20, 20]


def test_regions_and_profiles_batch_separately(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("regional")
    aws.client("secretsmanager", "us-east-1").create_secret(Name=name, SecretString="in-us")
    aws.client("secretsmanager", "eu-west-1").create_secret(Name=name, SecretString="in-eu")
    arn = aws.client("secretsmanager", "eu-west-1").describe_secret(SecretId=name)["ARN"]
    aws.client("ssm", "ap-south-1").put_parameter(Name=f"/{name}", Value="p-ap", Type="String")
    # Regions from the profiles (no AWS_DEFAULT_REGION); a second profile with its own keys.
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    Path(os.environ["AWS_CONFIG_FILE"]).write_text(
        "[default]\nregion = us-east-1\n[profile other]\nregion = eu-west-1\n"
    )
    Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        "[other]\naws_access_key_id = AKIAOTHERPROFILE0001\naws_secret_access_key = other-secret\n"
    )
    with HttpProxy(aws.port) as proxy:
        got = resolve(
            sources(endpoint_url=proxy.url),
            f"aws-sm:{name}",
            f"aws-sm:{name}?region=eu-west-1",
            f"aws-sm:{arn}",  # the region comes from the ARN
            f"aws-sm:{name}?profile=other",  # the profile's region
            f"aws-ssm:/{name}?region=ap-south-1",
        )
        batches = [r for r, _, _ in proxy.seen if r.operation == "BatchGetSecretValue"]
    assert got == [b"in-us", b"in-eu", b"in-eu", b"in-eu", b"p-ap"]
    regions = sorted(r.headers["authorization"].split("/")[2] for r in batches)
    keys = sorted(r.headers["authorization"].split("Credential=")[1].split("/")[0] for r in batches)
    assert regions == ["eu-west-1", "eu-west-1", "us-east-1"]  # one call per route
    assert keys == [ACCESS_KEY, ACCESS_KEY, "AKIAOTHERPROFILE0001"]


def test_aws_region_alone_is_honoured(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    env = moto.env()
    del env["AWS_DEFAULT_REGION"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = unique("r")
    moto.client("secretsmanager", "eu-central-1").create_secret(Name=name, SecretString="eu-c")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")  # botocore alone ignores it
    assert resolve(sources(), f"aws-sm:{name}") == [b"eu-c"]


def test_endpoint_variables_per_service(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique("ep")
    moto.client("secretsmanager").create_secret(Name=name, SecretString="via-service-var")
    moto.client("ssm").put_parameter(Name=f"/{name}", Value="x", Type="String")
    closed = free_port()
    for key, value in moto.env(endpoint=f"http://127.0.0.1:{closed}").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.url)
    got = resolve(sources(max_attempts=1), f"aws-sm:{name}", f"aws-ssm:/{name}")
    assert got[0] == b"via-service-var"
    assert isinstance(got[1], Unreachable)  # SSM still goes to the global (closed) endpoint
    assert got[1].problem.startswith(f"cannot reach http://127.0.0.1:{closed}/: connection refused")
    # The endpoint_url setting wins over both variables.
    table = sources(max_attempts=1, endpoint_url=moto.url)
    assert resolve(table, f"aws-ssm:/{name}") == [b"x"]


# --------------------------------------------------------------------------- failures


def test_missing_mixed_with_present_names_exactly_the_missing(
    aws: MotoServer, tmp_path: Path, tmpfs_dir: Path
) -> None:
    sm, ssm = aws.client("secretsmanager"), aws.client("ssm")
    prefix = unique("mix")
    for index in range(22):
        sm.create_secret(Name=f"{prefix}/s{index}", SecretString=f"value-{index}")
    for index in range(11):
        ssm.put_parameter(Name=f"/{prefix}/p{index}", Value=f"p-{index}", Type="SecureString")
    creds = {f"s{i}": f"aws-sm:{prefix}/s{i}" for i in range(22)}
    creds |= {f"p{i}": f"aws-ssm:/{prefix}/p{i}" for i in range(11)}
    creds |= {"gone1": f"aws-sm:{prefix}/gone1", "gone2": f"aws-ssm:/{prefix}/gone2"}
    data = {
        **sources(),
        "sinks": {"credstore": {"directory": str(tmpfs_dir)}},
        "targets": {"app.service": {"credentials": creds}},
    }
    result = run_cli("-c", str(config_file(tmp_path, data)), "deliver")
    assert result.returncode == ExitCode.NOT_FOUND, result.stderr
    lines = result.stderr.decode().strip().splitlines()
    assert lines[0].endswith("2 credential(s) could not be resolved; nothing was delivered")
    assert sorted(lines[1:]) == sorted(
        [
            f"credbridge: error: app.service/gone1: aws-sm:{prefix}/gone1: not found: "
            f"no secret {prefix}/gone1",
            f"credbridge: error: app.service/gone2: aws-ssm:/{prefix}/gone2: not found: "
            f"no parameter /{prefix}/gone2",
        ]
    )
    assert not (tmpfs_dir / "app.service").exists()  # nothing delivered


def test_no_credentials_is_forbidden(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    got = resolve(sources(), "aws-sm:anything", "aws-ssm:/anything")
    for outcome in got:
        assert isinstance(outcome, Forbidden), outcome
        assert outcome.problem.startswith("no AWS credentials found (environment, ~/.aws")


def test_a_failing_credential_process_is_forbidden_and_named(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A profile whose ``credential_process`` fails (an expired SSO helper, a vault agent that
    is down): botocore raises while the chain is resolved, before any call is made."""
    helper = tmp_path / "credential-helper"
    helper.write_text("#!/bin/sh\necho 'helper: the session expired' >&2\nexit 3\n")
    helper.chmod(0o700)
    (tmp_path / "home" / "aws-config").write_text(
        f"[profile broken]\ncredential_process = {helper}\nregion = us-east-1\n"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    for ref in ("aws-sm:x?profile=broken", "aws-ssm:/x?profile=broken"):
        outcome = resolve(sources(), ref)[0]
        assert isinstance(outcome, Forbidden), outcome
        assert outcome.problem.startswith("AWS credentials could not be loaded: "), outcome
        assert "the session expired" in outcome.problem
        assert "\n" not in str(outcome)


def test_a_proxy_that_is_down_is_named_without_its_password(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a proxy (HTTPS_PROXY/HTTP_PROXY, as botocore reads them) that does not answer:
    the error names the proxy, not only the endpoint, and never its credentials."""
    closed = free_port()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, f"http://ops:proxy-pass-0815@127.0.0.1:{closed}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.DEBUG, logger="credbridge.backends.aws_client"):
        outcome = resolve(sources(max_attempts=1), "aws-sm:x")[0]
    assert isinstance(outcome, Unreachable), outcome
    assert outcome.problem == (
        f"cannot reach the proxy http://127.0.0.1:{closed} (HTTPS_PROXY/HTTP_PROXY) for the "
        "AWS secretsmanager endpoint: connection refused (BatchGetSecretValue of 1 secret(s))"
    )
    # No region, profile or role given: the client is for the defaults.
    messages = [r.getMessage() for r in caplog.records]
    assert "aws-sm: secretsmanager client for defaults" in messages
    assert not any("proxy-pass-0815" in m for m in messages)


def test_a_closed_source_holds_no_connection_even_while_referenced(aws: MotoServer) -> None:
    """``Source.close()`` closes every client's pool itself: an embedding program may keep
    the source object alive after closing it. (moto closes each connection after answering;
    the proxy in front keeps them alive, as AWS does.)"""
    name = unique("close")
    aws.client("secretsmanager").create_secret(Name=name, SecretString="v")
    aws.client("ssm").put_parameter(Name=f"/{name}", Value="v", Type="SecureString")
    with (
        HttpProxy(aws.port) as proxy,
        Session(parse_config(sources(endpoint_url=proxy.url))) as session,
    ):
        for scheme, ref in (("aws-sm", f"aws-sm:{name}"), ("aws-ssm", f"aws-ssm:/{name}")):
            assert resolve(None, ref, session=session) == [b"v"]
            source = session.source(scheme)
            assert established_connections(proxy.port) >= 1
            source.close()
            assert established_connections(proxy.port) == 0, scheme


def test_unknown_profile_is_named(aws: MotoServer) -> None:
    outcome = resolve(sources(), "aws-sm:x?profile=nope")[0]
    assert isinstance(outcome, Forbidden)
    assert outcome.problem == "AWS profile 'nope' is not in ~/.aws/config or ~/.aws/credentials"


def test_no_region_is_named(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    env = moto.env()
    del env["AWS_DEFAULT_REGION"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    outcome = resolve(sources(), "aws-sm:x")[0]
    assert isinstance(outcome, Unreachable)
    assert outcome.problem.startswith("no AWS region: set ?region=, region in [sources.aws-sm]")
    assert (
        resolve(sources(), "aws-sm:x?region=us-east-1")[0].problem
        == "no secret x [region us-east-1]"
    )
    # Assuming a role needs a region for STS too: the same clear error.
    table = sources(role_arn="arn:aws:iam::123456789012:role/r")
    outcome = resolve(table, "aws-sm:x")[0]
    assert isinstance(outcome, Unreachable) and outcome.problem.startswith("no AWS region: ")


def test_cli_exit_codes(moto: MotoServer, tmp_path: Path) -> None:
    config = config_file(tmp_path, sources())
    no_creds = run_cli(
        "-c",
        str(config),
        "get",
        "aws-sm:x",
        env={"AWS_ENDPOINT_URL": moto.url, "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert no_creds.returncode == ExitCode.FORBIDDEN, no_creds.stderr
    assert no_creds.stderr.count(b"\n") == 1
    no_region = run_cli(
        "-c",
        str(config),
        "get",
        "aws-sm:x",
        env={k: v for k, v in moto.env().items() if k != "AWS_DEFAULT_REGION"},
    )
    assert no_region.returncode == ExitCode.UNREACHABLE
    assert b"no AWS region" in no_region.stderr and no_region.stderr.count(b"\n") == 1
    missing = run_cli("-c", str(config), "get", "aws-ssm:/nope", env=moto.env())
    assert missing.returncode == ExitCode.NOT_FOUND
    assert missing.stderr == b"credbridge: error: aws-ssm:/nope: no parameter /nope\n"
    bad = run_cli("-c", str(config), "get", "aws-sm:bad name", env=moto.env())
    assert bad.returncode == ExitCode.REFERENCE


def test_unreachable_endpoint_fails_within_the_timeout(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = free_port()
    for key, value in moto.env(endpoint=f"http://127.0.0.1:{closed}").items():
        monkeypatch.setenv(key, value)
    outcome = resolve(sources(max_attempts=2, connect_timeout=1), "aws-sm:x")[0]
    assert isinstance(outcome, Unreachable)
    assert outcome.problem == (
        f"cannot reach http://127.0.0.1:{closed}/: connection refused "
        "(BatchGetSecretValue of 1 secret(s))"
    )
    # A server that accepts connections and never answers: the read timeout, per attempt.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        outcome = resolve(sources(max_attempts=2, read_timeout=0.5), "aws-ssm:/x")[0]
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert isinstance(outcome, Timeout), outcome
    assert "within 0.5s (2 attempt(s))" in outcome.problem
    # Two 0.5 s attempts and a backoff below 2 s: far below botocore's default 60 s read timeout.
    assert elapsed < 15


def test_assume_role_through_sts(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    role = "arn:aws:iam::111111111111:role/credbridge-reader"
    name = unique("assumed")
    # moto maps credentials of an assumed role to the role's account: write the secret there.
    sts = aws.client("sts")
    creds = sts.assume_role(RoleArn=role, RoleSessionName="seed")["Credentials"]
    import botocore.session

    other = botocore.session.Session().create_client(
        "secretsmanager",
        region_name="us-east-1",
        endpoint_url=aws.url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    other.create_secret(Name=name, SecretString="from-account-111111111111")
    with HttpProxy(aws.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # STS and the service, as a user would
        table = sources(role_arn=role, role_session_name="cb-test")
        assert resolve(table, f"aws-sm:{name}") == [b"from-account-111111111111"]
        assume = [r for r, _, _ in proxy.seen if b"Action=AssumeRole" in r.body]
        batch = [r for r, _, _ in proxy.seen if r.operation == "BatchGetSecretValue"]
    assert len(assume) == 1 and b"RoleSessionName=cb-test" in assume[0].body
    assert batch[0].headers["authorization"].split("Credential=")[1].startswith("ASIA")
    assert "x-amz-security-token" in batch[0].headers
    # Without the role the secret is not visible (the default account is another one).
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.url)
    assert isinstance(resolve(sources(), f"aws-sm:{name}")[0], NotFound)


# --------------------------------------------------------------------------- injected faults


def _throttle(operation: str, times: int) -> Any:
    count = {"n": 0}

    def rule(request: Any) -> Reply | None:
        if request.operation == operation and count["n"] < times:
            count["n"] += 1
            return Reply.aws_json(400, "ThrottlingException", "Rate exceeded")
        return None

    return rule


@pytest.mark.parametrize(
    ("operation", "ref_kind"), [("BatchGetSecretValue", "sm"), ("GetParameters", "ssm")]
)
def test_throttling_is_retried_then_succeeds(
    aws: MotoServer, operation: str, ref_kind: str
) -> None:
    name = unique("thr")
    aws.client("secretsmanager").create_secret(Name=name, SecretString="after-throttle")
    aws.client("ssm").put_parameter(Name=f"/{name}", Value="after-throttle", Type="SecureString")
    ref = f"aws-sm:{name}" if ref_kind == "sm" else f"aws-ssm:/{name}"
    with HttpProxy(aws.port, _throttle(operation, 2)) as proxy:
        got = resolve(sources(endpoint_url=proxy.url, max_attempts=3), ref)
        assert proxy.injected() == 2
        assert proxy.operations() == [operation] * 3
    assert got == [b"after-throttle"]


def test_throttling_exhausted_is_a_clear_error(aws: MotoServer) -> None:
    name = unique("thr")
    aws.client("secretsmanager").create_secret(Name=name, SecretString="never")
    with HttpProxy(aws.port, _throttle("BatchGetSecretValue", 100)) as proxy:
        outcome = resolve(sources(endpoint_url=proxy.url, max_attempts=3), f"aws-sm:{name}")[0]
        assert proxy.injected() == 3  # the configured attempts, then it gives up
    assert isinstance(outcome, Unreachable)  # never "not found"
    assert str(outcome) == (
        f"aws-sm:{name}: throttled (ThrottlingException) after 3 attempt(s) "
        "reading BatchGetSecretValue of 1 secret(s)"
    )


def test_denied_batch_falls_back_to_one_call_per_secret(aws: MotoServer) -> None:
    prefix = unique("deny")
    sm = aws.client("secretsmanager")
    for index in range(3):
        sm.create_secret(Name=f"{prefix}/s{index}", SecretString=f"v{index}")

    def rule(request: Any) -> Reply | None:
        if request.operation == "BatchGetSecretValue":
            return Reply.aws_json(
                400,
                "AccessDeniedException",
                "not authorized to perform secretsmanager:BatchGetSecretValue",
            )
        if request.operation == "GetSecretValue" and json.loads(request.body)["SecretId"].endswith(
            "/s2"
        ):
            return Reply.aws_json(
                400,
                "AccessDeniedException",
                "not authorized to perform secretsmanager:GetSecretValue",
            )
        return None

    with HttpProxy(aws.port, rule) as proxy:
        got = resolve(sources(endpoint_url=proxy.url), *(f"aws-sm:{prefix}/s{i}" for i in range(3)))
        calls = sorted(proxy.operations())
    assert got[:2] == [b"v0", b"v1"]
    assert isinstance(got[2], Forbidden)
    assert got[2].problem.startswith(f"access denied to secret {prefix}/s2 (AccessDeniedException)")
    assert calls == ["BatchGetSecretValue", "GetSecretValue", "GetSecretValue", "GetSecretValue"]


def test_refused_parameter_batch_is_split_per_name(aws: MotoServer) -> None:
    """One denied parameter fails a whole GetParameters call: each name is then asked alone."""
    prefix = unique("split")
    ssm = aws.client("ssm")
    for index in range(3):
        ssm.put_parameter(Name=f"/{prefix}/p{index}", Value=f"v{index}", Type="SecureString")

    def rule(request: Any) -> Reply | None:
        names = json.loads(request.body or b"{}").get("Names", [])
        if request.operation == "GetParameters" and f"/{prefix}/p1" in names:
            return Reply.aws_json(400, "AccessDeniedException", "not authorized on p1")
        return None

    with HttpProxy(aws.port, rule) as proxy:
        got = resolve(
            sources(endpoint_url=proxy.url), *(f"aws-ssm:/{prefix}/p{i}" for i in range(3))
        )
        calls = [json.loads(r.body)["Names"] for r, _, _ in proxy.seen]
    assert got[0] == b"v0" and got[2] == b"v2"
    assert isinstance(got[1], Forbidden)
    assert got[1].problem == (
        f"access denied to parameter /{prefix}/p1 (AccessDeniedException): not authorized on p1"
    )
    assert len(calls) == 4 and sorted(len(c) for c in calls) == [1, 1, 1, 3]


def test_kms_decryption_failure_is_typed(aws: MotoServer) -> None:
    name = unique("kms")
    aws.client("secretsmanager").create_secret(Name=name, SecretString="encrypted")

    def rule(request: Any) -> Reply | None:
        if request.operation == "BatchGetSecretValue":
            body = {
                "SecretValues": [],
                "Errors": [
                    {
                        "SecretId": name,
                        "ErrorCode": "DecryptionFailure",
                        "Message": "KMS key is disabled",
                    }
                ],
            }
            return Reply(
                200, json.dumps(body).encode(), {"Content-Type": "application/x-amz-json-1.1"}
            )
        return None

    with HttpProxy(aws.port, rule) as proxy:
        outcome = resolve(sources(endpoint_url=proxy.url), f"aws-sm:{name}")[0]
    assert isinstance(outcome, Forbidden)
    assert (
        outcome.problem
        == f"cannot decrypt secret {name} (KMS DecryptionFailure): KMS key is disabled"
    )


def test_error_answer_quoting_part_of_a_secret_is_withheld(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error answer that quotes a part of a value read earlier, its Base64, or a part of
    the secret access key: withheld. The same answer without those parts is quoted."""
    secret_key = f"SECRETKEY{uuid.uuid4().hex}CANARY"
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    name = unique("quote")
    value = f"first-value-{uuid.uuid4().hex}"
    moto.client("secretsmanager").create_secret(Name=name, SecretString=value)
    b64 = base64.b64encode(value.encode()).decode()
    messages = iter(
        [
            f"invalid request near '{value[6:18]}'",  # 12 characters from inside the value
            f"cannot parse {b64[8:20]}",  # 12 characters of its Base64
            f"bad signature for key ...{secret_key[5:15]}...",  # a part of the secret key
            "the version stage is unknown",  # nothing secret: quoted
        ]
    )

    def rule(request: Any) -> Reply | None:
        if request.operation == "GetSecretValue":
            return Reply.aws_json(400, "InvalidRequestException", next(messages))
        return None

    with HttpProxy(moto.port, rule) as proxy:
        table = sources(endpoint_url=proxy.url, max_attempts=1)
        with Session(parse_config(table)) as session:
            assert resolve(None, f"aws-sm:{name}", session=session) == [value.encode()]
            outcomes = [
                resolve(None, f"aws-sm:{name}?version-stage=S{i}", session=session)[0]
                for i in range(4)
            ]
    for outcome in outcomes[:3]:
        assert isinstance(outcome, InvalidValue)
        assert outcome.problem.endswith(f"(InvalidRequestException): {WITHHELD}"), outcome.problem
    assert outcomes[3].problem.endswith("(InvalidRequestException): the version stage is unknown")
    rendered = " ".join(str(o) for o in outcomes)
    for part in (value[6:18], b64[8:20], secret_key[5:15]):
        assert part not in rendered


# --------------------------------------------------------------------------- canary


def test_canary_never_in_output_or_logs(
    moto: MotoServer,
    tmp_path: Path,
    tmpfs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = f"CANARY-VALUE-{uuid.uuid4().hex}"
    canary_key = f"CANARY-KEY-{uuid.uuid4().hex}"
    role = "arn:aws:iam::222222222222:role/canary"
    env = {**moto.env(), "AWS_SECRET_ACCESS_KEY": canary_key}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    creds = moto.client("sts").assume_role(RoleArn=role, RoleSessionName="seed")["Credentials"]
    import botocore.session

    admin = botocore.session.Session()
    seeded = {
        service: admin.create_client(
            service,
            region_name="us-east-1",
            endpoint_url=moto.url,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        for service in ("secretsmanager", "ssm")
    }
    name = unique("canary")
    seeded["secretsmanager"].create_secret(Name=name, SecretString=json.dumps({"pw": canary}))
    seeded["ssm"].put_parameter(Name=f"/{name}", Value=canary + "-ssm", Type="SecureString")
    data = {
        "sources": {
            "aws-sm": {"role_arn": role, "max_attempts": 1},
            "aws-ssm": {"role_arn": role, "max_attempts": 1},
        },
        "sinks": {"credstore": {"directory": str(tmpfs_dir)}},
        "targets": {
            "canary": {
                "credentials": {
                    "pw": f"aws-sm:{name}#pw",
                    "whole": f"aws-sm:{name}",
                    "ssm": f"aws-ssm:/{name}",
                    "missing": f"aws-sm:{name}-missing",
                }
            }
        },
    }
    config = config_file(tmp_path, data)
    outputs = every_command_verbose(config, f"aws-sm:{name}#pw")
    assert outputs[4].stdout == canary.encode()  # the one place the value may appear
    assert all(o.returncode == ExitCode.NOT_FOUND for o in outputs[:4])  # "missing" fails
    assert b"DEBUG" in outputs[2].stderr and b"assumed role" in outputs[2].stderr
    # What the canary must not show up as: the value, the key, the assumed session token.
    forbidden = [canary, canary_key, canary + "-ssm"]
    for output in outputs:
        for text in forbidden:
            assert text.encode() not in output.stderr
    for output in outputs[:4]:
        for text in forbidden:
            assert text.encode() not in output.stdout
    assert b"x-amz-security-token" not in b"".join(o.stderr for o in outputs).lower()

    # In-process too, every logger at DEBUG, every error rendered.
    caplog.set_level(logging.DEBUG)
    data["targets"]["canary"]["credentials"].pop("missing")
    with Session(parse_config(data)) as session:
        session.deliver()
        results = session.check()
    with (
        pytest.raises(ResolutionFailed) as failures,
        Session(
            parse_config({**data, "targets": {"t": {"credentials": {"a": f"aws-sm:{name}-no"}}}})
        ) as session,
    ):
        session.deliver()
    rendered = caplog.text + repr(results) + str(failures.value)
    for text in forbidden:
        assert text not in rendered
    assert "SessionToken" not in caplog.text and "X-Amz-Security-Token" not in caplog.text


def test_errors_are_one_line_source_errors(aws: MotoServer) -> None:
    for outcome in resolve(sources(), "aws-sm:none-here", "aws-ssm:/none/here:3"):
        assert isinstance(outcome, SourceError)
        assert "\n" not in str(outcome)


@pytest.mark.parametrize(
    ("code", "message", "kind", "problem"),
    [
        (
            "AccessDeniedException",
            "not authorized to perform kms:Decrypt on the key",
            Forbidden,
            "cannot decrypt parameter /{name} (KMS AccessDeniedException): not authorized to "
            "perform kms:Decrypt on the key",
        ),
        (
            "AccessDeniedException",
            "not authorized to perform ssm:GetParameters",
            Forbidden,
            "access denied to parameter /{name} (AccessDeniedException): not authorized to "
            "perform ssm:GetParameters",
        ),
        (
            "InvalidRequestException",
            "the request is not valid here",
            InvalidValue,
            "AWS refused reading parameter /{name} (InvalidRequestException): the request is "
            "not valid here",
        ),
    ],
    ids=["kms-denied", "denied", "invalid-request"],
)
def test_error_codes_are_typed_and_named(
    aws: MotoServer, code: str, message: str, kind: type[Exception], problem: str
) -> None:
    name = unique("code")
    aws.client("ssm").put_parameter(Name=f"/{name}", Value="v", Type="SecureString")

    def rule(request: Any) -> Reply | None:
        if request.operation == "GetParameters":
            return Reply.aws_json(400, code, message)
        return None

    with HttpProxy(aws.port, rule) as proxy:
        outcome = resolve(sources(endpoint_url=proxy.url, max_attempts=1), f"aws-ssm:/{name}")[0]
    assert isinstance(outcome, kind), outcome
    assert outcome.problem == problem.format(name=name)


def test_a_secret_scheduled_for_deletion_is_not_found(aws: MotoServer) -> None:
    """Real moto: a deleted secret in its recovery window answers InvalidRequestException."""
    name = unique("del")
    client = aws.client("secretsmanager")
    client.create_secret(Name=name, SecretString="going")
    client.delete_secret(SecretId=name, RecoveryWindowInDays=7)
    outcome = resolve(sources(), f"aws-sm:{name}")[0]
    assert isinstance(outcome, NotFound), outcome
    assert outcome.problem == f"secret {name} is scheduled for deletion"
