"""Health-check probes on a fake transport: what each kind accepts and refuses, and its time limit."""

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from hapair.config import CheckKind, HealthCheck
from proxy.checks import CheckFailed, probe


def run_probe(kind: CheckKind, *chunks: bytes, **kw):
    reactor = MemoryReactorClock()
    check = HealthCheck(kind=kind, timeout=2.0, **kw)
    d = probe(reactor, check, "198.18.0.20", 25)
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("198.18.0.20", 25, 2.0)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    for chunk in chunks:
        proto.dataReceived(chunk)
    results = []
    d.addBoth(results.append)
    return results, transport, reactor, proto


def outcome(results):
    assert len(results) == 1, results
    if isinstance(results[0], Failure):
        results[0].trap(CheckFailed)
        return results[0].getErrorMessage()
    return "pass"


@pytest.mark.parametrize(
    "kind, greeting, goodbye",
    [(CheckKind.SMTP, b"220 mail ESMTP\r\n", b"QUIT\r\n"), (CheckKind.IMAP, b"* OK Dovecot ready.\r\n", b"a1 LOGOUT\r\n"),
     (CheckKind.POP3, b"+OK Dovecot ready.\r\n", b"QUIT\r\n")],
)  # fmt: skip
def test_banner_kinds_pass_on_their_greeting_and_say_goodbye(kind, greeting, goodbye):
    results, transport, _, _ = run_probe(kind, greeting[:5], greeting[5:])
    assert outcome(results) == "pass"
    assert transport.value() == goodbye and transport.disconnecting


@pytest.mark.parametrize(
    "kind, greeting",
    [(CheckKind.SMTP, b"554 go away\r\n"), (CheckKind.IMAP, b"* BYE shutting down\r\n"), (CheckKind.POP3, b"-ERR no\r\n")],
)  # fmt: skip
def test_banner_kinds_fail_on_a_wrong_greeting(kind, greeting):
    results, _, _, _ = run_probe(kind, greeting)
    assert "greeting" in outcome(results)


def test_connect_kind_passes_on_connection_and_sends_nothing():
    results, transport, _, _ = run_probe(CheckKind.CONNECT)
    assert outcome(results) == "pass" and transport.value() == b"" and transport.disconnecting


@pytest.mark.parametrize("status, ok", [(b"200 OK", True), (b"302 Found", True), (b"404 Not Found", False),
                                        (b"503 Service Unavailable", False)])  # fmt: skip
def test_http_kind_reads_the_status_line(status, ok):
    results, transport, _, _ = run_probe(CheckKind.HTTP, b"HTTP/1.1 " + status + b"\r\nServer: x\r\n\r\n",
                                         http_path="/owa/healthcheck.htm", http_host="mail.lab.test")  # fmt: skip
    assert transport.value().startswith(b"GET /owa/healthcheck.htm HTTP/1.0\r\nHost: mail.lab.test\r\n")
    assert (outcome(results) == "pass") is ok


def test_garbage_without_end_of_line_fails_after_4_kib():
    results, transport, _, _ = run_probe(CheckKind.SMTP, b"x" * 5000)
    assert "no end of line" in outcome(results)


def test_closed_before_answering_fails():
    results, _, _, proto = run_probe(CheckKind.SMTP)
    proto.connectionLost(Failure(ConnectionError("reset")))
    assert "closed before answering" in outcome(results)


def test_silence_fails_at_the_timeout_and_leaves_no_timer():
    results, _, reactor, _ = run_probe(CheckKind.IMAP)
    reactor.advance(1.99)
    assert results == []
    reactor.advance(0.01)
    assert "no answer within 2s" in outcome(results)
    assert reactor.getDelayedCalls() == []


def test_refused_connection_fails():
    reactor = MemoryReactorClock()
    d = probe(reactor, HealthCheck(kind=CheckKind.CONNECT), "198.18.0.21", 80)
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
    results = []
    d.addBoth(results.append)
    assert "refused" in outcome(results)
    assert reactor.getDelayedCalls() == []
