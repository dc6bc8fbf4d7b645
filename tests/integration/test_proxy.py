"""The guide's virtual services through a real hapair daemon, with real servers and real clients.

lb1 runs the shipped default (moved onto the lab's addresses) plus a few services for edge cases; the
client host speaks HTTP, HTTPS, IMAP, POP3, SMTP and the RPC stand-in's protocol through the VIP.
"""

from __future__ import annotations

import email
import imaplib
import os
import poplib
import smtplib
import socket
import ssl
import time
import uuid
from collections import Counter

import pytest

from hapair.lab import CLIENT_EXTRA, HOSTS, VIP
from tests.integration.conftest import USERS, connect, greeting, lb1_alone, read_all, read_line

RPC_PORTS = (135, 60200, 60201)
ALLOWED_SMTP = "198.18.0.100-198.18.0.110"


def _test_services(doc: dict) -> None:
    services = {vs["label"]: vs for vs in doc["cluster"]["virtual_services"]}
    # 2:1 on CAS-WEB, so the split by weight is visible.
    services["CAS-WEB"]["real_servers"][0]["weight"] = 200
    services["HT-SMTP"]["allowed_sources"] = [ALLOWED_SMTP]
    standin = [{"label": "CAS1", "ip": HOSTS["cas1"], "port": 135}, {"label": "CAS2", "ip": HOSTS["cas2"], "port": 135}]
    doc["cluster"]["virtual_services"] += [
        {"label": "CAS-POP3", "ip": VIP, "ports": [110, 995], "health_check": {"kind": "pop3", "interval": "500ms"},
         "real_servers": [{"label": "CAS1", "ip": HOSTS["cas1"]}, {"label": "CAS2", "ip": HOSTS["cas2"]}]},
        {"label": "SHORT-IDLE", "ip": VIP, "ports": [8135], "timeouts": {"client": "1s", "server": "1s"},
         "real_servers": standin},
        {"label": "NONE-UP", "ip": VIP, "ports": [8136],
         "real_servers": [dict(s, state="halt") for s in standin]},
        {"label": "ONE-CONN", "ip": VIP, "ports": [8137], "maxconn": 1, "real_servers": standin},
        {"label": "V6", "ip": "::1", "ports": [8138], "real_servers": standin},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lb1(lab):
    yield from lb1_alone(lab, _lab_config(lab), r"HT-SMTP listening", 80)


def _lab_config(lab) -> str:
    from hapair.lab import guide_config

    return guide_config("lb1", lab.dir, _test_services)


def curl(lab, url: str, source: str, *extra: str) -> str:
    result = lab.run("client", "curl", "-sS", "--max-time", "5", "--interface", source, *extra, url, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_http_splits_new_clients_by_weight(lab, lb1):
    # CAS-WEB persists by source IP, so each new source is one new balancing decision.
    seen = Counter(curl(lab, f"http://{VIP}/", source) for source in CLIENT_EXTRA[:30])
    assert seen == {"CAS1": 20, "CAS2": 10}
    # And each of those sources keeps its server.
    again = Counter(curl(lab, f"http://{VIP}/", source) for source in CLIENT_EXTRA[:30])
    assert again == seen


def test_https_passes_through_to_the_real_servers_certificate(lab, lb1):
    body = curl(lab, "https://cas.lab.test/", CLIENT_EXTRA[0], "-k", "--resolve", f"cas.lab.test:443:{VIP}")
    assert body in ("CAS1", "CAS2")
    # Same source on 443 as on 80: the same server, since persistence is per virtual service.
    assert body == curl(lab, f"http://{VIP}/", CLIENT_EXTRA[0])
    s_client = lab.run("client", "openssl", "s_client", "-connect", f"{VIP}:443", "-servername", "cas.lab.test",
                       "-brief", timeout=10, check=False)  # fmt: skip
    assert "CN = cas.lab.test" in s_client.stdout + s_client.stderr


def test_rpc_client_reaches_the_same_cas_on_all_three_ports(lab, lb1, client):
    servers = set()
    for source in CLIENT_EXTRA[10:16]:
        answers = [client(greeting, VIP, port, source) for port in RPC_PORTS]
        labels = {a.split()[0] for a in answers}
        assert len(labels) == 1, answers
        assert [a.split()[1] for a in answers] == [str(p) for p in RPC_PORTS]  # blank port: the client's port
        servers |= labels
    assert servers == {"CAS1", "CAS2"}


def test_imap_and_imaps_login_through_the_vip(client, lb1):
    def imap(ssl_port: bool) -> tuple:
        ctx = ssl._create_unverified_context()
        m = imaplib.IMAP4_SSL(VIP, 993, ssl_context=ctx) if ssl_port else imaplib.IMAP4(VIP, 143)
        m.login("alice", USERS["alice"])
        status = m.select("INBOX")
        m.logout()
        return status

    assert client(imap, False)[0] == "OK"
    assert client(imap, True)[0] == "OK"


def test_pop3_and_pop3s_login_through_the_vip(client, lb1):
    def pop(ssl_port: bool) -> tuple:
        if ssl_port:
            m = poplib.POP3_SSL(VIP, 995, context=ssl._create_unverified_context(), timeout=5)
        else:
            m = poplib.POP3(VIP, 110, timeout=5)
        m.user("bob")
        m.pass_(USERS["bob"])
        stat = m.stat()
        m.quit()
        return stat

    assert client(pop, False) == (0, 0)
    assert client(pop, True) == (0, 0)


def test_mail_sent_through_the_vip_arrives(lab, client, lb1):
    subject = f"through hapair {uuid.uuid4()}"

    def send() -> None:
        with smtplib.SMTP(VIP, 25, local_hostname="client.lab.test", timeout=5) as smtp:
            smtp.sendmail("admin@lab.test", ["alice@lab.test"], f"Subject: {subject}\r\n\r\nhello\r\n")

    client(send)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for maildir in lab.maildirs.values():
            new = os.path.join(maildir, "new")
            for name in os.listdir(new) if os.path.isdir(new) else ():
                with open(os.path.join(new, name)) as f:
                    if email.message_from_file(f)["Subject"] == subject:
                        return
        time.sleep(0.05)
    pytest.fail("the mail did not arrive in either server's maildir")


def test_smtp_source_outside_the_allow_list_is_refused_at_once(client, lb1):
    outside, inside = "198.18.0.120", "198.18.0.105"
    offset = len(lb1.log())

    def attempt(source: str) -> str:
        try:
            with smtplib.SMTP(VIP, 25, local_hostname="x.lab.test", timeout=5, source_address=(source, 0)) as smtp:
                return str(smtp.noop()[0])
        except smtplib.SMTPServerDisconnected as e:
            return f"disconnected: {e}"

    started = time.monotonic()
    assert client(attempt, outside).startswith("disconnected")
    assert time.monotonic() - started < 2  # refused, not left to time out
    assert client(attempt, inside) == "250"
    lb1.wait_log(rf"{outside}:\d+ > {VIP}:25 refused by HT-SMTP: source not allowed", after=offset)


def test_idle_connection_is_closed_after_the_timeout(client, lb1):
    offset = len(lb1.log())

    def idle() -> tuple[float, bytes]:
        s = connect(VIP, 8135, timeout=10)
        read_line(s)
        started = time.monotonic()
        rest = read_all(s)  # returns when the proxy closes the connection
        return time.monotonic() - started, rest

    waited, rest = client(idle)
    assert rest == b""
    assert 1.0 <= waited < 3.0  # timeout 1s, swept every 0.125s
    lb1.wait_log(r"> SHORT-IDLE/CAS\d .* (client|server) timeout", after=offset)


def test_active_connection_outlives_the_idle_timeout(client, lb1):
    def chatty() -> int:
        s = connect(VIP, 8135, timeout=5)
        read_line(s)
        for i in range(12):  # 2.4 s of traffic through a 1 s idle timeout
            s.sendall(b"ping %d\n" % i)
            assert read_line(s) == "ping %d\n" % i
            time.sleep(0.2)
        s.close()
        return i

    assert client(chatty) == 11


def test_half_close_passes_through_both_ways(client, lb1):
    def half_close() -> bytes:
        s = connect(VIP, 135, CLIENT_EXTRA[20])
        s.sendall(b"one\ntwo\n")
        s.shutdown(socket.SHUT_WR)  # our FIN reaches the server, which still answers, then closes
        return read_all(s)

    lines = client(half_close).decode().splitlines()
    label = lines[0].split()[0]
    assert lines == [f"{label} 135", "one", "two", f"bye {label}"]


def test_a_client_that_stops_reading_does_not_grow_the_proxys_memory(client, lb1):
    """The server streams 1 GB while the client reads nothing for 3 s: flow control must hold the
    server back instead of the proxy buffering what the client will not take. The stream is bulk, so
    this is the zero-copy path: the pipe fills, and then the direction stops reading. Nor may the proxy
    spin meanwhile (a full pipe makes splice fail as an empty socket does, while the socket stays
    readable): it waits for the client, and uses next to no CPU."""
    before = lb1.rss_kib()
    spliced_before = lb1.service("CAS-RPC")["spliced"]
    cpu_before = lb1.cpu_seconds()

    def stalled() -> int:
        s = connect(VIP, 60200, CLIENT_EXTRA[21])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        read_line(s)
        s.sendall(b"STREAM 1000000000\n")
        time.sleep(3)
        s.settimeout(5)
        got = len(s.recv(65536))
        s.close()
        return got

    assert client(stalled) > 0
    cpu = lb1.cpu_seconds() - cpu_before
    assert cpu < 1.5, f"the proxy used {cpu:.2f} s of CPU in the 3 s its client did not read"
    growth_kib = lb1.rss_kib() - before
    assert growth_kib < 16 * 1024, f"proxy grew by {growth_kib} KiB while the client was not reading"
    rpc = lb1.service("CAS-RPC")
    assert rpc["bytes_out"] < 100_000_000  # the server was held back, not drained into the proxy
    assert rpc["spliced"] > spliced_before


def test_no_server_available_is_refused_at_once(client, lb1):
    def attempt() -> tuple[float, bytes]:
        started = time.monotonic()
        s = connect(VIP, 8136)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        return time.monotonic() - started, data

    elapsed, data = client(attempt)
    assert data == b"" and elapsed < 1.0
    lb1.wait_log(r"refused by NONE-UP: no real server available")


def test_service_at_maxconn_refuses_the_next_client_at_once(client, lb1):
    # maxconn is shared out, ceil(1 / workers) = 1 for each worker, and a service without persistence sends
    # each connection to any worker: the node admits one connection per worker at most, then refuses.
    workers = len(lb1.status()["workers"]) or 1

    def attempt() -> tuple[list[bytes], float | None]:
        held, hellos = [], []
        try:
            for _ in range(workers + 1):
                s = connect(VIP, 8137)
                started = time.monotonic()
                try:
                    data = s.recv(100)
                except ConnectionResetError:
                    data = b""
                if not data:
                    s.close()
                    return hellos, time.monotonic() - started
                held.append(s)
                hellos.append(data)
            return hellos, None
        finally:
            for s in held:
                s.close()

    hellos, elapsed = client(attempt)
    assert elapsed is not None and elapsed < 1.0, hellos
    assert 1 <= len(hellos) <= workers and all(h.startswith(b"CAS") for h in hellos)
    lb1.wait_log(r"refused by ONE-CONN: maxconn 1 reached")


def test_ipv6_virtual_service(lab, lb1):
    answer = lab.call("lb1", greeting, "::1", 8138)
    assert answer.split()[0] in ("CAS1", "CAS2") and answer.split()[1] == "135"


def test_one_log_line_per_finished_connection(client, lb1):
    offset = len(lb1.log())
    source = CLIENT_EXTRA[22]

    def one() -> None:
        s = connect(VIP, 60201, source)
        read_line(s)
        s.sendall(b"12345\n")
        read_line(s)
        s.close()

    client(one)
    m = lb1.wait_log(
        rf"{source}:\d+ > {VIP}:60201 > CAS-RPC/(CAS\d) in=6 out=(\d+) (\d+\.\d+)s client closed", after=offset
    )
    # Greeting, echo, and the stand-in's goodbye after the client's FIN.
    assert int(m.group(2)) == len(f"{m.group(1)} 60201\n12345\nbye {m.group(1)}\n")


def test_drain_keeps_persistent_clients_and_halt_moves_them(client, lb1):
    source = CLIENT_EXTRA[25]
    stuck = client(greeting, VIP, 135, source).split()[0]
    other = "CAS1" if stuck == "CAS2" else "CAS2"
    try:
        result = lb1.cli("drain", stuck, "--vip", "CAS-RPC")
        assert result.returncode == 0 and f"CAS-RPC/{stuck}: drain" in result.stdout
        assert client(greeting, VIP, 60200, source).split()[0] == stuck
        assert {client(greeting, VIP, 135, s).split()[0] for s in CLIENT_EXTRA[26:30]} == {other}
        assert lb1.cli("halt", stuck, "--vip", "CAS-RPC").returncode == 0
        assert client(greeting, VIP, 135, source).split()[0] == other
        assert lb1.service("CAS-RPC")["servers"][0 if stuck == "CAS1" else 1]["admin"] == "halt"
    finally:
        assert lb1.cli("online", stuck, "--vip", "CAS-RPC").returncode == 0


def test_drain_with_clear_persistence_moves_its_clients(client, lb1):
    source = "198.18.0.100"
    stuck = client(greeting, VIP, 135, source).split()[0]
    try:
        assert lb1.cli("drain", stuck, "--vip", "CAS-RPC", "--clear-persistence").returncode == 0
        assert client(greeting, VIP, 135, source).split()[0] != stuck
    finally:
        assert lb1.cli("online", stuck, "--vip", "CAS-RPC").returncode == 0


def test_killing_a_server_moves_new_clients_within_fall_x_interval(lab, client, lb1):
    """RPC stand-in on cas2 is killed; fall 2 x interval 500 ms: down within about a second."""
    offset = len(lb1.log())
    standin = next(p for p in lab.procs if p.name == "standin-cas2" and p.alive())
    standin.stop(signal_kill := 9)
    killed = time.monotonic()
    lb1.wait_log(r"CAS-RPC/CAS2 is DOWN", after=offset, timeout=5)
    noticed = time.monotonic() - killed
    # fall x interval, plus one interval for the phase of the check loop and a check timeout's slack.
    assert noticed <= 2 * 0.5 + 0.5 + 0.4 + 0.5, noticed
    assert {client(greeting, VIP, 135, s).split()[0] for s in CLIENT_EXTRA[:8]} == {"CAS1"}
    status = lb1.cli("status")
    assert status.returncode == 3 and "CAS-RPC/CAS2 down" in status.stdout  # degraded, for monitoring
    lab.procs.remove(standin)
    lab.start_standin("cas2", "CAS2", RPC_PORTS)
    lb1.wait_log(r"CAS-RPC/CAS2 is UP", after=offset, timeout=5)
    assert signal_kill == 9


def test_status_counts_connections_and_bytes(lb1):
    status = lb1.status()
    web = next(vs for vs in status["virtual_services"] if vs["label"] == "CAS-WEB")
    assert web["total"] >= 60 and web["current"] == 0 and web["persistence_entries"] >= 30
    assert sum(s["total"] for s in web["servers"]) == web["total"]
    assert web["bytes_in"] > 0 and web["bytes_out"] > 0
    smtp = next(vs for vs in status["virtual_services"] if vs["label"] == "HT-SMTP")
    assert smtp["refused"] >= 1


def _echo_bulk(source: str, line_size: int, lines: int) -> tuple[bytes, bytes]:
    """Sends `lines` lines of `line_size` bytes to the stand-in's echo while reading in a thread, then
    half-closes; returns (greeting, everything after it)."""
    import threading

    s = connect(VIP, 60201, source, timeout=20)
    greeting_line = read_line(s).encode()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(s)))
    reader.start()
    line = b"y" * (line_size - 1) + b"\n"
    for _ in range(lines):
        s.sendall(line)
    s.shutdown(socket.SHUT_WR)
    reader.join(30)
    s.close()
    return greeting_line, got[0] if got else b""


def test_half_close_passes_through_both_ways_under_zero_copy(client, lb1):
    """4 MiB each way in 64 KiB lines: both directions splice; the client's FIN reaches the server only
    after every byte before it, and the server's reply after the FIN still arrives."""
    before = lb1.service("CAS-RPC")["spliced"]
    greeting_line, rest = client(_echo_bulk, CLIENT_EXTRA[22], 65536, 64)
    label = greeting_line.split()[0].decode()
    assert rest == b"y" * 65535 + b"\n" + (b"y" * 65535 + b"\n") * 63 + f"bye {label}\n".encode()
    spliced = lb1.service("CAS-RPC")["spliced"] - before
    assert spliced >= 2 * 60 * 65536, f"only {spliced} bytes went through pipes"


def test_idle_timeout_closes_a_connection_that_moved_bulk_data(client, lb1):
    def bulk_then_idle() -> tuple[int, float, bytes]:
        s = connect(VIP, 8135, CLIENT_EXTRA[23], timeout=10)
        read_line(s)
        s.sendall(b"STREAM 2000000\n")
        got = 0
        while got < 2000000:
            got += len(s.recv(1 << 20))
        started = time.monotonic()
        rest = read_all(s)  # returns when the proxy closes the idle connection
        return got, time.monotonic() - started, rest

    before = lb1.service("SHORT-IDLE")["spliced"]
    got, waited, rest = client(bulk_then_idle)
    assert got == 2000000 and rest == b""
    assert 1.0 <= waited < 3.0
    assert lb1.service("SHORT-IDLE")["spliced"] - before >= 1_000_000
