"""``[sources.aws-sm]`` / ``[sources.aws-ssm]`` settings and reference syntax (no I/O), and
the lazy import of botocore."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from credbridge.backends.aws import AwsSource, _split_parameter
from credbridge.backends.aws_settings import AwsSettings
from credbridge.core import BadReference, ConfigError, Session, SourceContext, parse_reference
from support.imports import cli_imports


def load(settings: dict[str, Any], scheme: str = "aws-sm") -> AwsSettings:
    context = SourceContext(
        scheme=scheme,
        settings=settings,
        config_dir=Path("/etc"),
        concurrency=16,
        resolve=lambda text: None,  # type: ignore[arg-type,return-value]
        store=lambda: None,  # type: ignore[arg-type,return-value]
        where=f"sources.{scheme}",
        config_file="/etc/credbridge.toml",
    )
    return AwsSettings.read(context)


def test_defaults_and_full_table() -> None:
    s = load({})
    assert (s.region, s.profile, s.endpoint_url, s.role_arn) == (None, None, None, None)
    assert (s.connect_timeout, s.read_timeout, s.max_attempts, s.retry_mode) == (
        5,
        15,
        3,
        "standard",
    )
    assert s.concurrency == 16
    full = load(
        {
            "region": "eu-west-1",
            "profile": "prod",
            "endpoint_url": "https://vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com/",
            "role_arn": "arn:aws:iam::123456789012:role/app-reader",
            "role_session_name": "host-1",
            "external_id": "ext-123",
            "connect_timeout": 2,
            "read_timeout": 4.5,
            "max_attempts": 5,
            "retry_mode": "adaptive",
            "concurrency": 4,
        }
    )
    assert full.endpoint_url == "https://vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com"
    assert (full.max_attempts, full.retry_mode, full.concurrency) == (5, "adaptive", 4)
    assert "ext-123" not in repr(full)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"regoin": "x"}, "sources.aws-sm.regoin: unknown setting"),
        ({"region": "EU West"}, "sources.aws-sm.region: is not an AWS region name"),
        ({"endpoint_url": "localhost:4566"}, "endpoint_url: must be an http:// or https:// URL"),
        ({"role_arn": "app-reader"}, "role_arn: must be an IAM role ARN"),
        ({"external_id": "x"}, "external_id: only applies with role_arn"),
        ({"max_attempts": 0}, "max_attempts: must be an integer from 1 to 10"),
        ({"max_attempts": 11}, "max_attempts: must be an integer from 1 to 10"),
        ({"retry_mode": "legacy"}, "retry_mode: must be one of standard, adaptive"),
        ({"read_timeout": 0}, "read_timeout: must be a positive number of seconds"),
        (
            {"connect_timeout": float("nan")},
            "connect_timeout: must be a positive number of seconds",
        ),
        ({"concurrency": 0}, "concurrency: must be an integer from 1 to 256"),
        ({"profile": "a\nb"}, "profile: value contains the control character"),
        ({"profile": "  "}, "profile: must be a non-empty string"),
        (
            {"role_arn": "arn:aws:iam::123456789012:role/r", "external_id": "a b"},
            "external_id: must be 2-1224 characters",
        ),
        (
            {"role_arn": "arn:aws:iam::123456789012:role/r", "role_session_name": "x"},
            "role_session_name: must be 2-64 characters",
        ),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as failure:
        load(settings)
    assert str(failure.value).startswith("/etc/credbridge.toml: sources.aws-sm.")
    assert message in str(failure.value)


@pytest.mark.parametrize(
    "ref",
    [
        "aws-sm:prod/db",
        "aws-sm:prod/db#password",
        "aws-sm:prod/db#/nested/0",
        "aws-sm:app+x=y.z@w-1_!",
        "aws-sm:arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf",
        "aws-sm:prod/db?version-stage=AWSPREVIOUS&region=eu-west-1&profile=prod",
        "aws-sm:prod/db?version-id=01234567-89ab-cdef-0123-456789abcdef",
        "aws-ssm:/app/db/password",
        "aws-ssm:plain-name",
        "aws-ssm:/app/db:3",
        "aws-ssm:/app/db:stable",
        "aws-ssm:/app/db?version=3&region=us-east-1",
        "aws-ssm:arn:aws:ssm:us-east-1:123456789012:parameter/app/db",
        "aws-ssm:arn:aws:ssm:us-east-1:123456789012:parameter/app/db:2",
    ],
)
def test_valid_references(ref: str) -> None:
    with Session() as session:
        session.check_reference(parse_reference(ref))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("aws-sm:bad name", "expected aws-sm:NAME or aws-sm:ARN"),
        ("aws-sm:arn:aws:s3:::bucket", "expected a Secrets Manager ARN"),
        ("aws-sm:x?version-id=short", "version-id must be 32-64 characters"),
        ("aws-sm:x?version=1", "unknown option 'version' for aws-sm"),
        ("aws-sm:x?region=Mars", "region 'Mars' is not an AWS region name"),
        ("aws-ssm:/app//db", "expected aws-ssm:NAME"),
        ("aws-ssm:/app/db/", "expected aws-ssm:NAME"),
        ("aws-ssm:app/db", "expected aws-ssm:NAME"),
        ("aws-ssm:/app/db:1?version=2", "either as ?version=N or as NAME:N, not both"),
        ("aws-ssm:/app/db?version=0", "outside 1.."),
        ("aws-ssm:/app/db:a b", "is not a parameter version or label"),
        ("aws-ssm:/app/db?version-stage=x", "unknown option 'version-stage' for aws-ssm"),
    ],
)
def test_invalid_references(ref: str, message: str) -> None:
    with Session() as session, pytest.raises(BadReference) as failure:
        session.check_reference(parse_reference(ref))
    assert message in str(failure.value)


def test_parameter_selectors_split() -> None:
    assert _split_parameter("/a/b:3") == ("/a/b", "3")
    assert _split_parameter("/a/b") == ("/a/b", None)
    arn = "arn:aws:ssm:us-east-1:123456789012:parameter/a/b"
    assert _split_parameter(arn) == (arn, None)
    assert _split_parameter(arn + ":label") == (arn, "label")


def test_routes_region_precedence() -> None:
    source = AwsSource(load({"region": "eu-west-1"}), environ={"AWS_REGION": "us-west-2"})
    route = lambda ref: source.route(parse_reference(ref).locator)  # noqa: E731
    assert route("aws-sm:x?region=ap-south-1").region == "ap-south-1"
    arn = "arn:aws:secretsmanager:ca-central-1:123456789012:secret:x-AbCdEf"
    assert route(f"aws-sm:{arn}").region == "ca-central-1"
    assert route("aws-sm:x").region == "eu-west-1"
    bare = AwsSource(load({}), environ={"AWS_REGION": "us-west-2"})
    assert bare.route(parse_reference("aws-sm:x").locator).region == "us-west-2"
    nothing = AwsSource(load({"profile": "p"}), environ={})
    assert nothing.route(parse_reference("aws-sm:x").locator) == nothing.route(
        parse_reference("aws-sm:y?profile=p").locator
    )


# --------------------------------------------------------------------------- lazy import

HEAVY = ("boto3", "botocore")


def probe(*args: str, cwd: Path) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", HOME=str(cwd))
    return cli_imports(args, env=env, cwd=cwd).which(HEAVY)


def test_botocore_is_imported_only_for_aws_references(tmp_path: Path, tmpfs_dir: Path) -> None:
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f"""
[store]
path = "{tmp_path / "store"}"

[sinks.credstore]
directory = "{tmpfs_dir}"

[sources.aws-sm]
region = "eu-west-1"

[targets.app]
credentials = {{ key = "generate:base64" }}
"""
    )
    nothing = dict.fromkeys(HEAVY, False)
    assert probe("plugins", cwd=tmp_path) == nothing
    assert probe("-c", str(config), "deliver", cwd=tmp_path) == nothing
    assert probe("-c", str(config), "check", cwd=tmp_path) == nothing
    # The control: resolving an aws-sm: reference does import botocore (not boto3's wrapper).
    got = probe("-c", str(config), "get", "aws-sm:x", cwd=tmp_path)
    assert got == {"boto3": False, "botocore": True}


def test_docs_list_exactly_the_iam_actions_the_code_calls() -> None:
    import re

    from conftest import REPO

    code = "".join(path.read_text() for path in (REPO / "backends").glob("aws*.py"))
    calls = set(re.findall(r"\b(?:client|sts)\.([a-z_]+)\(", code)) - {"close"}
    actions = {
        "batch_get_secret_value": "secretsmanager:BatchGetSecretValue",
        "get_secret_value": "secretsmanager:GetSecretValue",
        "get_parameters": "ssm:GetParameters",
        "assume_role": "sts:AssumeRole",
    }
    assert calls == set(actions), "a new AWS call needs its IAM action in docs/sources/aws.md"
    doc = (REPO / "docs" / "sources" / "aws.md").read_text()
    iam = doc.split("## IAM permissions", 1)[1].split("\n## ", 1)[0]
    for action in actions.values():
        assert f"`{action}`" in iam
