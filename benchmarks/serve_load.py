"""The serving benchmark's load generator (``benchmarks/serve.py``) and its trivial endpoint.

Two ways to load an HTTP endpoint with pre-encoded JSON bodies over a kept-alive pool of
connections (aiohttp, on uvloop when it is installed):

- :func:`open_loop`: requests at a fixed rate, each sent at its scheduled time whether or
  not earlier ones returned (a slow server cannot slow the load down), and each latency
  taken from the request's *scheduled* send time, so the generator's own lateness and any
  wait for a free connection count against the server (no coordinated omission);
- :func:`closed_loop`: a few connections, each sending its next request as soon as its
  last one returned: the most the server gives.

``python benchmarks/serve_load.py trivial PORT`` runs the trivial endpoint: a bare asyncio
HTTP/1.1 server on loopback answering every request at once with a fixed small body, so
that loading it measures the generator and the machine, not a server.
"""

from __future__ import annotations

import asyncio
import gc
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Outcome", "closed_loop", "new_loop", "open_loop", "percentile", "session", "warm"]

HOST = "127.0.0.1"
JSON = {"Content-Type": "application/json"}


@dataclass
class Outcome:
    """Every request of one run: when it was due, how late it went out, how it ended."""

    seconds: float  # from the first scheduled send to the last answer
    latency_s: np.ndarray  # from the scheduled send (open loop) or the send (closed loop)
    lag_s: np.ndarray  # the send's lateness behind its schedule (open loop; zeros closed)
    ok: np.ndarray  # bool: a 200 within the time-out
    errors: dict[str, int]  # what the failed ones were: "HTTP 503", "timeout", ...
    generator_cpu_s: float  # this process's CPU time during the run

    @property
    def requests(self) -> int:
        return int(self.ok.size)

    @property
    def failed(self) -> int:
        return int(self.ok.size - self.ok.sum())

    @property
    def rate(self) -> float:
        """Answered requests (200s) a second."""
        return float(self.ok.sum()) / self.seconds if self.seconds > 0 else 0.0


def percentile(values: np.ndarray, q: float) -> float:
    """The nearest-rank percentile: a value some request really had."""
    ordered = np.sort(values)
    index = min(ordered.size - 1, max(0, math.ceil(q / 100 * ordered.size) - 1))
    return float(ordered[index])


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (it costs the generator less CPU)."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def session(connections: int, timeout_s: float) -> Any:
    """A pool of at most ``connections`` kept-alive connections, as a real client keeps."""
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=300),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        auto_decompress=False,
    )


async def _post(client: Any, url: str, body: bytes) -> str | None:
    """One request; ``None`` when answered 200, else what went wrong."""
    import aiohttp

    try:
        async with client.post(url, data=body, headers=JSON) as response:
            await response.read()
            return None if response.status == 200 else f"HTTP {response.status}"
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def warm(client: Any, url: str, bodies: Sequence[bytes], count: int, parallel: int) -> int:
    """``count`` requests, ``parallel`` at a time, unmeasured; returns how many failed."""
    failed = 0

    async def worker(start: int) -> None:
        nonlocal failed
        for i in range(start, count, parallel):
            failed += (await _post(client, url, bodies[i % len(bodies)])) is not None

    await asyncio.gather(*(worker(i) for i in range(parallel)))
    return failed


async def open_loop(
    client: Any,
    url: str,
    bodies: Sequence[bytes],
    rate: float,
    seconds: float,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """``rate * seconds`` requests, request ``i`` due at ``i / rate`` s after the start."""
    n = max(1, round(rate * seconds))
    latency = np.zeros(n)
    lag = np.zeros(n)
    errors: list[str | None] = [None] * n
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, due: float) -> None:
        lag[i] = time.perf_counter() - due
        errors[i] = await _post(client, url, bodies[i % len(bodies)])
        latency[i] = time.perf_counter() - due

    def report(i: int) -> None:
        if progress is not None:
            progress(f"{i:,} of {n:,} sent, {len(tasks):,} in flight")

    async def run() -> float:
        start = time.perf_counter() + 0.01
        i, next_report = 0, start + 5.0
        while i < n:
            now = time.perf_counter()
            while i < n and start + i / rate <= now:
                task = asyncio.create_task(one(i, start + i / rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if now >= next_report:
                report(i)
                next_report += 5.0
            if i < n:
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        while tasks:
            await asyncio.gather(*list(tasks))
        return start

    return await _timed(run, latency, lag, errors)


async def closed_loop(
    client: Any, url: str, bodies: Sequence[bytes], connections: int, seconds: float
) -> Outcome:
    """``connections`` senders, each sending its next request when its last is answered."""
    latency: list[float] = []
    errors: list[str | None] = []

    async def sender(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            errors.append(await _post(client, url, bodies[i % len(bodies)]))
            latency.append(time.perf_counter() - sent)
            i += connections

    deadline = 0.0

    async def run() -> float:
        nonlocal deadline
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(sender(i) for i in range(connections)))
        return start

    outcome = await _timed(run, latency, None, errors)
    return outcome


async def _timed(
    run: Callable[[], Awaitable[float]],
    latency: np.ndarray | list[float],
    lag: np.ndarray | None,
    errors: list[str | None],
) -> Outcome:
    # The generator's own pauses would count against the server: start from a clean heap.
    gc.collect()
    gc.freeze()
    cpu = time.process_time()
    start = await run()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    gc.unfreeze()
    counted: dict[str, int] = {}
    for error in errors:
        if error is not None:
            counted[error] = counted.get(error, 0) + 1
    latencies = np.asarray(latency, dtype=float)
    return Outcome(
        seconds=seconds,
        latency_s=latencies,
        lag_s=np.zeros_like(latencies) if lag is None else lag,
        ok=np.array([e is None for e in errors], dtype=bool),
        errors=counted,
        generator_cpu_s=cpu,
    )


# The trivial endpoint ------------------------------------------------------------------

_ANSWER = b'{"ok":true}'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_ANSWER)).encode()
    + b"\r\n\r\n"
    + _ANSWER
)


class _Trivial(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies: just enough for the generator."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(_RESPONSE)


def _serve_trivial(port: int) -> None:
    loop = new_loop()
    server = loop.run_until_complete(loop.create_server(_Trivial, HOST, port))
    print(f"trivial endpoint on {HOST}:{port}", flush=True)
    try:
        loop.run_until_complete(server.serve_forever())
    finally:
        server.close()


if __name__ == "__main__":
    if sys.argv[1:2] != ["trivial"] or len(sys.argv) != 3:
        raise SystemExit("usage: serve_load.py trivial PORT")
    _serve_trivial(int(sys.argv[2]))
