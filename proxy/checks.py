"""Health checks of real servers: one probe per kind, and the monitor that runs them on a schedule.

A probe connects to the server's check port and passes on what the kind expects: the connection itself
(connect), a greeting (SMTP `220`, IMAP `* OK`, POP3 `+OK`), or an HTTP status line below 400. It then
says goodbye in the protocol's own words so the server logs a clean session, not an error.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, error
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from hapair.config import CheckKind, HealthCheck

#: kind -> (what the greeting starts with, what ends the session politely)
_GREETINGS = {
    CheckKind.SMTP: (b"220", b"QUIT\r\n"),
    CheckKind.IMAP: (b"* OK", b"a1 LOGOUT\r\n"),
    CheckKind.POP3: (b"+OK", b"QUIT\r\n"),
}
_MAX_LINE = 4096


class CheckFailed(Exception):
    pass


class _Probe(Protocol):
    def __init__(self, check: HealthCheck, host: str, done: defer.Deferred):
        self.check, self.host, self.done = check, host, done
        self.buffer = b""

    def _finish(self, failure_reason: str | None) -> None:
        if self.done.called:
            return
        if failure_reason is None:
            self.done.callback(None)
        else:
            self.done.errback(CheckFailed(failure_reason))

    def connectionMade(self) -> None:
        kind = self.check.kind
        if kind is CheckKind.CONNECT:
            self._finish(None)
            self.transport.loseConnection()
        elif kind is CheckKind.HTTP:
            host = self.check.http_host or self.host
            self.transport.write(
                f"GET {self.check.http_path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: hapair-check\r\n"
                f"Connection: close\r\n\r\n".encode()
            )

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer:
            if len(self.buffer) > _MAX_LINE:
                self._finish("no end of line in the first 4 KiB")
                self.transport.abortConnection()
            return
        line = self.buffer.split(b"\n", 1)[0].rstrip(b"\r")
        kind = self.check.kind
        if kind is CheckKind.HTTP:
            parts = line.split()
            ok = len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() and int(parts[1]) < 400
            self._finish(None if ok else f"HTTP status line {line[:80]!r}")
            self.transport.loseConnection()
        else:
            expected, goodbye = _GREETINGS[kind]
            ok = line.startswith(expected)
            self._finish(None if ok else f"greeting {line[:80]!r}, expected {expected.decode()}")
            self.transport.write(goodbye)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        self._finish(f"closed before answering: {reason.getErrorMessage()}")


class _ProbeFactory(ClientFactory):
    noisy = False

    def __init__(self, check: HealthCheck, host: str, done: defer.Deferred):
        self.check, self.host, self.done = check, host, done

    def buildProtocol(self, addr: object) -> _Probe:
        return _Probe(self.check, self.host, self.done)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(CheckFailed(reason.getErrorMessage()))


def probe(reactor: object, check: HealthCheck, host: str, port: int) -> defer.Deferred:
    """Fires None when the server passes, or fails with `CheckFailed` saying why, within check.timeout."""
    done: defer.Deferred = defer.Deferred()
    connector = reactor.connectTCP(host, port, _ProbeFactory(check, host, done), timeout=check.timeout)

    def too_slow() -> None:
        if not done.called:
            done.errback(CheckFailed(f"no answer within {check.timeout:g}s"))
            connector.disconnect()

    timer = reactor.callLater(check.timeout, too_slow)
    done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
    return done


Prober = Callable[[object, HealthCheck, str, int], defer.Deferred]
