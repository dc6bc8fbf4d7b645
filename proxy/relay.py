"""One proxied connection: a client socket, a real server socket, and the two directions between them.

The rules a session keeps:
- the client is not read until the real server is connected, and a real server that refuses (or does
  not answer within the connect timeout) is replaced by another eligible one (redispatch) before the
  client is given up on;
- each direction copies small messages through one shared buffer and, once it sees bulk traffic, moves
  bytes with `splice` through a pooled pipe (zero-copy); either way it reads its source only when
  everything it read before has been written, so a slow reader stops the writer at the kernel's socket
  buffers and the proxy holds at most one read's bytes, and one pipe, per direction;
- a FIN is passed on as a FIN (half-close) once the bytes before it are written; a reset on either side,
  or a write the peer refuses, aborts both;
- idle and connect timeouts are checked by the proxy's sweep, not by a timer per connection;
- the session ends once, with one reason, and one log line.

Sockets are plain non-blocking sockets in the proxy's own epoll set (`proxy.loop`), not Twisted
transports: this is the hot path, and Twisted's per-connection machinery costs several times the rest
of it (see bench/proxy_vs_haproxy.py).
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct
from typing import TYPE_CHECKING

from proxy.loop import ERR, HUP, IN, OUT, RDHUP
from proxy.pipes import Pipe
from proxy.pool import Pool, ServerState

if TYPE_CHECKING:
    from proxy.service import ProxyRuntime

#: Waiting to read: data, or the peer's FIN (RDHUP tells a FIN that came with the last data).
RD = IN | RDHUP
#: Real servers tried for one client before it is refused (the first choice included).
MAX_ATTEMPTS = 3
#: Reads per event for a direction carrying bulk traffic, while each moves bytes and is written whole,
#: and the bytes those reads may move: the fewer wake-ups per byte, the less CPU per byte (16 reads cost
#: 0.9x the CPU per Gbit of 4 with 8 streams), while a bound keeps one bulk transfer from holding up the
#: other sessions of the process for long. 8 MiB is about 2 ms of CPU, and about what one of HAProxy's
#: reads moves (into a 1 MiB pipe, whose slots hold 6.6 MB of bulk data). In paired runs with the proxy
#: the bottleneck (held to 25% of a CPU, bench/paired.py --quota 25), 2 MiB cost 1.38-1.51x the CPU per
#: Gbit of 8 MiB with 8 streams (1.02-1.12x with one); unthrottled, the two were within the noise of each
#: other (0.85-1.22x with 8 streams, 0.98-1.01x with one). The cost to the other sessions was not clear
#: either way: keep-alive requests through a worker carrying 8 bulk streams (paired.py --workload
#: keepalive+bulk8, three runs) had 1.54x, 1.24x and 0.90x the p99 with 8 MiB as with 2, and
#: haproxy-splice's p99 ranged from 0.5x to 2.1x of hapair's. Unthrottled, the budget almost never ends an
#: event (counted per event: 2 of 100,000 with 8 MiB, 42 of 10,000 with 2 MiB, 8 streams): an event ends at
#: an empty source (the prompt regime, 0.2 MB per event) or at a full destination (batched, 1.2 MB, the load
#: generators' side the slower). Held to 25%, 2 MiB ended 58% of events.
BULK_READS = 16
BULK_BYTES = 8 << 20
#: Bytes read per event when copying; a read that fills it marks a direction as bulk (splice from then on).
COPY_CHUNK = 32768
#: The one copy buffer: the process is single-threaded and a copying read is written out before the next.
_BUF = bytearray(COPY_CHUNK)
_VIEW = memoryview(_BUF)

#: Socket recv_into and send, not os.readv and os.write: those parse their arguments faster (about 380
#: fewer instructions per call, callgrind) but readv and write cost the kernel more than recvfrom and
#: sendto on a socket (the VFS path), and the system time they added outweighed the user time they saved
#: (paired.py, keep-alive: user -1.0 us, system +1.6 us per request).
#: os.splice is called with positional arguments: a `flags=` keyword costs an argument parser call.
_splice = os.splice
_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_LINGER_RST = struct.pack("ii", 1, 0)
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_TCP, _NODELAY = socket.IPPROTO_TCP, socket.TCP_NODELAY
#: What connect_ex returns for a connect that succeeded or is under way.
_CONNECTING = (0, errno.EINPROGRESS)
#: How `Direction.pump`'s loop ended when not on a read that moved bytes (0 is the source's FIN).
_EMPTY, _SRC_FAILED, _DST_FAILED = -1, -2, -3
#: The events that let a socket be read, or written (errors and hangups let either end).
_READABLE = IN | ERR | HUP
_WRITABLE = OUT | ERR | HUP
#: A direction's `reasons`: what ends a session at either of its ends.
UPSTREAM = ("client reset", "server reset", "client closed")
DOWNSTREAM = ("server reset", "client reset", "server closed")


class Direction:
    """Bytes from `src` to `dst`.

    Small messages are copied (`copy`: read, then written at once): for a 1 KiB request that is cheaper
    than two splices, and it needs no pipe. A read that fills the buffer marks bulk traffic, and from
    then on the direction splices (`pump`) through a pipe lent while bytes are in flight (HAProxy's
    splice-auto makes the same call).

    Either way a direction reads again only once all it read is written (`pending` is what is not): a
    destination that took less than it was offered is full, and the direction waits for it to say it
    has room, not for the source. HAProxy stops reading into a pipe the same way until it is flushed.
    Reading on into the pipe meanwhile, as this relay once did, only moved the sender's backlog into the
    proxy sooner: with 8 bulk streams it cost a tenth more CPU per Gbit, the sender's TCP work that a
    read's window update sets off running on the proxy's CPU (bench/paired.py, bulk8), for no
    throughput the socket buffers did not already give. It also keeps splice's one ambiguity away: a
    read into an empty pipe that finds nothing means an empty socket (into a pipe holding bytes it could
    mean a pipe out of slots, which count segments, not bytes).

    Bytes are counted here, per direction, and nothing else is done per read: they reach the service's
    and the real server's counters when the session ends (a status report adds those of open sessions),
    and the idle sweep tells activity from a changed count (`Session.idle_reason`). One addition per
    read instead of five and a clock stamp: a fifth of a small message's interpreter work."""

    __slots__ = ("session", "reverse", "src", "dst", "src_fd", "dst_fd", "pipe", "buf", "pending", "eof", "shut",
                 "count", "spliced", "splicing", "reasons")  # fmt: skip

    def __init__(self, session: Session, src: socket.socket, dst: socket.socket, src_fd: int, dst_fd: int,
                 reasons: tuple[str, str, str]):  # fmt: skip
        self.session: Session | None = session
        #: The session's reason for a reset of the source, of the destination, and the source's FIN:
        #: `UPSTREAM` or `DOWNSTREAM`, shared (one class, not one per way: CPython's attribute caches
        #: are per type, and two types through the same code make every attribute access a slow one).
        self.reasons = reasons
        #: The direction that writes to `src` (set by the session once both exist).
        self.reverse: Direction | None = None
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src_fd, dst_fd
        self.pipe: Pipe | None = None
        #: What a copying read could not write yet.
        self.buf = b""
        self.pending = 0
        self.eof = self.shut = False
        #: Bytes read, and of those, bytes moved by splice.
        self.count = self.spliced = 0
        self.splicing = False

    def event(self, events: int) -> None:
        """The loop's handler for `src`, which this direction reads and the reverse one writes. One handler
        per socket, bound to the direction it reads, and a first test for the common case (a small message
        that is written at once): such an event costs two calls, this one and `copy`."""
        if events == IN and not self.pending and not self.splicing and not self.eof:
            if self.copy() and not self.pending:
                return  # all it read is written, as before: what each socket waits for is unchanged
        else:
            if events & _READABLE and not self.eof and not self.pending:  # can_read(), inlined
                moved = False
                if self.splicing:
                    self.pump()
                else:
                    moved = self.copy()
                if self.session is None:
                    return  # the session ended
                if events == IN and not self.pending and not self.eof:
                    return
                if events & RDHUP and not self.eof and not self.pending:
                    # The FIN came with the data: take it now rather than after another wait. After a copy
                    # that read less than it could, without another read: the FIN was in before the poll,
                    # so all that came before it was too, and a short read took it all (HAProxy reasons
                    # the same way). The one exception is TCP urgent data, which stops a read at its mark
                    # and is not used by the protocols behind this proxy.
                    if self.splicing:
                        self.pump(1)
                    elif moved:
                        self._ended()
                    else:
                        self.copy()
                    if self.session is None:
                        return
            writing = self.reverse
            if events & _WRITABLE and writing.pending:
                writing.flush()
                if self.session is None:
                    return
                if writing.splicing and writing.can_read():
                    # A slow reader took all the pipe held, and its source most likely filled up meanwhile:
                    # refill the pipe now rather than start watching the source again (two epoll_ctl calls
                    # per step of the reader) to be told so on the next wait.
                    writing.pump()
        s = self.session
        if s is None:
            return
        # What each socket waits for: reading where nothing waits to be written, writing where it does.
        up, down = s.up, s.down
        if up.shut and down.shut:
            s._finish(False)  # both FINs passed on (the first one is the reason)
            return
        # (each direction's can_read(), inlined: this runs for every event that misses the fast path)
        cmask = (RD if not up.eof and not up.pending else 0) | (OUT if down.pending else 0)
        smask = (RD if not down.eof and not down.pending else 0) | (OUT if up.pending else 0)
        if cmask != s.cmask:
            s.cmask = cmask
            s.loop.watch(s.cfd, cmask)
        if smask != s.smask:
            s.smask = smask
            s.loop.watch(s.sfd, smask)

    def can_read(self) -> bool:
        return not self.eof and not self.pending

    def copy(self) -> bool:
        """Reads once and writes what it read, for a copying direction or a splicing one that could get
        no pipe (then nothing is pending, or it would not read); True when bytes moved. Call only when
        `can_read()`."""
        try:
            n = self.src.recv_into(_BUF)
        except BlockingIOError:
            return False
        except OSError:
            self.session.abort(self.reasons[0])
            return False
        if not n:
            self._ended()
            return False
        self.count += n
        try:
            sent = self.dst.send(_VIEW[:n])
        except BlockingIOError:
            sent = 0
        except OSError:
            self.session.abort(self.reasons[1])
            return False
        if sent < n:
            self.buf = _VIEW[sent:n].tobytes()
            self.pending = n - sent
        if n == COPY_CHUNK:
            self.splicing = True  # a full buffer: bulk, splice from now on
        return True

    def pump(self, reads: int = BULK_READS) -> None:
        """A splicing direction's reads, each written on at once: on (the socket most likely holds more by
        now) while each read is written whole, up to `reads` reads and BULK_BYTES; a write the destination
        takes only in part ends it, the rest pending. Call only when `can_read()`, so every read finds
        the pipe empty and may fill it.

        One loop with the direction's state in locals, written back once: a method call per read and per
        write, and the attribute traffic of each, were a fifth of the interpreter's work per event of four
        reads (`bench/relay_overhead.py --bulk 4 --instructions`). An emptied pipe stays lent between the
        reads, as the next one most likely needs it; it goes back once a read finds the socket empty, at
        the FIN, or at a limit with nothing pending (back to the pool and out again after every read cost a
        fifth of the worker's instructions per read, callgrind, 64 KiB reads)."""
        pipe = self.pipe
        if pipe is None:
            pipe = self.pipe = self.session.runtime.pipes.take()
            if pipe is None:  # no pipe to be had: copy
                while self.copy() and reads > 1 and self.session is not None and self.can_read():
                    reads -= 1
                return
        src, dst, w, r, size = self.src_fd, self.dst_fd, pipe.w, pipe.r, pipe.size
        pending = moved = 0
        while True:
            try:
                n = _splice(src, w, size, None, None, _SPLICE)
            except BlockingIOError:
                n = _EMPTY  # into an empty pipe: an empty socket
            except OSError:
                n = _SRC_FAILED
            if n <= 0:
                break
            moved += n
            try:
                sent = _splice(r, dst, n, None, None, _SPLICE)
            except BlockingIOError:
                sent = 0
            except OSError:
                n = _DST_FAILED
                break
            if sent < n:
                pending = n - sent
                break
            reads -= 1
            if not reads or moved >= BULK_BYTES:
                break
        self.count += moved
        self.spliced += moved
        self.pending = pending
        if pending:
            return  # the destination is full: it says when it has room
        if n == 0:
            self._ended()
        elif n < _EMPTY:  # _SRC_FAILED, _DST_FAILED
            self.session.abort(self.reasons[0 if n == _SRC_FAILED else 1])
        else:
            # The source is empty; or a limit was reached, the source most likely not empty (it will say
            # so), but if it is, no event would come to give the pipe back, and an idle session must not
            # hold one.
            self._release()

    def flush(self) -> None:
        """Writes what is pending (the destination said it has room). A pipe it empties stays lent unless the
        source has ended: the one caller pumps next (the source most likely filled up meanwhile), and `pump`
        gives it back if it finds the source empty. Back to the pool and out again at once was an eighth of the
        interpreter's work per such event (`bench/relay_overhead.py --drain 1 --instructions`, 28,087 against
        24,780 instructions, when the event still read on into the pipe)."""
        try:
            pipe = self.pipe
            if pipe is not None:
                n = _splice(pipe.r, self.dst_fd, self.pending, None, None, _SPLICE)
            else:
                n = self.dst.send(self.buf)
                self.buf = self.buf[n:]
        except BlockingIOError:
            return
        except OSError:
            self.session.abort(self.reasons[1])
            return
        self.pending -= n
        if not self.pending and self.eof:
            self._release()
            self._shutdown()

    def _ended(self) -> None:
        """The source sent its FIN: the first FIN of a session is its reason."""
        if self.pipe is not None:
            self._release()
        self.eof = True
        session = self.session
        if session.reason is None:
            session.reason = self.reasons[2]
        self._shutdown()

    def _shutdown(self) -> None:
        if self.shut or self.pending:
            return
        self.shut = True
        other = self.reverse
        if other is not None and other.shut:
            return  # the session ends now, and close() sends this FIN
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone; its own event ends the session

    def _release(self) -> None:
        if self.pipe is not None and not self.pending:
            self.session.runtime.pipes.give(self.pipe)
            self.pipe = None

    def discard(self) -> None:
        """Gives the pipe back at the end of the session: pooled only if empty."""
        if self.pipe is not None:
            self.session.runtime.pipes.give(self.pipe, empty=not self.pending)
            self.pipe = None


class Session:
    """A client's connection through a virtual service to one real server."""

    __slots__ = ("runtime", "loop", "pool", "server_state", "vip", "vport", "source", "sport", "client", "server",
                 "cfd", "sfd", "up", "down", "tried", "started", "connect_at", "last_client", "last_server", "seen_in",
                 "seen_out", "reason", "connecting", "finished", "cmask", "smask")  # fmt: skip

    def __init__(self, runtime: ProxyRuntime, pool: Pool, server: ServerState, vip: str, vport: int,
                 client: socket.socket, source: str, sport: int):  # fmt: skip
        self.runtime = runtime
        self.loop = runtime.loop
        self.pool = pool
        self.server_state = server
        self.vip, self.vport = vip, vport
        self.source, self.sport = source, sport
        self.client = client
        self.cfd = client.fileno()
        self.server: socket.socket | None = None
        self.sfd = -1
        self.up: Direction | None = None
        self.down: Direction | None = None
        #: The real servers tried, in order.
        self.tried: tuple[str, ...] = ()
        self.started = self.connect_at = self.last_client = self.last_server = runtime.loop.now
        #: The byte counts each way when the idle sweep last looked, and when it last saw them change.
        self.seen_in = self.seen_out = 0
        self.reason: str | None = None
        self.connecting = False
        self.finished = False
        self.cmask = self.smask = 0  # what the loop waits for on each socket
        pool.counters.current += 1
        pool.counters.total += 1
        server.counters.current += 1
        server.counters.total += 1
        runtime.sessions.add(self)
        self.connect_server()

    def traffic(self) -> tuple[int, int, int]:
        """Bytes from the client, bytes to it, and of all those the bytes spliced, so far."""
        up, down = self.up, self.down
        if up is None or down is None:
            return 0, 0, 0
        return up.count, down.count, up.spliced + down.spliced

    # --- connecting ---------------------------------------------------------------------------------

    def connect_server(self) -> None:
        config = self.server_state.config
        self.tried += (config.label,)
        found = self.server_state.addresses.get(self.vport)
        if found is None:
            found = self.server_state.addresses[self.vport] = (
                socket.AF_INET6 if config.ip.version == 6 else socket.AF_INET,
                (str(config.ip), config.target_port(self.vport)),
            )
        family, address = found
        try:
            sock = _socket.socket(family, _STREAM_NONBLOCK)
        except OSError as e:  # out of descriptors: as good as refused, try another server or give up
            self.connect_failed(f"cannot open a socket: {e.strerror}")
            return
        # What arrives is sent on at once, as it came: the peer's segments already carry the sender's
        # own batching, and Nagle's wait (or autocorking) would only add latency and per-send work.
        sock.setsockopt(_TCP, _NODELAY, 1)
        err = sock.connect_ex(address)
        if err not in _CONNECTING:
            sock.close()
            self.connect_failed(os.strerror(err))
            return
        self.server, self.sfd = sock, sock.fileno()
        self.connecting = True
        self.connect_at = self.loop.now
        self.loop.add(self.sfd, OUT, self._connected)

    def connect_failed(self, why: str) -> None:
        if self.server is not None:
            self.loop.remove(self.sfd)
            self.server.close()
            self.server, self.sfd = None, -1
        self.connecting = False
        failed = self.server_state
        failed.counters.failed += 1
        nxt = None
        if len(self.tried) < MAX_ATTEMPTS:
            nxt = self.pool.choose(self.source, exclude=frozenset(self.tried))
        if nxt is None:
            self.abort(f"no real server reachable ({failed.label}: {why})")
            return
        self.runtime.log.line(
            f"{self.source}:{self.sport} {self.pool.service.label}: {failed.label} refused ({why}); "
            f"redispatched to {nxt.label}"
        )
        failed.counters.current -= 1
        nxt.counters.current += 1
        nxt.counters.total += 1
        self.server_state = nxt
        self.connect_server()

    def _connected(self, events: int) -> None:
        if events & (ERR | HUP):  # a failed connect sets them; a good one only OUT
            err = self.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.connect_failed(os.strerror(err) if err else "connection closed")
            return
        self.connecting = False
        self.last_client = self.last_server = self.loop.now
        cfd, sfd = self.cfd, self.sfd
        up = self.up = Direction(self, self.client, self.server, cfd, sfd, UPSTREAM)
        down = self.down = Direction(self, self.server, self.client, sfd, cfd, DOWNSTREAM)
        up.reverse, down.reverse = down, up
        loop = self.loop
        loop.add(sfd, RD, down.event)
        self.smask = RD
        loop.add(cfd, RD, up.event)
        self.cmask = RD
        # Most clients spoke while the connect was under way: read now rather than after another wait.
        up.event(IN)

    # --- ending -------------------------------------------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Ends the session with a FIN to both sides (both directions done, or an idle timeout)."""
        if self.reason is None:
            self.reason = reason
        self._finish(False)

    def expire(self, reason: str) -> None:
        """The sweep's verdict: a connect that took too long is redispatched, an idle session closed."""
        if self.connecting:
            self.connect_failed("connection timed out")
        else:
            self.close(reason)

    def abort(self, reason: str) -> None:
        """Ends the session with a reset to both sides (a reset seen, real server down, shutdown)."""
        if self.reason is None:
            self.reason = reason
        self._finish(True)

    def _finish(self, reset: bool) -> None:
        if self.finished:
            return
        self.finished = True
        runtime, loop = self.runtime, self.loop
        if reset:
            for sock in (self.client, self.server):
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                    except OSError:
                        pass
        # close() takes each socket out of the epoll set: no fd is ever shared.
        loop.forget(self.cfd)
        self.client.close()
        if self.server is not None:
            loop.forget(self.sfd)
            self.server.close()
        server, pool = self.server_state, self.pool
        server.counters.current -= 1
        pool.counters.current -= 1
        up, down = self.up, self.down
        bytes_in, bytes_out, spliced = self.traffic()
        if up is None or down is None:
            if self.reason in ("client closed", "client reset"):
                self.reason = f"{self.reason} before a real server answered"
        else:
            server.counters.add_traffic(bytes_in, bytes_out, spliced)
            pool.counters.add_traffic(bytes_in, bytes_out, spliced)
            for d in (up, down):
                if d.pipe is not None:
                    d.discard()
                d.session = d.reverse = None  # break the cycles now rather than in the collector
        runtime.sessions.discard(self)
        runtime.log.session(self.source, self.sport, self.vip, self.vport, pool.service.label, server.label,
                            bytes_in, bytes_out, loop.now - self.started, self.reason)  # fmt: skip

    def idle_reason(self, now: float) -> str | None:
        """Why this session should be closed for inactivity at `now`, if it should. Called by the idle
        sweep, which is what notices activity: bytes read since its last look count as activity at
        `now`, never earlier, so a session is closed no sooner than its timeout after its last byte, and
        at most two sweep periods later."""
        t = self.pool.service.timeouts
        if self.connecting:
            return "connect timeout" if now - self.connect_at >= t.connect else None
        up, down = self.up, self.down
        if up is not None and up.count != self.seen_in:
            self.seen_in, self.last_client = up.count, now
        if down is not None and down.count != self.seen_out:
            self.seen_out, self.last_server = down.count, now
        last = max(self.last_client, self.last_server)
        if now - last < min(t.client, t.server):
            return None
        return "client timeout" if self.last_client <= self.last_server else "server timeout"
