"""``aws-sts:`` — temporary AWS credentials of a role, issued by STS ``AssumeRole`` (botocore).

Reference::

    aws-sts:arn:aws:iam::ACCOUNT:role/NAME[?session-name=S&duration=D&external-id=X
            &region=R&profile=P]#access_key_id | #secret_access_key | #session_token
            | #expiration | #credential_process

Every reference with the same role and options shares one ``AssumeRole`` call per run, so
``#access_key_id``, ``#secret_access_key`` and ``#session_token`` always belong together. Each
value carries a :class:`Lease` whose ``expires_at`` is the credentials' ``Expiration``; it is
not renewable: fresh credentials come from a new ``AssumeRole`` (a re-issue). A dry run
(``check``, ``deliver --dry-run``) assumes nothing.

The caller's own credentials, region, endpoint and retries come from ``[sources.aws-sts]`` and
the environment exactly as for ``aws-sm:`` (this source is an :class:`AwsSource` for the STS
service); ``role_arn`` there is a first role to assume (role chaining). botocore is imported
when the first reference is resolved. Docs: docs/sources/aws.md.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from credbridge.backends.aws import AwsSource
from credbridge.backends.aws_settings import (
    EXTERNAL_ID,
    ROLE_ARN,
    SESSION_NAME,
    AwsSettings,
    Route,
    check_route,
)
from credbridge.backends.hooks.aws import DEFAULT_SESSION_NAME
from credbridge.core import (
    BadReference,
    InvalidValue,
    Lease,
    Locator,
    Mode,
    Pending,
    Reference,
    Request,
    SecretDocument,
    SourceContext,
    SourceError,
)
from credbridge.core.types import Outcome

log = logging.getLogger(__name__)

SCHEME = "aws-sts"
PARTS = ("access_key_id", "secret_access_key", "session_token", "expiration", "credential_process")
"""What a reference may select; ``expiration`` alone is public."""
MIN_DURATION = 900
MAX_DURATION = 43200
"""``DurationSeconds`` bounds of the API; a role's own maximum (1 to 12 hours) may be lower."""

_DURATION = re.compile(r"([0-9]{1,6})([smh]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}


def duration_seconds(reference: Reference | Locator) -> int | None:
    """``?duration=`` in seconds (``900``, ``900s``, ``15m``, ``1h``), or ``None``."""
    raw = reference.option("duration")
    if raw is None:
        return None
    found = _DURATION.fullmatch(raw)
    if found is None:
        raise BadReference(
            str(reference), "duration must be seconds, or a number with s, m or h (e.g. 15m)"
        )
    seconds = int(found.group(1)) * _UNIT[found.group(2)]
    if not MIN_DURATION <= seconds <= MAX_DURATION:
        raise BadReference(
            str(reference),
            f"duration must be from {MIN_DURATION}s (15m) to {MAX_DURATION}s (12h)",
        )
    return seconds


def validate_reference(reference: Reference) -> None:
    text = str(reference)
    if not ROLE_ARN.fullmatch(reference.path):
        raise BadReference(text, "expected aws-sts:arn:aws:iam::ACCOUNT:role/NAME")
    if reference.selector not in PARTS:
        raise BadReference(text, f"name the part to deliver: #{', #'.join(PARTS)}")
    name = reference.option("session-name")
    if name is not None and not SESSION_NAME.fullmatch(name):
        raise BadReference(text, "session-name must be 2-64 characters of [A-Za-z0-9_+=,.@-]")
    external = reference.option("external-id")
    if external is not None and not EXTERNAL_ID.fullmatch(external):
        raise BadReference(text, "external-id must be 2-1224 characters of [A-Za-z0-9_+=,.@:/-]")
    duration_seconds(reference)
    check_route(reference)


def public(reference: Reference) -> bool:
    """The expiry is public; every key is a secret."""
    return reference.selector == "expiration"


class StsSource(AwsSource):
    """Temporary credentials of roles, one ``AssumeRole`` per distinct reference locator."""

    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        if mode is Mode.DRY_RUN:
            # Assuming a role is a side effect (a CloudTrail event, a session to revoke).
            return {
                request: Pending(
                    f"temporary credentials of {request.reference.path}, "
                    "issued by sts:AssumeRole in a real run"
                )
                for request in requests
            }
        return super().fetch(requests, mode)

    def _plan(
        self, route: Route, locators: Sequence[Locator], results: dict[Locator, Any]
    ) -> list[Callable[[], None]]:
        return [
            self._guarded(
                [locator], results, functools.partial(self._assume, route, locator, results)
            )
            for locator in locators
        ]

    def _assume(self, route: Route, locator: Locator, results: dict[Locator, Any]) -> None:
        import botocore.exceptions

        client = self._clients.client(route)
        role = locator.path
        arguments: dict[str, Any] = {
            "RoleArn": role,
            "RoleSessionName": locator.option("session-name") or DEFAULT_SESSION_NAME,
        }
        duration = duration_seconds(locator)
        if duration is not None:
            arguments["DurationSeconds"] = duration
        if locator.option("external-id"):
            arguments["ExternalId"] = locator.option("external-id")
        issued = time.time()
        try:
            answer = client.assume_role(**arguments)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            results[locator] = self._errors.typed(error, f"sts:AssumeRole of {role}", route)
            return
        results[locator] = self._document(answer, role, issued)

    def _document(
        self, answer: Mapping[str, Any], role: str, issued: float
    ) -> SecretDocument | SourceError:
        try:
            credentials = answer["Credentials"]
            key_id = str(credentials["AccessKeyId"])
            secret_key = str(credentials["SecretAccessKey"])
            token = str(credentials["SessionToken"])
            expiration = credentials["Expiration"]
            expires_at = float(expiration.timestamp())
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
            return InvalidValue("", f"sts:AssumeRole of {role} answered without full credentials")
        for material in (secret_key, token):
            self._redactor.add(material)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
        # What an AWS SDK reads from a credential_process program (and `cat` is one).
        process = json.dumps(
            {
                "Version": 1,
                "AccessKeyId": key_id,
                "SecretAccessKey": secret_key,
                "SessionToken": token,
                "Expiration": expires,
            }
        )
        # The expiry itself is a value (#expiration): the log says how long instead.
        log.info("%s: assumed %s for %.0f s", SCHEME, role, expires_at - issued)
        return SecretDocument(
            {
                "access_key_id": key_id,
                "secret_access_key": secret_key,
                "session_token": token,
                "expiration": expires,
                "credential_process": process,
            },
            lease=Lease(issued_at=issued, expires_at=expires_at, renewable=False),
        )


def open_source(context: SourceContext) -> StsSource:
    return StsSource(AwsSettings.read(context))
