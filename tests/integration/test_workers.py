"""Proxy worker processes on shared listeners: persistence exact across workers, and a worker's death.

lb1 runs the guide's services with two workers. Each listening port is a SO_REUSEPORT group with one
socket per worker and a BPF program steering each source address to one worker; without it a client's
connections would be spread over workers with separate persistence tables. The ports of a service
without persistence (IMAP4) send each connection to any worker instead.
"""

from __future__ import annotations

import os
import signal

import pytest

from hapair.lab import CLIENT_EXTRA, VIP, guide_config
from proxy.steering import worker_of
from tests.integration.conftest import Node, greeting, lb1_alone

WORKERS = 2
RPC_PORTS = (135, 60200, 60201)


@pytest.fixture(scope="module")
def lb1(lab):
    config = guide_config("lb1", lab.dir, lambda doc: doc["node"].update(workers=WORKERS))
    yield from lb1_alone(lab, config, r"proxy worker 1 ready", 135)


def workers(node: Node) -> list[dict]:
    return node.status()["workers"]


def test_each_client_sticks_to_one_server_across_ports_and_workers(lab, lb1):
    before = [w["sessions"] for w in workers(lb1)]
    entries_before = lb1.service("CAS-RPC")["persistence_entries"]  # the fixture's own probe of port 135
    stuck: dict[str, set[str]] = {}
    for _ in range(2):
        for source in CLIENT_EXTRA:
            for port in RPC_PORTS:
                stuck.setdefault(source, set()).add(lab.call("client", greeting, VIP, port, source).split()[0])
    assert all(len(labels) == 1 for labels in stuck.values()), stuck
    assert set().union(*stuck.values()) == {"CAS1", "CAS2"}
    after = workers(lb1)
    # Both workers carried clients, each the sources steered to it: 6 connections per source.
    expected = [6 * sum(1 for s in CLIENT_EXTRA if worker_of(s, WORKERS) == i) for i in range(WORKERS)]
    assert [w["sessions"] - b for w, b in zip(after, before)] == expected
    rpc = lb1.service("CAS-RPC")
    assert rpc["persistence_entries"] - entries_before == len(CLIENT_EXTRA)


def test_one_clients_connections_to_a_service_without_persistence_reach_both_workers(lab, lb1):
    # CAS-IMAP4 keeps no per-client state: the connections of one address (a NAT, a smart host) go to any
    # worker, at random (all 20 on one worker of two: once in 500,000 runs).
    before = [w["sessions"] for w in workers(lb1)]
    for _ in range(20):
        assert lab.call("client", greeting, VIP, 143, CLIENT_EXTRA[0]).startswith("* OK")
    added = [w["sessions"] - b for w, b in zip(workers(lb1), before)]
    assert sum(added) == 20 and all(added), added


def test_a_killed_worker_is_started_again_on_the_same_socket_with_its_clients_persistence(lab, lb1):
    victim = workers(lb1)[0]
    sources = [s for s in CLIENT_EXTRA if worker_of(s, WORKERS) == 0][:8]
    source = sources[0]
    stuck = {s: lab.call("client", greeting, VIP, 135, s).split()[0] for s in sources}
    offset = len(lb1.log())
    os.kill(victim["pid"], signal.SIGKILL)
    lb1.wait_log(r"proxy worker 0 \(pid \d+\) ended", after=offset, timeout=5)
    # Connections wait in the backlog of the worker's socket until its successor serves it.
    assert lab.call("client", greeting, VIP, 135, source).split()[0] in ("CAS1", "CAS2")
    lb1.wait_log(r"proxy worker 0 ready", after=offset, timeout=5)
    now = workers(lb1)[0]
    assert now["pid"] != victim["pid"] and now["ready"] and now["restarts"] == victim["restarts"] + 1
    assert lb1.status()["cluster"] is None  # a single node: nothing to fail over, it just serves again
    # The supervisor kept a copy of the table: the new worker sends each client where it went before.
    assert {s: lab.call("client", greeting, VIP, 60200, s).split()[0] for s in sources} == stuck
