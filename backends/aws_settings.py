"""What the AWS sources are told: a ``[sources.aws-*]`` table read as :class:`AwsSettings`,
and the :class:`Route` (region and profile) of each reference's calls.

The table is read through its declared settings (backends/hooks/aws.py: kind, default and
bounds of each key, checked when the config loads); what a kind cannot say (an AWS region
name, an IAM role ARN, a URL) is checked here, against the same patterns the references'
options are checked with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from credbridge.backends.hooks.aws import SETTINGS
from credbridge.core import BadReference, ConfigError, Reference, SourceContext

REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
ROLE_ARN = re.compile(r"arn:[a-z-]+:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")

_RULES = {
    "region": (REGION, "is not an AWS region name (e.g. eu-west-1)"),
    "profile": (re.compile(r".*\S.*"), "must be a non-empty string"),
    "endpoint_url": (re.compile(r"https?://[^/\s]+.*"), "must be an http:// or https:// URL"),
    "role_arn": (ROLE_ARN, "must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
    "role_session_name": (SESSION_NAME, "must be 2-64 characters of [A-Za-z0-9_+=,.@-]"),
    "external_id": (EXTERNAL_ID, "must be 2-1224 characters of [A-Za-z0-9_+=,.@:/-]"),
}
"""What each string setting must match beyond its kind, and the line that says so."""
_ROLE_ONLY = ("external_id", "role_session_name")
"""Settings that mean something only with ``role_arn``."""


@dataclass(frozen=True)
class AwsSettings:
    """One ``[sources.aws-sm]``, ``[sources.aws-ssm]`` or ``[sources.aws-sts]`` table; the
    defaults are the declared ones (backends/hooks/aws.py)."""

    scheme: str
    region: str | None
    profile: str | None
    endpoint_url: str | None
    role_arn: str | None
    role_session_name: str
    external_id: str | None = field(repr=False)
    connect_timeout: float
    read_timeout: float
    max_attempts: int
    retry_mode: str
    concurrency: int

    @classmethod
    def read(cls, context: SourceContext) -> AwsSettings:
        """The source's table; a bad value is a :class:`ConfigError` naming the file and key."""
        values = context.read_settings(SETTINGS)
        where = context.where or f"sources.{context.scheme}"

        def refuse(key: str, problem: str) -> ConfigError:
            return ConfigError(problem, file=context.config_file or None, key=f"{where}.{key}")

        if values["role_arn"] is None:
            for key in _ROLE_ONLY:
                if key in context.settings:
                    raise refuse(key, "only applies with role_arn")
        for key, (pattern, problem) in _RULES.items():
            if values[key] is not None and not pattern.fullmatch(values[key]):
                raise refuse(key, problem)
        endpoint = values["endpoint_url"]
        return cls(
            scheme=context.scheme,
            region=values["region"],
            profile=values["profile"],
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            role_arn=values["role_arn"],
            role_session_name=values["role_session_name"],
            external_id=values["external_id"],
            connect_timeout=values["connect_timeout"],
            read_timeout=values["read_timeout"],
            max_attempts=values["max_attempts"],
            retry_mode=values["retry_mode"],
            concurrency=values["concurrency"] or context.concurrency,
        )


@dataclass(frozen=True, order=True)
class Route:
    """Where a reference's calls go: one client per service and route."""

    region: str | None
    profile: str | None

    def describe(self) -> str:
        parts = [
            f"region {self.region}" if self.region else "",
            f"profile {self.profile}" if self.profile else "",
        ]
        return ", ".join(p for p in parts if p)


def check_route(reference: Reference) -> None:
    """A reference's ``?region=`` and ``?profile=``, checked like the settings."""
    region = reference.option("region")
    if region is not None and not REGION.fullmatch(region):
        raise BadReference(str(reference), f"region {region!r} is not an AWS region name")
    profile = reference.option("profile")
    if profile is not None and (not profile or not profile.isprintable()):
        raise BadReference(str(reference), "profile must be a non-empty profile name")
