"""``aws-sm:`` and ``aws-ssm:`` — AWS Secrets Manager and SSM Parameter Store, through botocore.

References::

    aws-sm:SECRET_ID[?version-stage=S|version-id=V&region=R&profile=P][#KEY | #/json/pointer]
    aws-ssm:NAME[:VERSION|:LABEL][?version=N&region=R&profile=P][#KEY | #/json/pointer]

All references of a run are grouped by route (region and profile); each route batches its
Secrets Manager secrets with ``BatchGetSecretValue`` (20 per call) and its parameters with
``GetParameters`` (10 per call), and every call of every route runs concurrently. A secret
asked for by version goes through ``GetSecretValue``.

The parts around these calls have their own modules: the settings and routes
(aws_settings.py), the botocore clients, one per service and route, and their credentials
(aws_client.py), and the typing of botocore's failures (aws_errors.py). botocore is imported
when the first AWS reference is resolved, never when this plugin is loaded. Settings and IAM
permissions: docs/sources/aws.md.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from credbridge.backends.aws_client import AwsClients
from credbridge.backends.aws_errors import DENIED, REFUSED, AwsErrors, error_code, in_route
from credbridge.backends.aws_settings import AwsSettings, Route, check_route
from credbridge.core import (
    BadReference,
    DocumentSource,
    InvalidValue,
    Lease,
    Locator,
    NotFound,
    Reference,
    Secret,
    SecretDocument,
    SourceContext,
    SourceError,
)
from credbridge.core.remote import Redactor, fan_out, renamed

log = logging.getLogger(__name__)

SM_SCHEME = "aws-sm"
SSM_SCHEME = "aws-ssm"
SECRET_REFERENCE = "/aws/reference/secretsmanager/"  # noqa: S105 - a path, not a password
"""Parameter Store's path to a Secrets Manager secret (GetParameters reads it through)."""
SM_BATCH = 20
"""BatchGetSecretValue takes at most 20 ids (botocore does not check it; chunk here)."""
SSM_BATCH = 10
"""GetParameters takes at most 10 names (more is a ValidationException)."""

_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@!-]{1,512}")
_SM_ARN = re.compile(r"arn:[a-z-]+:secretsmanager:([a-z0-9-]+):\d{12}:secret:[A-Za-z0-9/_+=.@!-]+")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,1011}")
_SSM_ARN = re.compile(r"arn:[a-z-]+:ssm:([a-z0-9-]+):\d{12}:parameter(/[A-Za-z0-9_.\-/]+)")
_SELECTOR = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


# --------------------------------------------------------------------------- references


def _arn_region(scheme: str, path: str) -> str | None:
    pattern = _SM_ARN if scheme == SM_SCHEME else _SSM_ARN
    found = pattern.match(path)
    return found.group(1) if found else None


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
    check_route(reference)


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
    check_route(reference)


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


# --------------------------------------------------------------------------- the source

SERVICES = {SM_SCHEME: "secretsmanager", SSM_SCHEME: "ssm", "aws-sts": "sts"}
"""The botocore service of each scheme."""


class AwsSource(DocumentSource):
    """Secrets Manager or Parameter Store, as ``settings.scheme`` says (STS: aws_sts.py)."""

    def __init__(self, settings: AwsSettings, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(concurrency=settings.concurrency)
        self.settings = settings
        self.service = SERVICES[settings.scheme]
        self._environ = os.environ if environ is None else environ
        self._redactor = Redactor()
        self._errors = AwsErrors(settings, self.service, self._redactor)
        self._clients = AwsClients(settings, self.service, self._errors, self._redactor)

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
            tasks += self._plan(route, group, results)
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

    def _plan(
        self, route: Route, locators: Sequence[Locator], results: dict[Locator, Any]
    ) -> list[Callable[[], None]]:
        """The calls that answer ``locators`` on ``route``, each filling in ``results``."""
        plan = self._sm_plan if self.service == "secretsmanager" else self._ssm_plan
        return plan(route, locators, results)

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

        client = self._clients.client(route)
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
                        errors[secret_id] = self._errors.coded(
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
            failure = self._errors.typed(
                error, f"BatchGetSecretValue of {len(chunk)} secret(s)", route
            )
            if error_code(error) not in DENIED | REFUSED:
                raise failure from None
            # IAM policies often grant only GetSecretValue, and one bad id refuses the whole
            # call: per-secret calls give each reference its own answer.
            log.info(
                "%s: BatchGetSecretValue refused (%s); reading %d secret(s) one by one",
                self.settings.scheme,
                error_code(error),
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

        client = self._clients.client(route)
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
            results[locator] = self._errors.typed(error, which, route)
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

        client = self._clients.client(route)
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
            failure = self._errors.typed(error, what, route)
            if error_code(error) not in DENIED | REFUSED or len(chunk) == 1:
                raise failure from None
            # One denied or invalid name refuses the whole call; per-name calls say which.
            log.info(
                "%s: GetParameters refused (%s); reading %d parameter(s) one by one",
                self.settings.scheme,
                error_code(error),
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
                outcome = NotFound("", in_route(problem, route))
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

    def close(self) -> None:
        self._clients.close()
        self._redactor.clear()


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
    return AwsSource(AwsSettings.read(context))
