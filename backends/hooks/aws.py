"""The ``aws`` plugin: ``aws-sm:``, ``aws-ssm:`` (backends/aws.py), ``aws-sts:`` (aws_sts.py).

Loading it costs this module only; botocore is imported when an AWS reference is resolved.
"""

from __future__ import annotations

from collections.abc import Iterator

from credbridge.core.hookspecs import hookimpl
from credbridge.core.settings import Setting
from credbridge.core.types import SourceType, lazy

IMPL = "credbridge.backends.aws"
ROUTE_OPTIONS = frozenset({"region", "profile"})
SM_OPTIONS = ROUTE_OPTIONS | {"version-stage", "version-id"}
SSM_OPTIONS = ROUTE_OPTIONS | {"version"}
STS_OPTIONS = ROUTE_OPTIONS | {"session-name", "duration", "external-id"}
DEFAULT_SESSION_NAME = "credbridge"
"""The role session name when none is given (``role_session_name``, ``?session-name=``)."""
SETTINGS = (
    Setting("region", "string", doc="AWS region (default: the profile's or $AWS_REGION)"),
    Setting("profile", "string", doc="the shared-config profile to use"),
    Setting(
        "endpoint_url", "string", doc="another endpoint (http:// or https://), e.g. a test server"
    ),
    Setting("role_arn", "string", doc="an IAM role to assume first"),
    Setting(
        "role_session_name",
        "string",
        DEFAULT_SESSION_NAME,
        doc="session name when assuming role_arn",
    ),
    Setting("external_id", "string", doc="external id when assuming role_arn"),
    Setting("connect_timeout", "duration", 5.0, doc="seconds to connect", maximum=3600),
    Setting("read_timeout", "duration", 15.0, doc="seconds to wait for a response", maximum=3600),
    Setting("max_attempts", "integer", 3, doc="attempts per request", minimum=1, maximum=10),
    Setting(
        "retry_mode",
        "choice",
        "standard",
        doc="botocore's retry mode",
        choices=("standard", "adaptive"),
    ),
    Setting("concurrency", "integer", doc="requests in flight", minimum=1, maximum=256),
)
"""``[sources.aws-sm]``, ``[sources.aws-ssm]``, ``[sources.aws-sts]``: the one declaration of
each key (kind, default, bounds); backends/aws_settings.py reads them and checks what a kind
cannot say (region names, role ARNs)."""


@hookimpl
def credbridge_sources() -> Iterator[SourceType]:
    for scheme, summary, options, validate in (
        (
            "aws-sm",
            "AWS Secrets Manager (aws-sm:NAME_OR_ARN#KEY), batched, through botocore",
            SM_OPTIONS,
            "validate_sm",
        ),
        (
            "aws-ssm",
            "AWS SSM Parameter Store (aws-ssm:/PATH/NAME), SecureString decrypted, batched",
            SSM_OPTIONS,
            "validate_ssm",
        ),
    ):
        yield SourceType(
            scheme=scheme,
            open=lazy(f"{IMPL}:open_source"),
            summary=summary,
            options=options,
            settings=SETTINGS,
            selectors=True,
            validate=lazy(f"{IMPL}:{validate}"),
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
