"""The fault proxy itself, in front of an echo server: pass, drop, latency, reset, close."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.fault_proxy import FaultProxy

pytestmark = pytest.mark.integration


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            self.server.resets += 1  # type: ignore[attr-defined]


@pytest.fixture
def echo() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.resets = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: socketserver.ThreadingTCPServer) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", int(echo.server_address[1]))) as started:
        yield started


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


def receive(sock: socket.socket, size: int, timeout: float = 2) -> bytes:
    """Up to ``size`` bytes, as many as arrive within ``timeout`` seconds."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size and time.monotonic() < deadline:
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_passes_bytes_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        payload = bytes(range(256)) * 1000
        sock.sendall(payload)
        assert receive(sock, len(payload)) == payload


def test_drop_holds_every_byte_until_forwarding_again(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"before")
        assert receive(sock, 6) == b"before"
        proxy.drop()
        sock.sendall(b"during")
        assert receive(sock, 6, timeout=0.5) == b""  # no answer, and no end either
        with connect(proxy) as late:  # a new connection is accepted, and gets nothing
            late.sendall(b"late")
            assert receive(late, 4, timeout=0.3) == b""
            proxy.forward()
            assert receive(late, 4) == b"late"
        assert receive(sock, 6) == b"during"


def test_latency_delays_each_way_and_keeps_the_order(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.latency(200)
        began = time.monotonic()
        for i in range(20):
            sock.sendall(b"%02d" % i)
        received = receive(sock, 40)
        took = time.monotonic() - began
        assert received == b"".join(b"%02d" % i for i in range(20))
        assert 0.4 <= took < 1.5  # 200 ms there and 200 ms back, not 200 ms a chunk
        proxy.forward()
        began = time.monotonic()
        sock.sendall(b"now")
        assert receive(sock, 3) == b"now" and time.monotonic() - began < 0.2


def test_reset_ends_live_connections_with_an_rst_then_passes(
    proxy: FaultProxy, echo: socketserver.ThreadingTCPServer
) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        for sock in (first, second):
            sock.sendall(b"hi")
            assert receive(sock, 2) == b"hi"
        assert proxy.reset() == 2
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.sendall(b"x")
                sock.recv(1)
    deadline = time.monotonic() + 2
    while echo.resets < 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    assert echo.resets == 2  # type: ignore[attr-defined]
    with connect(proxy) as again:
        again.sendall(b"back")
        assert receive(again, 4) == b"back"


def test_close_stops_listening_and_ends_connections(
    echo: socketserver.ThreadingTCPServer,
) -> None:
    with FaultProxy(("127.0.0.1", int(echo.server_address[1]))) as proxy:
        sock = connect(proxy)
        sock.sendall(b"hi")
        assert receive(sock, 2) == b"hi"
    with sock, pytest.raises(ConnectionResetError):
        sock.sendall(b"x")
        sock.recv(1)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    assert not any(t.name == "fault-proxy" for t in threading.enumerate())
