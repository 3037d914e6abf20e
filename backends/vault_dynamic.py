"""Dynamic ``vault:`` secrets: certificates from a PKI role, database credentials, their leases.

A ``vault:`` reference whose mount is a ``pki`` or ``database`` secrets engine issues a new
value each time it is fetched, with a lease (docs/sources/vault.md, "Dynamic secrets"):

* ``vault:MOUNT/issue/ROLE?common_name=NAME[&alt_names=..&ip_sans=..&uri_sans=..&ttl=..]`` is
  ``bao write MOUNT/issue/ROLE common_name=NAME ...``; its parts are ``#cert``, ``#key``,
  ``#chain`` (the certificate then its CA chain) and ``#ca`` (the issuing CA), like the parts
  of ``generate:tls``. The lease expires with the certificate (``expiration``); it has a lease
  id only when the role sets ``generate_lease``, and is never renewable (PKI has no renew).
* ``vault:MOUNT/creds/ROLE`` is ``bao read MOUNT/creds/ROLE``; its parts are ``#username``
  and ``#password``, with the lease id, duration and renewability the server gave.

Renewing and revoking go through ``sys/leases/renew`` and ``sys/leases/revoke``; a
certificate without a lease is revoked by serial number (``MOUNT/revoke``).

The source (backends/vault.py) decides which engine a mount is (backends/vault_kv.py), logs in
and maps errors (backends/vault_client.py); this module knows the engines' paths, options and
answers. It imports nothing heavy, so the plugin registration may ask :func:`selects_public`
without loading hvac or the networking modules.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from credbridge.core import (
    BadReference,
    Forbidden,
    InvalidValue,
    NotFound,
    Reference,
    SecretDocument,
    SourceError,
)
from credbridge.core.reference import Locator
from credbridge.core.types import Lease

if TYPE_CHECKING:
    from credbridge.backends.vault_client import ErrorMapper

log = logging.getLogger(__name__)

ENGINES = frozenset({"pki", "database"})
"""Secrets engines whose reads issue a new value with a lease."""
PKI_OPTIONS = frozenset({"common_name", "alt_names", "ip_sans", "uri_sans", "ttl"})
"""Reference options passed to ``MOUNT/issue/ROLE`` as the fields of the same name."""
PKI_PARTS = ("cert", "key", "chain", "ca")
PKI_PUBLIC_PARTS = frozenset({"cert", "chain", "ca"})
DATABASE_PARTS = ("username", "password")
_ACTION = {"pki": "issue", "database": "creds"}
_DURATION = re.compile(r"[0-9]{1,10}[smhd]?")
_ROLE = re.compile(r"[^/\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Issuer:
    """What a dynamic reference asks for: the engine, its mount and the role."""

    engine: str
    mount: str
    """Without a trailing slash (``pki``, ``team/db``)."""
    role: str

    @property
    def path(self) -> str:
        return f"{self.mount}/{_ACTION[self.engine]}/{self.role}"

    @property
    def thing(self) -> str:
        return "a certificate" if self.engine == "pki" else "database credentials"

    def describe(self) -> str:
        return f"{self.thing} from {self.path}"


# --------------------------------------------------------------------------- syntax (no I/O)


def validate_options(reference: Reference) -> None:
    """Check the PKI options of a reference, wherever its mount turns out to be."""
    text = str(reference)
    given = PKI_OPTIONS & set(reference.options)
    if not given:
        return
    for key in ("kv", "version"):
        if reference.option(key) is not None:
            raise BadReference(
                text, f"{sorted(given)[0]} is an option of a PKI issue path; {key} is KV's"
            )
    for key in sorted(given):
        if not (reference.option(key) or "").strip():
            raise BadReference(text, f"option {key} must not be empty")
    ttl = reference.option("ttl")
    if ttl is not None and not _DURATION.fullmatch(ttl):
        raise BadReference(text, "ttl must be seconds or a duration such as 90s, 15m, 12h")


def selects_public(reference: Reference) -> bool:
    """``#cert``, ``#chain`` and ``#ca`` of a certificate issue (``?common_name=``) are public.

    Decided from the text alone; a KV path dressed up like this is refused when it is fetched
    (PKI options on a KV mount), so no KV value is ever delivered as public through it."""
    parts = reference.path.strip("/").split("/")
    return (
        reference.option("common_name") is not None
        and len(parts) >= 3
        and parts[-2] == "issue"
        and reference.selector in PKI_PUBLIC_PARTS
    )


def issuer(locator: Locator, mount: str, engine: str) -> Issuer:
    """The role a reference on a PKI or database mount names, or a one-line refusal."""
    below = locator.path.strip("/")[len(mount) :].strip("/").split("/")
    action = _ACTION[engine]
    example = f"vault:{mount}/{action}/ROLE"
    if engine == "pki":
        example += "?common_name=NAME#cert"
    if len(below) != 2 or below[0] != action or not _ROLE.fullmatch(below[1]):
        raise InvalidValue(
            "",
            f"{mount}/ is a {engine} secrets engine; credbridge reads {example} from it",
        )
    if engine == "database" and PKI_OPTIONS & set(locator.option_map):
        raise InvalidValue("", f"{mount}/ is a database secrets engine; it takes no PKI options")
    if locator.option("version") is not None:
        raise InvalidValue("", f"{mount}/ is a {engine} secrets engine; it keeps no versions")
    return Issuer(engine, mount, below[1])


def refuse_pki_options_on_kv(locator: Locator, mount: str) -> None:
    given = sorted(PKI_OPTIONS & set(locator.option_map))
    if given:
        raise InvalidValue(
            "", f"{mount} is a KV secrets engine; {given[0]} is an option of PKI issue paths"
        )


# --------------------------------------------------------------------------- issuing


def issue(client: Any, target: Issuer, locator: Locator, fail: ErrorMapper) -> SecretDocument:
    """Issue one value (a certificate or database credentials) with its lease."""
    if target.engine == "pki":
        return _certificate(client, target, locator, fail)
    return _database_credentials(client, target, fail)


def _certificate(
    client: Any, target: Issuer, locator: Locator, fail: ErrorMapper
) -> SecretDocument:
    fields = {k: v for k, v in locator.options if k in PKI_OPTIONS}
    common_name = fields.pop("common_name", "")
    issued_at = time.time()
    try:
        # A POST: never retried by the session (a retry would issue a second certificate).
        response = client.secrets.pki.generate_certificate(
            name=target.role,
            common_name=common_name,
            extra_params=fields or None,
            mount_point=target.mount,
        )
        data = response["data"]
        certificate = _pem(data["certificate"])
        private_key = _pem(data["private_key"])
        issuing_ca = _pem(data["issuing_ca"]) if data.get("issuing_ca") else None
        ca_chain = [_pem(pem) for pem in data.get("ca_chain") or [] if pem]
        expiration = float(data["expiration"])
        serial = str(data.get("serial_number") or "") or None
    except _failures() as error:
        raise _failed(error, target, fail) from None
    lease = Lease(
        version=serial,
        lease_id=_lease_id(response),
        issued_at=issued_at,
        expires_at=expiration,
        renewable=False,  # the PKI engine has no renew operation
    )
    # fullchain, as generate:tls writes #chain: the certificate, then the CAs up to the root.
    chain = certificate + "".join(pem for pem in ca_chain if pem != certificate)
    if not ca_chain and issuing_ca:
        chain += issuing_ca
    parts = {"cert": certificate, "key": private_key, "chain": chain}
    if issuing_ca:  # else #ca is "no field 'ca'", never an empty file
        parts["ca"] = issuing_ca
    log.info(
        "vault: issued certificate %s from %s (expires %s%s)",
        serial,
        target.path,
        _when(expiration),
        f", lease {lease.lease_id}" if lease.lease_id else "",
    )
    return SecretDocument(parts, lease=lease)


def _database_credentials(client: Any, target: Issuer, fail: ErrorMapper) -> SecretDocument:
    issued_at = time.time()
    try:
        response = client.secrets.database.generate_credentials(
            name=target.role, mount_point=target.mount
        )
        data = response["data"]
        username, password = _text(data["username"]), _text(data["password"])
        duration = float(response.get("lease_duration") or 0)
        renewable = bool(response.get("renewable"))
    except _failures() as error:
        raise _failed(error, target, fail) from None
    lease = lease_of(issued_at, duration, renewable, lease_id=_lease_id(response))
    log.info(
        "vault: issued database credentials from %s (lease %s, %gs%s)",
        target.path,
        lease.lease_id,
        duration,
        ", renewable" if lease.renewable else "",
    )
    return SecretDocument({"username": username, "password": password}, lease=lease)


def _failures() -> tuple[type[Exception], ...]:
    """What a call and the reading of its answer raise (hvac is loaded by now)."""
    from credbridge.backends.vault_client import hvac_failures

    return (*hvac_failures(), AttributeError)


def _answer_broken(error: Exception) -> bool:
    """A malformed answer (a missing key, a wrong type), not a failed request."""
    import hvac.exceptions
    import requests.exceptions

    http = (hvac.exceptions.VaultError, requests.exceptions.RequestException)
    return isinstance(error, KeyError | TypeError | ValueError | AttributeError) and not (
        isinstance(error, http)
    )


def _failed(error: Exception, target: Issuer, fail: ErrorMapper) -> SourceError:
    import hvac.exceptions

    if _answer_broken(error):
        return InvalidValue("", f"unexpected answer issuing {target.describe()}")
    if isinstance(error, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
        capability = "update" if target.engine == "pki" else "read"
        return Forbidden(
            "",
            f"permission denied issuing {target.describe()} (no '{capability}' on "
            f"{target.path} in the token's policies, or the token is invalid or expired)",
        )
    said = _said(error)
    refused = isinstance(error, hvac.exceptions.InvalidRequest)
    # PKI says 400 "unknown role: NAME"; the database engine 400 "unknown role" or 404.
    if isinstance(error, hvac.exceptions.InvalidPath) or (refused and "unknown role" in said):
        return NotFound("", f"no role {target.role!r} at {target.mount}/ ({target.path})")
    mapped = fail(error, target.path)
    if refused:
        # A 400 here is the role refusing what the reference asks for (a name it does not
        # allow, a bad ttl): the reference's fault, not the server's, whatever it said.
        return mapped.retyped(
            "", f"{target.path} refused to issue {target.thing} (400)", InvalidValue
        )
    return mapped


def _said(error: Exception) -> str:
    """What the server said (its ``errors``), lowercased, for telling refusals apart."""
    return " ".join(map(str, getattr(error, "errors", None) or [])).lower()


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("not a non-empty string")
    return value


def _pem(value: Any) -> str:
    text = _text(value)
    return text if text.endswith("\n") else text + "\n"


def lease_of(
    issued_at: float, duration: float, renewable: bool, *, lease_id: str | None = None
) -> Lease:
    """A lease issued at ``issued_at`` for ``duration`` seconds as the server states it
    (0: it does not expire, and then there is nothing to renew)."""
    return Lease(
        lease_id=lease_id,
        issued_at=issued_at,
        expires_at=issued_at + duration if duration > 0 else None,
        renewable=renewable and duration > 0,
    )


def _lease_id(response: Mapping[str, Any]) -> str | None:
    lease_id = response.get("lease_id")
    return str(lease_id) if lease_id else None


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# --------------------------------------------------------------------------- leases


def renew(client: Any, lease: Lease, increment: float | None, fail: ErrorMapper) -> Lease:
    """``sys/leases/renew``: the lease as the server now has it (the increment is advisory)."""
    lease_id = _needs_lease_id(lease, "renew")
    if not lease.renewable:
        raise InvalidValue("", f"lease {lease_id} is not renewable; fetch a new value")
    renewed_at = time.time()
    try:
        response = client.sys.renew_lease(
            lease_id=lease_id, increment=None if increment is None else max(1, round(increment))
        )
        duration = float(response.get("lease_duration") or 0)
        renewable = bool(response.get("renewable"))
        new_id = _lease_id(response) or lease_id
    except _failures() as error:
        raise _lease_failed(error, lease_id, "renew", fail) from None
    log.info("vault: renewed lease %s for %gs", new_id, duration)
    return Lease(
        version=lease.version,
        lease_id=new_id,
        issued_at=lease.issued_at,
        expires_at=renewed_at + duration,
        renewable=renewable,
    )


def revoke(client: Any, lease: Lease, target: Issuer | None, fail: ErrorMapper) -> None:
    """``sys/leases/revoke``; a certificate issued without a lease is revoked by serial."""
    if lease.lease_id is None and target is not None and target.engine == "pki" and lease.version:
        try:
            client.secrets.pki.revoke_certificate(
                serial_number=lease.version, mount_point=target.mount
            )
        except _failures() as error:
            raise _failed(error, target, fail) from None
        log.info("vault: revoked certificate %s at %s", lease.version, target.mount)
        return
    lease_id = _needs_lease_id(lease, "revoke")
    try:
        client.sys.revoke_lease(lease_id=lease_id)
    except _failures() as error:
        raise _lease_failed(error, lease_id, "revoke", fail) from None
    log.info("vault: revoked lease %s", lease_id)


def _needs_lease_id(lease: Lease, action: str) -> str:
    if not lease.lease_id:
        raise InvalidValue("", f"the value has no lease to {action}")
    return lease.lease_id


def _lease_failed(error: Exception, lease_id: str, action: str, fail: ErrorMapper) -> SourceError:
    import hvac.exceptions

    said = _said(error)
    refused = isinstance(error, hvac.exceptions.InvalidRequest)
    if refused and ("not found" in said or "invalid lease" in said):
        return NotFound("", f"lease {lease_id} does not exist (expired or revoked)")
    if refused and "not renewable" in said:
        return InvalidValue("", f"lease {lease_id} is not renewable; fetch a new value")
    if refused and "max ttl" in said:
        return InvalidValue("", f"lease {lease_id} is at its max TTL; fetch a new value")
    if isinstance(error, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
        return Forbidden(
            "",
            f"permission denied to {action} lease {lease_id} (no 'update' on "
            f"sys/leases/{action} in the token's policies, or the token is invalid or expired)",
        )
    if _answer_broken(error):
        return InvalidValue("", f"unexpected answer to {action} lease {lease_id}")
    return fail(error, f"sys/leases/{action} ({lease_id})")
