"""What botocore raised, as one typed, one-line credbridge error: not found, forbidden, unreachable,
timeout or invalid, naming the secret or parameter and the route of the call.

AWS's own message is server text: it is shown only once every value of the run is known
(:meth:`~credbridge.core.remote.Redactor.defer`), as it may quote one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from credbridge.backends.aws_settings import AwsSettings, Route
from credbridge.core import Forbidden, InvalidValue, NotFound, SourceError, Timeout, Unreachable
from credbridge.core.remote import (
    AnswerRefused,
    AnswerTooSlow,
    Redactor,
    caused_by,
    connection_reason,
    tls_reason,
)

DENIED = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
    }
)
_KMS = frozenset({"DecryptionFailure", "InvalidKeyId", "KMSAccessDeniedException"})
_THROTTLED = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "ProvisionedThroughputExceededException",
    }
)
NO_REGION = "no AWS region"
NO_CREDENTIALS = (
    "no AWS credentials found (environment, ~/.aws/credentials and config, SSO, "
    "web identity, container or instance metadata)"
)
REFUSED = frozenset({"ValidationException", "InvalidParameterException", "InvalidRequestException"})
"""A whole batch refused for what may be one of its items."""
_NOT_FOUND = frozenset(
    {"ResourceNotFoundException", "ParameterNotFound", "ParameterVersionNotFound"}
)
_KNOWN_KMS = frozenset(
    {
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSInvalidSignatureException",
        "KMSNotFoundException",
        "KMSOptInRequired",
    }
)
_KNOWN_CODES = (
    DENIED
    | _KMS
    | _KNOWN_KMS
    | _THROTTLED
    | REFUSED
    | _NOT_FOUND
    | {"InternalServiceError", "InternalFailure", "ServiceUnavailable"}
)
"""Error codes shown as they are; any other code is server text like a message (deferred)."""


class AwsErrors:
    """Types the failures of one source's calls to one AWS service."""

    def __init__(self, settings: AwsSettings, service: str, redactor: Redactor) -> None:
        self.settings = settings
        self.service = service
        self._redactor = redactor

    def coded(
        self, code: str, message: Any, what: str, route: Route | None, attempts: int | None = None
    ) -> SourceError:
        # AWS's message is shown only once every value of the run is known (it can quote one
        # that is still on its way, even one from the same answer): see Redactor.defer. So is
        # a code AWS does not use: the server chose it, it could hold anything.
        text = str(message) if message else ""
        unknown_kms = False
        # botocore gives the HTTP status as the code when an answer has none.
        if code and code not in _KNOWN_CODES and not (code.isdigit() and len(code) == 3):
            text = f"{code}: {text}" if text else code
            code, unknown_kms = "", code.startswith("KMS")
        said = self._redactor.defer(text)
        if code in _NOT_FOUND:
            return NotFound("", in_route(f"no {what}", route))
        kms_denied = code in DENIED and "kms" in str(message or "").lower()
        if code in _KMS | _KNOWN_KMS or unknown_kms or kms_denied:
            kms = f"KMS {code}" if code else "KMS"
            return Forbidden(
                "", in_route(f"cannot decrypt {what} ({kms})", route), server_text=said
            )
        if code in DENIED:
            return Forbidden(
                "", in_route(f"access denied to {what} ({code})", route), server_text=said
            )
        if code in _THROTTLED:
            tries = f" after {attempts} attempt(s)" if attempts else ""
            return Unreachable("", in_route(f"throttled ({code}){tries} reading {what}", route))
        # AWS says "marked for deletion", moto "currently marked deleted".
        if code == "InvalidRequestException" and "marked" in str(message or "").lower():
            return NotFound("", in_route(f"{what} is scheduled for deletion", route))
        if code in {"InvalidParameterException", "InvalidRequestException", "ValidationException"}:
            return InvalidValue(
                "", in_route(f"AWS refused reading {what} ({code})", route), server_text=said
            )
        return Unreachable(
            "",
            in_route(f"AWS answered {code or 'an error'} for {what}", route),
            server_text=said,
        )

    def typed(self, error: Exception, what: str, route: Route | None = None) -> SourceError:
        """One typed, one-line error for anything botocore raised."""
        import botocore.exceptions as bx

        if isinstance(error, bx.ClientError):
            metadata = error.response.get("ResponseMetadata", {})
            attempts = int(metadata.get("RetryAttempts", 0)) + 1
            details = error.response.get("Error", {})
            return self.coded(
                str(details.get("Code", "")), details.get("Message"), what, route, attempts
            )
        url = self._endpoint_of(error)
        if isinstance(error, bx.NoRegionError):
            return Unreachable(
                "",
                f"{NO_REGION}: set ?region=, region in "
                f"[sources.{self.settings.scheme}], AWS_REGION or AWS_DEFAULT_REGION, "
                "or region in the AWS profile",
            )
        if isinstance(error, bx.NoCredentialsError):
            return Forbidden("", NO_CREDENTIALS)
        if isinstance(
            error,
            bx.PartialCredentialsError
            | bx.CredentialRetrievalError
            | bx.NoAuthTokenError
            | bx.TokenRetrievalError
            | bx.SSOError,
        ):
            return Forbidden("", f"AWS credentials could not be loaded: {type(error).__name__}")
        refused = caused_by(error, AnswerRefused)
        if isinstance(refused, AnswerRefused):
            problem = in_route(f"the answer from {url} for {what} {refused.reason}", route)
            if isinstance(refused, AnswerTooSlow):
                return Timeout("", problem)
            return InvalidValue("", problem)
        if isinstance(error, bx.ConnectTimeoutError):
            return Timeout(
                "",
                in_route(
                    f"no connection to {url} within {self.settings.connect_timeout:g}s "
                    f"({self.settings.max_attempts} attempt(s)) reading {what}",
                    route,
                ),
            )
        if isinstance(error, bx.ReadTimeoutError):
            return Timeout(
                "",
                in_route(
                    f"no answer from {url} within {self.settings.read_timeout:g}s "
                    f"({self.settings.max_attempts} attempt(s)) reading {what}",
                    route,
                ),
            )
        if isinstance(error, bx.SSLError):
            reason = tls_reason(error, ca_hint="set AWS_CA_BUNDLE to the CA that signed it")
            return Unreachable("", in_route(f"TLS with {url} failed: {reason}", route))
        if isinstance(error, bx.ProxyConnectionError):
            proxy = _without_userinfo(getattr(error, "kwargs", {}).get("proxy_url"))
            return Unreachable(
                "",
                in_route(
                    f"cannot reach the proxy {proxy} (HTTPS_PROXY/HTTP_PROXY) for {url}: "
                    f"{connection_reason(error)} ({what})",
                    route,
                ),
            )
        if isinstance(error, bx.EndpointConnectionError | bx.ConnectionClosedError):
            return Unreachable(
                "", in_route(f"cannot reach {url}: {connection_reason(error)} ({what})", route)
            )
        if isinstance(error, bx.HTTPClientError):
            import urllib3.exceptions

            if caused_by(error, urllib3.exceptions.ReadTimeoutError, TimeoutError):
                return Timeout("", in_route(f"no answer from {url} reading {what}", route))
            return Unreachable("", in_route(f"request to {url} failed ({what})", route))
        if isinstance(error, bx.ParamValidationError):
            return InvalidValue("", f"AWS refused the request for {what} before sending it")
        return Unreachable("", in_route(f"{what} failed: {type(error).__name__}", route))

    def _endpoint_of(self, error: Exception) -> str:
        url = getattr(error, "kwargs", {}).get("endpoint_url") if hasattr(error, "kwargs") else None
        if isinstance(url, str) and url:
            return url.split("?")[0]
        return self.settings.endpoint_url or f"the AWS {self.service} endpoint"


def _without_userinfo(url: object) -> str:
    """A proxy URL fit for a message: scheme, host and port, never ``user:password@``."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url:
        return "(unknown)"
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def in_route(problem: str, route: Route | None) -> str:
    where = route.describe() if route else ""
    return f"{problem} [{where}]" if where else problem


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
