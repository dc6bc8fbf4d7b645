"""The proxy service in-process, on real loopback sockets, with a `Clock` for time: what `hapair status`
counts while sessions are open and after they end, and when the idle sweep closes a session."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from hapair.config import AdminState, ClusterConfig, Persistence, PersistenceMode, RealServer, Timeouts
from hapair.config import VirtualService
from proxy.service import SWEEP_FRACTION, ProxyService
from tests.unit.test_loop import FakeReactor

IDLE = 10.0


class Running:
    """A ProxyService with one virtual service on loopback, one real server whose connections the test
    accepts and drives, and a clock that only the test moves."""

    def __init__(self) -> None:
        self.backend = socket.create_server(("127.0.0.1", 0))
        front = socket.create_server(("127.0.0.1", 0))
        front.setblocking(False)
        self.port = front.getsockname()[1]
        server = RealServer("b", ipaddress.ip_address("127.0.0.1"), self.backend.getsockname()[1], 100,
                            AdminState.ONLINE)  # fmt: skip
        vs = VirtualService("S", ipaddress.ip_address("127.0.0.1"), (self.port,), (server,),
                            persistence=Persistence(PersistenceMode.SOURCE_IP, 60.0, 1000),
                            timeouts=Timeouts(client=IDLE, server=IDLE, connect=IDLE))  # fmt: skip
        self.clock = FakeReactor()
        self.proxy = ProxyService(ClusterConfig((vs,)), self.clock, open("/dev/null", "w"), check=False,
                                  sockets=lambda ip, port: front)  # fmt: skip
        self.proxy.startService()
        self.kept: list[socket.socket] = [self.backend]

    def poll(self, times: int = 5) -> None:
        for _ in range(times):
            self.proxy.runtime.loop.doRead()  # the reactor-reader mode: a Clock is no LoopReactor

    def connect(self) -> tuple[socket.socket, socket.socket]:
        """A client connected through the proxy, and the real server's end of its session."""
        client = socket.create_connection(("127.0.0.1", self.port))
        self.poll()
        server, _ = self.backend.accept()
        self.poll()
        client.settimeout(5)
        server.settimeout(5)
        self.kept += [client, server]
        return client, server

    def through(self, sender: socket.socket, receiver: socket.socket, data: bytes) -> None:
        sender.sendall(data)
        got = b""
        for _ in range(100):
            self.poll(1)
            receiver.setblocking(False)
            try:
                got += receiver.recv(65536)
            except BlockingIOError:
                pass
            if len(got) >= len(data):
                break
        receiver.settimeout(5)
        assert got == data

    def status(self) -> tuple[dict, dict]:
        """The service's counters and its real server's."""
        (vs,) = self.proxy.snapshot()
        return vs, vs["servers"][0]

    def close(self) -> None:
        self.proxy.stopService()
        for s in self.kept:
            s.close()


@pytest.fixture
def running():
    r = Running()
    yield r
    r.close()


def test_status_counts_the_bytes_of_open_sessions_and_keeps_those_of_ended_ones_once(running):
    client, server = running.connect()
    running.through(client, server, b"q" * 100)
    running.through(server, client, b"r" * 3000)
    for counters in running.status():
        assert (counters["bytes_in"], counters["bytes_out"], counters["current"]) == (100, 3000, 1)

    client.close()
    server.close()
    running.poll()
    assert not running.proxy.runtime.sessions
    for counters in running.status():
        assert (counters["bytes_in"], counters["bytes_out"], counters["current"]) == (100, 3000, 0)

    client, server = running.connect()  # a second session adds to the first
    running.through(client, server, b"q" * 7)
    for counters in running.status():
        assert (counters["bytes_in"], counters["bytes_out"], counters["total"]) == (107, 3000, 2)


def test_status_counts_spliced_bytes_of_an_open_bulk_transfer(running):
    client, server = running.connect()
    running.through(server, client, b"x" * 65536)  # a full copy buffer: bulk, spliced from then on
    running.through(server, client, b"y" * 200_000)
    vs, real = running.status()
    assert vs["bytes_out"] == real["bytes_out"] == 265_536
    assert vs["spliced"] == real["spliced"] >= 200_000 - 65536


def test_a_session_in_use_outlives_its_idle_timeout_and_closes_within_a_quarter_more_once_idle(running):
    client, server = running.connect()
    period = IDLE * SWEEP_FRACTION
    for i in range(12):  # 3x the idle timeout, a message every quarter of it: one way, then the other
        running.clock.advance(IDLE / 4)
        if i < 6:
            running.through(client, server, b"ping")
        else:
            running.through(server, client, b"pong")
    assert len(running.proxy.runtime.sessions) == 1
    last_byte = running.clock.seconds()
    while running.proxy.runtime.sessions and running.clock.seconds() - last_byte < 3 * IDLE:
        running.clock.advance(period / 4)
    idle = running.clock.seconds() - last_byte
    assert IDLE <= idle <= 1.25 * IDLE
    running.poll()
    assert client.recv(16) == b""  # closed with a FIN, not left hanging
