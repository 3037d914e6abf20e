"""What ``generate:`` makes: its references' options, random values and key documents.

The value formats, apart from the sources that persist them (backends/generate.py): which
options each kind takes (checked when the config loads), a random value's bytes, and the *key
document* a key pair is stored as (every part of one generation in one JSON object). Keys come
from backends/keygen.py, imported only when one is made (it loads ``cryptography``).
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import string
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from credbridge.core import BadReference, NotFound, Reference, Request, Secret

CHARSETS = {
    "alnum": string.ascii_letters + string.digits,
    "alpha": string.ascii_letters,
    "digits": string.digits,
    "hex": "0123456789abcdef",
    "lower": string.ascii_lowercase + string.digits,
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "ascii": "".join(chr(c) for c in range(33, 127)),
}

STORE_KEY = re.compile(r"\A[A-Za-z0-9_.@:\\-]{1,255}(/[A-Za-z0-9_.@:\\-]{1,255})*\Z")
"""Store keys: what the file store accepts (``TARGET/CREDENTIAL`` or an ``?id=``)."""

KIND_OPTIONS: dict[str, frozenset[str]] = {
    "base64": frozenset({"bytes", "id"}),
    "hex": frozenset({"bytes", "id"}),
    "bytes": frozenset({"bytes", "id"}),
    "password": frozenset({"length", "charset", "id"}),
    "uuid": frozenset({"id"}),
}
"""Random values, stored as raw bytes."""

PRIVATE_PART = "key"
PUBLIC_PARTS = frozenset({"public", "cert", "chain"})
"""Parts of a key document that are not secret: shown by ``get``, exportable, mode 0444 ok.

The names are fixed for every key kind, so whether a reference selects a public part is
known from the reference alone (see :func:`selects_public`)."""


@dataclass(frozen=True)
class KeyKind:
    options: frozenset[str]
    parts: tuple[str, ...]


_PAIR_PARTS = ("key", "public")
_TLS_PARTS = ("key", "cert", "chain", "public")
KEY_KINDS: dict[str, KeyKind] = {
    "ssh-ed25519": KeyKind(frozenset({"comment", "id"}), _PAIR_PARTS),
    "ssh-rsa": KeyKind(frozenset({"bits", "comment", "id"}), _PAIR_PARTS),
    "ssh-ecdsa": KeyKind(frozenset({"curve", "comment", "id"}), _PAIR_PARTS),
    "wireguard": KeyKind(frozenset({"id"}), _PAIR_PARTS),
    "age": KeyKind(frozenset({"id"}), _PAIR_PARTS),
    "ed25519": KeyKind(frozenset({"id"}), _PAIR_PARTS),
    "x25519": KeyKind(frozenset({"id"}), _PAIR_PARTS),
    "tls-ca": KeyKind(frozenset({"cn", "days", "key", "id"}), _TLS_PARTS),
    "tls": KeyKind(frozenset({"cn", "san", "ca", "days", "key", "id"}), _TLS_PARTS),
}
"""Key pairs, stored as one key document each."""

RSA_BITS = ("3072", "4096")
SSH_CURVES = ("p256", "p384", "p521")
TLS_KEYS = ("p256", "p384", "ed25519", "rsa3072", "rsa4096")
DEFAULT_DAYS = {"tls-ca": 3650, "tls": 365}
_HOSTNAME = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


# --------------------------------------------------------------------------- validation


def validate_generate(reference: Reference) -> None:
    kind = reference.path
    allowed_options = KIND_OPTIONS.get(kind) or (
        KEY_KINDS[kind].options if kind in KEY_KINDS else None
    )
    if allowed_options is None:
        known = ", ".join(sorted([*KIND_OPTIONS, *KEY_KINDS]))
        raise BadReference(str(reference), f"unknown generator {kind!r} (known: {known})")
    for key in reference.options:
        if key not in allowed_options:
            allowed = ", ".join(sorted(allowed_options))
            raise BadReference(
                str(reference),
                f"option {key!r} does not apply to generate:{kind} (allowed: {allowed})",
            )
    if "bytes" in allowed_options:
        reference.int_option("bytes", 32, minimum=1, maximum=65536)
    if kind == "password":
        reference.int_option("length", 32, minimum=1, maximum=4096)
        charset = reference.option("charset", "alnum")
        if charset not in CHARSETS:
            raise BadReference(
                str(reference),
                f"unknown charset {reference.written_option('charset', charset or '')!r} "
                f"(known: {', '.join(CHARSETS)})",
            )
    if kind in KEY_KINDS:
        _validate_key_options(kind, reference)
    elif reference.selector is not None:
        raise BadReference(
            str(reference),
            f"generate:{kind} references take no '#selector' (parts like #public belong to "
            f"keys: generate:{'|'.join(KEY_KINDS)})",
        )
    store_id = reference.option("id")
    if store_id is not None:
        check_store_key(store_id, str(reference))


def _choice(reference: Reference, key: str, choices: Sequence[str], default: str) -> str:
    value = reference.option(key, default) or default
    if value not in choices:
        raise BadReference(
            str(reference),
            f"option {key}={reference.written_option(key, value)!r} is not one of "
            f"{', '.join(choices)}",
        )
    return value


def _validate_key_options(kind: str, reference: Reference) -> None:
    text = str(reference)
    parts = KEY_KINDS[kind].parts
    if reference.selector is not None and reference.selector not in parts:
        raise BadReference(
            text, f"generate:{kind} has no part {reference.selector!r} (parts: {', '.join(parts)})"
        )
    comment = reference.option("comment")
    if comment is not None and (not comment.isprintable() or len(comment) > 255):
        raise BadReference(text, "option comment must be printable text of at most 255 characters")
    if kind == "ssh-rsa":
        _choice(reference, "bits", RSA_BITS, "3072")
    if kind == "ssh-ecdsa":
        _choice(reference, "curve", SSH_CURVES, "p256")
    if kind in DEFAULT_DAYS:
        cn = reference.option("cn")
        if not cn:
            raise BadReference(text, f"generate:{kind} needs a common name: ?cn=NAME")
        if not cn.isprintable() or len(cn) > 64:
            raise BadReference(text, "option cn must be printable text of at most 64 characters")
        reference.int_option("days", DEFAULT_DAYS[kind], minimum=1, maximum=36500)
        _choice(reference, "key", TLS_KEYS, "p256")
    san = reference.option("san")
    if san is not None:
        _parse_sans(san, text)
    ca = reference.option("ca")
    if ca is not None:
        check_store_key(ca, text)


def _parse_sans(text: str, reference: str) -> list[tuple[str, str]]:
    """``DNS:a.example,IP:10.0.0.1`` as ``(DNS|IP, value)`` pairs; ``BadReference`` if malformed."""
    import ipaddress

    names: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        kind, sep, value = item.partition(":")
        kind = kind.upper()
        if kind == "DNS" and sep and _HOSTNAME.match(value) and len(value) <= 253:
            names.append(("DNS", value))
        elif kind == "IP" and sep:
            try:
                names.append(("IP", str(ipaddress.ip_address(value))))
            except ValueError:
                raise BadReference(reference, f"san {item!r}: not an IP address") from None
        else:
            raise BadReference(
                reference, f"san {item!r} is not DNS:HOSTNAME or IP:ADDRESS (joined by ',')"
            )
    return names


def check_store_key(key: str, reference: str) -> None:
    if not STORE_KEY.fullmatch(key) or any(p in {".", ".."} for p in key.split("/")):
        raise BadReference(
            reference, f"invalid store key {key!r} (segments of A-Z a-z 0-9 '_.@:-', joined by '/')"
        )


def selects_public(reference: Reference) -> bool:
    """Whether a ``generate:`` reference selects a public part (``SourceType.public``)."""
    return reference.path in KEY_KINDS and reference.selector in PUBLIC_PARTS


# --------------------------------------------------------------------------- key documents

DOCUMENT_MARKER = b'{"credbridge-document":'
DOCUMENT_VERSION = 1


class KeyDocument:
    """Every part of one generated key, stored as one value.

    Serialized as compact JSON that starts with :data:`DOCUMENT_MARKER`::

        {"credbridge-document": 1, "kind": "ssh-ed25519", "created": "2025-...Z",
         "options": {"comment": "root@vm"}, "parts": {"key": "-----BEGIN ...", "public": "..."}}

    ``options`` are the reference options it was made with (without ``id``). A raw random
    value never starts with the marker, so both kinds of values share one store.
    """

    __slots__ = ("_parts", "created", "kind", "options")

    def __init__(
        self, kind: str, parts: Mapping[str, str], options: Mapping[str, str], created: str
    ) -> None:
        self.kind = kind
        self._parts = dict(parts)
        self.options = dict(options)
        self.created = created

    @staticmethod
    def is_document(value: Secret) -> bool:
        return value.reveal()[: len(DOCUMENT_MARKER)] == DOCUMENT_MARKER

    @classmethod
    def from_secret(cls, value: Secret) -> KeyDocument:
        """Parse a stored document; ``ValueError`` (without any content) if it is not one."""
        try:
            data: Any = json.loads(value.reveal())
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ValueError("stored key document is not valid JSON") from None
        if not isinstance(data, dict) or data.get("credbridge-document") != DOCUMENT_VERSION:
            raise ValueError("stored value is not a key document of a known version")
        parts, options = data.get("parts"), data.get("options", {})
        if (
            not isinstance(data.get("kind"), str)
            or not isinstance(parts, dict)
            or not all(isinstance(v, str) for v in parts.values())
            or not isinstance(options, dict)
        ):
            raise ValueError("stored key document is malformed")
        return cls(data["kind"], parts, options, str(data.get("created", "")))

    def to_secret(self) -> Secret:
        data = {
            "credbridge-document": DOCUMENT_VERSION,
            "kind": self.kind,
            "created": self.created,
            "options": self.options,
            "parts": self._parts,
        }
        return Secret(json.dumps(data, separators=(",", ":")).encode("utf-8"))

    @property
    def part_names(self) -> list[str]:
        return sorted(self._parts)

    def part(self, name: str | None, reference: str) -> Secret:
        """One part (``None``: the private key) as bytes; ``NotFound`` names the parts there are."""
        wanted = PRIVATE_PART if name is None else name
        if wanted not in self._parts:
            raise NotFound(
                reference,
                f"the {self.kind} key has no part {wanted!r} (parts: {', '.join(self.part_names)})",
            )
        return Secret(self._parts[wanted].encode("utf-8"))

    def texts(self, *names: str) -> dict[str, str]:
        """Parts as text, for signing with a CA's key (never for output)."""
        return {name: self._parts[name] for name in names}

    def __repr__(self) -> str:
        return f"KeyDocument({self.kind}, <redacted>)"

    __str__ = __repr__


def material_options(reference: Reference) -> dict[str, str]:
    return {k: v for k, v in reference.options.items() if k != "id"}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def generate_document(reference: Reference, ca: KeyDocument | None = None) -> KeyDocument:
    """A fresh key of a validated key-kind reference; ``ca`` signs a ``tls`` certificate."""
    from credbridge.backends import keygen  # cryptography only when a key is made

    kind = reference.path
    now = _now()
    parts: dict[str, str]
    if kind.startswith("ssh-"):
        parts = keygen.ssh_key(
            kind,
            comment=reference.option("comment", "") or "",
            bits=int(reference.option("bits", "3072") or "3072"),
            curve=reference.option("curve", "p256") or "p256",
        )
    elif kind == "wireguard":
        parts = keygen.wireguard_key()
    elif kind == "age":
        parts = keygen.age_key(now)
    elif kind in {"ed25519", "x25519"}:
        parts = keygen.raw_key(kind)
    else:
        cn = reference.option("cn") or ""
        days = reference.int_option("days", DEFAULT_DAYS[kind], minimum=1, maximum=36500)
        algorithm = reference.option("key", "p256") or "p256"
        if kind == "tls-ca":
            parts = keygen.tls_ca(cn=cn, days=days, algorithm=algorithm, now=now)
        else:
            san = reference.option("san")
            if san is None:  # clients match the SAN, not the CN: default to the CN as a name
                sans = [("DNS", cn)] if _HOSTNAME.match(cn) else []
            else:
                sans = _parse_sans(san, str(reference))
            parts = keygen.tls_cert(
                cn=cn,
                sans=sans,
                days=days,
                algorithm=algorithm,
                now=now,
                ca=None if ca is None else ca.texts("key", "cert"),
            )
    created = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return KeyDocument(kind, parts, material_options(reference), created)


# --------------------------------------------------------------------------- random values


def generate(reference: Reference) -> Secret:
    """A fresh random value for a validated ``generate:`` reference of a random kind."""
    import secrets  # here, not at the top: it costs every run ~5 ms (hmac, OpenSSL, random)

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


def generated_size(request: Request) -> int | None:
    """The size of the value :func:`generate` will make (``None`` for keys: it varies)."""
    reference = request.reference
    kind = reference.path
    if kind in KEY_KINDS:
        return None
    if kind == "uuid":
        return 36
    if kind == "password":
        return reference.int_option("length", 32, minimum=1, maximum=4096)
    size = reference.int_option("bytes", 32, minimum=1, maximum=65536)
    if kind == "base64":
        return 4 * -(-size // 3)
    if kind == "hex":
        return 2 * size
    return size
