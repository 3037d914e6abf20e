"""``aws-sm:`` and ``aws-ssm:`` — AWS Secrets Manager and SSM Parameter Store, through botocore.

References::

    aws-sm:SECRET_ID[?version-stage=S|version-id=V&region=R&profile=P][#KEY | #/json/pointer]
    aws-ssm:NAME[:VERSION|:LABEL][?version=N&region=R&profile=P][#KEY | #/json/pointer]

All references of a run are grouped by route (region and profile); each route batches its
Secrets Manager secrets with ``BatchGetSecretValue`` (20 per call) and its parameters with
``GetParameters`` (10 per call), and every call of every route runs concurrently. A secret
asked for by version goes through ``GetSecretValue``. One client per service and route, built
from one botocore session per profile that shares a model loader with every other session, so
the JSON service models are read once per process.

The clients are botocore's (what ``boto3.client()`` returns), built without boto3's session
wrapper. botocore is imported when the first AWS reference is resolved, never when this plugin
is loaded. Settings and IAM permissions: docs/sources/aws.md.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from credbridge.backends.hooks.aws import SETTINGS
from credbridge.core import (
    BadReference,
    DocumentSource,
    Forbidden,
    InvalidValue,
    Lease,
    Locator,
    NotFound,
    Reference,
    Secret,
    SecretDocument,
    SourceContext,
    SourceError,
    Timeout,
    Unreachable,
    __version__,
)
from credbridge.core.remote import (
    AnswerRefused,
    AnswerTooSlow,
    Redactor,
    cap_library_logging,
    caused_by,
    connection_reason,
    fan_out,
    header_deadline_pools,
    optional_import,
    read_answer,
    renamed,
    tls_reason,
)
from credbridge.core.settings import SettingsTable

log = logging.getLogger(__name__)

SM_SCHEME = "aws-sm"
SSM_SCHEME = "aws-ssm"
SECRET_REFERENCE = "/aws/reference/secretsmanager/"  # noqa: S105 - a path, not a password
"""Parameter Store's path to a Secrets Manager secret (GetParameters reads it through)."""
SM_BATCH = 20
"""BatchGetSecretValue takes at most 20 ids (botocore does not check it; chunk here)."""
SSM_BATCH = 10
"""GetParameters takes at most 10 names (more is a ValidationException)."""
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 15.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_SESSION_NAME = "credbridge"


_REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@!-]{1,512}")
_SM_ARN = re.compile(r"arn:[a-z-]+:secretsmanager:([a-z0-9-]+):\d{12}:secret:[A-Za-z0-9/_+=.@!-]+")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,1011}")
_SSM_ARN = re.compile(r"arn:[a-z-]+:ssm:([a-z0-9-]+):\d{12}:parameter(/[A-Za-z0-9_.\-/]+)")
_SELECTOR = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
_ROLE_ARN = re.compile(r"arn:[a-z-]+:iam::\d{12}:role/[\w+=,.@/-]{1,512}")

_DENIED = frozenset(
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
_NO_REGION = "no AWS region"
_REFUSED = frozenset(
    {"ValidationException", "InvalidParameterException", "InvalidRequestException"}
)
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
    _DENIED
    | _KMS
    | _KNOWN_KMS
    | _THROTTLED
    | _REFUSED
    | _NOT_FOUND
    | {"InternalServiceError", "InternalFailure", "ServiceUnavailable"}
)
"""Error codes shown as they are; any other code is server text like a message (deferred)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AwsSettings:
    """One ``[sources.aws-sm]`` or ``[sources.aws-ssm]`` table."""

    scheme: str
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    role_arn: str | None = None
    role_session_name: str = DEFAULT_SESSION_NAME
    external_id: str | None = field(default=None, repr=False)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_mode: str = "standard"
    concurrency: int = 16

    @classmethod
    def load(
        cls,
        settings: Mapping[str, Any],
        *,
        scheme: str,
        where: str,
        config_file: str | None,
        concurrency: int,
    ) -> AwsSettings:
        table = SettingsTable(
            settings,
            where=where,
            config_file=config_file,
            known=SETTINGS,
            what=f"source {scheme!r}",
        )
        region = table.text("region")
        if region is not None and not _REGION.fullmatch(region):
            raise table.fail("region", "is not an AWS region name (e.g. eu-west-1)")
        endpoint = table.text("endpoint_url")
        if endpoint is not None and not re.match(r"https?://[^/\s]+", endpoint):
            raise table.fail("endpoint_url", "must be an http:// or https:// URL")
        role_arn = table.text("role_arn")
        if role_arn is not None and not _ROLE_ARN.fullmatch(role_arn):
            raise table.fail("role_arn", "must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        session_name = table.text("role_session_name", DEFAULT_SESSION_NAME) or ""
        if not re.fullmatch(r"[\w+=,.@-]{2,64}", session_name):
            raise table.fail("role_session_name", "must be 2-64 characters of [A-Za-z0-9_+=,.@-]")
        if role_arn is None:
            for key in ("external_id", "role_session_name"):
                if key in settings:
                    raise table.fail(key, "only applies with role_arn")
        return cls(
            scheme=scheme,
            region=region,
            profile=table.text("profile"),
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            role_arn=role_arn,
            role_session_name=session_name,
            external_id=table.text("external_id"),
            connect_timeout=table.timeout("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            read_timeout=table.timeout("read_timeout", DEFAULT_READ_TIMEOUT),
            max_attempts=table.integer("max_attempts", DEFAULT_MAX_ATTEMPTS, minimum=1, maximum=10),
            retry_mode=table.choice("retry_mode", ("standard", "adaptive"), "standard"),
            concurrency=table.integer("concurrency", concurrency, minimum=1, maximum=256),
        )


# --------------------------------------------------------------------------- references


def _arn_region(scheme: str, path: str) -> str | None:
    pattern = _SM_ARN if scheme == SM_SCHEME else _SSM_ARN
    found = pattern.match(path)
    return found.group(1) if found else None


def _check_route(reference: Reference) -> None:
    region = reference.option("region")
    if region is not None and not _REGION.fullmatch(region):
        raise BadReference(str(reference), f"region {region!r} is not an AWS region name")
    profile = reference.option("profile")
    if profile is not None and (not profile or not profile.isprintable()):
        raise BadReference(str(reference), "profile must be a non-empty profile name")


def validate_sm(reference: Reference) -> None:
    text, path = str(reference), reference.path
    if path.startswith("arn:"):
        if not _SM_ARN.fullmatch(path):
            raise BadReference(
                text,
                "expected a Secrets Manager ARN "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)",
            )
    elif not _SECRET_NAME.fullmatch(path):
        raise BadReference(
            text, "expected aws-sm:NAME or aws-sm:ARN (names: 1-512 of A-Za-z0-9/_+=.@!-)"
        )
    stage, version_id = reference.option("version-stage"), reference.option("version-id")
    if stage is not None and not re.fullmatch(r"[\x21-\x7e]{1,256}", stage):
        raise BadReference(text, "version-stage must be 1-256 printable characters")
    if version_id is not None and not re.fullmatch(r"[\x21-\x7e]{32,64}", version_id):
        raise BadReference(text, "version-id must be 32-64 characters (a version UUID)")
    _check_route(reference)


def _split_parameter(path: str) -> tuple[str, str | None]:
    """``/a/b:3`` -> (``/a/b``, ``3``); ARNs keep their colons."""
    head = ""
    rest = path
    if path.startswith("arn:"):
        parts = path.split(":", 5)
        if len(parts) < 6:
            return path, None
        head, rest = ":".join(parts[:5]) + ":", parts[5]
    name, sep, selector = rest.rpartition(":")
    if not sep:
        return path, None
    return head + name, selector


def validate_ssm(reference: Reference) -> None:
    text = str(reference)
    name, selector = _split_parameter(reference.path)
    if name.startswith(SECRET_REFERENCE):
        if not _SECRET_NAME.fullmatch(name[len(SECRET_REFERENCE) :]):
            raise BadReference(
                text,
                f"expected aws-ssm:{SECRET_REFERENCE}SECRET_NAME[:VERSION_STAGE | :VERSION_ID]",
            )
        if reference.option("version") is not None:
            raise BadReference(
                text,
                "a Secrets Manager secret has no parameter versions: "
                "give :VERSION_STAGE or :VERSION_ID",
            )
    elif name.startswith("arn:"):
        if not _SSM_ARN.fullmatch(name):
            raise BadReference(
                text, "expected an SSM parameter ARN (arn:aws:ssm:REGION:ACCOUNT:parameter/NAME)"
            )
    elif (
        not _PARAM_NAME.fullmatch(name)
        or "//" in name
        or name.endswith("/")
        or ("/" in name and not name.startswith("/"))
    ):
        raise BadReference(
            text,
            "expected aws-ssm:NAME or aws-ssm:/PATH/NAME (A-Za-z0-9_.-/), "
            "optionally :VERSION or :LABEL",
        )
    if selector is not None and not _SELECTOR.fullmatch(selector):
        raise BadReference(text, f"':{selector}' is not a parameter version or label")
    if reference.option("version") is not None:
        if selector is not None:
            raise BadReference(text, "give the version either as ?version=N or as NAME:N, not both")
        reference.int_option("version", 0, minimum=1, maximum=1 << 31)
    _check_route(reference)


def _parameter_key(name: str) -> str:
    """What Parameter Store takes for the same parameter: a top-level parameter is the same
    with or without its leading '/' (``/x`` is ``x``), and answers with either."""
    if name.startswith("arn:") or name.count("/") != 1 or not name.startswith("/"):
        return name
    return name[1:]


def _ssm_name(locator: Locator) -> str:
    """The name as GetParameters wants it: ``?version=N`` becomes ``NAME:N``."""
    version = locator.option("version")
    return f"{locator.path}:{version}" if version else locator.path


# --------------------------------------------------------------------------- routes


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


_LOADER_LOCK = threading.Lock()
_LOADER: Any = None


def _shared_loader() -> Any:
    """One botocore model loader for every session in the process (models are read once)."""
    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            import botocore.loaders

            _LOADER = botocore.loaders.create_loader()
        return _LOADER


@dataclass
class _Profile:
    """A botocore session for one profile, and the clients built from it (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    session: Any = None
    credentials: dict[str, str] | None = None
    clients: dict[str | None, Any] = field(default_factory=dict)
    error: SourceError | None = None


# --------------------------------------------------------------------------- the source


class AwsSource(DocumentSource):
    """Either service; ``settings.scheme`` says which."""

    def __init__(self, settings: AwsSettings, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(concurrency=settings.concurrency)
        self.settings = settings
        self.service = "secretsmanager" if settings.scheme == SM_SCHEME else "ssm"
        self._environ = os.environ if environ is None else environ
        self._redactor = Redactor()
        self._lock = threading.Lock()
        self._profiles: dict[str | None, _Profile] = {}

    # ------------------------------------------------------------------ routing

    def route(self, locator: Locator) -> Route:
        region = (
            locator.option("region")
            or _arn_region(self.settings.scheme, locator.path)
            or self.settings.region
            # botocore reads only AWS_DEFAULT_REGION; Lambda, ECS and the newer SDKs set AWS_REGION.
            or self._environ.get("AWS_REGION")
            or None
        )
        return Route(region, locator.option("profile") or self.settings.profile)

    def _client(self, route: Route) -> Any:
        """The route's client, built once; a profile's credential failure is remembered."""
        with self._lock:
            profile = self._profiles.setdefault(route.profile, _Profile())
        with profile.lock:
            if profile.session is None and profile.error is None:
                try:
                    self._open_profile(profile, route)
                except SourceError as error:
                    if error.problem.startswith(_NO_REGION):
                        raise  # STS needed a region: another route of the profile may have one
                    profile.error = error
            if profile.error is not None:
                raise profile.error
            client = profile.clients.get(route.region)
            if client is None:
                client = profile.clients[route.region] = self._new_client(profile, route)
            return client

    def _open_profile(self, profile: _Profile, route: Route) -> None:
        botocore_session = optional_import(
            "botocore.session", extra="aws", scheme=self.settings.scheme
        )
        import botocore.exceptions

        cap_library_logging(
            ("botocore", "boto3", "s3transfer"),
            keep_debug=("botocore.retries", "botocore.retryhandler", "botocore.credentials"),
        )
        try:
            session = botocore_session.Session(profile=route.profile)
            session.register_component("data_loader", _shared_loader())
            session.user_agent_extra = f"credbridge/{__version__}"
            profile.credentials = self._credentials(session, route)
        except botocore.exceptions.ProfileNotFound:
            raise Forbidden(
                "",
                f"AWS profile {route.profile!r} is not in ~/.aws/config or ~/.aws/credentials",
            ) from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self._error(error, "loading AWS credentials") from None
        profile.session = session

    def _new_client(self, profile: _Profile, route: Route) -> Any:
        import botocore.config
        import botocore.exceptions

        settings = self.settings
        config = botocore.config.Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
            max_pool_connections=settings.concurrency,
        )
        try:
            client = profile.session.create_client(
                self.service,
                region_name=route.region,
                endpoint_url=settings.endpoint_url,
                config=config,
                **(profile.credentials or {}),
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self._error(error, f"creating the {self.service} client", route) from None
        _bound_answers(client, settings.read_timeout)
        log.debug(
            "%s: %s client for %s", settings.scheme, self.service, route.describe() or "defaults"
        )
        return client

    def _credentials(self, session: Any, route: Route) -> dict[str, str] | None:
        """Resolve the credential chain now (a clear error before any call); assume the role."""
        import botocore.exceptions

        try:
            found = session.get_credentials()
            frozen = found.get_frozen_credentials() if found is not None else None
        except botocore.exceptions.ProfileNotFound:
            raise
        except botocore.exceptions.BotoCoreError as error:
            raise Forbidden(
                "",
                "AWS credentials could not be loaded",
                server_text=self._redactor.defer(str(error)),
            ) from None
        if frozen is None or not frozen.access_key:
            raise Forbidden(
                "",
                "no AWS credentials found (environment, ~/.aws/credentials and config, SSO, "
                "web identity, container or instance metadata)",
            )
        for material in (frozen.secret_key, frozen.token):
            if material:
                self._redactor.add(material)
        if self.settings.role_arn is None:
            return None
        return self._assume_role(session, route)

    def _assume_role(self, session: Any, route: Route) -> dict[str, str]:
        import botocore.config
        import botocore.exceptions

        settings = self.settings
        assert settings.role_arn is not None
        sts = session.create_client(
            "sts",
            region_name=route.region,
            config=botocore.config.Config(
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
            ),
        )
        _bound_answers(sts, settings.read_timeout)
        arguments = {"RoleArn": settings.role_arn, "RoleSessionName": settings.role_session_name}
        if settings.external_id:
            arguments["ExternalId"] = settings.external_id
        try:
            answer = sts.assume_role(**arguments)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            failure = self._error(error, f"sts:AssumeRole of {settings.role_arn}")
            if isinstance(failure, NotFound | InvalidValue):
                failure = failure.retyped("", kind=Forbidden)
            raise failure from None
        finally:
            sts.close()
        credentials = answer["Credentials"]
        for key in ("SecretAccessKey", "SessionToken"):
            self._redactor.add(credentials[key])
        log.info("%s: assumed role %s", settings.scheme, settings.role_arn)
        return {
            "aws_access_key_id": credentials["AccessKeyId"],
            "aws_secret_access_key": credentials["SecretAccessKey"],
            "aws_session_token": credentials["SessionToken"],
        }

    # ------------------------------------------------------------------ fetching

    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        result = self.fetch_documents([locator])[locator]
        if isinstance(result, SourceError):
            raise result
        return result

    def fetch_documents(
        self, locators: Sequence[Locator]
    ) -> dict[Locator, Secret | SecretDocument | SourceError]:
        results: dict[Locator, Secret | SecretDocument | SourceError] = {}
        by_route: dict[Route, list[Locator]] = {}
        for locator in locators:
            by_route.setdefault(self.route(locator), []).append(locator)
        tasks: list[Callable[[], None]] = []
        for route, group in by_route.items():
            plan = self._sm_plan if self.service == "secretsmanager" else self._ssm_plan
            tasks += plan(route, group, results)
        log.debug(
            "%s: %d reference(s) over %d route(s) in %d call(s)",
            self.settings.scheme,
            len(locators),
            len(by_route),
            len(tasks),
        )
        fan_out(tasks, workers=self.concurrency, name=f"credbridge-{self.settings.scheme}")
        return {
            locator: renamed(r, str(locator)) if isinstance(r, SourceError) else r
            for locator, r in ((loc, results[loc]) for loc in locators)
        }

    def _guarded(
        self, locators: Sequence[Locator], results: dict[Locator, Any], work: Callable[[], None]
    ) -> Callable[[], None]:
        """A task whose client or call failure becomes every locator's error."""

        def run() -> None:
            try:
                work()
            except SourceError as error:
                for locator in locators:
                    results.setdefault(locator, error)

        return run

    # ------------------------------------------------------------------ Secrets Manager

    def _sm_plan(
        self, route: Route, locators: Sequence[Locator], results: dict[Locator, Any]
    ) -> list[Callable[[], None]]:
        batched: dict[str, list[Locator]] = {}
        single: list[Locator] = []
        for locator in locators:
            stage = locator.option("version-stage")
            if locator.option("version-id") is None and stage in (None, "AWSCURRENT"):
                batched.setdefault(locator.path, []).append(locator)
            else:
                single.append(locator)
        ids = list(batched)
        tasks = []
        for start in range(0, len(ids), SM_BATCH):
            chunk = {sid: batched[sid] for sid in ids[start : start + SM_BATCH]}
            members = [loc for group in chunk.values() for loc in group]
            tasks.append(
                self._guarded(
                    members, results, functools.partial(self._sm_batch, route, chunk, results)
                )
            )
        for locator in single:
            tasks.append(
                self._guarded(
                    [locator], results, functools.partial(self._sm_one, route, locator, results)
                )
            )
        return tasks

    def _sm_batch(
        self, route: Route, chunk: Mapping[str, list[Locator]], results: dict[Locator, Any]
    ) -> None:
        import botocore.exceptions

        client = self._client(route)
        found: dict[str, Any] = {}
        errors: dict[str, SourceError] = {}
        arguments: dict[str, Any] = {"SecretIdList": list(chunk)}
        try:
            for _page in range(10):
                answer = client.batch_get_secret_value(**arguments)
                for value in answer.get("SecretValues", []):
                    for secret_id in chunk:
                        if _same_secret(secret_id, value):
                            found[secret_id] = value
                for item in answer.get("Errors", []):
                    secret_id = str(item.get("SecretId", ""))
                    if secret_id in chunk:
                        errors[secret_id] = self._coded_error(
                            str(item.get("ErrorCode", "")),
                            item.get("Message"),
                            f"secret {secret_id}",
                            route,
                        )
                token = answer.get("NextToken")
                if not token or len(found) + len(errors) >= len(chunk):
                    break
                arguments["NextToken"] = token
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            failure = self._error(error, f"BatchGetSecretValue of {len(chunk)} secret(s)", route)
            if _code(error) not in _DENIED | _REFUSED:
                raise failure from None
            # IAM policies often grant only GetSecretValue, and one bad id refuses the whole
            # call: per-secret calls give each reference its own answer.
            log.info(
                "%s: BatchGetSecretValue refused (%s); reading %d secret(s) one by one",
                self.settings.scheme,
                _code(error),
                len(chunk),
            )
            found, errors = {}, {}
        for secret_id, locators in chunk.items():
            if secret_id in found:
                document = self._sm_document(found[secret_id], secret_id)
                for locator in locators:
                    results[locator] = document
            elif secret_id in errors:
                for locator in locators:
                    results[locator] = errors[secret_id]
        rest = [
            loc
            for sid, group in chunk.items()
            if sid not in found and sid not in errors
            for loc in group
        ]
        fan_out(
            [
                self._guarded([loc], results, functools.partial(self._sm_one, route, loc, results))
                for loc in rest
            ],
            workers=self.concurrency,
        )

    def _sm_one(self, route: Route, locator: Locator, results: dict[Locator, Any]) -> None:
        import botocore.exceptions

        client = self._client(route)
        arguments = {"SecretId": locator.path}
        stage, version_id = locator.option("version-stage"), locator.option("version-id")
        if stage:
            arguments["VersionStage"] = stage
        if version_id:
            arguments["VersionId"] = version_id
        which = f"secret {locator.path}" + (
            f" (version {version_id})" if version_id else f" (stage {stage})" if stage else ""
        )
        try:
            answer = client.get_secret_value(**arguments)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            results[locator] = self._error(error, which, route)
            return
        results[locator] = self._sm_document(answer, locator.path)

    def _sm_document(self, value: Mapping[str, Any], secret_id: str) -> Secret | SourceError:
        if value.get("SecretString") is not None:
            secret = Secret.from_text(str(value["SecretString"]))
        elif value.get("SecretBinary") is not None:
            secret = Secret(bytes(value["SecretBinary"]))
        else:
            return InvalidValue("", f"secret {secret_id} has neither SecretString nor SecretBinary")
        self._redactor.add(secret)
        # The VersionId tells a long-running agent whether the secret changed.
        if value.get("VersionId"):
            secret.lease = Lease(version=str(value["VersionId"]))
        return secret

    # ------------------------------------------------------------------ Parameter Store

    def _ssm_plan(
        self, route: Route, locators: Sequence[Locator], results: dict[Locator, Any]
    ) -> list[Callable[[], None]]:
        names: dict[str, list[Locator]] = {}
        for locator in locators:
            names.setdefault(_ssm_name(locator), []).append(locator)
        # One name per parameter in a call: the answer names the parameter, not always the
        # version or label asked for (moto leaves Selector out), so two would be ambiguous.
        # A secret read through SECRET_REFERENCE is answered under a name of the service's
        # choosing (AWS: the path, moto: the secret's name), so it is asked alone.
        chunks: list[dict[str, list[Locator]]] = []
        taken: list[set[str] | None] = []  # each chunk's parameters; None: a chunk of its own
        for name, group in names.items():
            base = _parameter_key(_split_parameter(name)[0])
            alone = base.startswith(SECRET_REFERENCE)
            for chunk, bases in zip(chunks, taken, strict=True):
                if not alone and bases is not None and len(chunk) < SSM_BATCH and base not in bases:
                    chunk[name] = group
                    bases.add(base)
                    break
            else:
                chunks.append({name: group})
                taken.append(None if alone else {base})
        return [
            self._guarded(
                [loc for group in chunk.values() for loc in group],
                results,
                functools.partial(self._ssm_batch, route, chunk, results),
            )
            for chunk in chunks
        ]

    def _ssm_batch(
        self, route: Route, chunk: Mapping[str, list[Locator]], results: dict[Locator, Any]
    ) -> None:
        import botocore.exceptions

        client = self._client(route)
        found: dict[str, Any] = {}
        missing: set[str] = set()
        try:
            answer = client.get_parameters(Names=list(chunk), WithDecryption=True)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            what = (
                f"parameter {next(iter(chunk))}"
                if len(chunk) == 1
                else f"GetParameters of {len(chunk)} parameter(s)"
            )
            failure = self._error(error, what, route)
            if _code(error) not in _DENIED | _REFUSED or len(chunk) == 1:
                raise failure from None
            # One denied or invalid name refuses the whole call; per-name calls say which.
            log.info(
                "%s: GetParameters refused (%s); reading %d parameter(s) one by one",
                self.settings.scheme,
                _code(error),
                len(chunk),
            )
            fan_out(
                [
                    self._guarded(
                        group,
                        results,
                        functools.partial(self._ssm_batch, route, {name: group}, results),
                    )
                    for name, group in chunk.items()
                ],
                workers=self.concurrency,
            )
            return
        invalid = {str(n) for n in answer.get("InvalidParameters", [])}
        parameters = answer.get("Parameters", [])
        for parameter in parameters:
            for name in chunk:
                if _same_parameter(name, parameter):
                    found[name] = parameter
        only = next(iter(chunk))
        # A call for one name: its one parameter is the answer, however it is named.
        if (
            len(chunk) == 1
            and len(parameters) == 1
            and not found
            and not invalid
            and _same_selector(only, parameters[0])
        ):
            found[only] = parameters[0]
        for name in chunk:
            if name in invalid or name not in found:
                missing.add(name)
        for name, locators in chunk.items():
            if name in found:
                outcome: Secret | SourceError = self._ssm_document(found[name], name)
            else:
                base, selector = _split_parameter(name)
                problem = (
                    f"no parameter {base} with version or label {selector!r}"
                    if selector
                    else f"no parameter {base}"
                )
                outcome = NotFound("", _in_route(problem, route))
            for locator in locators:
                results[locator] = outcome

    def _ssm_document(self, parameter: Mapping[str, Any], name: str) -> Secret | SourceError:
        if parameter.get("Value") is None:
            return InvalidValue("", f"parameter {name} came back without a value")
        secret = Secret.from_text(str(parameter["Value"]))
        self._redactor.add(secret)
        if parameter.get("Version") is not None:
            secret.lease = Lease(version=str(parameter["Version"]))
        return secret

    # ------------------------------------------------------------------ errors

    def _coded_error(
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
            return NotFound("", _in_route(f"no {what}", route))
        kms_denied = code in _DENIED and "kms" in str(message or "").lower()
        if code in _KMS | _KNOWN_KMS or unknown_kms or kms_denied:
            kms = f"KMS {code}" if code else "KMS"
            return Forbidden(
                "", _in_route(f"cannot decrypt {what} ({kms})", route), server_text=said
            )
        if code in _DENIED:
            return Forbidden(
                "", _in_route(f"access denied to {what} ({code})", route), server_text=said
            )
        if code in _THROTTLED:
            tries = f" after {attempts} attempt(s)" if attempts else ""
            return Unreachable("", _in_route(f"throttled ({code}){tries} reading {what}", route))
        # AWS says "marked for deletion", moto "currently marked deleted".
        if code == "InvalidRequestException" and "marked" in str(message or "").lower():
            return NotFound("", _in_route(f"{what} is scheduled for deletion", route))
        if code in {"InvalidParameterException", "InvalidRequestException", "ValidationException"}:
            return InvalidValue(
                "", _in_route(f"AWS refused reading {what} ({code})", route), server_text=said
            )
        return Unreachable(
            "",
            _in_route(f"AWS answered {code or 'an error'} for {what}", route),
            server_text=said,
        )

    def _error(self, error: Exception, what: str, route: Route | None = None) -> SourceError:
        """One typed, one-line error for anything botocore raised."""
        import botocore.exceptions as bx

        if isinstance(error, bx.ClientError):
            metadata = error.response.get("ResponseMetadata", {})
            attempts = int(metadata.get("RetryAttempts", 0)) + 1
            details = error.response.get("Error", {})
            return self._coded_error(
                str(details.get("Code", "")), details.get("Message"), what, route, attempts
            )
        url = self._endpoint_of(error)
        if isinstance(error, bx.NoRegionError):
            return Unreachable(
                "",
                f"{_NO_REGION}: set ?region=, region in "
                f"[sources.{self.settings.scheme}], AWS_REGION or AWS_DEFAULT_REGION, "
                "or region in the AWS profile",
            )
        if isinstance(error, bx.NoCredentialsError):
            return Forbidden(
                "",
                "no AWS credentials found (environment, ~/.aws/credentials and config, SSO, "
                "web identity, container or instance metadata)",
            )
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
            problem = _in_route(f"the answer from {url} for {what} {refused.reason}", route)
            if isinstance(refused, AnswerTooSlow):
                return Timeout("", problem)
            return InvalidValue("", problem)
        if isinstance(error, bx.ConnectTimeoutError):
            return Timeout(
                "",
                _in_route(
                    f"no connection to {url} within {self.settings.connect_timeout:g}s "
                    f"({self.settings.max_attempts} attempt(s)) reading {what}",
                    route,
                ),
            )
        if isinstance(error, bx.ReadTimeoutError):
            return Timeout(
                "",
                _in_route(
                    f"no answer from {url} within {self.settings.read_timeout:g}s "
                    f"({self.settings.max_attempts} attempt(s)) reading {what}",
                    route,
                ),
            )
        if isinstance(error, bx.SSLError):
            reason = tls_reason(error, ca_hint="set AWS_CA_BUNDLE to the CA that signed it")
            return Unreachable("", _in_route(f"TLS with {url} failed: {reason}", route))
        if isinstance(error, bx.ProxyConnectionError):
            proxy = _without_userinfo(getattr(error, "kwargs", {}).get("proxy_url"))
            return Unreachable(
                "",
                _in_route(
                    f"cannot reach the proxy {proxy} (HTTPS_PROXY/HTTP_PROXY) for {url}: "
                    f"{connection_reason(error)} ({what})",
                    route,
                ),
            )
        if isinstance(error, bx.EndpointConnectionError | bx.ConnectionClosedError):
            return Unreachable(
                "", _in_route(f"cannot reach {url}: {connection_reason(error)} ({what})", route)
            )
        if isinstance(error, bx.HTTPClientError):
            import urllib3.exceptions

            if caused_by(error, urllib3.exceptions.ReadTimeoutError, TimeoutError):
                return Timeout("", _in_route(f"no answer from {url} reading {what}", route))
            return Unreachable("", _in_route(f"request to {url} failed ({what})", route))
        if isinstance(error, bx.ParamValidationError):
            return InvalidValue("", f"AWS refused the request for {what} before sending it")
        return Unreachable("", _in_route(f"{what} failed: {type(error).__name__}", route))

    def _endpoint_of(self, error: Exception) -> str:
        url = getattr(error, "kwargs", {}).get("endpoint_url") if hasattr(error, "kwargs") else None
        if isinstance(url, str) and url:
            return url.split("?")[0]
        return self.settings.endpoint_url or f"the AWS {self.service} endpoint"

    def close(self) -> None:
        with self._lock:
            for profile in self._profiles.values():
                for client in profile.clients.values():
                    client.close()
                profile.clients.clear()
                profile.credentials = None
            self._profiles.clear()
        self._redactor.clear()


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


def _bound_answers(client: Any, timeout: float) -> None:
    """Read every answer's body of ``client`` within ``timeout`` seconds and ANSWER_LIMIT
    bytes (:func:`read_answer`): botocore's read_timeout bounds each read, not the answer."""
    import botocore.exceptions as bx

    # botocore has no public hook around reading a body; its endpoint's HTTP session does it.
    session = client._endpoint.http_session
    send = session.send
    # The status line and headers get the same deadline (pools are made on first use).
    session._pool_classes_by_scheme = header_deadline_pools(
        session._pool_classes_by_scheme, timeout
    )
    session._manager.pool_classes_by_scheme = session._pool_classes_by_scheme

    def bounded(request: Any) -> Any:
        if request.stream_output:
            return send(request)
        request.stream_output = True  # the body is left to us
        try:
            response = send(request)
        finally:
            request.stream_output = False
        try:
            response._content = read_answer(response.raw.read1, timeout=timeout)
        except AnswerRefused as error:
            # The rest of the body is still on the connection: it cannot be reused.
            response.raw.close()
            if isinstance(error, AnswerTooSlow):
                # A read timeout to botocore: retried like one, up to max_attempts.
                raise bx.ReadTimeoutError(endpoint_url=request.url, error=error) from None
            raise bx.HTTPClientError(error=error) from None
        response.raw.release_conn()
        return response

    session.send = bounded


def _in_route(problem: str, route: Route | None) -> str:
    where = route.describe() if route else ""
    return f"{problem} [{where}]" if where else problem


def _code(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _same_secret(secret_id: str, value: Mapping[str, Any]) -> bool:
    arn, name = str(value.get("ARN", "")), str(value.get("Name", ""))
    if secret_id in (arn, name):
        return True
    # A partial ARN (without the "-XXXXXX" suffix Secrets Manager appends) names it too.
    return (
        secret_id.startswith("arn:")
        and arn.startswith(secret_id + "-")
        and len(arn) == len(secret_id) + 7
    )


def _same_parameter(requested: str, parameter: Mapping[str, Any]) -> bool:
    base = _split_parameter(requested)[0]
    named = _parameter_key(str(parameter.get("Name", "")))
    if _parameter_key(base) != named and base != parameter.get("ARN"):
        return False
    return _same_selector(requested, parameter)


def _same_selector(requested: str, parameter: Mapping[str, Any]) -> bool:
    """The version or label asked for, when the answer says which one it is."""
    selector = _split_parameter(requested)[1]
    given = parameter.get("Selector")
    if selector is None or not given:
        return True
    return str(given).lstrip(":") == selector


def open_source(context: SourceContext) -> AwsSource:
    settings = AwsSettings.load(
        context.settings,
        scheme=context.scheme,
        where=context.where or f"sources.{context.scheme}",
        config_file=context.config_file or None,
        concurrency=context.concurrency,
    )
    return AwsSource(settings)
