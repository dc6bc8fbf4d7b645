"""Replication between two real daemons: pairing, sync, catch-up, refusals, persistence across failover,
and bad input sent for real to the replication port."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import time

import pytest
import yaml

from hapair.lab import HOSTS, VIP, pair_config
from replication.identity import ensure_identity
from replication.service import PORT
from tests.integration.conftest import Node, greeting
from tests.integration.test_failover import points_at, wait_for


def edit(path: str, change) -> None:
    with open(path) as f:
        doc = yaml.safe_load(f)
    change(doc)
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)


def rep(node: Node) -> dict:
    return node.status()["replication"]


def node_part(path: str) -> str:
    with open(path) as f:
        text = f.read()
    return text[: text.index("\ncluster:")]


@pytest.fixture
def nodes(lab, tmp_path):
    """Starts unpaired nodes in fresh state directories; pairs them on request."""
    state = os.path.join(lab.dir, f"rep-{tmp_path.name}")
    os.makedirs(state)
    started: dict[str, Node] = {}

    def start(host: str) -> Node:
        node = Node(lab, host, pair_config(host, state, paired=False), os.path.join(state, f"{host}.yaml"))
        started[host] = node
        node.wait_log(r"cluster: ")
        return node

    def pair() -> tuple[Node, Node]:
        lb1, lb2 = start("lb1"), start("lb2")
        result = lb1.cli("pair", "add", HOSTS["lb2"], "--password-file", os.path.join(state, "lb2", "admin.pw"))
        assert result.returncode == 0, result.stderr
        assert f"paired with lb2 at {HOSTS['lb2']}" in result.stdout
        wait_for(lambda: rep(lb1)["sync"] == "in sync" and rep(lb2)["sync"] == "in sync", 5, "in sync")
        wait_for(lambda: lab.holds("lb1", VIP), 5, "lb1 master")
        return lb1, lb2

    start.pair, start.state = pair, state
    yield start
    for node in started.values():
        node.stop()
    lab.del_address("lb1", VIP, 32)
    lab.del_address("lb2", VIP, 32)


def test_pairing_shares_the_heartbeat_key_and_pins_both_certificates(lab, nodes):
    lb1, lb2 = nodes.pair()
    for node, peer in ((lb1, "lb2"), (lb2, "lb1")):
        status = node.status()
        assert status["replication"]["paired"] and status["cluster"]["paired"]
        assert status["cluster"]["peer"]["alive"] and status["cluster"]["peer"]["config_in_sync"]
        assert os.path.exists(os.path.join(nodes.state, node.host, "peer.crt"))
    assert rep(lb1)["version"] == rep(lb2)["version"] and rep(lb1)["digest"] == rep(lb2)["digest"]
    with open(os.path.join(nodes.state, "lb1", "heartbeat.key")) as a, open(os.path.join(nodes.state, "lb2", "heartbeat.key")) as b:
        assert a.read() == b.read()


def test_a_wrong_password_is_refused_and_guessing_is_slowed_down(lab, nodes):
    lb1, lb2 = nodes("lb1"), nodes("lb2")
    wrong = os.path.join(nodes.state, "wrong.pw")
    with open(wrong, "w") as f:
        f.write("guess")
    for _ in range(3):
        result = lb1.cli("pair", "add", HOSTS["lb2"], "--password-file", wrong)
        assert result.returncode == 1 and "wrong password" in result.stderr
    right = os.path.join(nodes.state, "lb2", "admin.pw")
    result = lb1.cli("pair", "add", HOSTS["lb2"], "--password-file", right)
    assert result.returncode == 1 and "too many failed attempts" in result.stderr
    assert not rep(lb2)["paired"] and not rep(lb1)["paired"]
    time.sleep(2.1)
    assert lb1.cli("pair", "add", HOSTS["lb2"], "--password-file", right).returncode == 0


def test_a_change_on_the_master_is_applied_on_the_slave(lab, nodes, client):
    # How fast is a benchmark's question (bench/replication_latency.py); this one is whether it arrives.
    lb1, lb2 = nodes.pair()
    before = node_part(lb2.config)
    offset = len(lb2.log())
    standin = [{"label": "CAS1", "ip": HOSTS["cas1"], "port": 135}, {"label": "CAS2", "ip": HOSTS["cas2"], "port": 135}]
    edit(lb1.config, lambda d: d["cluster"]["virtual_services"].append(
        {"label": "NEW-RPC", "ip": VIP, "ports": [8140], "real_servers": standin}))
    assert lb1.cli("reload").returncode == 0
    wait_for(lambda: any(vs["label"] == "NEW-RPC" for vs in lb2.status()["virtual_services"]), 10, "lb2 applies")
    lb2.wait_log(r"applied version 2 from lb1", after=offset)
    assert rep(lb2)["version"] == rep(lb1)["version"] == 2
    assert node_part(lb2.config) == before  # the slave's node-local settings survive the sync
    assert "NEW-RPC" in open(lb2.config).read()
    # Serving on the slave: hand it the VIPs and use the new service.
    assert lb1.cli("failover").returncode == 0
    assert client(greeting, VIP, 8140).split()[1] == "135"
    lb2.wait_log(r"> 198.18.0.10:8140 > NEW-RPC/CAS\d")


def test_a_paired_slave_refuses_local_cluster_changes(lab, nodes):
    lb1, lb2 = nodes.pair()
    edit(lb2.config, lambda d: d["cluster"]["virtual_services"].pop())
    result = lb2.cli("reload")
    assert result.returncode == 1 and "change the cluster section on the master (lb1)" in result.stderr
    # HA timers and port must change on both nodes at once: even the master refuses them on reload.
    edit(lb1.config, lambda d: d["cluster"]["ha"].update(interval="100ms"))
    result = lb1.cli("reload")
    assert result.returncode == 1 and "restart both daemons" in result.stderr


def test_a_slave_that_was_down_catches_up(lab, nodes):
    lb1, lb2 = nodes.pair()
    lb2.stop()
    for timeout in ("2h", "3h", "4h"):
        edit(lb1.config, lambda d, t=timeout: d["cluster"]["virtual_services"][0]["timeouts"].update(client=t))
        assert lb1.cli("reload").returncode == 0
    assert rep(lb1)["version"] == 4
    lb2 = nodes("lb2")
    wait_for(lambda: rep(lb2)["version"] == 4 and rep(lb2)["sync"] == "in sync", 5, "lb2 catches up")
    assert "client: 4h" in open(lb2.config).read()
    assert rep(lb2)["digest"] == rep(lb1)["digest"]


def test_a_configuration_the_slave_cannot_apply_leaves_it_on_the_old_one(lab, nodes):
    lb1, lb2 = nodes.pair()

    def hold() -> socket.socket:
        s = socket.socket()
        s.bind(("0.0.0.0", 8142))  # only on lb2: lb1 can bind it, lb2 cannot
        s.listen()
        return s

    taken = lab.call("lb2", hold)
    try:
        standin = [{"label": "CAS1", "ip": HOSTS["cas1"], "port": 135}]
        edit(lb1.config, lambda d: d["cluster"]["virtual_services"].append(
            {"label": "CLASH", "ip": VIP, "ports": [8142], "real_servers": standin}))
        assert lb1.cli("reload").returncode == 0
        wait_for(lambda: rep(lb1)["sync"].startswith("failed"), 3, "lb1 sees the refusal")
        assert "cannot listen on 198.18.0.10 port 8142" in rep(lb1)["sync"]
        assert rep(lb2)["version"] == 1 and "CLASH" not in open(lb2.config).read()
        assert [vs["label"] for vs in lb2.status()["virtual_services"]] == ["CAS-WEB", "CAS-RPC", "CAS-IMAP4", "HT-SMTP"]
        status = lb1.cli("status")
        assert status.returncode == 3 and "replication failed" in status.stdout
    finally:
        taken.close()


def test_persistence_and_drain_survive_a_failover(lab, nodes, client):
    lb1, lb2 = nodes.pair()
    sources = [f"198.18.0.{i}" for i in range(101, 109)]
    stuck = {src: client(greeting, VIP, 135, src).split()[0] for src in sources}
    assert set(stuck.values()) == {"CAS1", "CAS2"}
    assert lb1.cli("drain", "CAS1", "--vip", "CAS-RPC").returncode == 0
    assert lb1.cli("halt", "CAS1", "--vip", "CAS-WEB").returncode == 0
    assert lb1.cli("online", "CAS1", "--vip", "CAS-WEB").returncode == 0  # back online must replicate too
    time.sleep(0.5)  # one persistence flush (100 ms) and the admin snapshot
    lb1.proc.stop(9)
    wait_for(lambda: lab.holds("lb2", VIP), 3, "lb2 takes over")
    points_at(lab, "lb2")  # until the GARP lands, the dead lb1's kernel would answer with a reset
    after = {src: client(greeting, VIP, 135, src).split()[0] for src in sources}
    assert after == stuck  # every client on the same real server, through the other node
    services = {vs["label"]: {s["label"]: s["admin"] for s in vs["servers"]} for vs in lb2.status()["virtual_services"]}
    assert services["CAS-RPC"]["CAS1"] == "drain" and services["CAS-WEB"]["CAS1"] == "online"
    assert client(greeting, VIP, 135, "198.18.0.120").split()[0] == "CAS2"  # new clients avoid the drained one


# --- bad input, sent for real to the replication port --------------------------------------------


def amp_box(fields: dict[bytes, bytes]) -> bytes:
    out = b""
    for key, value in fields.items():
        out += struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value
    return out + b"\x00\x00"


def read_box(s) -> dict[bytes, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    box = {}
    while True:
        (n,) = struct.unpack("!H", exactly(2))
        if n == 0:
            return box
        key = exactly(n)
        (m,) = struct.unpack("!H", exactly(2))
        box[key] = exactly(m)


def tls_to(address: str, cert: str, key: str) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    s = ctx.wrap_socket(socket.create_connection((address, PORT), timeout=5))
    s.settimeout(5)
    return s


def json_arg(name: bytes, value) -> dict[bytes, bytes]:
    data = json.dumps(value).encode()
    return {name: b"1", name + b".0": data}


def test_bad_input_to_the_replication_port_is_refused_with_nothing_applied(lab, nodes, tmp_path):
    lb1, lb2 = nodes.pair()
    version = rep(lb2)["version"]
    intruder = ensure_identity(str(tmp_path / "intruder"), "lb1")  # claims lb1's name, not lb1's key

    def attempts() -> list[str]:
        seen = []
        # 1. Garbage instead of TLS.
        s = socket.create_connection((HOSTS["lb2"], PORT), timeout=5)
        # Not TLS at all (a partial TLS record would rightly be waited for, up to the handshake timeout).
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(3000))
        try:
            while s.recv(4096):  # a TLS alert may come first; then the connection must close
                pass
            seen.append("garbage: closed")
        except ConnectionResetError:
            seen.append("garbage: closed")
        except TimeoutError:
            seen.append("garbage: left open")
        s.close()
        # 2. A certificate that is not the pinned one: every replication command is refused.
        s = tls_to(HOSTS["lb2"], intruder.cert_path, intruder.key_path)
        doc = {"virtual_services": []}
        s.sendall(amp_box({b"_command": b"Push", b"_ask": b"1", b"version": b"99", b"digest": b"x", **json_arg(b"doc", doc)}))
        seen.append(read_box(s).get(b"_error_code", b"").decode())
        s.sendall(amp_box({b"_command": b"Offer", b"_ask": b"2", b"version": b"99", b"digest": b"x", b"master": b"True"}))
        seen.append(read_box(s).get(b"_error_code", b"").decode())
        # 3. An oversized message: the connection is dropped.
        big = amp_box({b"_command": b"Persist", b"_ask": b"3"} | {b"k%d" % i: b"x" * 60000 for i in range(200)})
        try:
            s.sendall(big)
            read_box(s)
            seen.append("oversized: answered")
        except (ConnectionError, ssl.SSLError, OSError):
            seen.append("oversized: dropped")
        s.close()
        # 4. The real peer's identity, replaying an older version: refused as older.
        state = os.path.join(nodes.state, "lb1")
        s = tls_to(HOSTS["lb2"], os.path.join(state, "node.crt"), os.path.join(state, "node.key"))
        s.sendall(amp_box({b"_command": b"Push", b"_ask": b"4", b"version": b"0", b"digest": b"x", **json_arg(b"doc", doc)}))
        answer = read_box(s)
        seen.append(answer.get(b"_error_code", b"").decode() + " " + answer.get(b"_error_description", b"").decode())
        # 5. The right version number with a document that does not match its digest.
        s.sendall(amp_box({b"_command": b"Push", b"_ask": b"5", b"version": b"%d" % (version + 1), b"digest": b"x",
                           **json_arg(b"doc", doc)}))  # fmt: skip
        answer = read_box(s)
        seen.append(answer.get(b"_error_code", b"").decode() + " " + answer.get(b"_error_description", b"").decode())
        s.close()
        # 6. A truncated TLS record: nothing happens.
        s = socket.create_connection((HOSTS["lb2"], PORT), timeout=5)
        s.sendall(b"\x16\x03\x01\x02\x00\x01")
        s.close()
        # 7. A partial TLS record, then silence: dropped by the handshake timeout, not held forever.
        s = socket.create_connection((HOSTS["lb2"], PORT), timeout=15)
        s.sendall(b"\x16\x03\x01\x40\x00")
        started = time.monotonic()
        try:
            s.recv(100)
            seen.append("stalled handshake: dropped" if time.monotonic() - started < 14 else "stalled: late")
        except TimeoutError:
            seen.append("stalled handshake: held open")
        except ConnectionResetError:
            seen.append("stalled handshake: dropped")
        s.close()
        return seen

    seen = lab.call("lb1", attempts)
    assert seen[0] == "garbage: closed"
    assert seen[6] == "stalled handshake: dropped"
    assert seen[1:3] == ["NOT_PAIRED", "NOT_PAIRED"]
    assert seen[3] == "oversized: dropped"
    assert seen[4].startswith("PUSH_REFUSED") and "is older" in seen[4]
    assert seen[5].startswith("PUSH_REFUSED") and "does not match its digest" in seen[5]
    assert lb2.proc.alive() and rep(lb2)["version"] == version
    assert [vs["label"] for vs in lb2.status()["virtual_services"]] == ["CAS-WEB", "CAS-RPC", "CAS-IMAP4", "HT-SMTP"]
    assert rep(lb1)["sync"] == "in sync"  # the real channel is unaffected


def test_pair_remove_is_refused_while_the_peer_runs_and_then_forgets_it(lab, nodes):
    lb1, lb2 = nodes.pair()
    refused = lb1.cli("pair", "remove")
    assert refused.returncode == 1 and "lb2 is still running" in refused.stderr
    lb2.stop()
    wait_for(lambda: not lb1.status()["cluster"]["peer"]["alive"], 3, "lb1 notices lb2 is gone")
    removed = lb1.cli("pair", "remove")
    assert removed.returncode == 0 and "unpaired from lb2" in removed.stdout
    status = lb1.status()
    assert not status["replication"]["paired"] and not status["cluster"]["paired"]
    assert not os.path.exists(os.path.join(nodes.state, "lb1", "peer.crt"))
    assert not os.path.exists(os.path.join(nodes.state, "lb1", "heartbeat.key"))
    assert lb1.cli("pair", "remove").returncode == 1  # nothing left to remove
