"""Deadlines and size bounds on a server's answer, for sources that talk HTTP.

A client library's read timeout applies to each read, so a server sending a byte a second
would hold the run (and its locks) for ever, and a huge answer would fill memory. Here the
status line and headers must arrive within a deadline of the request
(:func:`header_deadline_pools`), and the body within a deadline more and a size limit
(:func:`read_answer`); :func:`bounded_http_adapter` applies both to a ``requests`` session.
:mod:`credbridge.core.remote` re-exports these for networked sources.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

ANSWER_LIMIT = 16 << 20
"""Bytes an answer's body may have; a larger one is refused (values are far smaller)."""


class AnswerRefused(Exception):
    """An answer's body arrived too slowly or was too large; ``reason`` says which, as a
    predicate ("the answer from X ..." + reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AnswerTooSlow(AnswerRefused):
    """The body did not arrive in full within the deadline."""


class AnswerTooLarge(AnswerRefused):
    """The body was larger than the limit."""


def read_answer(
    read1: Callable[[int], bytes], *, timeout: float, limit: int = ANSWER_LIMIT
) -> bytes:
    """The whole body, read with ``read1`` (returns what has arrived, ``b""`` at the end).

    Raises :class:`AnswerTooSlow` once ``timeout`` seconds have passed (checked after each
    read, which the socket's own timeout bounds) and :class:`AnswerTooLarge` as soon as more
    than ``limit`` bytes came, so memory stays bounded too.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = read1(1 << 16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(f"is larger than {_size(limit)}")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise AnswerTooSlow(f"did not arrive in full within {timeout:g}s")


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"


@contextlib.contextmanager
def socket_deadline(sock: socket.socket | None, timeout: float) -> Iterator[threading.Event]:
    """Shut ``sock`` down if the block has not ended within ``timeout`` seconds (a blocked
    read then returns at once); the event says whether that happened."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        if sock is not None:
            # The plain socket's shutdown (an SSL socket's own would drop its state under the
            # reading thread).
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()


def header_deadline_pools(pools: Mapping[str, type], timeout: float) -> dict[str, type]:
    """urllib3 connection pool classes whose connections must receive an answer's status line
    and headers within ``timeout`` seconds of sending the request (the socket's timeout bounds
    each read only). Past it, the socket is shut down and a ``TimeoutError`` raised, which
    urllib3 reports (and retries) as a read timeout."""
    return {scheme: _deadline_pool(pool, timeout) for scheme, pool in pools.items()}


def _deadline_pool(pool: type, timeout: float) -> type:
    base: type = pool.ConnectionCls  # type: ignore[attr-defined]

    class DeadlineConnection(base):  # type: ignore[misc]
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            with socket_deadline(self.sock, timeout) as expired:
                try:
                    return super().getresponse(*args, **kwargs)
                except Exception:
                    if expired.is_set():
                        raise TimeoutError(f"no answer within {timeout:g}s") from None
                    raise

    class DeadlinePool(pool):  # type: ignore[misc]
        ConnectionCls = DeadlineConnection

    return DeadlinePool


def bounded_http_adapter(*, timeout: float, limit: int = ANSWER_LIMIT, **options: Any) -> Any:
    """A ``requests`` adapter (``HTTPAdapter(**options)``) whose answers must bring their
    headers within ``timeout`` seconds (:func:`header_deadline_pools`), and then their body
    within ``timeout`` seconds more and ``limit`` bytes (:func:`read_answer`). A slow body
    raises ``requests.exceptions.ReadTimeout`` and a large one a ``RequestException``, each
    wrapping the :class:`AnswerRefused` (find it with :func:`caused_by`)."""
    import requests.exceptions
    from requests.adapters import HTTPAdapter

    class BoundedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            manager = self.poolmanager
            manager.pool_classes_by_scheme = header_deadline_pools(
                manager.pool_classes_by_scheme, timeout
            )

        def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(*args, **kwargs)
            if not getattr(manager, "_credbridge_deadline", False):
                manager.pool_classes_by_scheme = header_deadline_pools(
                    manager.pool_classes_by_scheme, timeout
                )
                manager._credbridge_deadline = True
            return manager

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["stream"] = True
            response = super().send(request, *args, **kwargs)
            try:
                body = read_answer(
                    lambda size: response.raw.read1(size, decode_content=True),
                    timeout=timeout,
                    limit=limit,
                )
            except AnswerRefused as error:
                # The rest of the body is still on the connection: it cannot be reused.
                response.close()
                if isinstance(error, AnswerTooSlow):
                    raise requests.exceptions.ReadTimeout(error, request=request) from None
                raise requests.exceptions.RequestException(error, request=request) from None
            response.raw.release_conn()
            response._content = body
            response._content_consumed = True  # type: ignore[attr-defined]
            return response

    return BoundedAdapter(**options)
