"""Source steering: the BPF program's arithmetic, and the kernel following it on real loopback sockets; and
the groups of services without persistence, whose connections go to any worker."""

from __future__ import annotations

import ipaddress
import select
import socket

import pytest

from hapair.config import AdminState, ClusterConfig, Persistence, PersistenceMode, RealServer, VirtualService
from proxy import steering
from proxy.supervisor import Supervisor, listeners
from tests.unit.test_loop import FakeReactor

from .ports import free_port


def test_the_program_reads_the_source_relative_to_the_network_header():
    # Offset 12 without SKF_NET_OFF reads past the TCP header, finds nothing, and steers everything to socket 0.
    load, mod, ret = steering.program(4, 3)
    assert load[3] == (steering.SKF_NET_OFF + 12) & 0xFFFFFFFF
    assert mod[3] == 3
    assert steering.program(6, 2)[0][3] == (steering.SKF_NET_OFF + 20) & 0xFFFFFFFF


@pytest.mark.parametrize("source, workers, expected", [
    ("198.18.0.101", 2, 1), ("198.18.0.102", 2, 0), ("198.18.0.102", 3, (0xC6120066) % 3),
    ("2001:db8::7", 4, 3), ("2001:db8::1:0:5", 2, 1),
])  # fmt: skip
def test_worker_of_is_the_address_modulo_the_workers(source, workers, expected):
    assert steering.worker_of(source, workers) == expected


def _accepting(socks: list[socket.socket]) -> int:
    ready, _, _ = select.select(socks, [], [], 2)
    assert ready, "no socket of the group accepted"
    conn, _ = ready[0].accept()
    conn.close()
    return socks.index(ready[0])


def _workers_of(socks: list[socket.socket], source: str, connections: int) -> list[int]:
    """The index of the socket that accepted each of `connections` connections from `source`."""
    port = socks[0].getsockname()[1]
    found = []
    for _ in range(connections):
        c = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
        found.append(_accepting(socks))
        c.close()
    return found


@pytest.mark.parametrize("workers", [2, 3])
def test_the_kernel_steers_every_connection_of_a_source_to_its_worker(workers):
    socks = steering.group("127.0.0.1", free_port(), workers)
    try:
        seen = {f"127.0.0.{last}": set(_workers_of(socks, f"127.0.0.{last}", 3)) for last in range(2, 40)}
        assert all(found == {steering.worker_of(src, workers)} for src, found in seen.items()), seen
        assert {i for found in seen.values() for i in found} == set(range(workers))
    finally:
        for s in socks:
            s.close()


def test_a_port_someone_already_listens_on_is_refused_not_joined():
    taken = steering.group("127.0.0.1", free_port(), 2)  # another daemon's group, with SO_REUSEPORT
    try:
        with pytest.raises(OSError) as e:
            steering.group("127.0.0.1", taken[0].getsockname()[1], 2)
        assert e.value.errno == 98  # EADDRINUSE
    finally:
        for s in taken:
            s.close()


def test_a_group_that_does_not_steer_by_source_loads_a_random_number():
    load, mod, ret = steering.program(4, 3, by_source=False)
    assert load[3] == (steering.SKF_AD_OFF + steering.SKF_AD_RANDOM) & 0xFFFFFFFF
    assert mod[3] == 3 and ret == steering.program(4, 3)[2]


@pytest.mark.parametrize("workers", [2, 3])
def test_without_steering_one_sources_connections_reach_every_worker(workers):
    # 60 connections miss a given worker of 3 with probability (2/3)**60, about 3e-11.
    socks = steering.group("127.0.0.1", free_port(), workers, by_source=False)
    try:
        assert set(_workers_of(socks, "127.0.0.9", 60)) == set(range(workers))
    finally:
        for s in socks:
            s.close()


def _cluster(port: int, persistence: PersistenceMode) -> ClusterConfig:
    server = RealServer("rs", ipaddress.ip_address("127.0.0.1"), free_port(), 100, AdminState.ONLINE)
    vs = VirtualService("S", ipaddress.ip_address("127.0.0.1"), (port,), (server,),
                        persistence=Persistence(persistence))  # fmt: skip
    return ClusterConfig((vs,))


def test_only_a_service_with_source_persistence_is_steered_by_source():
    port = free_port()
    assert listeners(_cluster(port, PersistenceMode.SOURCE_IP)) == {("127.0.0.1", port): True}
    assert listeners(_cluster(port, PersistenceMode.NONE)) == {("127.0.0.1", port): False}


def test_turning_persistence_off_and_on_resteers_the_same_sockets():
    port = free_port()
    sup = Supervisor(_cluster(port, PersistenceMode.SOURCE_IP), 2, FakeReactor())
    sup._bind(listeners(sup.cluster))
    socks = sup.groups[("127.0.0.1", port)]
    try:
        source = "127.0.0.9"  # steered to worker 1
        assert set(_workers_of(socks, source, 20)) == {steering.worker_of(source, 2)} == {1}
        sup._bind(listeners(_cluster(port, PersistenceMode.NONE)))  # what a reload does first
        assert sup.groups[("127.0.0.1", port)] is socks and sup.by_source == {("127.0.0.1", port): False}
        assert set(_workers_of(socks, source, 40)) == {0, 1}
        sup._bind(listeners(_cluster(port, PersistenceMode.SOURCE_IP)))
        assert sup.groups[("127.0.0.1", port)] is socks and sup.by_source == {("127.0.0.1", port): True}
        assert set(_workers_of(socks, source, 20)) == {1}
    finally:
        for s in socks:
            s.close()
