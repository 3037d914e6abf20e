"""Helpers for sources that talk to a server: redaction, typed errors, lazy imports, settings.

A networked source (``vault:``, ``aws-sm:``, ``aws-ssm:``, a third-party plugin) has the same
problems to solve, and solves them here once (docs/plugins.md, "Networked sources"):

* :class:`Redactor` decides whether a server's reply may be quoted in an error: never when it
  shares 8 or more consecutive bytes with a secret value, its Base64 or hex form, or any
  token or login material the source used;
* :meth:`Redactor.defer` keeps a server's error text out of the message until the engine has
  every value of the run (:func:`disclose`): a reply can quote a value that arrives later;
* :func:`optional_import` imports a client library when the first reference needs it, and
  turns a missing library into one clear line;
* :func:`read_answer` and :func:`bounded_http_adapter` put a deadline and a size bound on the
  whole body of an answer (a client library's read timeout applies to each read, so a server
  sending a byte a second would hold the run for ever, and a huge answer would fill memory);
* :func:`connection_reason`, :func:`tls_reason` and :func:`caused_by` turn what an HTTP stack
  raised into a short, value-free reason for :class:`Unreachable`/:class:`Timeout` errors;
* :func:`cap_library_logging` keeps client libraries that log request and response bodies
  at DEBUG (botocore does) from printing secrets at ``credbridge -vv``.
"""

from __future__ import annotations

import base64
import importlib
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

from credbridge.core.answer_bounds import (
    ANSWER_LIMIT,
    AnswerRefused,
    AnswerTooLarge,
    AnswerTooSlow,
    bounded_http_adapter,
    header_deadline_pools,
    read_answer,
    socket_deadline,
)
from credbridge.core.errors import (
    CredbridgeError,
    Forbidden,
    InvalidValue,
    PluginError,
    ServerText,
    SourceError,
    renamed,
)
from credbridge.core.secret import Secret, SecretDocument
from credbridge.core.threads import map_in_threads

WINDOW = 8
"""A reply sharing this many consecutive bytes with a secret form is withheld."""
MAX_WINDOWS_PER_FORM = 1 << 16
"""Beyond this many windows a form is indexed at a stride (see :class:`Redactor`)."""
REPLY_SCAN_LIMIT = 1 << 16
"""Bytes of a reply that are checked; a longer reply is cut there before it is quoted."""
QUOTE_LIMIT = 200
WITHHELD = "<server message withheld: it quotes secret material>"

_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_JSON_ESCAPE = re.compile(rb'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
_SIMPLE_ESCAPES = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f"}
_SIMPLE_ESCAPES |= {b"n": b"\n", b"r": b"\r", b"t": b"\t"}


# --------------------------------------------------------------------------- redaction


class Redactor:
    """Withholds server replies that quote a part of any secret it was given.

    Each value added is indexed in several forms — the raw bytes, Base64 at all three
    alignments (so the Base64 of any part of the value matches too) and hex — as the set of its
    8-byte windows. A reply is checked by sliding the same window over it, and over its
    variants: URL-safe Base64 turned into standard, lowercased (upper-case hex), JSON escapes
    undone. Any shared window withholds the whole reply. Looking a window up costs the same
    however many values were added.

    The index keeps only Python's keyed (per-process SipHash) hashes of the windows, not the
    bytes, so a redactor can outlive the values it was built from (the cloud-hypervisor
    launcher drops its copies once ``vm.create`` has answered and keeps the index for the
    calls after it). A false match only withholds a harmless reply.

    Values shorter than the window are matched whole (when at least ``min_length`` long).
    A form longer than :data:`MAX_WINDOWS_PER_FORM` windows is indexed every ``stride``
    bytes (``stride = ceil(windows / MAX_WINDOWS_PER_FORM)``), which keeps memory bounded;
    for such a form a shared run must be ``WINDOW + stride - 1`` bytes long to be caught.
    """

    def __init__(self, *, min_length: int = 4) -> None:
        self.min_length = max(1, min_length)
        self._windows: set[int] = set()
        self._short: dict[int, set[int]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._windows or self._short)

    # ------------------------------------------------------------------ adding

    def add(self, value: bytes | bytearray | str | Secret, *, derived: bool = True) -> None:
        """Index ``value`` (and, with ``derived``, its Base64 and hex forms)."""
        if isinstance(value, Secret):
            raw = value.reveal()
        elif isinstance(value, str):
            raw = value.encode("utf-8", "surrogatepass")
        else:
            raw = bytes(value)
        if len(raw) < self.min_length:
            return
        forms = [raw, *_derived_forms(raw)] if derived else [raw]
        windows: set[int] = set()
        short: dict[int, set[int]] = {}
        for form in forms:
            if len(form) < WINDOW:
                short.setdefault(len(form), set()).add(hash(form))
                continue
            count = len(form) - WINDOW + 1
            stride = max(1, math.ceil(count / MAX_WINDOWS_PER_FORM))
            windows.update(hash(form[i : i + WINDOW]) for i in range(0, count, stride))
        with self._lock:
            self._windows |= windows
            for length, hashes in short.items():
                self._short.setdefault(length, set()).update(hashes)

    def add_document(self, document: Secret | SecretDocument) -> None:
        """Index a fetched value, or every string leaf of a structured one."""
        if isinstance(document, Secret):
            self.add(document)
            return
        for leaf in _leaves(document.reveal_data()):
            self.add(leaf)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()
            self._short.clear()

    # ------------------------------------------------------------------ checking

    def quotes_secret(self, reply: bytes | str) -> bool:
        """Whether ``reply`` (or a normalised variant of it) shares a window with a secret."""
        data = reply.encode("utf-8", "replace") if isinstance(reply, str) else bytes(reply)
        data = data[:REPLY_SCAN_LIMIT]
        candidates = {data, data.lower(), data.translate(_URLSAFE_TO_STANDARD)}
        if b"\\" in data:
            candidates.add(_json_unescape(data))
        with self._lock:
            windows, short = self._windows, self._short.items()
            for candidate in candidates:
                if windows and any(
                    hash(candidate[i : i + WINDOW]) in windows
                    for i in range(len(candidate) - WINDOW + 1)
                ):
                    return True
                for length, hashes in short:
                    if any(
                        hash(candidate[i : i + length]) in hashes
                        for i in range(len(candidate) - length + 1)
                    ):
                        return True
        return False

    def detail(self, reply: bytes | str | None, *, limit: int = QUOTE_LIMIT) -> str:
        """The reply as one short line, :data:`WITHHELD` if it quotes a secret, or ``""``."""
        if reply is None:
            return ""
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        line = one_line(text[:REPLY_SCAN_LIMIT], limit=limit)
        if not line:
            return ""
        # The printed line is checked too: joining lines can bring parts of a value together.
        if self.quotes_secret(text) or self.quotes_secret(line):
            return WITHHELD
        return line

    def quote(self, reply: bytes | str | None, *, limit: int = QUOTE_LIMIT) -> str:
        """``": DETAIL"`` for appending to a message, or ``""`` when the reply is empty.

        Only for replies checked against every value they could quote (a launcher knows its
        values before it calls); a source's error text goes through :meth:`defer`.
        """
        detail = self.detail(reply, limit=limit)
        return f": {detail}" if detail else ""

    def defer(self, reply: bytes | str | None) -> ServerText | None:
        """A server's error text to attach to a :class:`SourceError` (``server_text=``).

        It is shown only by :func:`disclose`, once the run's every value is known, and only
        if neither those values nor what this redactor holds (tokens, login material) are in
        it. ``None`` for an empty reply.
        """
        if reply is None:
            return None
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        if not one_line(text[:REPLY_SCAN_LIMIT]):
            return None
        return ServerText(text, self.quotes_secret)


def _derived_forms(raw: bytes) -> Iterator[bytes]:
    # URL-safe Base64 and upper-case hex are caught by normalising the reply instead.
    for shift in range(3):
        part = raw[shift:]
        if part:
            yield base64.b64encode(part).rstrip(b"=")
    yield raw.hex().encode()


def _leaves(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, Mapping):
        for value in data.values():
            yield from _leaves(value)
    elif isinstance(data, list | tuple):
        for value in data:
            yield from _leaves(value)
    elif data is not None and not isinstance(data, bool):
        yield str(data)


def _json_unescape(data: bytes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code.startswith(b"u"):
            return chr(int(code[1:], 16)).encode("utf-8", "surrogatepass")
        return _SIMPLE_ESCAPES[code]

    return _JSON_ESCAPE.sub(one, data)


def one_line(text: str, *, limit: int = QUOTE_LIMIT) -> str:
    """Whitespace (newlines included) collapsed to single spaces, cut to ``limit`` chars."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- lazy imports


def optional_import(module: str, *, extra: str, scheme: str) -> ModuleType:
    """Import a client library on first use; a missing one is one clear line (exit 11).

    Call it where a reference of ``scheme`` is first resolved, never at module level, so
    ``credbridge --help`` and configs without such references never pay for the import.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        raise PluginError(
            f"{scheme}: references need the Python package {missing!r}, which is not "
            f"installed (pip install 'credbridge[{extra}]')"
        ) from None


# --------------------------------------------------------------------------- typed errors


def disclose(errors: Iterable[SourceError], *values: Redactor) -> None:
    """Show each error's pending server text, now that ``values`` hold every value of the run.

    The text is shown as one short line when neither ``values`` nor the source's own guard
    finds secret material in it, else replaced by :data:`WITHHELD`. Call it only when no value
    of the run can arrive any more: an error never disclosed never shows its server text.
    """
    for error in errors:
        pending = error.server_text
        if pending is None:
            continue
        line = one_line(pending.text)
        checks: list[Callable[[str], bool]] = [redactor.quotes_secret for redactor in values]
        if pending.guard is not None:
            checks.append(pending.guard)
        clean = not any(check(text) for check in checks for text in (pending.text, line))
        error.disclose(line if clean else WITHHELD)


def resolve_text(resolve: Callable[[str], Secret], reference: str, what: str) -> str:
    """Resolve a reference holding key material (a token, a secret ID, an age identity) to
    stripped text. Errors name ``what`` and the reference, never the value; the resolved
    :class:`Secret` is wiped."""
    try:
        secret = resolve(reference)
    except SourceError as error:
        raise error.retyped("", f"{what} from {reference}: {error.kind}: {error.problem}") from None
    except CredbridgeError as error:
        raise Forbidden("", f"{what} from {reference}: {error}") from None
    try:
        return secret.reveal_text().strip()
    except UnicodeDecodeError:
        raise InvalidValue("", f"{what} from {reference} is not text") from None
    finally:
        secret.wipe()


def caused_by(error: BaseException, *types: type[BaseException]) -> BaseException | None:
    """The first exception of ``types`` among ``error`` and what it wraps, or ``None``.

    HTTP stacks wrap the real reason several times (requests around urllib3's
    ``MaxRetryError`` around a ``ReadTimeoutError``; botocore keeps it in ``kwargs['error']``).
    """
    return next((e for e in _nested(error) if isinstance(e, types)), None)


def _nested(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it wraps (causes, contexts, ``reason``, ``args[0]``)."""
    seen: set[int] = set()
    stack: list[BaseException] = [error]
    while stack and len(seen) < 32:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner: list[Any] = [getattr(current, "reason", None), *current.args[:1]]
        kwargs = getattr(current, "kwargs", None)
        if isinstance(kwargs, Mapping):
            inner.append(kwargs.get("error"))
        inner += [current.__cause__, current.__context__]
        stack.extend(e for e in inner if isinstance(e, BaseException))


_CONNECTION_REASONS = (
    ("Connection refused", "connection refused"),
    ("Connection reset", "connection reset"),
    ("RemoteDisconnected", "the server closed the connection"),
    ("Connection aborted", "connection aborted"),
    ("Name or service not known", "unknown host name"),
    ("nodename nor servname", "unknown host name"),
    ("Temporary failure in name resolution", "host name lookup failed"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network is unreachable"),
    ("Connection was closed", "the server closed the connection"),
)


def connection_reason(error: BaseException) -> str:
    """A short reason for a failed connection (refused, reset, unknown host...)."""
    text = " ".join(str(e) for e in _nested(error))
    for needle, reason in _CONNECTION_REASONS:
        if needle in text:
            return reason
    return "connection failed"


def tls_reason(error: BaseException, *, ca_hint: str = "") -> str:
    """A short reason for a failed TLS handshake; ``ca_hint`` says how to trust a private CA."""
    text = " ".join(str(e) for e in _nested(error))
    found = re.search(r"certificate verify failed: ([^()'\"]+)", text)
    if found:
        hint = f" ({ca_hint})" if ca_hint else ""
        return f"certificate verify failed: {found.group(1).strip()}{hint}"
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return "the server does not speak TLS there (use an http:// address?)"
    if "doesn't match" in text or "Hostname mismatch" in text:
        return "the certificate is not valid for this host name"
    if "CERTIFICATE_REQUIRED" in text or "certificate required" in text:
        return "the server requires a client certificate"
    found = re.search(r"\[SSL: ([A-Z_]+)\]", text)
    return found.group(1).lower().replace("_", " ") if found else "handshake failed"


# --------------------------------------------------------------------------- logging


class _DemoteRetries(logging.Filter):
    """A library's per-retry WARNING becomes DEBUG: the source reports the outcome itself."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not str(record.msg).startswith(self.prefix):
            return True
        if not logging.getLogger("credbridge").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_DEMOTED: dict[tuple[str, str], _DemoteRetries] = {}
_LOG_LOCK = threading.Lock()


def demote_retry_warnings(logger: str, prefix: str) -> None:
    """Show a library's "retrying" warnings (e.g. urllib3's ``Retrying ...``) only at DEBUG."""
    with _LOG_LOCK:
        key = (logger, prefix)
        if key not in _DEMOTED:
            _DEMOTED[key] = _DemoteRetries(prefix)
            logging.getLogger(logger).addFilter(_DEMOTED[key])


def cap_library_logging(loggers: Iterable[str], *, keep_debug: Iterable[str] = ()) -> None:
    """Keep ``loggers`` (and their children) from logging below INFO.

    For libraries that log request and response bodies, signatures or headers at DEBUG
    (botocore logs both the body holding ``SecretString`` and the canonical request holding
    the session token). Call it each time the library is about to be used: it looks at the
    root logger's level as it is then. ``keep_debug`` names children whose DEBUG lines are
    safe and useful (retries); they follow the root logger's level.
    """
    with _LOG_LOCK:
        root_level = logging.getLogger().getEffectiveLevel()
        floor = max(logging.INFO, root_level)
        for name in loggers:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < floor:
                logger.setLevel(floor)
        for name in keep_debug:
            logging.getLogger(name).setLevel(root_level)


def fan_out(
    tasks: Iterable[Callable[[], None]], *, workers: int, name: str = "credbridge-remote"
) -> None:
    """Run callables on up to ``workers`` threads; each must handle its own errors."""
    for _done in map_in_threads(lambda job: job(), list(tasks), workers=workers, name=name):
        pass


__all__ = [
    "ANSWER_LIMIT",
    "MAX_WINDOWS_PER_FORM",
    "WINDOW",
    "WITHHELD",
    "AnswerRefused",
    "AnswerTooLarge",
    "AnswerTooSlow",
    "Redactor",
    "bounded_http_adapter",
    "cap_library_logging",
    "caused_by",
    "connection_reason",
    "demote_retry_warnings",
    "disclose",
    "fan_out",
    "header_deadline_pools",
    "one_line",
    "optional_import",
    "read_answer",
    "renamed",
    "resolve_text",
    "socket_deadline",
    "tls_reason",
]
