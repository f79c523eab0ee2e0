"""A TCP proxy on loopback whose network a test can cut, slow or reset while it runs.

    with FaultProxy(("127.0.0.1", broker_port)) as proxy:
        client.connect(proxy.address)
        proxy.drop()        # nothing crosses, both ways; the connections stay open
        proxy.latency(200)  # every chunk arrives 200 ms late, both ways, in order
        proxy.reset()       # every live connection ends with an RST; new ones pass
        proxy.forward()     # back to normal

The proxy runs an asyncio loop on a thread of the test process. Each connection it
accepts gets one to the upstream, and two pipes (one per direction) copy chunks across.

``drop`` holds bytes rather than discarding them, as a network partition does to TCP:
the pipes stop reading, so the sender's socket buffers fill and its writes block, and
when the network is back what was held arrives, in order (a stream with bytes cut out
would break the protocol's framing, which no real network does). New connections are
accepted but get nothing, like a SYN that the kernel answered and nothing after.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar

__all__ = ["FaultProxy"]

T = TypeVar("T")

_CHUNK = 64 * 1024
# Chunks in flight per direction: bounds the memory a slowed pipe holds, and pushes back
# on the sender as a slow network does.
_IN_FLIGHT = 64


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; see the module doc for the faults.

    Args:
        upstream: ``(host, port)`` to forward to.
        port: Port to listen on (0: a free one, see :attr:`port`).
    """

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.port = port
        self.mode: Literal["pass", "drop", "latency"] = "pass"
        self._delay = 0.0  # seconds added to each chunk
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy")
        self._open: asyncio.Event  # set while bytes may cross
        self._server: asyncio.Server | None = None
        self._connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def forward(self) -> None:
        """Pass every byte on at once."""
        self._set("pass", 0.0)

    def drop(self) -> None:
        """Let nothing across, both ways, keeping every connection open."""
        self._set("drop", 0.0)

    def latency(self, ms: float) -> None:
        """Delay every chunk by ``ms`` milliseconds, both ways (order kept)."""
        self._set("latency", ms / 1000)

    def reset(self) -> int:
        """End every live connection with an RST to both its ends; returns how many.

        The mode stays: new connections are served as before.
        """
        return self._run(self._reset())

    def connections(self) -> int:
        """How many connections are live."""
        return len(self._connections)

    def close(self) -> None:
        """Stop listening, reset what is live, and end the loop's thread."""
        if not self._thread.is_alive():
            return
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- on the loop's thread ------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def _set(self, mode: Literal["pass", "drop", "latency"], delay: float) -> None:
        async def switch() -> None:
            self.mode, self._delay = mode, delay
            if mode == "drop":
                self._open.clear()
            else:
                self._open.set()

        self._run(switch())

    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reset(self) -> int:
        live = list(self._connections)
        for ends in live:
            for writer in ends:
                sock = writer.get_extra_info("socket")
                if sock is not None and sock.fileno() >= 0:
                    # Linger 0: close() sends an RST instead of a FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self._connections.difference_update(live)
        return len(live)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            upstream_in, upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            client.transport.abort()  # nothing there: the client sees its connection end
            return
        ends = (client, upstream)
        self._connections.add(ends)
        pipes = [
            asyncio.create_task(self._pipe(client_in, upstream)),
            asyncio.create_task(self._pipe(upstream_in, client)),
        ]
        try:
            # Either side closing (or a reset) ends the connection both ways.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._connections.discard(ends)
            for writer in ends:
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction: chunks are stamped when read and written when due, in order."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_IN_FLIGHT)

        async def read() -> None:
            data = b"."
            while data:
                await self._open.wait()
                try:
                    data = await reader.read(_CHUNK)
                except OSError:  # reset by its end: what was read still goes on
                    data = b""
                await chunks.put((loop.time() + self._delay, data))

        async def write() -> None:
            while True:
                due, data = await chunks.get()
                await asyncio.sleep(due - loop.time())
                await self._open.wait()
                if not data:
                    return  # its end closed, and every chunk before that is written
                writer.write(data)
                await writer.drain()

        # A failed write cancels the read; either way the connection then ends.
        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(write())
