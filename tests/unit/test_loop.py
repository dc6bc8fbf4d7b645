"""The proxy's epoll loop and listener on real sockets: stale events after an fd is reused, and no spin
when accept fails for want of descriptors."""

from __future__ import annotations

import os
import resource
import socket
from types import SimpleNamespace

from twisted.internet.task import Clock

from proxy.listener import ACCEPT_PAUSE, Listener
from proxy.loop import IN, Loop


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
            loop.add(reused.fileno(), IN, lambda events: calls.append("successor"))

        return handler

    loop.add(a.fileno(), IN, closes_the_other(a, b, "a"))
    loop.add(b.fileno(), IN, closes_the_other(b, a, "b"))
    loop.doRead()
    assert calls in (["a"], ["b"])  # the closed one's leftover event went nowhere
    for s in (a, b, a_peer, b_peer, *made):
        s.close()
    loop.close()


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
