"""A splicing direction on real loopback sockets, in-process. Flow control: a client that stops reading
stops the proxy reading its server, and the proxy then waits without spinning, with small segments too
(a pipe's slots, not its bytes, then bound a read). And how it ends: a FIN passed on after
the last byte, a reset from either side or a refused write passed on as a reset, and a bulk transfer
that gets no pipe copied instead."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import termios

import pytest

from hapair.config import AdminState, Persistence, PersistenceMode, RealServer, VirtualService
from proxy.pool import Pool
from proxy import relay
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
        # Fixed buffers on the server's side too: autotuning may grow a receive buffer to tcp_rmem's
        # maximum (32 MiB here), and the bytes the kernel holds before the server is stopped would vary
        # from a few thousand small sends to over 200,000 from one run to the next.
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        self.session.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 262144)
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


def _make_splicing(proxied) -> bytearray:
    """A first read that fills the copy buffer makes the down direction splice; the client takes it."""
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
    return got


@pytest.mark.parametrize("segment", [100, 16384], ids=["small segments", "large segments"])
def test_a_stalled_client_stops_a_splicing_direction_without_spinning(proxied, segment):
    got = _make_splicing(proxied)
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


#: A stream whose every byte is known by its offset, so reordered or lost bytes show.
_PATTERN = bytes(range(251)) * 1000


def _slow_client(proxied, cycles: int) -> None:
    """The server sends as fast as the proxy takes it; the client reads at most 16 KiB at a time, so the proxy
    drains its pipe to the client in small steps (its small window gives it 4 KiB a read) and refills it
    from the server each time the client has taken all it held."""
    sent = got = 0
    for _ in range(cycles):
        while True:
            off = sent % 251
            try:
                sent += proxied.server.send(_PATTERN[off : off + 65536])
            except BlockingIOError:
                break
        for _ in range(4):
            proxied.poll()
        try:
            data = proxied.client.recv(16384)
        except BlockingIOError:
            continue
        off = got % 251
        assert data == _PATTERN[off : off + len(data)], "bytes lost or out of order"
        got += len(data)
    assert got >= cycles * 2048, "the client was starved"


def test_a_slow_client_is_not_offered_bytes_before_it_has_room(proxied, monkeypatch):
    # A write the client took only in part means it is full: the proxy leaves it alone until it says it
    # has room. Offering it bytes again before that is a syscall that can only fail.
    _make_splicing(proxied)
    refused = []
    real = relay._splice

    def counting(src, dst, n, *args, **kwargs):
        try:
            return real(src, dst, n, *args, **kwargs)
        except BlockingIOError:
            if dst == proxied.session.cfd:
                refused.append(n)
            raise

    monkeypatch.setattr(relay, "_splice", counting)
    _slow_client(proxied, 300)
    assert len(refused) <= 3, f"{len(refused)} splices to a client that had said it was full"


def test_a_slow_client_refills_the_pipe_without_rewatching_the_server(proxied, monkeypatch):
    # Each time the client takes some bytes, the pipe is refilled from the server in the same event: the
    # server, still full, is read without being watched again, where stopping and starting the watch on
    # it would cost two epoll_ctl calls per step of the client.
    _make_splicing(proxied)
    watched = []
    loop = proxied.runtime.loop
    real = loop.watch

    def counting(fd, mask):
        if fd == proxied.session.sfd:
            watched.append(mask)
        real(fd, mask)

    monkeypatch.setattr(loop, "watch", counting)
    _slow_client(proxied, 300)
    assert len(watched) <= 3, f"the server was watched again {len(watched)} times in 300 steps"


def test_a_splicing_direction_reads_only_into_an_empty_pipe(proxied, monkeypatch):
    # As a copying direction reads again only once all it read is written, a splicing one reads its source
    # only when its pipe is empty: reading on into a pipe the destination has not drained only moves the
    # sender's backlog into the proxy (and on loopback, the sender's work onto the proxy's CPU).
    _make_splicing(proxied)
    down, held = proxied.session.down, []
    real = relay._splice

    def checking(src, dst, n, *args):
        if src == proxied.session.sfd and down.pipe is not None:
            held.append(struct.unpack("i", fcntl.ioctl(down.pipe.r, termios.FIONREAD, b"\0" * 4))[0])
        return real(src, dst, n, *args)

    monkeypatch.setattr(relay, "_splice", checking)
    _slow_client(proxied, 800)  # about 3 MB: some 15 refills of the pipe
    assert len(held) >= 5, "the server was hardly read"
    assert not any(held), f"{sum(1 for h in held if h)} of {len(held)} reads went into a pipe holding bytes"


class _CountingRecv:
    """A socket whose reads are counted; everything else goes to the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.reads = sock, []

    def recv_into(self, buf) -> int:
        n = self.sock.recv_into(buf)
        self.reads.append(n)
        return n

    def __getattr__(self, name):
        return getattr(self.sock, name)


def _poll_until(proxied, done, limit: int = 1000) -> None:
    for _ in range(limit):
        if done():
            return
        proxied.poll()
    raise AssertionError("the proxy did not get there")


@pytest.mark.parametrize("fin", [True, False], ids=["FIN with the data", "data alone"])
def test_a_fin_that_came_with_the_data_ends_the_direction_without_another_read(proxied, fin):
    # The server answers and closes at once (a short HTTP/1.0 or Connection: close exchange): its FIN is in
    # before the poll, so the read that takes the answer takes everything, and the FIN is passed on from
    # that one read. Data alone must not be taken for an end.
    down = proxied.session.down
    counted = down.src = _CountingRecv(down.src)
    proxied.server.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    if fin:
        proxied.server.shutdown(socket.SHUT_WR)
    proxied.client.settimeout(5)
    got = b""
    while len(got) < 40:
        _poll_until(proxied, lambda: bool(counted.reads))
        got += proxied.client.recv(100)
    assert got.endswith(b"\r\n\r\nok")
    assert down.eof is fin and proxied.session.reason == ("server closed" if fin else None)
    if fin:
        assert proxied.client.recv(100) == b""  # the FIN, passed on
    assert counted.reads == [40]
    # The client closes its side too: the session ends with both FINs passed on, and nothing was lost.
    proxied.client.shutdown(socket.SHUT_WR)
    if fin:
        _poll_until(proxied, lambda: proxied.session.finished)
        assert proxied.server.recv(100) == b""
    else:
        _poll_until(proxied, lambda: proxied.session.up.eof)
        assert not proxied.session.finished


def _client_takes(proxied, n: int) -> bytes:
    """What the client reads, the proxy running between its reads, until it has `n` bytes."""
    got = bytearray()

    def enough() -> bool:
        try:
            got.extend(proxied.client.recv(65536))
        except BlockingIOError:
            pass
        return len(got) >= n

    _poll_until(proxied, enough, limit=100_000)
    return bytes(got)


def _stream(proxied, total: int, then=None) -> bytearray:
    """The server sends `total` bytes of `_PATTERN` (then calls `then`) while the proxy runs and the
    client reads; returns what the client got until it saw the end of the stream (or the proxy stopped)."""
    proxied.client.setblocking(False)
    sent, got, ended = 0, bytearray(), False
    for _ in range(100_000):
        if sent < total:
            off = sent % 251
            try:
                sent += proxied.server.send(_PATTERN[off : off + min(65536, total - sent)])
            except BlockingIOError:
                pass
            if sent == total and then is not None:
                then()
        proxied.poll()
        try:
            data = proxied.client.recv(1 << 20)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            got += b"<reset>"
            break
        if not data:
            ended = True
            break
        got += data
    assert ended or got.endswith(b"<reset>") or proxied.session.finished, "the stream neither ended nor stopped"
    return got


def test_a_fin_after_spliced_bytes_is_passed_on_once_they_are_through_and_the_other_way_stays_open(proxied):
    _make_splicing(proxied)
    got = _stream(proxied, 3_000_000, then=lambda: proxied.server.shutdown(socket.SHUT_WR))
    assert bytes(got) == (_PATTERN * 12)[:3_000_000], "bytes lost or out of order before the FIN"
    session = proxied.session
    assert session.down.eof and session.down.spliced > 0 and session.reason == "server closed"
    assert not session.finished and session.down.pipe is None
    # Half-close: the client still talks to the server, then ends its side, and the session ends.
    proxied.client.setblocking(True)
    proxied.client.sendall(b"still here")
    proxied.server.setblocking(True)
    proxied.server.settimeout(5)
    _poll_until(proxied, lambda: session.up.count == 10)
    assert proxied.server.recv(100) == b"still here"
    proxied.client.shutdown(socket.SHUT_WR)
    _poll_until(proxied, lambda: session.finished)
    assert proxied.server.recv(100) == b""


def test_a_server_reset_in_a_spliced_transfer_resets_the_client(proxied):
    _make_splicing(proxied)

    def reset() -> None:
        proxied.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, relay._LINGER_RST)
        proxied.server.close()

    got = _stream(proxied, 1_000_000, then=reset)
    assert proxied.session.finished and proxied.session.reason == "server reset"
    assert got.endswith(b"<reset>"), "the client was not reset"
    proxied.server = socket.socket()  # closed above; the fixture closes this one


def test_a_client_reset_in_a_spliced_transfer_resets_the_server(proxied):
    _make_splicing(proxied)
    proxied.server_sends(b"y" * 16384, limit=200_000)  # the pipe holds bytes for the client
    proxied.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, relay._LINGER_RST)
    proxied.client.close()
    _poll_until(proxied, lambda: proxied.session.finished)
    assert proxied.session.reason == "client reset"
    proxied.server.setblocking(True)
    proxied.server.settimeout(5)
    with pytest.raises(ConnectionResetError):
        for _ in range(1000):  # what the server had in flight, then the reset
            proxied.server.send(b"z" * 65536)
    proxied.client = socket.socket()


def test_with_no_pipe_to_be_had_a_bulk_direction_copies_and_loses_nothing(proxied, monkeypatch):
    monkeypatch.setattr(proxied.runtime.pipes, "take", lambda: None)
    _make_splicing(proxied)
    got = _stream(proxied, 2_000_000, then=lambda: proxied.server.shutdown(socket.SHUT_WR))
    assert bytes(got) == (_PATTERN * 8)[:2_000_000]
    assert proxied.session.down.spliced == 0 and proxied.session.down.count == 65536 + 2_000_000


def test_a_spliced_write_the_client_refuses_aborts_both_sides(proxied, monkeypatch):
    # The client's reset can reach the proxy as a failed write before its own event: the write's error
    # ends the session as the event would.
    _make_splicing(proxied)
    real = relay._splice

    def refusing(src, dst, n, *args):
        if dst == proxied.session.cfd:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(src, dst, n, *args)

    monkeypatch.setattr(relay, "_splice", refusing)
    proxied.server.send(b"w" * 65536)
    _poll_until(proxied, lambda: proxied.session.finished)
    assert proxied.session.reason == "client reset"
    proxied.server.settimeout(5)
    with pytest.raises(ConnectionResetError):
        proxied.server.recv(100)


def test_once_a_slow_client_has_taken_everything_the_pipe_is_back_in_the_pool(proxied):
    # The pipe a write empties stays lent for the read that follows in the same event; that read, finding
    # the server quiet (no FIN: a keep-alive connection between two responses), must give it back, or
    # every idle session that once carried bulk traffic would hold two descriptors and a megabyte.
    _make_splicing(proxied)
    sent = 0
    for _ in range(200):
        try:
            sent += proxied.server.send(_PATTERN[:65536])
        except BlockingIOError:
            break
        proxied.poll()
    got = _client_takes(proxied, sent)
    down, pool = proxied.session.down, proxied.runtime.pipes
    assert len(got) == sent > 65536 and down.pipe is None and not down.pending
    assert len(pool._free) == pool.open, "a pipe is still lent"
    assert not proxied.session.finished


def test_a_pump_that_stops_at_its_read_limit_with_all_written_holds_no_pipe(proxied):
    # The last read before a limit may have emptied the source, and then no event comes to give the pipe
    # back: an idle session would hold it.
    _make_splicing(proxied)
    proxied.server.send(b"z" * 2000)
    peek = lambda: len(proxied.session.server.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT))  # noqa: E731
    for _ in range(1000):
        if peek() == 2000:
            break
    down = proxied.session.down
    before = down.spliced
    down.pump(1)  # one read, its limit: it moves the 2,000 bytes and the client takes them all
    assert down.spliced - before == 2000 and not down.pending
    assert down.pipe is None, "the pipe stayed lent"
    assert _client_takes(proxied, 2000) == b"z" * 2000 and not proxied.session.finished


def test_one_event_moves_at_most_bulk_bytes_and_leaves_the_rest_for_the_next(proxied, monkeypatch):
    # A source with more than BULK_BYTES waiting is read up to BULK_BYTES per event, not until it is empty:
    # the loop turns, and the other sessions of the process get their go. (A stand-in splice: each read
    # moves all it is offered until four budgets' worth have gone, each write takes all.)
    _make_splicing(proxied)
    down = proxied.session.down
    left = [4 * relay.BULK_BYTES]

    def backlog(src, dst, n, *args):
        if src == proxied.session.sfd:
            if not left[0]:
                raise BlockingIOError(11, "empty")
            n = min(n, left[0])
            left[0] -= n
        return n

    monkeypatch.setattr(relay, "_splice", backlog)
    before = down.spliced
    down.pump(1 << 30)  # no read limit to speak of: only the byte budget stops it
    moved = down.spliced - before
    assert relay.BULK_BYTES <= moved < relay.BULK_BYTES + down.session.runtime.pipes.size
    assert not down.pending and down.pipe is None and not proxied.session.finished
    assert proxied.session.smask & relay.RD, "the server is still watched for the rest"
    down.pump(1 << 30)  # the next event takes the next budget's worth
    assert down.spliced - before - moved >= relay.BULK_BYTES
