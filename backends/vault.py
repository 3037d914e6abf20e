"""``vault:`` — secrets from HashiCorp Vault or OpenBao KV (v1 and v2), through hvac.

Reference: ``vault:MOUNT/PATH[?version=N&namespace=NS&kv=1|2][#FIELD | #/json/pointer]``.
On a ``pki`` or ``database`` mount, ``vault:MOUNT/issue/ROLE?common_name=NAME#cert`` and
``vault:MOUNT/creds/ROLE#password`` issue a new value with a lease (backends/vault_dynamic.py);
a dry run does not issue them (:class:`Pending`), and :meth:`VaultSource.renew`/``revoke`` act
on their leases.

The mount of a path and its KV version are asked from the server once per mount
(``sys/internal/ui/mounts/PATH``, which a normal token may read for paths it has access to);
``?kv=`` skips that for tokens that cannot. All references of a run go through one hvac client
per namespace sharing one requests session, whose connection pool is sized to the concurrency;
different paths are read concurrently, fields of one path are read once (``DocumentSource``).

hvac and requests are imported when the first ``vault:`` reference is resolved, never when this
plugin is loaded. Settings: docs/sources/vault.md.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

from credbridge.backends import vault_dynamic
from credbridge.backends.hooks.vault import SETTINGS
from credbridge.core import (
    BadReference,
    ConfigError,
    DocumentSource,
    Forbidden,
    InvalidValue,
    Lease,
    LeasedSource,
    Locator,
    Mode,
    NotFound,
    Outcome,
    Pending,
    Reference,
    Request,
    Secret,
    SecretDocument,
    SourceContext,
    SourceError,
    Timeout,
    Unreachable,
)
from credbridge.core.reference import parse_flag
from credbridge.core.remote import (
    AnswerRefused,
    AnswerTooSlow,
    Redactor,
    bounded_http_adapter,
    caused_by,
    connection_reason,
    demote_retry_warnings,
    optional_import,
    renamed,
    resolve_text,
    tls_reason,
)
from credbridge.core.settings import MAX_SECONDS, control_problem, path_setting, refuse_unknown
from credbridge.core.threads import map_in_threads

if TYPE_CHECKING:
    from credbridge.backends.vault_auth import VaultAuth

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "https://127.0.0.1:8200"
"""What the vault and bao CLIs use when nothing is set."""
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.25
KUBERNETES_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path

AUTH_SETTINGS: dict[str, frozenset[str]] = {
    "token": frozenset({"method", "token", "token_file", "token_ref"}),
    "approle": frozenset({"method", "mount", "role_id", "secret_id"}),
    "jwt": frozenset({"method", "mount", "role", "jwt"}),
    "kubernetes": frozenset({"method", "mount", "role", "jwt"}),
}
AUTH_MOUNTS = {"approle": "approle", "jwt": "jwt", "kubernetes": "kubernetes"}

_SEGMENT = re.compile(r"[^/\x00-\x1f\x7f]+")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
# Statuses worth another try: rate limit, sealed/standby/unavailable, gateway trouble.
_RETRY_STATUSES = (429, 502, 503, 504)
# Reads are idempotent; a login is not (a secret_id may have a use limit), so a login is
# retried only when the connection could not be made at all (urllib3 does that for any verb).
_RETRY_METHODS = frozenset({"GET", "HEAD", "LIST"})


# --------------------------------------------------------------------------- settings


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """``VAULT_NAME``, else ``BAO_NAME``: the first one set and not empty, with its name."""
    for prefix in ("VAULT_", "BAO_"):
        value = environ.get(prefix + name)
        if value:
            return prefix + name, value
    return None


@dataclass(frozen=True)
class AuthSettings:
    method: str = "token"
    mount: str = ""
    token: str | None = None
    token_file: Path | None = None
    token_ref: str | None = None
    role: str | None = None
    role_id: str | None = None
    secret_id: str | None = None
    jwt: str | None = None

    def __repr__(self) -> str:  # the inline token must never show up in a repr
        return f"AuthSettings(method={self.method!r}, mount={self.mount!r})"


@dataclass(frozen=True)
class VaultSettings:
    """Connection and auth settings: the ``[sources.vault]`` table over the environment."""

    address: str
    namespace: str | None
    verify: bool | str
    cert: tuple[str, str] | None
    connect_timeout: float
    read_timeout: float
    retries: int
    backoff: float
    concurrency: int
    auth: AuthSettings
    env_token: str | None = field(default=None, repr=False)
    """Token from VAULT_TOKEN / BAO_TOKEN / ~/.vault-token, when auth has none of its own."""

    @classmethod
    def load(
        cls,
        settings: Mapping[str, Any],
        *,
        where: str,
        config_file: str | None,
        config_dir: Path,
        concurrency: int,
        environ: Mapping[str, str] | None = None,
        home: Path | None = None,
    ) -> VaultSettings:
        env = os.environ if environ is None else environ

        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(message, file=config_file, key=f"{where}.{key}" if key else where)

        def env_fail(name: str, message: str) -> ConfigError:
            return ConfigError(f"environment variable {name}: {message}")

        refuse_unknown(settings, SETTINGS, what="source 'vault'", file=config_file, where=where)

        def text(key: str) -> str | None:
            value = settings.get(key)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                raise fail(key, "must be a non-empty string")
            problem = control_problem(value)
            if problem is not None:
                raise fail(key, f"value {problem}")
            return value

        def path(key: str, env_name: str) -> str | None:
            value = text(key)
            if value is not None:
                return str(_config_path(value, config_dir, config_file, f"{where}.{key}"))
            found = _env(env, env_name)
            return found[1] if found else None

        def number(key: str, default: float, *, integer: bool = False) -> float:
            value = settings.get(key, default)
            ok = isinstance(value, int) if integer else isinstance(value, int | float)
            # nan compares false with everything: without isfinite it would pass every check.
            if not ok or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                kind = "an integer" if integer else "a number"
                raise fail(key, f"must be {kind} >= 0")
            if value > MAX_SECONDS:
                raise fail(key, f"must be at most {MAX_SECONDS:g}")
            return float(value)

        address = text("address")
        if address is None:
            found = _env(env, "ADDR")
            address = found[1] if found else DEFAULT_ADDRESS
            if found and (
                urlsplit(address).scheme not in {"http", "https"} or control_problem(address)
            ):
                raise env_fail(found[0], "must be an http:// or https:// URL")
        if urlsplit(address).scheme not in {"http", "https"} or not urlsplit(address).netloc:
            raise fail("address", "must be an http:// or https:// URL")

        namespace = text("namespace")
        if namespace is None:
            found = _env(env, "NAMESPACE")
            namespace = found[1] if found else None
            if found and control_problem(found[1]) is not None:
                raise env_fail(found[0], "must not contain control characters")

        verify: bool | str = True
        ca_cert, ca_path = path("ca_cert", "CACERT"), path("ca_path", "CAPATH")
        # Like the vault CLI: a CA file wins over a CA directory.
        if ca_cert or ca_path:
            verify = str(ca_cert or ca_path)
        tls_verify = settings.get("tls_verify")
        if tls_verify is not None:
            if not isinstance(tls_verify, bool):
                raise fail("tls_verify", "must be true or false")
            if not tls_verify:
                verify = False
        else:
            found = _env(env, "SKIP_VERIFY")
            if found:
                flag = parse_flag(found[1])
                if flag is None:
                    raise env_fail(found[0], "must be true or false")
                if flag:
                    verify = False

        client_cert, client_key = (
            path("client_cert", "CLIENT_CERT"),
            path("client_key", "CLIENT_KEY"),
        )
        if bool(client_cert) != bool(client_key):
            raise fail("client_cert", "client_cert and client_key go together")
        cert = (client_cert, client_key) if client_cert and client_key else None

        workers = settings.get("concurrency", concurrency)
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 256:
            raise fail("concurrency", "must be an integer from 1 to 256")
        retries = int(number("retries", DEFAULT_RETRIES, integer=True))
        if retries > 10:
            raise fail("retries", "must be at most 10")
        connect_timeout = number("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        read_timeout = number("read_timeout", DEFAULT_READ_TIMEOUT)
        for key, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if value <= 0:
                raise fail(key, "must be greater than 0")

        auth = _load_auth(settings.get("auth", {}), fail, config_dir)
        env_token = None
        if auth.method == "token" and not (auth.token or auth.token_file or auth.token_ref):
            env_token = _token_from_environment(env, home)
        return cls(
            address=address.rstrip("/"),
            namespace=namespace.strip("/") or None if namespace else None,
            verify=verify,
            cert=cert,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            backoff=number("backoff", DEFAULT_BACKOFF),
            concurrency=workers,
            auth=auth,
            env_token=env_token,
        )


def _config_path(value: str, config_dir: Path, config_file: str | None, key: str) -> Path:
    return path_setting(value, base=config_dir, file=config_file, key=key)


def _token_from_environment(environ: Mapping[str, str], home: Path | None) -> str | None:
    found = _env(environ, "TOKEN")
    if found:
        return found[1].strip()
    try:
        base = home if home is not None else Path(environ.get("HOME") or Path.home())
    except RuntimeError:  # no $HOME and no home directory: there is no ~/.vault-token
        return None
    try:
        return (base / ".vault-token").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _load_auth(raw: Any, fail: Callable[[str, str], ConfigError], config_dir: Path) -> AuthSettings:
    if not isinstance(raw, Mapping):
        raise fail("auth", "must be a table with 'method'")
    method = raw.get("method", "token")
    if method not in AUTH_SETTINGS:
        raise fail("auth.method", f"must be one of {', '.join(AUTH_SETTINGS)}")
    unknown = sorted(set(raw) - AUTH_SETTINGS[method])
    if unknown:
        known = ", ".join(sorted(AUTH_SETTINGS[method]))
        raise fail(f"auth.{unknown[0]}", f"not a setting of {method} auth (known: {known})")

    def text(key: str) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail(f"auth.{key}", "must be a non-empty string")
        problem = control_problem(value)
        if problem is not None:  # never the value itself: it may be a token
            raise fail(f"auth.{key}", f"value {problem}")
        return value

    def reference(key: str) -> str | None:
        value = text(key)
        if value is None:
            return None
        scheme = value.partition(":")[0]
        if ":" not in value or not _SCHEME.fullmatch(scheme):
            raise fail(
                f"auth.{key}",
                "must be a reference such as 'file:/etc/credbridge/x' or 'credential:x'",
            )
        if scheme == "vault":
            raise fail(f"auth.{key}", "cannot come from vault itself")
        return value

    mount = (text("mount") or AUTH_MOUNTS.get(method, "")).strip("/")
    if method == "token":
        given = [k for k in ("token", "token_file", "token_ref") if raw.get(k) is not None]
        if len(given) > 1:
            raise fail(f"auth.{given[1]}", "give only one of token, token_file, token_ref")
        token_file = text("token_file")
        token_path = None
        if token_file is not None:
            try:
                token_path = path_setting(token_file, base=config_dir, file=None, key="")
            except ConfigError as error:
                raise fail("auth.token_file", error.message) from None
        return AuthSettings(
            method=method,
            token=text("token"),
            token_file=token_path,
            token_ref=reference("token_ref"),
        )
    if method == "approle":
        role_id = reference("role_id")
        if role_id is None:
            raise fail("auth.role_id", "approle auth needs role_id (a reference)")
        return AuthSettings(
            method=method, mount=mount, role_id=role_id, secret_id=reference("secret_id")
        )
    role = text("role")
    if role is None:
        raise fail("auth.role", f"{method} auth needs the role to log in as")
    jwt = reference("jwt")
    if jwt is None:
        if method == "jwt":
            raise fail("auth.jwt", "jwt auth needs jwt (a reference, e.g. 'env:CI_JOB_JWT')")
        jwt = f"file:{KUBERNETES_TOKEN}"
    return AuthSettings(method=method, mount=mount, role=role, jwt=jwt)


# --------------------------------------------------------------------------- references


def _split(path: str) -> list[str]:
    return path.strip("/").split("/")


def validate_reference(reference: Reference) -> None:
    text = str(reference)
    parts = _split(reference.path)
    if len(parts) < 2 or not all(_SEGMENT.fullmatch(p) and p not in {".", ".."} for p in parts):
        raise BadReference(text, "expected vault:MOUNT/PATH (e.g. vault:secret/app/db#password)")
    kv = reference.option("kv")
    if kv is not None and kv not in {"1", "2"}:
        raise BadReference(text, "kv must be 1 or 2")
    # ?version=0 is the latest version, in Vault's and OpenBao's API and `kv get -version=0`.
    version = reference.int_option("version", 0, minimum=0, maximum=1 << 31)
    if version and kv == "1":
        raise BadReference(text, "version needs a KV v2 mount; KV v1 keeps no versions")
    namespace = reference.option("namespace")
    if namespace is not None and not namespace.strip("/"):
        raise BadReference(text, "namespace must not be empty")
    vault_dynamic.validate_options(reference)


# --------------------------------------------------------------------------- hvac, typed


class _Adapter(Protocol):
    token: str | None

    def get(self, url: str, **kwargs: Any) -> Any: ...


class _Client(Protocol):
    adapter: _Adapter
    secrets: Any
    auth: Any


@dataclass(frozen=True)
class _Mount:
    path: str
    """With a trailing slash, as the server names it (``secret/``)."""
    version: int
    """The KV version (0 for the engines of :data:`vault_dynamic.ENGINES`)."""
    engine: str = "kv"
    """``kv``, or ``pki``/``database`` whose reads issue values with leases."""


# --------------------------------------------------------------------------- the source


class VaultSource(DocumentSource, LeasedSource):
    def __init__(self, settings: VaultSettings, resolve: Callable[[str], Secret]) -> None:
        super().__init__(concurrency=settings.concurrency)
        self.settings = settings
        self._resolve = resolve
        self._redactor = Redactor()
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[str | None, _Client] = {}
        self._token: str | None = None
        self._login_error: SourceError | None = None
        self._mounts: dict[tuple[str | None, str], _Mount] = {}
        self._mount_locks: dict[tuple[str | None, str], threading.Lock] = {}
        self._auth: VaultAuth | None = None

    # ------------------------------------------------------------------ connection

    def _new_client(self, namespace: str | None) -> _Client:
        import hvac

        settings = self.settings
        client: _Client = hvac.Client(
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

    def _login(self, client: _Client) -> None:
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
        except _failures() as error:
            raise self._error(error, "", where, login=True) from None
        finally:
            material.clear()
        issued = client.adapter.token
        if not isinstance(issued, str) or not issued:
            raise Forbidden("", f"{where}: the server returned no token")
        self._redactor.add(issued)
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
        self._redactor.add(token)
        return token

    def _material(self, key: str, reference: str) -> str:
        """Resolve a login input given as a reference (``credential:``, ``file:``, ``env:``)."""
        value = resolve_text(self._resolve, reference, f"auth {key}")
        if not value:
            raise Forbidden("", f"auth {key} from {reference} is empty")
        self._redactor.add(value)
        return value

    def _client(self, namespace: str | None) -> _Client:
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

    # ------------------------------------------------------------------ fetching

    def fetch_documents(
        self, locators: Sequence[Locator]
    ) -> dict[Locator, Secret | SecretDocument | SourceError]:
        if not locators:
            return {}
        # Log in before fanning out, so every worker finds a client (or the login error);
        # in a long run, first retry a failed login, renew or replace a token that is due.
        try:
            if self._auth is not None:
                self._auth.ensure_fresh()
            self._client(self._namespace(locators[0]))
        except SourceError as error:
            return {locator: renamed(error, str(locator)) for locator in locators}
        workers = min(self.concurrency, len(locators))
        log.debug("vault: reading %d path(s) with %d worker(s)", len(locators), workers)
        return super().fetch_documents(locators)

    def _namespace(self, locator: Locator) -> str | None:
        namespace = locator.option("namespace")
        return namespace.strip("/") if namespace else self.settings.namespace

    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        if mode is Mode.DELIVER:
            return super().fetch(requests, mode)
        # A dry run (check, deliver --dry-run, the plan before a delivery) must not issue
        # certificates or database users: those references are Pending, found by asking the
        # server what their mounts are (a read without side effects, cached for the run).
        results: dict[Request, Outcome] = {}
        issuers = self._issuers(sorted({r.reference.locator for r in requests}))
        static = []
        for request in requests:
            found = issuers[request.reference.locator]
            if found is None:
                static.append(request)
            elif isinstance(found, SourceError):
                results[request] = renamed(found, str(request.reference))
            else:
                results[request] = Pending(f"{found.describe()}, issued on delivery")
        if static:
            results.update(super().fetch(static, mode))
        return results

    def _issuers(
        self, locators: Sequence[Locator]
    ) -> dict[Locator, vault_dynamic.Issuer | SourceError | None]:
        """:meth:`_issuer` of each locator, different mounts asked concurrently."""

        def one(locator: Locator) -> vault_dynamic.Issuer | SourceError | None:
            try:
                return self._issuer(locator)
            except SourceError as error:
                return error

        if not locators:
            return {}
        try:  # log in once (or refresh a token that is due), as fetch_documents does
            self._fresh_client(locators[0])
        except SourceError as error:
            return dict.fromkeys(locators, error)
        answers = map_in_threads(one, locators, workers=self.concurrency, name="credbridge-vault")
        return dict(zip(locators, answers, strict=True))

    def _issuer(self, locator: Locator) -> vault_dynamic.Issuer | None:
        """What a reference on a PKI or database mount issues; ``None`` on a KV mount."""
        if locator.option("kv") is not None:
            return None
        namespace = self._namespace(locator)
        path = locator.path.strip("/")
        mount = self._mount(self._client(namespace), namespace, path)
        if mount.engine == "kv":
            return None
        return vault_dynamic.issuer(locator, mount.path.rstrip("/"), mount.engine)

    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        namespace = self._namespace(locator)
        client = self._client(namespace)
        path = locator.path.strip("/")
        kv = locator.option("kv")
        if kv is not None:
            mount = _Mount(_split(path)[0] + "/", int(kv))
        else:
            mount = self._mount(client, namespace, path)
        if mount.engine != "kv":
            target = vault_dynamic.issuer(locator, mount.path.rstrip("/"), mount.engine)
            document = vault_dynamic.issue(client, target, locator, self._dynamic_error)
            self._redactor.add_document(document)
            return document
        vault_dynamic.refuse_pki_options_on_kv(locator, mount.path)
        secret_path = path[len(mount.path) :].strip("/")
        if not secret_path:
            raise NotFound("", f"{path} is the mount itself; name a secret below it")
        version = locator.option("version")
        if version is not None and not version.strip("0"):
            version = None  # ?version=0: the latest version, as the server reads it
        where = f"{mount.path}{secret_path}"
        if version and mount.version == 1:
            raise InvalidValue(
                "", f"{mount.path} is a KV v1 mount; it keeps no versions (drop ?version)"
            )
        try:
            if mount.version == 2:
                response = client.secrets.kv.v2.read_secret_version(
                    path=secret_path,
                    version=int(version) if version else None,
                    mount_point=mount.path.rstrip("/"),
                    raise_on_deleted_version=True,
                )
                data = response["data"]["data"]
                # Which version was read, so a long-running agent can tell a change.
                written = response["data"].get("metadata") or {}
                lease = Lease(version=str(written["version"])) if "version" in written else None
            else:
                response = client.secrets.kv.v1.read_secret(
                    path=secret_path, mount_point=mount.path.rstrip("/")
                )
                data = response["data"]
                lease = None  # KV v1 keeps no versions: a change shows only in the value
        except _failures() as error:
            raise self._error(error, "", where, mount=mount, version=version) from None
        if not isinstance(data, Mapping):
            raise InvalidValue("", f"{where} holds no key/value data")
        document = SecretDocument(dict(data), lease=lease)
        # Later error replies (another path, a login) must not quote a part of this value.
        self._redactor.add_document(document)
        return document

    def _mount(self, client: _Client, namespace: str | None, path: str) -> _Mount:
        """The mount holding ``path`` and its KV version, asked once per mount and run."""
        first = _split(path)[0]
        with self._lock:
            lock = self._mount_locks.setdefault((namespace, first), threading.Lock())
        with lock:
            with self._lock:
                known = [
                    m
                    for (ns, m_path), m in self._mounts.items()
                    if ns == namespace and (path + "/").startswith(m_path)
                ]
            if known:
                return max(known, key=lambda m: len(m.path))
            url = "/v1/sys/internal/ui/mounts/" + quote(path, safe="/")
            try:
                answer = client.adapter.get(url)
            except _failures() as error:
                raise self._mount_error(client, path, error) from None
            try:
                data = answer["data"]
                mount_path = str(data["path"])
                engine = str(data["type"])
                options = data.get("options") or {}
            except (TypeError, KeyError):
                raise InvalidValue(
                    "", f"unexpected answer describing the mount of {path}"
                ) from None
            mount_path = mount_path if mount_path.endswith("/") else mount_path + "/"
            # Both names come from the server and end up in messages: the mount must be a
            # part of the path asked for, and an engine that is not KV is named only as
            # server text (shown once every value of the run is known).
            if not (path + "/").startswith(mount_path) or not mount_path.strip("/"):
                raise InvalidValue("", f"unexpected answer describing the mount of {path}")
            if engine in vault_dynamic.ENGINES:
                mount = _Mount(mount_path, 0, engine)
            elif engine not in {"kv", "generic"}:
                raise InvalidValue(
                    "",
                    f"{mount_path} is not a KV secrets engine (nor PKI or database)",
                    server_text=self._redactor.defer(f"its type is {engine!r}"),
                )
            else:
                version = 2 if str(options.get("version", "1")) == "2" else 1
                mount = _Mount(mount_path, version)
            with self._lock:
                self._mounts[(namespace, mount.path)] = mount
            log.debug("vault: %s is a %s mount", mount.path, _engine_name(mount))
            return mount

    def _mount_error(self, client: _Client, path: str, error: Exception) -> SourceError:
        import hvac.exceptions

        if not isinstance(error, hvac.exceptions.Forbidden):
            return self._error(error, "", path)
        # The preflight check says 403 both for "no permission" and "nothing mounted there";
        # the raw path tells them apart ("no handler for route" means no mount).
        try:
            client.adapter.get("/v1/" + quote(path, safe="/"))
        except hvac.exceptions.InvalidPath as probe:
            if "no handler for route" in " ".join(map(str, probe.errors or [])):
                return NotFound("", f"no secrets engine is mounted at {_split(path)[0]}/")
        except _failures():
            # The probe only refines the message of the 403; its own failure changes nothing.
            log.debug("vault: mount probe of %s failed", path, exc_info=False)
        return Forbidden(
            "",
            f"permission denied on {path} (the token's policies grant nothing there, or the "
            "token is invalid or expired; a token that can read secrets but not mount "
            "metadata needs ?kv=1 or ?kv=2)",
        )

    # ------------------------------------------------------------------ leases

    def renew(self, request: Request, lease: Lease, increment: float | None = None) -> Lease:
        """Extend a database credential's lease (``sys/leases/renew``); certificates cannot."""
        try:
            client = self._fresh_client(request.reference.locator)
            return vault_dynamic.renew(client, lease, increment, self._dynamic_error)
        except SourceError as error:
            raise renamed(error, str(request.reference)) from None

    def revoke(self, request: Request, lease: Lease) -> None:
        """End a lease now (``sys/leases/revoke``); a certificate without one by its serial."""
        try:
            client = self._fresh_client(request.reference.locator)
            target = None
            if lease.lease_id is None:
                target = self._issuer(request.reference.locator)
            vault_dynamic.revoke(client, lease, target, self._dynamic_error)
        except SourceError as error:
            raise renamed(error, str(request.reference)) from None

    def _fresh_client(self, locator: Locator) -> _Client:
        """The client for ``locator``'s namespace; in a long run (once :attr:`auth` is used)
        a token that is due is renewed or replaced first, as before every read."""
        if self._auth is not None:
            self._auth.ensure_fresh()
        return self._client(self._namespace(locator))

    def _dynamic_error(self, error: Exception, where: str) -> SourceError:
        return self._error(error, "", where)

    # ------------------------------------------------------------------ errors

    def _error(
        self,
        error: Exception,
        reference: str,
        where: str,
        *,
        login: bool = False,
        mount: _Mount | None = None,
        version: str | None = None,
    ) -> SourceError:
        """One typed, one-line error for anything hvac or requests raised."""
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
            detail = self._redactor.defer(said)
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
                return self._not_found(error, reference, where, mount, version)
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

    def _not_found(
        self,
        error: Any,
        reference: str,
        where: str,
        mount: _Mount | None,
        version: str | None,
    ) -> SourceError:
        metadata: Mapping[str, Any] = {}
        body = getattr(error, "json", None)
        if isinstance(body, Mapping):
            data = body.get("data")
            if isinstance(data, Mapping) and isinstance(data.get("metadata"), Mapping):
                metadata = data["metadata"]
        which = f"version {version} of {where}" if version else f"{where} (latest version)"
        if metadata.get("destroyed"):
            return NotFound(reference, f"{which} was destroyed")
        if metadata.get("deletion_time"):
            return NotFound(reference, f"{which} was deleted")
        kind = f" (KV v{mount.version} mount {mount.path})" if mount else ""
        if version:
            return NotFound(reference, f"no version {version} of {where}")
        api_path = _kv2_api_path(where, mount)
        if api_path is not None:
            # `vault read MOUNT/data/PATH` (and the CSI driver, and policies) name KV v2's HTTP
            # API path; a reference names the secret as `vault kv get` does.
            return NotFound(
                reference,
                f"no secret at {where}{kind}; if {where} is the API path that 'vault read' "
                f"takes, write vault:{api_path}",
            )
        return NotFound(reference, f"no secret at {where}{kind}")

    @property
    def auth(self) -> VaultAuth:
        """The token's keeper for a long-running process (renewal, logging in again); once
        it exists, every read first has it renew or replace a token that is due."""
        from credbridge.backends.vault_auth import VaultAuth

        with self._lock:
            if self._auth is None:
                self._auth = VaultAuth(self)
            return self._auth

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._clients.clear()
            self._token = None


def _engine_name(mount: _Mount) -> str:
    return f"KV v{mount.version}" if mount.engine == "kv" else mount.engine


def _kv2_api_path(where: str, mount: _Mount | None) -> str | None:
    """``secret/app`` for ``secret/data/app`` on a KV v2 mount ``secret/``, else None."""
    if mount is None or mount.version != 2:
        return None
    below = where[len(mount.path) :]
    if not below.startswith("data/") or below == "data/":
        return None
    return mount.path + below[len("data/") :]


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


def _failures() -> tuple[type[Exception], ...]:
    """What hvac and requests raise for a failed call (imported on first use, like hvac)."""
    return vault_dynamic.hvac_failures()


def _tls_reason(error: Exception) -> str:
    reason = tls_reason(
        error,
        ca_hint="set ca_cert, or VAULT_CACERT, to the CA that signed the server's certificate",
    )
    if reason == "the server requires a client certificate":
        reason += " (set client_cert and client_key)"
    return reason


def open_source(context: SourceContext) -> VaultSource:
    settings = VaultSettings.load(
        context.settings,
        where=context.where or "sources.vault",
        config_file=context.config_file or None,
        config_dir=context.config_dir,
        concurrency=context.concurrency,
    )
    return VaultSource(settings, context.resolve)
