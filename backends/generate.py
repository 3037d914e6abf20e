"""``generate:`` — random secrets like ``openssl rand`` and key pairs, persisted before use.

Also ``stored:`` — read a value from the store of generated values (the previous one too).

Random values (``base64``, ``hex``, ``password``, ``uuid``, ``bytes``) are stored as their raw
bytes, as they always were. A key (``ssh-ed25519``, ``wireguard``, ``tls``, ...) is stored as one
*key document*: a JSON object holding every part of one generation (the private key, the
public key, the certificate, ...), so a store writes all parts in one atomic write and a
``#public`` never pairs with another generation's private half. See docs/sources/generate.md.

This module is the two sources over the store: a value read, or made and persisted before use
(a certificate after the CA that signs it), and rotated. What the values are (options, random
bytes, key documents) is backends/generators.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from credbridge.backends.generators import (
    KEY_KINDS,
    PUBLIC_PARTS,
    KeyDocument,
    check_store_key,
    generate,
    generate_document,
    generated_size,
    material_options,
)
from credbridge.core import (
    BadReference,
    Forbidden,
    InvalidValue,
    Mode,
    NotFound,
    Pending,
    Reference,
    Request,
    Secret,
    Source,
    SourceContext,
    SourceError,
    Store,
    Unreachable,
)
from credbridge.core.types import Outcome, RotatableSource

log = logging.getLogger(__name__)


def store_failure(reference: str, key: str, error: OSError | ValueError) -> SourceError:
    """A store that cannot be read or written, as a typed error naming key and reason."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    if isinstance(error, PermissionError):
        return Forbidden(reference, f"store key {key}: {reason}")
    return Unreachable(reference, f"store key {key}: {reason}")


def store_key(request: Request) -> str | None:
    """Where a generated value lives: ``?id=KEY`` if given, else the owning credential."""
    return request.reference.option("id") or request.owner


def _signed_by_ca(request: Request) -> bool:
    return request.reference.path == "tls" and request.reference.option("ca") is not None


# --------------------------------------------------------------------------- sources


class GenerateSource(RotatableSource):
    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store

    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        results: dict[Request, Outcome] = {}
        stored: dict[str, Secret | Pending] = {}
        handed_out: set[str] = set()
        # Certificates signed by a CA come last, so a CA generated in this run signs them.
        for request in sorted(requests, key=_signed_by_ca):
            reference = request.reference
            key = store_key(request)
            if key is None:
                # Not tied to a credential (``credbridge get``): a one-off value, like openssl.
                try:
                    results[request] = self._one_off(request, stored)
                except SourceError as error:
                    results[request] = error
                continue
            try:
                value = self._get_or_create(key, request, mode, stored)
                if isinstance(value, Pending):
                    results[request] = value
                else:
                    shared = key in handed_out
                    handed_out.add(key)
                    results[request] = self._interpret(key, reference, value, shared=shared)
            except SourceError as error:
                results[request] = error
            except (OSError, ValueError) as error:
                results[request] = store_failure(str(reference), key, error)
        return results

    def _one_off(self, request: Request, stored: dict[str, Secret | Pending]) -> Secret:
        made = self._make(request, stored)
        if isinstance(made, KeyDocument):
            return made.part(request.reference.selector, str(request.reference))
        return made

    def _ca(
        self, request: Request, mode: Mode, stored: dict[str, Secret | Pending]
    ) -> KeyDocument | Pending:
        """The ``tls-ca`` document a ``generate:tls?ca=ID`` certificate is signed by."""
        reference = request.reference
        ca_id = reference.option("ca") or ""
        value = stored.get(ca_id)
        if value is None:
            try:
                value = self._store().read(ca_id)
            except (OSError, ValueError) as error:
                raise store_failure(str(reference), ca_id, error) from None
        if isinstance(value, Pending):
            return Pending(f"new generated value, signed by the new tls-ca {ca_id}")
        if value is None:
            raise NotFound(
                str(reference),
                f"no tls-ca in the store under {ca_id!r} (generate one with "
                f"generate:tls-ca?cn=NAME&id={ca_id})",
            )
        document = _document_of(value, ca_id, str(reference))
        if document is None:
            raise InvalidValue(str(reference), f"store key {ca_id} holds no tls-ca")
        return document

    def _get_or_create(
        self, key: str, request: Request, mode: Mode, stored: dict[str, Secret | Pending]
    ) -> Secret | Pending:
        if key in stored:
            return stored[key]
        store = self._store()
        existing = store.read(key)
        if existing is not None:
            stored[key] = existing
            return existing
        if mode is Mode.DRY_RUN:
            if _signed_by_ca(request):
                self._ca(request, mode, stored)  # a missing CA fails the plan too
            pending = Pending(f"new generated value, store key {key}", generated_size(request))
            stored[key] = pending
            return pending
        value = store.create(key, self._fresh(request, stored))
        stored[key] = value
        return value

    def _fresh(self, request: Request, stored: dict[str, Secret | Pending]) -> Secret:
        made = self._make(request, stored)
        return made.to_secret() if isinstance(made, KeyDocument) else made

    def _make(self, request: Request, stored: dict[str, Secret | Pending]) -> Secret | KeyDocument:
        """A new random value, or a new key (signed by its CA, read or made in this run)."""
        reference = request.reference
        if reference.path not in KEY_KINDS:
            return generate(reference)
        ca = self._ca(request, Mode.DELIVER, stored) if _signed_by_ca(request) else None
        if isinstance(ca, Pending):  # pragma: no cover - DELIVER never yields Pending
            raise NotFound(str(reference), ca.reason)
        return generate_document(reference, ca)

    @staticmethod
    def _interpret(key: str, reference: Reference, value: Secret, *, shared: bool) -> Secret:
        """The selected part of what the store holds, checked against the reference's kind.

        A random value is handed out as it was read, once; a copy for each further request
        of the same key (each result is wiped on its own)."""
        kind = reference.path
        document = _document_of(value, key, str(reference))
        if kind not in KEY_KINDS:
            if document is not None:
                raise InvalidValue(
                    str(reference),
                    f"store key {key} holds a {document.kind} key, not a generate:{kind} value; "
                    "'credbridge rotate' replaces it",
                )
            return Secret(value.reveal()) if shared else value
        if document is None or document.kind != kind:
            what = f"a {document.kind} key" if document else "a random value"
            raise InvalidValue(
                str(reference),
                f"store key {key} holds {what}, not a {kind} key; 'credbridge rotate' replaces it",
            )
        # An option the reference leaves out means "whatever it was made with"; one it
        # gives differently is most likely a config edit that expected a new key.
        changed = sorted(
            k for k, v in material_options(reference).items() if document.options.get(k) != v
        )
        if changed:
            log.warning(
                "store key %s was generated with other options (%s); the stored key is used "
                "until 'credbridge rotate'",
                key,
                ", ".join(changed),
            )
        return document.part(reference.selector, str(reference))

    def rotate(self, request: Request) -> str:
        """Generate a new current value; the old one stays readable as the previous."""
        key = store_key(request)
        if key is None:
            raise NotFound(str(request.reference), "is not tied to a credential; nothing to rotate")
        try:
            store = self._store()
            store.rotate(key, self._fresh(request, {}))
        except (OSError, ValueError) as error:
            raise store_failure(str(request.reference), key, error) from None
        return f"{store.location()} ({key})"


def _document_of(value: Secret, key: str, reference: str) -> KeyDocument | None:
    """The key document a stored value holds, or ``None`` for a raw random value."""
    if not KeyDocument.is_document(value):
        return None
    try:
        return KeyDocument.from_secret(value)
    except ValueError as error:
        raise InvalidValue(reference, f"store key {key}: {error}") from None


class StoredSource(Source):
    """``stored:KEY[?version=previous][#PART]``: read the store of generated values directly."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store

    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        results: dict[Request, Outcome] = {}
        for request in requests:
            reference = request.reference
            previous = reference.option("version", "current") == "previous"
            try:
                value = self._store().read(reference.path, previous=previous)
                if value is None:
                    what = "previous value" if previous else "value"
                    results[request] = NotFound(str(reference), f"no {what} in the store")
                    continue
                results[request] = self._select(reference, value)
            except SourceError as error:
                results[request] = error
            except (OSError, ValueError) as error:
                results[request] = store_failure(str(reference), reference.path, error)
        return results

    @staticmethod
    def _select(reference: Reference, value: Secret) -> Secret:
        document = _document_of(value, reference.path, str(reference))
        if document is not None:
            return document.part(reference.selector, str(reference))
        if reference.selector is None:
            return value
        if reference.selector in PUBLIC_PARTS:
            # Only key documents have public parts; never let a random value pass as one.
            raise InvalidValue(str(reference), "the stored value is not a key; it has no parts")
        return reference.select(value)


def validate_stored(reference: Reference) -> None:
    check_store_key(reference.path, str(reference))
    if reference.option("version", "current") not in {"current", "previous"}:
        raise BadReference(str(reference), "version must be 'current' or 'previous'")


def stored_selects_public(reference: Reference) -> bool:
    """Whether a ``stored:`` reference selects a public part of a stored key document."""
    return reference.selector in PUBLIC_PARTS


def open_generate(context: SourceContext) -> GenerateSource:
    return GenerateSource(context.store)


def open_stored(context: SourceContext) -> StoredSource:
    return StoredSource(context.store)
