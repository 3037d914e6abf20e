"""The Vault/OpenBao token of a ``vault:`` source over a long run: renewed, or logged in again.

A one-shot run logs in once (``[sources.vault.auth]``) and is done long before its token
expires. A long-running process (``credbridge agent``) calls :meth:`VaultAuth.ensure_fresh`
before its reads and at :attr:`VaultAuth.refresh_at`: the token is renewed
(``auth/token/renew-self``) once about two thirds of its TTL have passed, as Vault Agent
does, and when it cannot be renewed any more (not renewable, past its ``max_ttl``, revoked,
expired) credbridge logs in again with the configured method (AppRole, JWT, Kubernetes), or
reads the configured token again (``token_file``, ``token_ref``: something else may have
replaced it). Every client of the source gets the new token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from credbridge.backends.vault_dynamic import lease_of
from credbridge.core import Forbidden, Lease, SourceError

if TYPE_CHECKING:
    from credbridge.backends.vault_client import VaultConnection

log = logging.getLogger(__name__)

RENEW_FRACTION = 2 / 3
"""How much of the token's TTL passes before it is renewed (Vault Agent: about 2/3)."""


class VaultAuth:
    """Keeps the token of one ``vault:`` source's connection usable (``VaultSource.auth``);
    safe to call from any thread."""

    def __init__(
        self,
        connection: VaultConnection,
        *,
        renew_fraction: float = RENEW_FRACTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        self._connection = connection
        self._fraction = renew_fraction
        self._clock = clock
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._period = 0.0
        """The TTL the token had when it was issued or last renewed, in seconds."""
        self.accessor: str | None = None
        """The token's accessor (it names the token, e.g. for ``bao token lookup -accessor``;
        it cannot be used as one)."""
        self.logins = 0
        """How many times a token was obtained (the first login included)."""
        self.renewals = 0

    # ------------------------------------------------------------------ what callers read

    @property
    def lease(self) -> Lease | None:
        """The token's lease as last seen (``None`` before the first :meth:`ensure_fresh`)."""
        return self._lease

    @property
    def expires_at(self) -> float | None:
        """When the token stops working (``time.time()``); ``None``: never, or not known yet."""
        return self._lease.expires_at if self._lease is not None else None

    @property
    def refresh_at(self) -> float | None:
        """When :meth:`ensure_fresh` next has work to do; ``None``: never."""
        lease = self._lease
        if lease is None or lease.expires_at is None or lease.issued_at is None:
            return None
        return lease.issued_at + self._fraction * (lease.expires_at - lease.issued_at)

    # ------------------------------------------------------------------ the work

    def ensure_fresh(self, now: float | None = None) -> Lease:
        """Log in if needed, renew or replace the token when it is due; return its lease.

        ``now`` (``time.time()`` by default) decides what is due. Raises a
        :class:`SourceError` (``Forbidden``, ``Unreachable``, ...) when no usable token can be
        had; the source's reads would fail the same way.
        """
        with self._lock:
            if self._connection.forget_failed_login():
                # A one-shot run keeps its first login failure for every read; a long run
                # tries again: the server may be back, the secret_id or JWT replaced.
                self._lease = None
            client = self._connection.client(self._connection.settings.namespace)
            if self._lease is None:
                self._lease = self._look_up(client)
                self.logins += 1
            now = self._clock() if now is None else now
            lease = self._lease
            due = self.refresh_at
            if due is None or now < due:
                return lease
            expired = lease.expires_at is not None and now >= lease.expires_at
            if lease.renewable and not expired:
                try:
                    renewed = self._renew(client)
                except Forbidden as error:
                    # Revoked, or expired early: a new token is the only way on.
                    log.info("vault: token renewal refused (%s); logging in again", error.problem)
                else:
                    # Renewal that no longer extends the token (its max_ttl is near): it
                    # would be due again at once, so replace it now.
                    left = (renewed.expires_at or now) - (renewed.issued_at or now)
                    if renewed.expires_at is None or left >= (1 - self._fraction) * self._period:
                        self._lease = renewed
                        self.renewals += 1
                        return renewed
                    log.info("vault: the token cannot be renewed past %.0f s more", left)
            return self._replace(client, lease, now)

    def _replace(self, client: Any, old: Lease, now: float) -> Lease:
        if not self._connection.log_in_again(client):
            # A configured token (token_file, token_ref, VAULT_TOKEN) that nothing replaced.
            if old.expires_at is not None and now >= old.expires_at:
                raise Forbidden(
                    "",
                    "the Vault token has expired and cannot be renewed; replace it, or log in "
                    "with approle, jwt or kubernetes auth ([sources.vault.auth])",
                )
            log.warning(
                "vault: the token cannot be renewed and expires in %.0f s; replace it, or log "
                "in with approle, jwt or kubernetes auth",
                (old.expires_at or now) - now,
            )
            return old
        lease = self._look_up(client)
        self.logins += 1
        log.info("vault: new token (%s auth)", self._connection.settings.auth.method)
        self._lease = lease
        return lease

    def _look_up(self, client: Any) -> Lease:
        lease, period, data = self._token_lease(
            client.auth.token.lookup_self, "data", "ttl", "token lookup (auth/token/lookup-self)"
        )
        self._period = period
        accessor = data.get("accessor")
        self.accessor = str(accessor) if accessor else None
        return lease

    def _renew(self, client: Any) -> Lease:
        # A renewal's answer has no creation_ttl: the TTL returned is the renewed one.
        lease, ttl, _ = self._token_lease(
            client.auth.token.renew_self,
            "auth",
            "lease_duration",
            "token renewal (auth/token/renew-self)",
        )
        log.debug("vault: token renewed for %.0f s", ttl)
        return lease

    def _token_lease(
        self, call: Callable[[], Any], part: str, ttl_key: str, what: str
    ) -> tuple[Lease, float, Mapping[str, Any]]:
        """Call an ``auth/token/*-self`` endpoint: the token's lease as ``answer[part]`` states
        it (``ttl_key`` seconds from now, ``renewable``), the TTL the token was created with
        (``creation_ttl``, else that of the lease), and ``answer[part]``."""
        issued = self._clock()
        try:
            fields: Mapping[str, Any] = call()[part]
            ttl = float(fields.get(ttl_key) or 0)
            renewable = bool(fields.get("renewable"))
            period = float(fields.get("creation_ttl") or ttl)
        except self._failures() as error:
            raise self._error(error, what) from None
        return lease_of(issued, ttl, renewable), period, fields

    def _failures(self) -> tuple[type[Exception], ...]:
        from credbridge.backends.vault_client import hvac_failures

        return hvac_failures()

    def _error(self, error: Exception, what: str) -> SourceError:
        return self._connection.error(error, "", what, login=True)
