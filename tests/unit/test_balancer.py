"""Weighted round robin and weighted least connection, as pure objects."""

from collections import Counter
from dataclasses import dataclass

import pytest

from proxy.balancer import SmoothWeightedRoundRobin, WeightedLeastConnection


@dataclass
class S:
    label: str
    weight: int
    active: int = 0


@pytest.mark.parametrize("weights", [(1, 1), (2, 1), (5, 1, 1), (100, 100), (3, 7, 11), (256, 1), (1,)])
def test_weight_ratios_are_exact_over_every_cycle(weights):
    servers = [S(f"s{i}", w) for i, w in enumerate(weights)]
    rr = SmoothWeightedRoundRobin()
    cycle = sum(weights)
    for _ in range(3):  # three whole cycles, each exact on its own
        picks = Counter(rr.pick(servers).label for _ in range(cycle))
        assert picks == {s.label: s.weight for s in servers}


def test_picks_are_spread_through_the_cycle_not_bunched():
    servers = [S("a", 5), S("b", 1), S("c", 1)]
    rr = SmoothWeightedRoundRobin()
    assert "".join(rr.pick(servers).label for _ in range(7)) == "aabacaa"


def test_equal_weights_alternate():
    servers = [S("CAS1", 100), S("CAS2", 100)]
    rr = SmoothWeightedRoundRobin()
    assert [rr.pick(servers).label for _ in range(4)] == ["CAS1", "CAS2", "CAS1", "CAS2"]


def test_a_server_leaving_and_returning_keeps_ratios_among_the_rest():
    a, b, c = S("a", 2), S("b", 1), S("c", 1)
    rr = SmoothWeightedRoundRobin()
    picks = Counter(rr.pick([a, c]).label for _ in range(300))
    assert picks == {"a": 200, "c": 100}
    picks = Counter(rr.pick([a, b, c]).label for _ in range(400))
    assert picks == {"a": 200, "b": 100, "c": 100}


def test_no_candidates():
    assert SmoothWeightedRoundRobin().pick([]) is None
    assert WeightedLeastConnection().pick([]) is None


def test_least_connection_weighs_active_connections_by_weight():
    wlc = WeightedLeastConnection()
    a, b = S("a", 100, active=10), S("b", 50, active=4)
    assert wlc.pick([a, b]) is b  # 4/50 < 10/100
    b.active = 6
    assert wlc.pick([a, b]) is a  # 10/100 < 6/50


def test_least_connection_ties_go_round_the_ring():
    wlc = WeightedLeastConnection()
    servers = [S("a", 1), S("b", 1), S("c", 1)]
    assert Counter(wlc.pick(servers).label for _ in range(30)) == {"a": 10, "b": 10, "c": 10}
