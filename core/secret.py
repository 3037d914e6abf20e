"""The one type a secret value lives in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from credbridge.core.interfaces import Lease

# hmac (OpenSSL) and json load on first use: every command imports this module, few compare
# or parse values.

_MASK = "Secret(<redacted>)"


class Secret:
    """A secret value: bytes inside, masked in ``repr``/``str``/``format``, never pickled.

    The value leaves only through :meth:`reveal` (or :meth:`reveal_text`), which sinks call
    at the last moment. :meth:`wipe` overwrites the buffer; Python may still hold copies made
    by the source library, so the wipe is best-effort.
    """

    __slots__ = ("_buffer", "_wiped", "lease")

    def __init__(
        self, value: bytes | bytearray | memoryview, *, lease: Lease | None = None
    ) -> None:
        self._buffer = bytearray(value)
        self._wiped = False
        self.lease = lease
        """The value's lease, expiry or version, when its source knows them."""

    @classmethod
    def from_text(cls, text: str) -> Secret:
        return cls(text.encode("utf-8"))

    def reveal(self) -> bytes:
        """Return the raw value. Call only where the value leaves for a sink."""
        if self._wiped:
            msg = "secret was wiped"
            raise ValueError(msg)
        return bytes(self._buffer)

    def reveal_text(self) -> str:
        """Return the value as UTF-8 text; raises ``UnicodeDecodeError`` for binary values."""
        return self.reveal().decode("utf-8")

    def wipe(self) -> None:
        """Overwrite the buffer with zeros (best effort, see class docstring)."""
        for index in range(len(self._buffer)):
            self._buffer[index] = 0
        self._wiped = True

    @property
    def wiped(self) -> bool:
        """Whether :meth:`wipe` was called (the value can no longer be revealed)."""
        return self._wiped

    def __len__(self) -> int:
        return len(self._buffer)

    def __bool__(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # hmac.compare_digest without importing hmac, which loads OpenSSL (~2 ms of a run
        # that only compares kept values): the same constant-time C function hmac falls
        # back to.
        from _operator import _compare_digest

        return _compare_digest(bytes(self._buffer), bytes(other._buffer))

    __hash__ = None  # type: ignore[assignment]  # mutable (wipe) and must not leak via hashing

    def __repr__(self) -> str:
        return _MASK

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __reduce__(self) -> NoReturn:
        msg = "Secret values cannot be pickled"
        raise TypeError(msg)

    def __copy__(self) -> Secret:
        return Secret(self._buffer, lease=self.lease)

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return Secret(self._buffer, lease=self.lease)


class JSONNumber(str):
    """A number exactly as the JSON text that held it wrote it (sops's ``-0``, ``1e-7``).

    A source whose reference client prints numbers in its own form (``sops decrypt
    --extract``) keeps them as this text: a float would turn ``-0`` into ``0`` and ``1e-7``
    into ``1e-07``.
    """

    __slots__ = ()


class SecretDocument:
    """A structured secret (parsed JSON, a Vault KV secret): a selector picks one leaf.

    The data itself is plain Python objects; this wrapper keeps them out of ``repr`` and
    logs. ``as_written``: an object leaf keeps the file's key order and :class:`JSONNumber`
    text (as sops prints it) instead of sorted keys.
    """

    __slots__ = ("_data", "as_written", "lease")

    def __init__(self, data: Any, *, as_written: bool = False, lease: Lease | None = None) -> None:
        self._data = data
        self.as_written = as_written
        self.lease = lease
        """The document's lease, expiry or version; every value selected from it carries it."""

    @classmethod
    def parse_json(cls, raw: Secret) -> SecretDocument:
        """Parse a JSON secret; raises ``ValueError`` without echoing the content."""
        import json

        try:
            data = json.loads(raw.reveal())
        except (ValueError, UnicodeDecodeError):
            msg = "value is not valid JSON"
            raise ValueError(msg) from None
        except RecursionError:
            raise TooDeep from None
        return cls(check_depth(data))

    def reveal_data(self) -> Any:
        return self._data

    def __repr__(self) -> str:
        return "SecretDocument(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        msg = "Secret values cannot be pickled"
        raise TypeError(msg)


MAX_DEPTH = 100
"""How deep structured data (a config, a JSON secret, a sops file, a server's answer) may nest:
far more than any real secret needs, far less than the depth at which Python's parsers and
walkers run out of stack (``RecursionError`` near 1000)."""


class TooDeep(ValueError):
    """Structured data nested deeper than :data:`MAX_DEPTH` levels (never names a value)."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")


def nesting_depth(data: Any, *, limit: int = MAX_DEPTH) -> int:
    """How deep mappings and lists nest in ``data`` (a scalar is 0), counted without recursion;
    stops counting once past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def check_depth(data: Any) -> Any:
    """``data`` itself, or :class:`TooDeep` when it nests deeper than :data:`MAX_DEPTH`."""
    if nesting_depth(data) > MAX_DEPTH:
        raise TooDeep
    return data


def leaf_to_secret(value: Any, *, as_written: bool = False) -> Secret:
    """Turn a selected JSON leaf into bytes: strings as UTF-8, anything else as compact JSON.

    ``as_written``: objects in the document's own key order, numbers as their
    :class:`JSONNumber` text, other text as UTF-8 (sops's order and numbers); else sorted keys.
    """
    if isinstance(value, str):
        return Secret(value.encode("utf-8"))
    if isinstance(value, bytes | bytearray):
        return Secret(value)
    import json

    if as_written:
        return Secret(_json_as_written(value).encode("utf-8"))
    return Secret(json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def _json_as_written(value: Any) -> str:
    import json

    if isinstance(value, JSONNumber):
        return str.__str__(value)
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k), ensure_ascii=False)}:{_json_as_written(v)}"
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_as_written(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
