"""botocore clients for the AWS sources: one botocore session per profile (its credential
chain resolved once, a role assumed once), one client per service and route, every session
sharing one model loader so the JSON service models are read once per process.

Every answer's body is read within ``read_timeout`` and a size limit (:func:`_bound_answers`).
botocore is imported when the first client is asked for, never when this module is.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from credbridge.backends.aws_errors import NO_CREDENTIALS, NO_REGION, AwsErrors
from credbridge.backends.aws_settings import AwsSettings, Route
from credbridge.core import Forbidden, InvalidValue, NotFound, SourceError, __version__
from credbridge.core.remote import (
    AnswerRefused,
    AnswerTooSlow,
    Redactor,
    cap_library_logging,
    header_deadline_pools,
    optional_import,
    read_answer,
)

log = logging.getLogger(__name__)

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


class AwsClients:
    """The clients of one source for one AWS service, built on first use and kept for the run;
    a profile's credential failure is remembered, so it is reported once, not per call."""

    def __init__(
        self, settings: AwsSettings, service: str, errors: AwsErrors, redactor: Redactor
    ) -> None:
        self.settings = settings
        self.service = service
        self._errors = errors
        self._redactor = redactor
        self._lock = threading.Lock()
        self._profiles: dict[str | None, _Profile] = {}

    def client(self, route: Route) -> Any:
        """The route's client, built once; a profile's credential failure is remembered."""
        with self._lock:
            profile = self._profiles.setdefault(route.profile, _Profile())
        with profile.lock:
            if profile.session is None and profile.error is None:
                try:
                    self._open_profile(profile, route)
                except SourceError as error:
                    if error.problem.startswith(NO_REGION):
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
            raise self._errors.typed(error, "loading AWS credentials") from None
        profile.session = session

    def _new_client(self, profile: _Profile, route: Route) -> Any:
        import botocore.exceptions

        settings = self.settings
        config = self._config(max_pool_connections=settings.concurrency)
        try:
            client = profile.session.create_client(
                self.service,
                region_name=route.region,
                endpoint_url=settings.endpoint_url,
                config=config,
                **(profile.credentials or {}),
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self._errors.typed(error, f"creating the {self.service} client", route) from None
        _bound_answers(client, settings.read_timeout)
        log.debug(
            "%s: %s client for %s", settings.scheme, self.service, route.describe() or "defaults"
        )
        return client

    def _config(self, **more: Any) -> Any:
        """botocore's client config: the timeouts and retries of the settings, and ``more``."""
        import botocore.config

        settings = self.settings
        return botocore.config.Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
            **more,
        )

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
            raise Forbidden("", NO_CREDENTIALS)
        for material in (frozen.secret_key, frozen.token):
            if material:
                self._redactor.add(material)
        if self.settings.role_arn is None:
            return None
        return self._assume_role(session, route)

    def _assume_role(self, session: Any, route: Route) -> dict[str, str]:
        import botocore.exceptions

        settings = self.settings
        assert settings.role_arn is not None
        sts = session.create_client("sts", region_name=route.region, config=self._config())
        _bound_answers(sts, settings.read_timeout)
        arguments = {"RoleArn": settings.role_arn, "RoleSessionName": settings.role_session_name}
        if settings.external_id:
            arguments["ExternalId"] = settings.external_id
        try:
            answer = sts.assume_role(**arguments)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            failure = self._errors.typed(error, f"sts:AssumeRole of {settings.role_arn}")
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

    def close(self) -> None:
        """Close every client's connection pool and forget the credentials."""
        with self._lock:
            for profile in self._profiles.values():
                for client in profile.clients.values():
                    client.close()
                profile.clients.clear()
                profile.credentials = None
            self._profiles.clear()


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
