"""Operating a running node: binding before the VIP exists, reloads, the CLI's errors, health shutdowns."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

import pytest
import yaml

from hapair.lab import HOSTS, VIP
from tests.integration.conftest import Node, connect, greeting, read_line

STANDIN = [{"label": "CAS1", "ip": HOSTS["cas1"]}, {"label": "CAS2", "ip": HOSTS["cas2"]}]


def config(lab, host: str, services: list[dict]) -> str:
    state = os.path.join(lab.dir, f"state-{host}")
    return yaml.safe_dump({
        "node": {"name": host, "state_dir": state, "control_socket": os.path.join(state, "ctl.sock")},
        "cluster": {"virtual_services": services},
    })  # fmt: skip


def rpc(label: str = "CAS-RPC", ports=(135,), **extra) -> dict:
    return {"label": label, "ip": VIP, "ports": list(ports), "health_check": {"kind": "connect", "interval": "300ms",
            "timeout": "250ms", "fall": 2}, "real_servers": STANDIN, **extra}  # fmt: skip


@pytest.fixture
def lb2(lab):
    nodes: list[Node] = []

    def start(services: list[dict]) -> Node:
        node = Node(lab, "lb2", config(lab, "lb2", services))
        nodes.append(node)
        return node

    yield start
    lab.del_address("lb2", VIP)
    for node in nodes:
        node.stop()


def test_listeners_bind_before_the_vip_exists_and_serve_the_moment_it_arrives(lab, lb2, client):
    node = lb2([rpc()])
    node.wait_log(r"CAS-RPC listening on 198.18.0.10 ports 135")
    with pytest.raises(OSError):
        client(greeting, VIP, 135)  # nobody holds the VIP yet
    lab.add_address("lb2", VIP)
    # No restart, no rebind: the socket bound with IP_FREEBIND accepts at once.
    assert client(greeting, VIP, 135).split()[0] in ("CAS1", "CAS2")


def test_reload_applies_changes_and_keeps_unchanged_services_connections(lab, lb2, client):
    node = lb2([rpc()])
    lab.add_address("lb2", VIP)
    lab.wait_port("client", VIP, 135)
    live = client(connect, VIP, 135)
    label = read_line(live).split()[0]

    with open(node.config, "w") as f:
        f.write(config(lab, "lb2", [rpc(), rpc("CAS-RPC2", ports=(60200,))]))
    result = node.cli("reload")
    assert result.returncode == 0, result.stderr
    assert "CAS-RPC, CAS-RPC2" in result.stdout
    assert client(greeting, VIP, 60200).split()[1] == "60200"
    # The connection opened before the reload still works.
    live.sendall(b"still here\n")
    assert read_line(live) == "still here\n"
    live.close()
    assert label in ("CAS1", "CAS2")


def test_reload_of_a_broken_file_is_refused_and_the_old_configuration_keeps_serving(lab, lb2, client):
    node = lb2([rpc()])
    lab.add_address("lb2", VIP)
    lab.wait_port("client", VIP, 135)
    with open(node.config, "w") as f:
        f.write(config(lab, "lb2", [rpc(ports=(135, 99999))]))
    result = node.cli("reload")
    assert result.returncode == 1
    assert "99999 is not a whole number from 1 to 65535" in result.stderr
    assert client(greeting, VIP, 135).split()[1] == "135"
    node.wait_log(r"reload refused, still running the previous configuration")


def test_sighup_reloads(lab, lb2, client):
    node = lb2([rpc()])
    lab.add_address("lb2", VIP)
    lab.wait_port("client", VIP, 135)
    with open(node.config, "w") as f:
        f.write(config(lab, "lb2", [rpc(ports=(135, 60201))]))
    node.proc.popen.send_signal(signal.SIGHUP)
    node.wait_log(r"reloaded .*: CAS-RPC")
    assert client(greeting, VIP, 60201).split()[1] == "60201"


def test_cli_errors_are_clear(lab, lb2):
    node = lb2([rpc()])
    node.wait_log("listening")
    unknown = node.cli("drain", "CAS9")
    assert unknown.returncode == 1 and "no real server 'CAS9' in any virtual service" in unknown.stderr
    wrong_vip = node.cli("halt", "CAS1", "--vip", "NOPE")
    assert wrong_vip.returncode == 1 and "virtual service 'NOPE'" in wrong_vip.stderr
    as_json = node.cli("--json", "online", "CAS1")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == {"ok": True, "changed": [["CAS-RPC", "CAS1"]]}
    status = json.loads(node.cli("--json", "status").stdout)
    assert {"node", "pid", "config", "cluster", "replication", "virtual_services"} <= set(status)
    assert {"label", "ip", "ports", "current", "total", "bytes_in", "bytes_out", "refused", "servers",
            "persistence_entries"} <= set(status["virtual_services"][0])  # fmt: skip
    checked = json.loads(node.cli("--json", "check-config", node.config).stdout)
    assert checked == {"ok": True, "virtual_services": ["CAS-RPC"]}
    sock = os.path.join(lab.dir, "state-lb2", "ctl.sock")
    assert os.stat(sock).st_mode & 0o777 == 0o660  # owner and the hapair group only
    bad = node.cli("drain")
    assert bad.returncode == 2 and "the following arguments are required: server" in bad.stderr
    node.stop()
    gone = node.cli("status")
    assert gone.returncode == 1 and "the daemon is not running" in gone.stderr
    gone_json = node.cli("--json", "status")
    assert json.loads(gone_json.stdout)["ok"] is False


def test_the_daemon_does_not_start_when_a_port_cannot_be_bound(lab):
    def hold() -> socket.socket:
        s = socket.socket()  # made in this thread, so in lb2's namespace
        # Past the earlier tests' connections to port 135 still in TIME_WAIT (without it the bind itself
        # failed once in CI); a live listener still refuses the daemon's bind, SO_REUSEADDR or not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 135))
        s.listen()
        return s

    taken = lab.call("lb2", hold)
    try:
        path = os.path.join(lab.dir, "lb2-busy.yaml")
        with open(path, "w") as f:
            f.write(config(lab, "lb2", [rpc()]))
        result = lab.run("lb2", sys.executable, "-m", "hapair", "--config", path, "run", check=False, timeout=20)
        assert result.returncode == 1
        assert "not starting" in result.stderr and "Address already in use" in result.stderr
    finally:
        taken.close()


def test_a_server_marked_down_can_have_its_sessions_closed(lab, lb2, client):
    """shutdown_sessions: the check port (a second stand-in) dies while the service port lives on, so
    only the health check can be why the session ends."""
    check = lab.start_standin("cas2", "CHECK", [7777])
    service = rpc("CAS-RPC", ports=(135,), persistence={"mode": "source_ip", "timeout": "1h"})
    service["health_check"].update(port=7777, shutdown_sessions=True)
    service["real_servers"] = [{"label": "CAS2", "ip": HOSTS["cas2"]}]
    node = lb2([service])
    lab.add_address("lb2", VIP)
    lab.wait_port("client", VIP, 135)
    live = client(connect, VIP, 135)
    assert read_line(live).split()[0] == "CAS2"
    offset = len(node.log())
    check.stop(signal.SIGKILL)
    node.wait_log(r"CAS-RPC/CAS2 is DOWN", after=offset, timeout=5)
    live.settimeout(3)
    try:
        assert live.recv(100) == b""
    except ConnectionResetError:
        pass
    node.wait_log(r"> CAS-RPC/CAS2 .* real server down", after=offset, timeout=3)
    live.close()


def test_the_daemon_tells_systemd_it_is_ready_and_feeds_the_watchdog(lab, tmp_path):
    notify = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(notify)
    server.settimeout(10)
    node = Node.__new__(Node)
    node.lab, node.host = lab, "lb2"
    node.proc, node.config = lab.start_node("lb2", config(lab, "lb2", [rpc()]),
                                            env={"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "400000"})  # fmt: skip
    try:
        messages = [server.recv(200).decode() for _ in range(4)]
        assert messages[0] == "WATCHDOG=1" or messages[0].startswith("READY=1")
        assert any(m.startswith("READY=1\nSTATUS=node lb2: 1 virtual services") for m in messages)
        assert messages.count("WATCHDOG=1") >= 3  # every 200 ms from the reactor
        node.stop()
        rest = []
        server.settimeout(2)
        try:
            while True:
                rest.append(server.recv(200).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        server.close()
        node.stop()
