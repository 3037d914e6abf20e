"""A TCP proxy that delays every chunk by a fixed time in each direction (a "remote" server).

The benchmarks put it in front of a server on loopback (OpenBao, moto) so that every request
costs a network round trip, like a server ~10 ms away with the default 5 ms each way. It runs
in its own process (an asyncio loop) so it does not compete with the code being measured for
the GIL. Data is pipelined: a chunk leaves ``delay`` seconds after it arrived, whatever else
is in flight.

    from delay_proxy import start_proxy
    process, port = start_proxy(upstream_port, 0.005)
    ...
    process.terminate()

or standalone: ``python bench/delay_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward chunks in order, each ``delay`` seconds after it arrived (pipelined)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time() + delay, b""))
    with contextlib.suppress(ConnectionError):
        await sender


async def _serve(listen_port: int, upstream_port: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w, delay), _pipe(server_r, client_w, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=256)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def start_proxy(upstream_port: int, delay: float) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, __file__, str(port), str(upstream_port), str(delay)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.readline()  # "ready"
    return process, port


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
