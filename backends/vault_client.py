"""The connection of a ``vault:`` source to its server, and the typing of what fails on it.

* One requests session per source, its connection pool sized to the concurrency: reads are
  retried on connection failures and the statuses 429, 502, 503 and 504, and every answer has a
  deadline and a size bound (:func:`~credbridge.core.remote.bounded_http_adapter`).
* One hvac client per namespace on that session, all sending the same token.
* The login (a token, or AppRole, JWT, Kubernetes), once per run: its inputs are resolved from
  their references and handed to the redactor; a failed login is kept and reported for every
  reference (a long run forgets it, :meth:`VaultConnection.forget_failed_login`).
* :meth:`VaultConnection.error`: one typed, one-line error (forbidden, unreachable, timeout,
  not found, invalid value) for anything hvac or requests raised, never quoting a value.

hvac and requests are imported when the first ``vault:`` reference is resolved, never when this
module is: backends/vault_dynamic.py imports it from the plugin's registration.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from credbridge.core import (
    Forbidden,
    InvalidValue,
    NotFound,
    Secret,
    SourceError,
    Timeout,
    Unreachable,
)
from credbridge.core.remote import (
    AnswerRefused,
    AnswerTooSlow,
    Redactor,
    bounded_http_adapter,
    caused_by,
    connection_reason,
    demote_retry_warnings,
    optional_import,
    resolve_text,
    tls_reason,
)

if TYPE_CHECKING:
    from credbridge.backends.vault_settings import VaultSettings

log = logging.getLogger(__name__)

# Statuses worth another try: rate limit, sealed/standby/unavailable, gateway trouble.
_RETRY_STATUSES = (429, 502, 503, 504)
# Reads are idempotent; a login is not (a secret_id may have a use limit), so a login is
# retried only when the connection could not be made at all (urllib3 does that for any verb).
_RETRY_METHODS = frozenset({"GET", "HEAD", "LIST"})
_STATUS = {
    "InvalidRequest": "400",
    "Unauthorized": "401",
    "Forbidden": "403",
    "InvalidPath": "404",
    "RateLimitExceeded": "429",
    "InternalServerError": "500",
    "VaultNotInitialized": "501",
    "BadGateway": "502",
    "VaultDown": "503",
}

ErrorMapper = Callable[[Exception, str], SourceError]
"""The source's mapping of an hvac/requests failure at a path to one typed error."""


class HvacAdapter(Protocol):
    token: str | None

    def get(self, url: str, **kwargs: Any) -> Any: ...


class HvacClient(Protocol):
    """The part of ``hvac.Client`` credbridge uses (hvac has no type hints)."""

    adapter: HvacAdapter
    secrets: Any
    auth: Any


def hvac_failures() -> tuple[type[Exception], ...]:
    """What hvac and requests raise for a failed call (imported on first use, like hvac)."""
    import hvac.exceptions
    import requests.exceptions

    return (
        hvac.exceptions.VaultError,
        requests.exceptions.RequestException,
        ValueError,
        KeyError,
        TypeError,
        RecursionError,  # an answer nested too deep for the JSON parser
    )


class VaultConnection:
    """The session, the clients and the token of one ``vault:`` source; thread-safe."""

    def __init__(
        self, settings: VaultSettings, resolve: Callable[[str], Secret], redactor: Redactor
    ) -> None:
        self.settings = settings
        self.redactor = redactor
        """Every token and login input is added to it; server texts are deferred through it."""
        self._resolve = resolve
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[str | None, HvacClient] = {}
        self._token: str | None = None
        self._login_error: SourceError | None = None

    def client(self, namespace: str | None) -> HvacClient:
        """The client of ``namespace``; the first call connects and logs in (or raises the
        login's error, as every later call does in a one-shot run)."""
        with self._lock:
            if self._login_error is not None:
                raise self._login_error
            if self._session is None:
                optional_import("hvac", extra="vault", scheme="vault")
                try:
                    self._connect()
                except SourceError as error:
                    self._login_error = error
                    raise
            client = self._clients.get(namespace)
            if client is None:
                client = self._clients[namespace] = self._new_client(namespace)
            return client

    def _new_client(self, namespace: str | None) -> HvacClient:
        import hvac

        settings = self.settings
        client: HvacClient = hvac.Client(
            url=settings.address,
            token=self._token or "",
            namespace=namespace,
            verify=self._session.verify if self._session is not None else settings.verify,
            cert=settings.cert,
            timeout=(settings.connect_timeout, settings.read_timeout),
            session=self._session,
        )
        return client

    def _connect(self) -> None:
        """Build the shared session and log in, once (callers hold ``self._lock``)."""
        import requests
        from urllib3.util.retry import Retry

        settings = self.settings
        session = requests.Session()
        # requests re-reads proxy variables and ~/.netrc on every request when trust_env is
        # on (a fifth of the client's CPU per read); read the environment once instead.
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(settings.address))
        verify = settings.verify
        if verify is True:
            verify = (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            )
        # hvac lets a session's own verify/cert win over its arguments (hvac#991): set both.
        session.verify = verify
        session.cert = settings.cert
        retry = Retry(
            total=settings.retries,
            connect=settings.retries,
            read=settings.retries,
            status=settings.retries,
            other=0,
            backoff_factor=settings.backoff,
            status_forcelist=_RETRY_STATUSES,
            allowed_methods=_RETRY_METHODS,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        # read_timeout bounds each read; this bounds the whole body (and its size) too.
        adapter = bounded_http_adapter(
            timeout=settings.read_timeout,
            pool_connections=1,
            pool_maxsize=settings.concurrency,
            max_retries=retry,
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        if settings.verify is False:
            import warnings

            import urllib3.exceptions

            # Said once here, instead of urllib3's warning on every request.
            log.warning("TLS verification of %s is off (tls_verify = false)", settings.address)
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        demote_retry_warnings("urllib3.connectionpool", "Retrying")
        client = self._new_client(settings.namespace)
        self._login(client)
        self._clients[settings.namespace] = client

    def _login(self, client: HvacClient) -> None:
        auth = self.settings.auth
        if auth.method == "token":
            token = self._read_token()
            client.adapter.token = token
            self._token = token
            return
        where = f"{auth.method} login at auth/{auth.mount}"
        material: dict[str, str] = {}
        for key in ("role_id", "secret_id", "jwt"):
            ref = getattr(auth, key)
            if ref is not None:
                material[key] = self._material(key, ref)
        try:
            if auth.method == "approle":
                response = client.auth.approle.login(
                    role_id=material["role_id"],
                    secret_id=material.get("secret_id"),
                    mount_point=auth.mount,
                    use_token=True,
                )
            elif auth.method == "jwt":
                response = client.auth.jwt.jwt_login(
                    role=auth.role, jwt=material["jwt"], path=auth.mount, use_token=True
                )
            else:
                response = client.auth.kubernetes.login(
                    role=auth.role, jwt=material["jwt"], mount_point=auth.mount, use_token=True
                )
        except hvac_failures() as error:
            raise self.error(error, "", where, login=True) from None
        finally:
            material.clear()
        issued = client.adapter.token
        if not isinstance(issued, str) or not issued:
            raise Forbidden("", f"{where}: the server returned no token")
        self.redactor.add(issued)
        self._token = issued
        del response
        log.info("vault: logged in (%s)", where)

    def _read_token(self) -> str:
        auth = self.settings.auth
        if auth.token is not None:
            token = auth.token.strip()
        elif auth.token_file is not None:
            try:
                token = auth.token_file.read_text().strip()
            except OSError as error:
                raise Forbidden(
                    "", f"cannot read token_file {auth.token_file}: {error.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise Forbidden("", f"token_file {auth.token_file} is not UTF-8 text") from None
        elif auth.token_ref is not None:
            token = self._material("token", auth.token_ref)
        elif self.settings.env_token:
            token = self.settings.env_token
        else:
            raise Forbidden(
                "",
                "no Vault token: set auth.token_file or auth.token_ref in [sources.vault], "
                "or VAULT_TOKEN, or log in so ~/.vault-token exists",
            )
        if not token:
            raise Forbidden("", "the Vault token is empty")
        self.redactor.add(token)
        return token

    def _material(self, key: str, reference: str) -> str:
        """Resolve a login input given as a reference (``credential:``, ``file:``, ``env:``)."""
        value = resolve_text(self._resolve, reference, f"auth {key}")
        if not value:
            raise Forbidden("", f"auth {key} from {reference} is empty")
        self.redactor.add(value)
        return value

    # ------------------------------------------------------------------ a long run's token

    def forget_failed_login(self) -> bool:
        """Drop a failed login, its session and clients, so the next :meth:`client` tries
        again; whether there was one."""
        with self._lock:
            if self._login_error is None:
                return False
            self._login_error = None
            if self._session is not None:
                self._session.close()
            self._session = None
            self._clients.clear()
            self._token = None
        return True

    def log_in_again(self, client: HvacClient) -> bool:
        """Log in anew through ``client`` (a configured token: read it again) and have every
        namespace's client send the token; whether it is another token than before."""
        with self._lock:
            previous = self._token
            # A login sends no token: an expired one must not be what the server judges.
            client.adapter.token = None
            try:
                self._login(client)
            finally:
                token = self._token
                for other in self._clients.values():
                    other.adapter.token = token
        return token != previous

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._clients.clear()
            self._token = None

    # ------------------------------------------------------------------ errors

    def error(
        self, error: Exception, reference: str, where: str, *, login: bool = False
    ) -> SourceError:
        """One typed, one-line error for anything hvac or requests raised at ``where``."""
        import hvac.exceptions
        import requests.exceptions
        import urllib3.exceptions

        address = self.settings.address
        if isinstance(error, SourceError):
            return error
        if isinstance(error, hvac.exceptions.VaultError):
            said = "; ".join(map(str, error.errors or []))
            # What the server said is shown only once every value of the run is known: it
            # can quote a value another worker has not received yet (Redactor.defer).
            detail = self.redactor.defer(said)
            status = _STATUS.get(type(error).__name__, "error")
            if isinstance(error, hvac.exceptions.VaultDown):
                state = "sealed" if "sealed" in said.lower() else "unavailable (503)"
                return Unreachable(reference, f"{address} is {state}")
            if isinstance(error, hvac.exceptions.VaultNotInitialized):
                return Unreachable(reference, f"{address} is not initialized")
            if login:
                if isinstance(
                    error, hvac.exceptions.RateLimitExceeded | hvac.exceptions.BadGateway
                ):
                    return Unreachable(reference, f"{where} failed ({status})", server_text=detail)
                return Forbidden(reference, f"{where} failed ({status})", server_text=detail)
            if isinstance(error, hvac.exceptions.InvalidPath):
                # A KV read says more (backends/vault_kv.py: deleted, destroyed, API paths).
                return NotFound(reference, f"no secret at {where}")
            if isinstance(error, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
                return Forbidden(
                    reference,
                    f"permission denied reading {where} (no 'read' in the token's policies, "
                    "or the token is invalid or expired)",
                )
            if isinstance(error, hvac.exceptions.RateLimitExceeded):
                return Unreachable(reference, f"{address} kept rate-limiting (429)")
            return Unreachable(
                reference, f"{address} answered {status} for {where}", server_text=detail
            )
        refused = caused_by(error, AnswerRefused)
        if isinstance(refused, AnswerTooSlow):
            return Timeout(reference, f"the answer from {address} for {where} {refused.reason}")
        if isinstance(refused, AnswerRefused):
            return InvalidValue(
                reference, f"the answer from {address} for {where} {refused.reason}"
            )
        if isinstance(error, requests.exceptions.SSLError):
            return Unreachable(reference, f"TLS with {address} failed: {_tls_reason(error)}")
        if isinstance(error, requests.exceptions.ConnectTimeout):
            return Timeout(
                reference,
                f"no connection to {address} within {self.settings.connect_timeout:g}s",
            )
        if isinstance(error, requests.exceptions.Timeout):
            return Timeout(
                reference, f"no answer from {address} within {self.settings.read_timeout:g}s"
            )
        if isinstance(error, requests.exceptions.RetryError):
            return Unreachable(
                reference, f"{address} kept failing after {self.settings.retries} retries"
            )
        if isinstance(error, requests.exceptions.ConnectionError):
            # Retries exhausted on a read timeout arrive as a ConnectionError around it.
            if caused_by(error, urllib3.exceptions.ReadTimeoutError):
                return Timeout(
                    reference, f"no answer from {address} within {self.settings.read_timeout:g}s"
                )
            return Unreachable(reference, f"cannot reach {address}: {connection_reason(error)}")
        if isinstance(error, requests.exceptions.RequestException):
            return Unreachable(reference, f"request to {address} failed: {type(error).__name__}")
        return InvalidValue(reference, f"unexpected answer from {address} for {where}")


def _tls_reason(error: Exception) -> str:
    reason = tls_reason(
        error,
        ca_hint="set ca_cert, or VAULT_CACERT, to the CA that signed the server's certificate",
    )
    if reason == "the server requires a client certificate":
        reason += " (set client_cert and client_key)"
    return reason
