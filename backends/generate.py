"""``generate:`` — random secrets like ``openssl rand``, persisted before use.

Also ``stored:`` — read a value from the store of generated values (the previous one too).
"""

from __future__ import annotations

import base64
import re
import secrets
import string
import uuid
from collections.abc import Callable, Iterable, Sequence

from credbridge.core import (
    BadReference,
    Forbidden,
    Mode,
    NotFound,
    Pending,
    Reference,
    Request,
    Secret,
    Source,
    SourceError,
    SourceType,
    Store,
    Unreachable,
    hookimpl,
)
from credbridge.core.types import Outcome

CHARSETS = {
    "alnum": string.ascii_letters + string.digits,
    "alpha": string.ascii_letters,
    "digits": string.digits,
    "hex": "0123456789abcdef",
    "lower": string.ascii_lowercase + string.digits,
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "ascii": "".join(chr(c) for c in range(33, 127)),
}

STORE_KEY = re.compile(r"^[A-Za-z0-9_.@:\\-]{1,255}(/[A-Za-z0-9_.@:\\-]{1,255})*$")
"""Store keys: what the file store accepts (``TARGET/CREDENTIAL`` or an ``?id=``)."""

KIND_OPTIONS: dict[str, frozenset[str]] = {
    "base64": frozenset({"bytes", "id"}),
    "hex": frozenset({"bytes", "id"}),
    "bytes": frozenset({"bytes", "id"}),
    "password": frozenset({"length", "charset", "id"}),
    "uuid": frozenset({"id"}),
}


def _validate(reference: Reference) -> None:
    kind = reference.path
    if kind not in KIND_OPTIONS:
        raise BadReference(
            str(reference), f"unknown generator {kind!r} (known: {', '.join(sorted(KIND_OPTIONS))})"
        )
    for key in reference.options:
        if key not in KIND_OPTIONS[kind]:
            allowed = ", ".join(sorted(KIND_OPTIONS[kind]))
            raise BadReference(
                str(reference),
                f"option {key!r} does not apply to generate:{kind} (allowed: {allowed})",
            )
    if "bytes" in KIND_OPTIONS[kind]:
        reference.int_option("bytes", 32, minimum=1, maximum=65536)
    if kind == "password":
        reference.int_option("length", 32, minimum=1, maximum=4096)
        charset = reference.option("charset", "alnum")
        if charset not in CHARSETS:
            raise BadReference(
                str(reference), f"unknown charset {charset!r} (known: {', '.join(CHARSETS)})"
            )
    store_id = reference.option("id")
    if store_id is not None:
        _check_key(store_id, str(reference))


def _check_key(key: str, reference: str) -> None:
    if not STORE_KEY.match(key) or any(p in {".", ".."} for p in key.split("/")):
        raise BadReference(
            reference, f"invalid store key {key!r} (segments of A-Z a-z 0-9 '_.@:-', joined by '/')"
        )


def store_failure(reference: str, key: str, error: OSError | ValueError) -> SourceError:
    """A store that cannot be read or written, as a typed error naming key and reason."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    if isinstance(error, PermissionError):
        return Forbidden(reference, f"store key {key}: {reason}")
    return Unreachable(reference, f"store key {key}: {reason}")


def generate(reference: Reference) -> Secret:
    """A fresh value for a ``generate:`` reference (already validated)."""
    kind = reference.path
    if kind == "uuid":
        return Secret(str(uuid.uuid4()).encode())
    if kind == "password":
        alphabet = CHARSETS[reference.option("charset", "alnum") or "alnum"]
        length = reference.int_option("length", 32, minimum=1, maximum=4096)
        return Secret("".join(secrets.choice(alphabet) for _ in range(length)).encode())
    raw = secrets.token_bytes(reference.int_option("bytes", 32, minimum=1, maximum=65536))
    if kind == "base64":
        return Secret(base64.b64encode(raw))
    if kind == "hex":
        return Secret(raw.hex().encode())
    return Secret(raw)


def store_key(request: Request) -> str | None:
    """Where a generated value lives: ``?id=KEY`` if given, else the owning credential."""
    return request.reference.option("id") or request.owner


class GenerateSource(Source):
    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store

    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        results: dict[Request, Outcome] = {}
        made: dict[str, Secret] = {}
        for request in requests:
            key = store_key(request)
            if key is None:
                # Not tied to a credential (``credbridge get``): a one-off value, like openssl.
                results[request] = generate(request.reference)
                continue
            try:
                results[request] = self._get_or_create(key, request, mode, made)
            except SourceError as error:
                results[request] = error
            except (OSError, ValueError) as error:
                results[request] = store_failure(str(request.reference), key, error)
        return results

    def _get_or_create(
        self, key: str, request: Request, mode: Mode, made: dict[str, Secret]
    ) -> Outcome:
        if key in made:
            return Secret(made[key].reveal())
        store = self._store()
        existing = store.read(key)
        if existing is not None:
            return existing
        if mode is Mode.DRY_RUN:
            return Pending(f"new generated value, store key {key}")
        value = store.create(key, generate(request.reference))
        made[key] = value
        return value

    def rotate(self, request: Request) -> str:
        """Generate a new current value; the old one stays readable as the previous."""
        key = store_key(request)
        if key is None:
            raise NotFound(str(request.reference), "is not tied to a credential; nothing to rotate")
        try:
            store = self._store()
            store.rotate(key, generate(request.reference))
        except (OSError, ValueError) as error:
            raise store_failure(str(request.reference), key, error) from None
        return f"{store.location()} ({key})"


class StoredSource(Source):
    """``stored:KEY[?version=previous]``: read the store of generated values directly."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store

    def fetch(self, requests: Sequence[Request], mode: Mode) -> dict[Request, Outcome]:
        results: dict[Request, Outcome] = {}
        for request in requests:
            previous = request.reference.option("version", "current") == "previous"
            try:
                value = self._store().read(request.reference.path, previous=previous)
            except (OSError, ValueError) as error:
                path = request.reference.path
                results[request] = store_failure(str(request.reference), path, error)
                continue
            if value is None:
                what = "previous value" if previous else "value"
                results[request] = NotFound(str(request.reference), f"no {what} in the store")
            else:
                results[request] = value
        return results


def _validate_stored(reference: Reference) -> None:
    _check_key(reference.path, str(reference))
    if reference.option("version", "current") not in {"current", "previous"}:
        raise BadReference(str(reference), "version must be 'current' or 'previous'")


@hookimpl
def credbridge_sources() -> Iterable[SourceType]:
    yield SourceType(
        scheme="generate",
        open=lambda ctx: GenerateSource(ctx.store),
        summary="random values (base64, hex, password, uuid, bytes), persisted in the store",
        options=frozenset({"bytes", "length", "charset", "id"}),
        selectors=False,
        validate=_validate,
    )
    yield SourceType(
        scheme="stored",
        open=lambda ctx: StoredSource(ctx.store),
        summary="values in the store of generated values (?version=previous after a rotate)",
        options=frozenset({"version"}),
        selectors=False,
        validate=_validate_stored,
    )
