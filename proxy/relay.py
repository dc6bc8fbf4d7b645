"""One proxied connection: the client's end, the real server's end, and the session joining them.

The ends only translate socket events into session calls; the session owns the rules:
- the client is not read until the real server is connected (Twisted's portforward pattern), and each
  transport is then the other's streaming producer, so a slow reader throttles a fast writer and the
  proxy buffers at most one transport buffer per direction;
- a FIN is passed on as a FIN (half-close) once what came before it is written; a reset or an abort on
  either side aborts the other;
- a real server that refuses is retried on another eligible server (redispatch) before the client is
  given up on;
- idle timeouts are checked by the proxy's sweep, not by a timer per connection;
- the session ends once, with one reason, and one log line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from proxy.pool import Pool, ServerState

if TYPE_CHECKING:
    from proxy.service import ProxyRuntime

log = Logger(namespace="hapair.proxy")

#: Real servers tried for one client before it is refused (the first choice included).
MAX_ATTEMPTS = 3


@implementer(IHalfCloseableProtocol)
class _End(Protocol):
    side = ""

    def __init__(self, session: Session):
        self.session = session
        self.read_eof = False
        self.write_closed = False
        self.lost = False

    def readConnectionLost(self) -> None:
        self.session.eof_from(self)

    def writeConnectionLost(self) -> None:
        self.write_closed = True
        if self.read_eof:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        self.lost = True
        self.session.end_lost(self, reason)


class ClientEnd(_End):
    side = "client"

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self.session.connect_server()

    def dataReceived(self, data: bytes) -> None:
        s = self.session
        n = len(data)
        s.bytes_in += n
        s.pool.counters.bytes_in += n
        s.server_state.counters.bytes_in += n
        s.last_client = s.runtime.now
        s.server.transport.write(data)


class ServerEnd(_End):
    side = "server"

    def connectionMade(self) -> None:
        self.session.server_connected(self)

    def dataReceived(self, data: bytes) -> None:
        s = self.session
        n = len(data)
        s.bytes_out += n
        s.pool.counters.bytes_out += n
        s.server_state.counters.bytes_out += n
        s.last_server = s.runtime.now
        s.client.transport.write(data)


class _ServerFactory(ClientFactory):
    noisy = False

    def __init__(self, session: Session):
        self.session = session

    def buildProtocol(self, addr: object) -> ServerEnd:
        return ServerEnd(self.session)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.session.connect_failed(reason)


class Session:
    """A client's connection through a virtual service to one real server."""

    def __init__(
        self, runtime: ProxyRuntime, pool: Pool, server: ServerState, vip: str, vport: int, source: str, sport: int
    ):
        self.runtime = runtime
        self.pool = pool
        self.server_state = server
        self.vip, self.vport = vip, vport
        self.source, self.sport = source, sport
        self.client = ClientEnd(self)
        self.server: ServerEnd | None = None
        self.connector = None
        self.tried: set[str] = set()
        self.started = self.last_client = self.last_server = runtime.now
        self.bytes_in = self.bytes_out = 0
        self.reason: str | None = None
        self.aborting = self.closing = False
        self.finished = False
        pool.counters.current += 1
        pool.counters.total += 1
        server.counters.current += 1
        server.counters.total += 1
        runtime.sessions.add(self)

    # --- connecting ---------------------------------------------------------------------------------

    def connect_server(self) -> None:
        config = self.server_state.config
        self.tried.add(config.label)
        self.connector = self.runtime.reactor.connectTCP(
            str(config.ip),
            config.target_port(self.vport),
            _ServerFactory(self),
            timeout=self.pool.service.timeouts.connect,
        )

    def connect_failed(self, reason: Failure) -> None:
        self.connector = None
        if self.client.lost or self.aborting:
            self._maybe_finish()
            return
        failed = self.server_state
        failed.counters.failed += 1
        why = reason.getErrorMessage()
        nxt = None
        if len(self.tried) < MAX_ATTEMPTS:
            nxt = self.pool.choose(self.source, exclude=frozenset(self.tried))
        if nxt is None:
            self.reason = f"no real server reachable ({failed.label}: {why})"
            self.client.transport.abortConnection()
            return
        log.info(
            "{client} {vs}: {failed} refused ({why}); redispatched to {server}",
            client=f"{self.source}:{self.sport}", vs=self.pool.service.label, failed=failed.label, why=why,
            server=nxt.label,
        )  # fmt: skip
        failed.counters.current -= 1
        nxt.counters.current += 1
        nxt.counters.total += 1
        self.server_state = nxt
        self.connect_server()

    def server_connected(self, end: ServerEnd) -> None:
        self.connector = None
        self.server = end
        if self.client.lost or self.aborting:
            end.transport.abortConnection()
            return
        client_t, server_t = self.client.transport, end.transport
        client_t.registerProducer(server_t, True)
        server_t.registerProducer(client_t, True)
        self.last_server = self.runtime.now
        client_t.resumeProducing()

    # --- closing ------------------------------------------------------------------------------------

    def _peer(self, end: _End) -> _End | None:
        return self.server if end is self.client else self.client

    def eof_from(self, end: _End) -> None:
        """`end`'s socket sent a FIN: stop reading it and pass the FIN on after the data before it."""
        if end.read_eof:
            return
        end.read_eof = True
        if self.reason is None:
            self.reason = f"{end.side} closed"
        peer = self._peer(end)
        if peer is not None and not peer.lost:
            peer.transport.unregisterProducer()
            peer.transport.loseWriteConnection()
        if end.write_closed or peer is None or peer.lost:
            end.transport.loseConnection()

    def end_lost(self, end: _End, reason: Failure) -> None:
        clean = reason.check(error.ConnectionDone) is not None
        if self.reason is None:
            self.reason = f"{end.side} closed" if clean else f"{end.side} reset"
        peer = self._peer(end)
        if peer is not None and not peer.lost:
            if clean:
                peer.transport.unregisterProducer()
                peer.transport.loseConnection()
            else:
                peer.transport.abortConnection()
        elif end is self.client and self.connector is not None:
            self.connector.stopConnecting()
        self._maybe_finish()

    def expire(self, reason: str) -> None:
        """Closes an idle session: politely (FIN both ways) the first time, and by abort if it is still
        there at the next sweep (a peer that will not take what is left to write)."""
        if self.aborting or self.closing:
            self.abort(reason)
            return
        self.closing = True
        if self.reason is None:
            self.reason = reason
        for end in (self.client, self.server):
            if end is not None and not end.lost:
                end.transport.unregisterProducer()
                end.transport.loseConnection()
        if self.server is None:
            self.abort(reason)

    def abort(self, reason: str) -> None:
        """Ends the session now, both sides (idle timeout, server marked down, shutdown)."""
        if self.reason is None:
            self.reason = reason
        self.aborting = True
        for end in (self.client, self.server):
            if end is not None and not end.lost and end.transport is not None:
                end.transport.abortConnection()
        if self.connector is not None:
            self.connector.stopConnecting()

    def _maybe_finish(self) -> None:
        if self.finished or not self.client.lost:
            return
        if self.connector is not None or (self.server is not None and not self.server.lost):
            return
        self.finished = True
        runtime, server, pool = self.runtime, self.server_state, self.pool
        server.counters.current -= 1
        pool.counters.current -= 1
        runtime.sessions.discard(self)
        if self.server is None and self.reason in ("client closed", "client reset"):
            self.reason = f"{self.reason} before a real server answered"
        log.info(
            "{client} > {vip} > {server} in={bytes_in} out={bytes_out} {duration:.3f}s {reason}",
            client=f"{self.source}:{self.sport}",
            vip=f"{self.vip}:{self.vport}",
            server=f"{pool.service.label}/{server.label}",
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=runtime.now - self.started,
            reason=self.reason,
        )
        # Break the cycles between the session and its ends now rather than in the cycle collector.
        self.client.session = None
        if self.server is not None:
            self.server.session = None
        self.client = self.server = None

    def idle_reason(self, now: float) -> str | None:
        """Why this session should be closed for inactivity at `now`, if it should."""
        t = self.pool.service.timeouts
        last = max(self.last_client, self.last_server)
        if now - last < min(t.client, t.server):
            return None
        return "client timeout" if self.last_client <= self.last_server else "server timeout"
