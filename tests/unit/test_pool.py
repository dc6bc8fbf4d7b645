"""One virtual service's choices under the guide's rules for health, drain, halt, weight and persistence."""

from collections import Counter

from twisted.internet.task import Clock

from hapair.config import (
    AdminState,
    BalanceMode,
    Persistence,
    PersistenceMode,
    RealServer,
    VirtualService,
)
from proxy.pool import Pool
import ipaddress


def service(persist=True, weights=(100, 100), states=None, maxconn=10, **kw):
    states = states or [AdminState.ONLINE] * len(weights)
    servers = tuple(
        RealServer(f"CAS{i + 1}", ipaddress.ip_address(f"198.18.0.{20 + i}"), None, w, st)
        for i, (w, st) in enumerate(zip(weights, states))
    )
    persistence = Persistence(PersistenceMode.SOURCE_IP, 60.0, 1000) if persist else Persistence()
    return VirtualService("CAS-RPC", ipaddress.ip_address("198.18.0.10"), (135, 60200, 60201), servers,
                          persistence=persistence, maxconn=maxconn, **kw)  # fmt: skip


def pool(**kw):
    clock = Clock()
    return Pool(service(**kw), clock), clock


def test_new_clients_split_by_weight():
    p, _ = pool(persist=False, weights=(3, 1))
    assert Counter(p.choose(f"198.18.1.{i}").label for i in range(40)) == {"CAS1": 30, "CAS2": 10}


def test_a_client_sticks_to_its_server_on_every_port_of_the_service():
    p, _ = pool()
    first = p.choose("198.18.1.7").label
    # One table per service: whichever of 135/60200/60201 the next connection is for.
    assert all(p.choose("198.18.1.7").label == first for _ in range(10))


def test_weight_zero_takes_no_new_clients_but_keeps_persistent_ones():
    p, _ = pool()
    stuck = {src: p.choose(src).label for src in ("a", "b")}
    assert set(stuck.values()) == {"CAS1", "CAS2"}
    p.set_weight("CAS2", 0)
    assert all(p.choose(f"new{i}").label == "CAS1" for i in range(5))
    assert p.choose("b").label == stuck["b"]


def test_drained_server_keeps_its_persistent_clients_and_takes_no_new_ones():
    p, _ = pool()
    assert p.choose("old").label == "CAS1"
    p.set_admin_state("CAS1", AdminState.DRAIN)
    assert p.choose("old").label == "CAS1"
    assert all(p.choose(f"new{i}").label == "CAS2" for i in range(5))


def test_drain_can_clear_persistence():
    p, _ = pool()
    assert p.choose("old").label == "CAS1"
    p.set_admin_state("CAS1", AdminState.DRAIN, clear_persistence=True)
    assert p.choose("old").label == "CAS2"


def test_halted_server_gets_nothing_new_not_even_persistent_clients():
    p, _ = pool()
    assert p.choose("old").label == "CAS1"
    p.set_admin_state("CAS1", AdminState.HALT)
    assert p.choose("old").label == "CAS2"
    p.set_admin_state("CAS1", AdminState.ONLINE)
    assert p.choose("old").label == "CAS2"  # moved for good, not bounced back


def test_unhealthy_server_loses_its_persistent_clients_to_a_healthy_one():
    p, _ = pool()
    assert p.choose("x").label == "CAS1"
    assert p.set_health("CAS1", False) is True
    assert p.set_health("CAS1", False) is False
    assert p.servers["CAS1"].counters.health_changes == 1
    assert p.choose("x").label == "CAS2"


def test_no_server_when_all_are_down_halted_or_drained():
    p, _ = pool(persist=False)
    p.set_health("CAS1", False)
    p.set_admin_state("CAS2", AdminState.DRAIN)
    assert p.choose("a") is None
    p.set_admin_state("CAS2", AdminState.HALT)
    assert p.choose("a") is None


def test_persistence_expires_with_the_clock():
    p, clock = pool()
    assert p.choose("x").label == "CAS1"
    clock.advance(60)
    p.choose("y")  # CAS2's turn
    assert p.choose("x").label == "CAS1"  # a fresh round-robin pick, not the old entry
    assert len(p.persistence) == 2


def test_redispatch_excludes_failed_servers_and_repoints_persistence():
    p, _ = pool()
    assert p.choose("x").label == "CAS1"
    assert p.choose("x", exclude=frozenset({"CAS1"})).label == "CAS2"
    assert p.choose("x").label == "CAS2"
    assert p.choose("y", exclude=frozenset({"CAS1", "CAS2"})) is None


def test_maxconn():
    p, _ = pool(maxconn=2)
    p.counters.current = 1
    assert not p.at_maxconn()
    p.counters.current = 2
    assert p.at_maxconn()


def test_least_connection_mode():
    p, _ = pool(persist=False, balance=BalanceMode.WEIGHTED_LEAST_CONNECTION)
    p.servers["CAS1"].counters.current = 5
    assert p.choose("a").label == "CAS2"


def test_update_keeps_health_counters_and_persistence_of_servers_that_stay():
    p, _ = pool(weights=(100, 100, 100))
    assert p.choose("x").label == "CAS1"
    assert p.choose("y").label == "CAS2"
    p.set_health("CAS1", False)
    p.servers["CAS1"].counters.total = 7
    new = service(weights=(50, 100))  # CAS3 removed, CAS1 reweighted
    p.update(new)
    assert set(p.servers) == {"CAS1", "CAS2"}
    assert not p.servers["CAS1"].up and p.servers["CAS1"].counters.total == 7
    assert p.servers["CAS1"].weight == 50
    assert p.choose("y").label == "CAS2"


def test_update_drops_persistence_of_removed_servers_and_can_turn_it_on_and_off():
    p, _ = pool(weights=(100, 100))
    assert p.choose("x").label == "CAS1"
    p.update(service(weights=(100,)))
    assert p.persistence.lookup("x") == "CAS1"
    p.update(service(persist=False, weights=(100,)))
    assert p.persistence is None
    p.update(service(weights=(100,)))
    assert p.persistence is not None and len(p.persistence) == 0
