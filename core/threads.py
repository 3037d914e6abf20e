"""Running one function over many items on a few threads: the one fan-out of credbridge.

Sources fetch documents concurrently (:class:`~credbridge.core.types.DocumentSource`, Vault,
sops), the engine resolves schemes concurrently, networked sources run their jobs
(:func:`credbridge.core.remote.fan_out`): all through :func:`map_in_threads`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_threads(
    function: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int,
    name: str,
    on_interrupt: Callable[[], None] | None = None,
) -> Iterator[R]:
    """``function(item)`` for each item, on up to ``workers`` threads named ``name-N``
    (in this thread when one is enough), yielded in the items' order as they are done.

    When anything goes wrong (a call raises, or an interrupt reaches this thread while it
    waits), ``on_interrupt`` is called first -- a signal reaches the main thread only, so it is
    the moment to end what the workers wait for, such as child processes -- then the items not
    started are dropped and the running ones waited for before the error goes on.
    """
    count = min(workers, len(items))
    if count <= 1:
        for item in items:
            yield function(item)
        return
    from concurrent.futures import ThreadPoolExecutor  # only when there is a fan-out

    pool = ThreadPoolExecutor(count, thread_name_prefix=name)
    try:
        yield from pool.map(function, items)
    except BaseException:
        if on_interrupt is not None:
            on_interrupt()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
