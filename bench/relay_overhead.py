#!/usr/bin/env python3
"""The Python cost of one keep-alive request through the relay, without the system calls; or, with
--bulk N, of one event of a bulk transfer (N spliced reads, each written on, then a read that finds
the socket empty); or, with --drain N, of the event most of a bulk transfer's wake-ups are when the
destination is the slower side (it has room: the pipe is written out, then N reads are written on, the
last in part).

    python3 bench/relay_overhead.py [--sessions 50] [--repeat 30] [--instructions] [--bulk N | --drain N]

Opens real sessions on loopback (a listener stands in for the real server), then swaps each
direction's sockets for stand-ins whose recv_into returns a fixed size and whose send is `len`, and
drives `Loop._dispatch` with one client event and one server event per session, as a keep-alive
request makes them. What remains is the interpreter's work per request: dispatch, the
direction's event handler, counting. The system calls are the same for hapair and HAProxy (2 reads and
2 writes per request for both), so this is the part of the gap that is ours.

The best of --repeat passes is printed in microseconds. On this VM even that swings by a factor of two
when the host is busy; --instructions counts instead (valgrind's callgrind, the program run with 1 and
with 4 passes, the difference divided by the requests between): the same figure on every run, whatever
the machine is doing, and the one to compare two versions of the relay by (run it in each tree).

--bulk swaps the relay's splice for a stand-in (a read moves 100,000 bytes, a write all it is offered,
and the read after the Nth raises EAGAIN, as an empty socket does), so what is timed is the dispatch,
the direction's event handler and the interpreter's part of each splice call and of the EAGAIN.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from hapair.config import AdminState, Persistence, PersistenceMode, RealServer, VirtualService  # noqa: E402
from proxy.loop import IN, OUT  # noqa: E402
from proxy.pool import Pool  # noqa: E402
from proxy import relay  # noqa: E402
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
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--bulk", type=int, metavar="N", help="time a bulk event of N reads instead")
    mode.add_argument("--drain", type=int, metavar="N", help="time a slow destination's event instead: it takes "
                      "what the pipe holds, then N reads are written on, the last in part")  # fmt: skip
    args = parser.parse_args()
    for name in ("bulk", "drain"):
        if getattr(args, name) is not None and not 1 <= getattr(args, name) <= MAX_READS:
            parser.error(f"--{name} runs from 1 to {MAX_READS} reads")
    if args.instructions:
        return count_instructions(args.sessions, args.bulk, args.drain)

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
        session._connected(OUT)  # the connect completed
        kept += [client, peer, accepted]
        request, response = StandIn(100), StandIn(1174)  # the benchmark's request and nginx's answer
        session.up.src, session.up.dst = request, response
        session.down.src, session.down.dst = response, request
        ready += [(session.cfd, IN), (session.sfd, IN)]
    if args.bulk:
        return bulk(runtime, ready[::2], args.bulk, args.repeat)
    if args.drain:
        return drain(runtime, args.drain, args.repeat)

    def one_pass(rounds: int = ROUNDS) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            runtime.loop._dispatch(ready)
        return (time.perf_counter() - started) / (rounds * args.sessions) * 1e6

    best = min(one_pass() for _ in range(args.repeat))
    moved = sum(sum(s.traffic()) for s in runtime.sessions)
    if not moved:
        print("no bytes moved: the relay did not run", file=sys.stderr)
        return 1
    print(f"relay Python cost per keep-alive request (2 events, {args.sessions} sessions): {best:.2f} us")
    return 0


#: Dispatch rounds per pass: each is one keep-alive request per session.
ROUNDS = 400
#: Bytes a stand-in spliced read moves, and the most reads an event may make (fewer than BULK_BYTES).
BULK_READ = 100_000
MAX_READS = 9


def bulk(runtime: ProxyRuntime, ready: list[tuple[int, int]], reads: int, repeat: int) -> int:
    """Each session's client direction made a splicing one, then a client event per session per round."""
    pipe = runtime.pipes.take()
    pipe_out = pipe.r
    runtime.pipes.give(pipe)  # every direction gets this one pipe back from the pool, in turn
    left = [0]

    def splice(src: int, dst: int, n: int, *_: object) -> int:
        if src == pipe_out:
            return n  # a write: the destination takes it all
        if left[0]:
            left[0] -= 1
            return min(n, BULK_READ)
        raise BlockingIOError(11, "Resource temporarily unavailable")

    relay._splice = splice
    for session in runtime.sessions:
        session.up.splicing = True
    best = best_per_event(runtime, ready, left, reads, repeat)
    if sum(s.up.spliced for s in runtime.sessions) != reads * BULK_READ * ROUNDS * len(ready) * repeat:
        print("the bytes spliced are not the reads made: the relay did not run as meant", file=sys.stderr)
        return 1
    print(f"relay Python cost per bulk event ({reads} reads and an empty one, {len(ready)} sessions): {best:.2f} us")
    return 0


def best_per_event(runtime: ProxyRuntime, ready: list[tuple[int, int]], budget: list[int], value: int,
                   repeat: int) -> float:  # fmt: skip
    """The best of `repeat` passes, in microseconds per event: each event of `ready` dispatched alone, ROUNDS
    times, the stand-in splice's `budget` set back to `value` before each."""

    def one_pass() -> float:
        started = time.perf_counter()
        for _ in range(ROUNDS):
            for event in ready:
                budget[0] = value
                runtime.loop._dispatch([event])
        return (time.perf_counter() - started) / (ROUNDS * len(ready)) * 1e6

    return min(one_pass() for _ in range(repeat))


def drain(runtime: ProxyRuntime, reads: int, repeat: int) -> int:
    """Each session's client direction made a splicing one whose destination is full, its pipe holding bytes;
    then, per session per round, the event that most of a bulk transfer's wake-ups are when the real server
    reads slower than the client sends: the server socket has room (OUT) and takes all the pipe holds, the
    client socket is read `reads` times, each read written on, and the last write is refused (the server
    is full again)."""
    clients = set()
    for session in runtime.sessions:
        up = session.up
        up.splicing, up.pipe, up.pending = True, runtime.pipes.take(), BULK_READ
        clients.add(up.src_fd)
    writes = [0]

    def splice(src: int, dst: int, n: int, *_: object) -> int:
        if src in clients:  # a read
            return min(n, BULK_READ)
        if writes[0]:  # the pending bytes, then each read but the last: taken whole
            writes[0] -= 1
            return n
        raise BlockingIOError(11, "Resource temporarily unavailable")  # and the destination is full again

    relay._splice = splice
    ready = [(session.sfd, OUT) for session in runtime.sessions]
    best = best_per_event(runtime, ready, writes, reads, repeat)
    if sum(s.up.spliced for s in runtime.sessions) != reads * BULK_READ * ROUNDS * len(ready) * repeat or not all(
            s.up.pending == BULK_READ and s.up.pipe is not None for s in runtime.sessions):  # fmt: skip
        print("the bytes spliced are not the reads made: the relay did not run as meant", file=sys.stderr)
        return 1
    print(f"relay Python cost per drain event (a write, {reads} reads and their writes, the last refused, "
          f"{len(ready)} sessions): {best:.2f} us")
    return 0


def count_instructions(sessions: int, reads: int | None = None, drains: int | None = None) -> int:
    """Instructions per request (or bulk event): this program under callgrind with 1 pass and with 4,
    the difference divided by the requests in between."""
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for passes in (1, 4):
            result = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", sys.executable,
                 os.path.abspath(__file__), "--sessions", str(sessions), "--repeat", str(passes),
                 *(["--bulk", str(reads)] if reads else []), *(["--drain", str(drains)] if drains else [])],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            found = re.search(r"Collected : (\d+)", result.stderr)
            if found is None:
                print(f"no count from callgrind: {result.stderr[-500:]}", file=sys.stderr)
                return 1
            totals.append(int(found.group(1)))
    per_request = (totals[1] - totals[0]) / (3 * ROUNDS * sessions)
    what = (f"bulk event ({reads} reads and an empty one" if reads else
            f"drain event (a write, {drains} reads and their writes, the last refused" if drains else
            "keep-alive request (2 events")
    print(f"relay Python cost per {what}, {sessions} sessions): {per_request:,.0f} instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
