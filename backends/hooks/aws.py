"""The ``aws`` plugin: ``aws-sm:``, ``aws-ssm:`` (backends/aws.py), ``aws-sts:`` (aws_sts.py).

Loading it costs this module only; botocore is imported when an AWS reference is resolved.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.aws"
ROUTE_OPTIONS = frozenset({"region", "profile"})
SM_OPTIONS = ROUTE_OPTIONS | {"version-stage", "version-id"}
SSM_OPTIONS = ROUTE_OPTIONS | {"version"}
STS_OPTIONS = ROUTE_OPTIONS | {"session-name", "duration", "external-id"}
SETTINGS = frozenset(
    {
        "region",
        "profile",
        "endpoint_url",
        "role_arn",
        "role_session_name",
        "external_id",
        "connect_timeout",
        "read_timeout",
        "max_attempts",
        "retry_mode",
        "concurrency",
    }
)


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    yield SourceType(
        scheme="aws-sm",
        open=lazy(f"{IMPL}:open_source"),
        summary="AWS Secrets Manager (aws-sm:NAME_OR_ARN#KEY), batched, through botocore",
        options=SM_OPTIONS,
        settings=SETTINGS,
        selectors=True,
        validate=lazy(f"{IMPL}:validate_sm"),
    )
    yield SourceType(
        scheme="aws-ssm",
        open=lazy(f"{IMPL}:open_source"),
        summary="AWS SSM Parameter Store (aws-ssm:/PATH/NAME), SecureString decrypted, batched",
        options=SSM_OPTIONS,
        settings=SETTINGS,
        selectors=True,
        validate=lazy(f"{IMPL}:validate_ssm"),
    )
    yield SourceType(
        scheme="aws-sts",
        open=lazy("credbridge.backends.aws_sts:open_source"),
        summary="temporary AWS credentials of a role (aws-sts:ROLE_ARN#session_token), by "
        "sts:AssumeRole",
        options=STS_OPTIONS,
        settings=SETTINGS,
        selectors=True,
        validate=lazy("credbridge.backends.aws_sts:validate_reference"),
        public=lazy("credbridge.backends.aws_sts:public"),
    )
