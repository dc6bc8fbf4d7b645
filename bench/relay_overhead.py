#!/usr/bin/env python3
"""The Python cost of one keep-alive request through the relay, without the system calls.

    python3 bench/relay_overhead.py [--sessions 50] [--repeat 30]

Opens real sessions on loopback (a listener stands in for the real server), then swaps each
direction's sockets for stand-ins whose recv_into returns a fixed size and whose send is `len`, and
drives `Loop._dispatch` with one client event and one server event per session, as a keep-alive
request makes them. What remains is the interpreter's work per request: dispatch, the session's event
handler, counters. The best of --repeat passes is printed; that figure is steady on a noisy machine,
where CPU per request under wrk swings by 20 per cent from one minute to the next, so it is the one to
compare two versions of the relay by (run it in each tree). The system calls are the same for hapair
and HAProxy (strace shows 2 recv and 2 send per request for both), so this is the part of the gap that
is ours.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from hapair.config import AdminState, Persistence, PersistenceMode, RealServer, VirtualService  # noqa: E402
from proxy.loop import IN, OUT  # noqa: E402
from proxy.pool import Pool  # noqa: E402
from proxy.relay import Session  # noqa: E402
from proxy.service import ProxyRuntime  # noqa: E402


class Reactor(Clock):
    def addReader(self, reader: object) -> None:
        pass

    def removeReader(self, reader: object) -> None:
        pass


class StandIn:
    """A socket that always has `size` bytes to give and takes whatever it is sent."""

    def __init__(self, size: int):
        self.recv_into = lambda buf: size
        self.send = len


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    backend = socket.create_server(("127.0.0.1", 0), backlog=args.sessions)
    port = backend.getsockname()[1]
    server = RealServer("backend", ipaddress.ip_address("127.0.0.1"), port, 100, AdminState.ONLINE)
    service = VirtualService("keepalive", ipaddress.ip_address("127.0.0.1"), (port,), (server,),
                             persistence=Persistence(PersistenceMode.SOURCE_IP, 3600.0, 1000))  # fmt: skip
    reactor = Reactor()
    runtime = ProxyRuntime(reactor, open(os.devnull, "w"))
    pool = Pool(service, reactor)
    kept, ready = [], []
    for i in range(args.sessions):
        client, peer = socket.socketpair()
        client.setblocking(False)
        session = Session(runtime, pool, pool.choose("127.0.0.1"), "127.0.0.1", port, client, "127.0.0.1", 40000 + i)
        accepted, _ = backend.accept()
        session._server_event(OUT)  # the connect completed
        kept += [client, peer, accepted]
        request, response = StandIn(100), StandIn(1174)  # the benchmark's request and nginx's answer
        session.up.src, session.up.dst = request, response
        session.down.src, session.down.dst = response, request
        ready += [(session.cfd, IN), (session.sfd, IN)]

    def one_pass(rounds: int = 400) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            runtime.loop._dispatch(ready)
        return (time.perf_counter() - started) / (rounds * args.sessions) * 1e6

    best = min(one_pass() for _ in range(args.repeat))
    moved = sum(s.up.count + s.down.count for s in runtime.sessions)
    if not moved:
        print("no bytes moved: the relay did not run", file=sys.stderr)
        return 1
    print(f"relay Python cost per keep-alive request (2 events, {args.sessions} sessions): {best:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
