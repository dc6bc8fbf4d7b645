"""The proxy's epoll loop and listener on real sockets: stale events after an fd is reused, and no spin
when accept fails for want of descriptors."""

from __future__ import annotations

import _socket
import ipaddress
import os
import resource
import socket
import time
from types import SimpleNamespace

from twisted.internet.task import Clock

from hapair.config import AdminState, RealServer, VirtualService
from proxy import listener as listener_module
from proxy.listener import ACCEPT_PAUSE, Listener
from proxy.loop import IN, Loop, LoopReactor
from proxy.pool import Pool
from proxy.service import ProxyRuntime


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.readers = []

    def addReader(self, reader) -> None:
        self.readers.append(reader)

    def removeReader(self, reader) -> None:
        self.readers.remove(reader)


def test_events_of_an_fd_closed_in_the_same_batch_do_not_reach_its_successor():
    loop = Loop(FakeReactor())
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    a_peer.send(b"x")
    b_peer.send(b"x")  # both a and b are readable: one poll returns both
    calls: list[str] = []
    made: list[socket.socket] = []

    def closes_the_other(me: socket.socket, other: socket.socket, name: str):
        def handler(events: int) -> None:
            calls.append(name)
            me.recv(16)
            if len(calls) > 1:
                return
            fd = other.fileno()
            loop.forget(fd)
            other.close()
            new, new_peer = socket.socketpair()  # takes the lowest free number: the one just closed
            made.extend([new, new_peer])
            assert fd in (new.fileno(), new_peer.fileno())
            reused = new if new.fileno() == fd else new_peer
            (new_peer if reused is new else new).send(b"y")  # the successor is readable from now on
            loop.add(reused.fileno(), IN, lambda events: calls.append("successor") or reused.recv(16))

        return handler

    loop.add(a.fileno(), IN, closes_the_other(a, b, "a"))
    loop.add(b.fileno(), IN, closes_the_other(b, a, "b"))
    loop._dispatch(loop._epoll.poll(0, 8))  # one poll: one batch
    assert calls in (["a"], ["b"])  # the closed one's leftover event went nowhere
    loop._dispatch(loop._epoll.poll(0, 8))
    assert calls[1:] == ["successor"]  # the successor's own events come with the next batch
    for s in (a, b, a_peer, b_peer, *made):
        s.close()
    loop.close()


def _chain(loop: Loop, length: int, then=None):
    """Socket pairs whose handlers each make the next one readable: a chain of events that each next poll
    finds. `then(i)` runs in handler i after it passed the chain on."""
    pairs = [socket.socketpair() for _ in range(length)]
    seen: list[int] = []

    def handler(i: int):
        def handle(events: int) -> None:
            pairs[i][0].recv(16)
            seen.append(i)
            if i + 1 < len(pairs):
                pairs[i + 1][1].send(b"x")
            if then is not None:
                then(i)

        return handle

    for i, (mine, _) in enumerate(pairs):
        loop.add(mine.fileno(), IN, handler(i))
    return pairs, seen


def _worker_loop() -> tuple[LoopReactor, Loop]:
    reactor = LoopReactor()
    return reactor, Loop(reactor)


def _close(reactor: LoopReactor, loop: Loop, pairs) -> None:
    for pair in pairs:
        for s in pair:
            s.close()
    loop.close()
    reactor._poller.close()
    reactor.waker.connectionLost(None)


def test_a_workers_wait_goes_on_until_the_reactor_gets_a_timer():
    # A chain of events longer than any fixed number of polls: wait() takes all of it in one call, and
    # returns as soon as a handler adds a timer (its delay may end before the time wait was given).
    reactor, loop = _worker_loop()
    timers = []
    pairs, seen = _chain(loop, 12, lambda i: i == 9 and timers.append(reactor.callLater(60, lambda: None)))
    pairs[0][1].send(b"x")
    started = time.monotonic()
    loop.wait(30)
    assert seen == list(range(10))
    assert time.monotonic() - started < 10  # returned on the timer, not at the end of the 30 s
    assert reactor._newTimedCalls and not reactor._own_ready  # the new timer is what it returned for
    loop.wait(0)
    assert seen == list(range(10)) + [10]  # the rest of the chain on the next turn
    timers[0].cancel()
    _close(reactor, loop, pairs)


def test_a_workers_wait_returns_once_the_reactors_own_descriptors_were_handled():
    reactor, loop = _worker_loop()
    pairs, seen = _chain(loop, 8, lambda i: i == 3 and reactor.wakeUp())
    pairs[0][1].send(b"x")
    started = time.monotonic()
    loop.wait(30)
    # the batch after handler 3 held the reactor's own set (the waker) and socket 4: both handled, then back
    assert seen == list(range(5))
    assert time.monotonic() - started < 10
    assert reactor.has_work()
    _close(reactor, loop, pairs)


def test_a_workers_wait_returns_when_its_time_is_up_even_while_events_keep_coming():
    reactor, loop = _worker_loop()
    a, b = socket.socketpair()
    b.send(b"x")  # never read: a stays readable, an event on every poll
    calls = []
    loop.add(a.fileno(), IN, calls.append)
    loop.wait(0)
    assert len(calls) == 1  # no time given: one poll
    loop.wait(0.05)
    assert len(calls) > 2  # it went on polling within its time, and then returned
    _close(reactor, loop, [(a, b)])


def test_a_listener_out_of_descriptors_rests_instead_of_spinning():
    reactor = FakeReactor()
    failures: list[OSError] = []
    runtime = SimpleNamespace(loop=Loop(reactor), reactor=reactor, accept_failed=lambda listener, e: failures.append(e))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    listener = Listener(runtime, pool=None, vip="127.0.0.1", vport=server.getsockname()[1], sock=server)
    client = socket.create_connection(server.getsockname())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no number left for the accepted socket
    try:
        listener._ready(IN)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert failures and failures[0].errno == 24  # EMFILE
    assert runtime.loop._masks[listener.fd] == 0  # out of the epoll set: the backlog cannot wake it
    reactor.advance(ACCEPT_PAUSE)
    assert runtime.loop._masks[listener.fd] == IN
    listener.close()
    client.close()
    runtime.loop.close()


def test_accepted_clients_have_nagle_off_without_a_call_per_connection(monkeypatch):
    # What a client sends is passed on as it came (TCP_NODELAY), like the server side. The listener sets
    # it once: Linux copies a listening socket's TCP options to every socket it accepts.
    reactor = FakeReactor()
    runtime = ProxyRuntime(reactor, open(os.devnull, "w"))
    backend = socket.create_server(("127.0.0.1", 0))
    server = RealServer("b", ipaddress.ip_address("127.0.0.1"), backend.getsockname()[1], 100, AdminState.ONLINE)
    service = VirtualService("S", ipaddress.ip_address("127.0.0.1"), (80,), (server,))
    front = socket.create_server(("127.0.0.1", 0))
    listener = Listener(runtime, Pool(service, reactor), "127.0.0.1", 80, front)
    calls = []

    class Counting(_socket.socket):
        def setsockopt(self, *args):
            calls.append((self.fileno(), *args))
            return super().setsockopt(*args)

    monkeypatch.setattr(listener_module, "_socket", SimpleNamespace(socket=Counting))
    clients = [socket.create_connection(front.getsockname()) for _ in range(3)]
    listener._ready(IN)
    sessions = list(runtime.sessions)
    assert len(sessions) == 3
    for session in sessions:
        assert session.client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert not [c for c in calls if c[0] == session.cfd], "an option set on each accepted socket"
    for session in sessions:
        session.abort("test over")
    listener.close()
    runtime.close()
    backend.close()
    for c in clients:
        c.close()
