"""Flow control of a splicing direction on real loopback sockets, in-process: a client that stops
reading stops the proxy reading its server, and the proxy then waits without spinning, even when the
pipe ran out of slots (small segments) long before it ran out of bytes."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from hapair.config import AdminState, Persistence, PersistenceMode, RealServer, VirtualService
from proxy.pool import Pool
from proxy.relay import Session
from proxy.service import ProxyRuntime
from tests.unit.test_loop import FakeReactor


class Proxied:
    """One session between a client and a server socket that the test holds."""

    def __init__(self) -> None:
        backend = socket.create_server(("127.0.0.1", 0))
        port = backend.getsockname()[1]
        front = socket.create_server(("127.0.0.1", 0))
        server = RealServer("b", ipaddress.ip_address("127.0.0.1"), port, 100, AdminState.ONLINE)
        service = VirtualService("S", ipaddress.ip_address("127.0.0.1"), (port,), (server,),
                                 persistence=Persistence(PersistenceMode.SOURCE_IP, 60.0, 1000))  # fmt: skip
        self.reactor = FakeReactor()
        self.runtime = ProxyRuntime(self.reactor, open("/dev/null", "w"))
        self.pool = Pool(service, self.reactor)
        self.client = socket.socket()
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, quickly full
        self.client.connect(front.getsockname())
        accepted, (host, sport) = front.accept()
        accepted.setblocking(False)
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.session = Session(self.runtime, self.pool, self.pool.choose(host), "127.0.0.1", port, accepted,
                               host, sport)  # fmt: skip
        self.server, _ = backend.accept()
        self.server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.setblocking(False)
        backend.close()
        front.close()
        self.poll()  # the connect completes

    def poll(self) -> int:
        """One round of the proxy's loop; the number of events it handled."""
        ready = self.runtime.loop._epoll.poll(0, 512)
        self.runtime.loop._dispatch(ready)
        return len(ready)

    def server_sends(self, chunk: bytes, limit: int) -> int:
        """Sends `chunk` until the proxy stops taking it (or `limit` sends), polling the proxy between."""
        sent = 0
        for _ in range(limit):
            try:
                self.server.send(chunk)
            except BlockingIOError:
                if not self.poll():
                    return sent
                continue
            sent += 1
            if sent % 64 == 0:
                self.poll()
        raise AssertionError(f"the proxy still took data after {limit} sends")

    def close(self) -> None:
        self.session.abort("test over")
        self.runtime.close()
        self.client.close()
        self.server.close()


@pytest.fixture
def proxied():
    p = Proxied()
    yield p
    p.close()


@pytest.mark.parametrize("segment", [100, 16384], ids=["small segments", "large segments"])
def test_a_stalled_client_stops_a_splicing_direction_without_spinning(proxied, segment):
    # A first read that fills the copy buffer makes the direction splice; the client takes that much.
    proxied.server.send(b"x" * 65536)
    proxied.client.setblocking(False)
    got = bytearray()
    for _ in range(10_000):
        if len(got) == 65536:
            break
        proxied.poll()
        try:
            got += proxied.client.recv(65536)
        except BlockingIOError:
            pass
    assert got == b"x" * 65536 and proxied.session.down.splicing
    proxied.server_sends(b"y" * segment, limit=200_000)
    down = proxied.session.down
    assert down.pending > 0, "the pipe should hold what the client would not take"
    assert sum(proxied.poll() for _ in range(100)) == 0, "the proxy spins while nothing can move"
    # The client reads again: what the proxy held arrives, in order, and the stream goes on from the
    # server's own buffers.
    held = down.count
    quiet = 0
    for _ in range(100_000):
        moved = proxied.poll()
        try:
            got += proxied.client.recv(1 << 20)
        except BlockingIOError:
            quiet = quiet + 1 if not moved else 0
            if quiet > 20:
                break
    assert len(got) == down.count > held
    assert got[:65536] == b"x" * 65536 and got.count(b"y") == len(got) - 65536
