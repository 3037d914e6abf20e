"""``vault:`` — secrets from HashiCorp Vault or OpenBao KV (v1 and v2), through hvac.

Reference: ``vault:MOUNT/PATH[?version=N&namespace=NS&kv=1|2][#FIELD | #/json/pointer]``.
On a ``pki`` or ``database`` mount, ``vault:MOUNT/issue/ROLE?common_name=NAME#cert`` and
``vault:MOUNT/creds/ROLE#password`` issue a new value with a lease (backends/vault_dynamic.py);
a dry run does not issue them (:class:`Pending`), and :meth:`VaultSource.renew`/``revoke`` act
on their leases.

This module is the source: it checks references and sends each to its engine. The rest of the
backend, each with one job:

* backends/vault_settings.py: ``[sources.vault]`` over the environment (``VAULT_ADDR``, ...);
* backends/vault_client.py: the session, one hvac client per namespace, the login, and the
  typing of every failure (forbidden, unreachable, timeout, ...);
* backends/vault_kv.py: which mount holds a path and its KV version (asked once per mount and
  run; ``?kv=`` skips that for tokens that cannot), and reading a secret from it;
* backends/vault_dynamic.py: certificates and database credentials, their leases;
* backends/vault_auth.py: the token over a long run (renewal, logging in again).

Different paths are read concurrently over one connection pool sized to the concurrency;
fields of one path are read once (``DocumentSource``). hvac and requests are imported when the
first ``vault:`` reference is resolved, never when this plugin is loaded. Settings:
docs/sources/vault.md.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from credbridge.backends import vault_dynamic
from credbridge.backends.vault_client import HvacClient, VaultConnection
from credbridge.backends.vault_kv import Mount, Mounts, read_secret, split_path
from credbridge.backends.vault_settings import VaultSettings
from credbridge.core import (
    BadReference,
    DocumentSource,
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
)
from credbridge.core.remote import Redactor, renamed
from credbridge.core.threads import map_in_threads

if TYPE_CHECKING:
    from credbridge.backends.vault_auth import VaultAuth

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"[^/\x00-\x1f\x7f]+")


def validate_reference(reference: Reference) -> None:
    text = str(reference)
    parts = split_path(reference.path)
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


class VaultSource(DocumentSource, LeasedSource):
    def __init__(self, settings: VaultSettings, resolve: Callable[[str], Secret]) -> None:
        super().__init__(concurrency=settings.concurrency)
        self.settings = settings
        self._redactor = Redactor()
        self._connection = VaultConnection(settings, resolve, self._redactor)
        self._mounts = Mounts(self._redactor)
        self._lock = threading.Lock()
        self._auth: VaultAuth | None = None

    # ------------------------------------------------------------------ fetching

    def fetch_documents(
        self, locators: Sequence[Locator]
    ) -> dict[Locator, Secret | SecretDocument | SourceError]:
        if not locators:
            return {}
        # Log in before fanning out, so every worker finds a client (or the login error);
        # in a long run, first retry a failed login, renew or replace a token that is due.
        try:
            self._fresh_client(locators[0])
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
        mount = self._mounts.find(self._connection.client(namespace), namespace, path, self._fail)
        if mount.engine == "kv":
            return None
        return vault_dynamic.issuer(locator, mount.path.rstrip("/"), mount.engine)

    def fetch_document(self, locator: Locator) -> Secret | SecretDocument:
        namespace = self._namespace(locator)
        client = self._connection.client(namespace)
        path = locator.path.strip("/")
        kv = locator.option("kv")
        if kv is not None:
            mount = Mount(split_path(path)[0] + "/", int(kv))
        else:
            mount = self._mounts.find(client, namespace, path, self._fail)
        if mount.engine != "kv":
            target = vault_dynamic.issuer(locator, mount.path.rstrip("/"), mount.engine)
            document = vault_dynamic.issue(client, target, locator, self._fail)
        else:
            vault_dynamic.refuse_pki_options_on_kv(locator, mount.path)
            secret_path = path[len(mount.path) :].strip("/")
            if not secret_path:
                raise NotFound("", f"{path} is the mount itself; name a secret below it")
            version = locator.option("version")
            if version is not None and not version.strip("0"):
                version = None  # ?version=0: the latest version, as the server reads it
            document = read_secret(client, mount, secret_path, version, self._fail)
        # Later error replies (another path, a login) must not quote a part of this value.
        self._redactor.add_document(document)
        return document

    # ------------------------------------------------------------------ leases

    def renew(self, request: Request, lease: Lease, increment: float | None = None) -> Lease:
        """Extend a database credential's lease (``sys/leases/renew``); certificates cannot."""
        try:
            client = self._fresh_client(request.reference.locator)
            return vault_dynamic.renew(client, lease, increment, self._fail)
        except SourceError as error:
            raise renamed(error, str(request.reference)) from None

    def revoke(self, request: Request, lease: Lease) -> None:
        """End a lease now (``sys/leases/revoke``); a certificate without one by its serial."""
        try:
            client = self._fresh_client(request.reference.locator)
            target = None
            if lease.lease_id is None:
                target = self._issuer(request.reference.locator)
            vault_dynamic.revoke(client, lease, target, self._fail)
        except SourceError as error:
            raise renamed(error, str(request.reference)) from None

    def _fresh_client(self, locator: Locator) -> HvacClient:
        """The client for ``locator``'s namespace; in a long run (once :attr:`auth` is used)
        a token that is due is renewed or replaced first, as before every read."""
        if self._auth is not None:
            self._auth.ensure_fresh()
        return self._connection.client(self._namespace(locator))

    def _fail(self, error: Exception, where: str) -> SourceError:
        return self._connection.error(error, "", where)

    @property
    def auth(self) -> VaultAuth:
        """The token's keeper for a long-running process (renewal, logging in again); once
        it exists, every read first has it renew or replace a token that is due."""
        from credbridge.backends.vault_auth import VaultAuth

        with self._lock:
            if self._auth is None:
                self._auth = VaultAuth(self._connection)
            return self._auth

    def close(self) -> None:
        self._connection.close()


def open_source(context: SourceContext) -> VaultSource:
    return VaultSource(VaultSettings.from_context(context), context.resolve)
