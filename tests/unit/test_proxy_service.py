"""The proxy service in-process, on real loopback sockets, with a `Clock` for time: what `hapair status`
counts while sessions are open and after they end, and when the idle sweep closes a session."""

from __future__ import annotations

import io
import ipaddress
import socket
import time

import pytest

from hapair.config import AdminState, ClusterConfig, Persistence, PersistenceMode, RealServer, Timeouts
from hapair.config import VirtualService
from proxy.service import SWEEP_FRACTION, ProxyService
from tests.unit.test_loop import FakeReactor

IDLE = 10.0


class Running:
    """A ProxyService with one virtual service on loopback, one real server whose connections the test
    accepts and drives, and a clock that only the test moves."""

    def __init__(self, ports: tuple[int, ...] = (), connect: float = IDLE) -> None:
        """`ports`: real servers' ports, for servers the test listens on (or not) itself; by default one
        real server, `backend`."""
        self.backend = socket.create_server(("127.0.0.1", 0))
        front = socket.create_server(("127.0.0.1", 0))
        front.setblocking(False)
        self.port = front.getsockname()[1]
        servers = tuple(
            RealServer(f"b{i}" if ports else "b", ipaddress.ip_address("127.0.0.1"), port, 100, AdminState.ONLINE)
            for i, port in enumerate(ports or (self.backend.getsockname()[1],))
        )
        vs = VirtualService("S", ipaddress.ip_address("127.0.0.1"), (self.port,), servers,
                            persistence=Persistence(PersistenceMode.SOURCE_IP, 60.0, 1000),
                            timeouts=Timeouts(client=IDLE, server=IDLE, connect=connect))  # fmt: skip
        self.clock = FakeReactor()
        self.log = io.StringIO()
        self.proxy = ProxyService(ClusterConfig((vs,)), self.clock, self.log, check=False,
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

    def session(self):
        """The one session open."""
        (session,) = self.proxy.runtime.sessions
        return session

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


def test_a_splicing_session_holds_no_pipe_once_its_bytes_are_through(running):
    client, server = running.connect()
    running.through(server, client, b"x" * 65536)  # bulk: spliced from then on
    running.through(server, client, b"y" * 500_000)
    running.through(client, server, b"z" * 100)
    session = running.session()
    assert session.down.spliced > 0
    assert session.up.pipe is None and session.down.pipe is None  # an idle session holds none
    pipes = running.proxy.runtime.pipes
    assert pipes.open == len(pipes._free) >= 1  # back in the pool, for the next transfer


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


# --- connecting to real servers -----------------------------------------------------------------------


def _refusing_port() -> int:
    """A loopback port nothing listens on: a connect to it is refused."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def _unanswering() -> tuple[socket.socket, socket.socket]:
    """A listener whose accept queue is full (its one place taken by `filler`): it drops a new SYN, so
    a connect to it stays under way until the queue has room and the SYN is sent again."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())
    return full, filler


def _relays(running: Running, client: socket.socket, listener: socket.socket) -> None:
    listener.settimeout(5)
    server, _ = listener.accept()
    server.settimeout(5)
    running.kept += [client, server]
    running.through(client, server, b"hello")
    running.through(server, client, b"world")


def test_a_refused_connect_is_redispatched_to_the_next_server_before_the_client_notices():
    live = socket.create_server(("127.0.0.1", 0))
    running = Running(ports=(_refusing_port(), live.getsockname()[1]))
    try:
        client = socket.create_connection(("127.0.0.1", running.port))
        running.poll()
        _relays(running, client, live)
        vs, b0 = running.status()
        assert (b0["failed"], vs["servers"][1]["current"]) == (1, 1)
        running.proxy.runtime.log.flush()
        assert "S: b0 refused (Connection refused); redispatched to b1" in running.log.getvalue()
    finally:
        running.close()
        live.close()


def test_a_connect_left_unanswered_times_out_and_is_redispatched():
    full, filler = _unanswering()
    live = socket.create_server(("127.0.0.1", 0))
    running = Running(ports=(full.getsockname()[1], live.getsockname()[1]), connect=2.0)
    try:
        client = socket.create_connection(("127.0.0.1", running.port))
        running.poll()
        assert running.session().connecting  # the SYN was dropped: no answer yet
        for _ in range(40):  # 10 s of the fake clock at most
            running.clock.advance(0.25)
            running.poll()
            if not running.session().connecting:
                break
        assert 2.0 <= running.clock.seconds() <= 2.5  # the connect timeout, plus up to two sweep periods
        _relays(running, client, live)
        running.proxy.runtime.log.flush()
        assert "b0 refused (connection timed out); redispatched to b1" in running.log.getvalue()
    finally:
        running.close()
        for s in (live, full, filler):
            s.close()


def test_a_connect_answered_late_is_relayed_once_the_server_answers():
    full, filler = _unanswering()
    running = Running(ports=(full.getsockname()[1],), connect=30.0)
    try:
        client = socket.create_connection(("127.0.0.1", running.port))
        running.poll()
        assert running.session().connecting
        full.accept()[0].close()  # room in the queue: the SYN sent again (after about 1 s) is answered
        deadline = time.monotonic() + 10
        while running.session().connecting and time.monotonic() < deadline:
            time.sleep(0.02)
            running.poll(1)
        assert not running.session().connecting
        _relays(running, client, full)
        assert running.status()[1]["failed"] == 0
    finally:
        running.close()
        for s in (full, filler):
            s.close()
