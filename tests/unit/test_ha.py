"""The HA state machine, with a fake clock: every transition, timer edges, failback, release, dual master,
the boot guard; then whole scenarios on a simulated pair."""

from __future__ import annotations

import pytest
from twisted.internet import task

from hapair.ha import FailoverRefused, Machine, PeerBeat, Role, Timers

T = Timers(interval=0.2, warntime=0.5, deadtime=0.7, initdead=2.0)


class Recorder:
    def __init__(self):
        self.events: list = []
        self.holds = False

    def take_vips(self):
        self.holds = True
        self.events.append("take")

    def release_vips(self):
        self.holds = False
        self.events.append("release")

    def announce(self):
        self.events.append("announce")

    def send_release(self):
        self.events.append("send_release")

    def confirm_ping(self):
        self.events.append("confirm_ping")

    def transition(self, old, new, why):
        self.events.append((old.value, new.value))

    def note(self, event):
        self.events.append(("note", event))

    def pop(self):
        events, self.events = self.events, []
        return events


def machine(node="lb2", priority=100, auto_failback=False, timers=T, confirm_ping=False):
    clock, rec = task.Clock(), Recorder()
    m = Machine(node, priority, timers, rec, clock, auto_failback=auto_failback, confirm_ping=confirm_ping)
    m.start()
    return m, rec, clock


def beat(role=Role.MASTER, node="lb1", priority=200, **kw):
    return PeerBeat(node=node, role=role, priority=priority, **kw)


# --- timers, as heartbeat validates them ---------------------------------------------------------


def test_default_timers_are_valid():
    assert Timers().problems() == []


@pytest.mark.parametrize(
    "timers, words",
    [(Timers(interval=1, warntime=1.5, deadtime=2, initdead=2), "more than twice"),
     (Timers(interval=1, warntime=5, deadtime=3, initdead=3), "warntime"),
     (Timers(interval=1, warntime=2, deadtime=3, initdead=2.9), "initdead")],
)  # fmt: skip
def test_invalid_timers_are_named(timers, words):
    assert any(words in p for p in timers.problems())


# --- the boot guard: INIT ------------------------------------------------------------------------


def test_a_starting_node_claims_nothing_before_initdead():
    m, rec, clock = machine()
    clock.advance(1.999)
    assert m.role is Role.INIT and rec.pop() == []
    clock.advance(0.001)
    assert m.role is Role.MASTER
    assert rec.pop() == ["take", "announce", ("init", "master")]


def test_a_starting_node_that_hears_a_master_becomes_slave_at_once():
    m, rec, clock = machine()
    clock.advance(0.1)
    m.heartbeat(beat(Role.MASTER))
    assert m.role is Role.SLAVE and rec.pop() == [("init", "slave")]
    for _ in range(25):  # 5 s of a beating master: the initdead timer went with the INIT state
        clock.advance(0.2)
        m.heartbeat(beat(Role.MASTER))
    assert m.role is Role.SLAVE and rec.pop() == []


def test_two_starting_nodes_elect_by_priority():
    high, rec, _ = machine("lb1", priority=200)
    high.heartbeat(beat(Role.INIT, node="lb2", priority=100))
    assert high.role is Role.MASTER and rec.pop()[:2] == ["take", "announce"]
    low, rec, _ = machine("lb2", priority=100)
    low.heartbeat(beat(Role.INIT, node="lb1", priority=200))
    assert low.role is Role.SLAVE and "take" not in rec.pop()


def test_equal_priorities_elect_the_smaller_node_id():
    a, _, _ = machine("lb1", priority=100)
    a.heartbeat(beat(Role.SLAVE, node="lb2", priority=100))
    b, _, _ = machine("lb2", priority=100)
    b.heartbeat(beat(Role.SLAVE, node="lb1", priority=100))
    assert (a.role, b.role) == (Role.MASTER, Role.SLAVE)


def test_a_starting_node_without_its_ping_node_does_not_claim_after_initdead():
    m, rec, clock = machine()
    m.ping(False)
    clock.advance(2)
    assert m.role is Role.SLAVE and "take" not in rec.pop()
    assert m.stats.withheld_takeovers == 1
    m.ping(True)  # the peer may have been behind the same cut: give it a deadtime to show up
    clock.advance(0.69)
    assert m.role is Role.SLAVE
    clock.advance(0.02)
    assert m.role is Role.MASTER and rec.pop()[:2] == ["take", "announce"]


def test_a_node_whose_ping_returns_stays_slave_if_the_peer_speaks_within_deadtime():
    m, rec, clock = machine()
    m.ping(False)
    clock.advance(2)
    m.ping(True)
    clock.advance(0.3)
    for _ in range(5):
        m.heartbeat(beat(Role.MASTER))
        clock.advance(0.2)
    assert m.role is Role.SLAVE and "take" not in rec.pop()


def test_a_starting_node_that_hears_a_faulty_peer_takes_over():
    m, rec, _ = machine(priority=100)
    m.heartbeat(beat(Role.FAULT, priority=200, healthy=False))
    assert m.role is Role.MASTER


# --- SLAVE: deadtime, release, the ping guard -----------------------------------------------------


def slave():
    m, rec, clock = machine()
    m.heartbeat(beat(Role.MASTER))
    rec.pop()
    return m, rec, clock


def test_slave_takes_over_exactly_deadtime_after_the_last_heartbeat():
    m, rec, clock = slave()
    for _ in range(10):  # heartbeats every interval keep it slave
        clock.advance(0.2)
        m.heartbeat(beat(Role.MASTER))
    clock.advance(0.699)
    assert m.role is Role.SLAVE
    clock.advance(0.001)
    assert m.role is Role.MASTER and rec.pop() == ["take", "announce", ("slave", "master")]
    assert "deadtime" in m.why and not m.peer_alive


def test_late_heartbeats_are_counted_at_warntime():
    m, _, clock = slave()
    clock.advance(0.5)
    assert m.stats.late_heartbeats == 1
    m.heartbeat(beat(Role.MASTER))
    clock.advance(0.4)
    assert m.stats.late_heartbeats == 1


def test_a_release_message_makes_the_slave_master_at_once():
    m, rec, clock = slave()
    clock.advance(0.05)
    m.heartbeat(beat(Role.SLAVE, releasing=True))
    assert m.role is Role.MASTER and rec.pop() == ["take", "announce", ("slave", "master")]
    assert "released" in m.why


def test_an_unhealthy_slave_ignores_a_release():
    m, rec, _ = slave()
    m.local_health(False, "proxy down")
    rec.pop()
    m.heartbeat(beat(Role.SLAVE, releasing=True))
    assert m.role is Role.FAULT and rec.pop() == []


def test_slave_that_lost_its_peer_and_its_ping_node_holds_back_then_acts_when_ping_returns():
    m, rec, clock = slave()
    m.ping(False)
    clock.advance(0.7)
    assert m.role is Role.SLAVE
    assert rec.pop() == [("note", "peer lost, but not taking over: ping node unreachable")]
    assert m.stats.withheld_takeovers == 1
    m.ping(True)
    assert m.role is Role.SLAVE
    clock.advance(0.7)
    assert m.role is Role.MASTER


def test_slave_hearing_a_lower_ranked_slave_takes_over():
    m, rec, _ = machine("lb1", priority=200)
    m.heartbeat(beat(Role.MASTER, node="lb2", priority=100))
    assert m.role is Role.SLAVE
    m.heartbeat(beat(Role.SLAVE, node="lb2", priority=100))
    assert m.role is Role.MASTER


def test_slave_hearing_a_higher_ranked_slave_waits_for_it():
    m, _, _ = slave()
    m.heartbeat(beat(Role.SLAVE))
    assert m.role is Role.SLAVE


# --- the ping node confirmed at the moment of takeover ---------------------------------------------


def confirming_slave():
    m, rec, clock = machine(confirm_ping=True)
    m.heartbeat(beat(Role.MASTER))
    rec.pop()
    return m, rec, clock


def test_silence_asks_for_a_fresh_ping_before_taking_over():
    m, rec, clock = confirming_slave()
    clock.advance(0.7)
    assert m.role is Role.SLAVE and rec.pop() == ["confirm_ping"]
    m.ping_confirmed(True)
    assert m.role is Role.MASTER and rec.pop() == ["take", "announce", ("slave", "master")]


def test_an_unanswered_ping_withholds_and_retries_every_deadtime():
    m, rec, clock = confirming_slave()
    clock.advance(0.7)
    m.ping_confirmed(False)
    assert m.role is Role.SLAVE
    assert rec.pop() == ["confirm_ping", ("note", "peer lost, but not taking over: ping node unreachable")]
    clock.advance(0.7)
    m.ping_confirmed(False)
    assert rec.pop() == ["confirm_ping"]  # noted once per episode
    assert m.stats.withheld_takeovers == 1
    clock.advance(0.7)
    m.ping_confirmed(True)
    assert m.role is Role.MASTER


def test_a_heartbeat_during_the_confirmation_cancels_the_takeover():
    m, rec, clock = confirming_slave()
    clock.advance(0.7)
    m.heartbeat(beat(Role.MASTER))
    m.ping_confirmed(True)
    assert m.role is Role.SLAVE and "take" not in rec.pop()


def test_a_starting_node_confirms_its_ping_node_too():
    m, rec, clock = machine(confirm_ping=True)
    clock.advance(2)
    assert m.role is Role.INIT and rec.pop() == ["confirm_ping"]
    m.ping_confirmed(False)
    assert m.role is Role.SLAVE and m.stats.withheld_takeovers == 1
    clock.advance(0.7)
    m.ping_confirmed(True)
    assert m.role is Role.MASTER


def test_an_unsolicited_confirmation_changes_nothing():
    m, rec, _ = confirming_slave()
    m.ping_confirmed(True)
    assert m.role is Role.SLAVE and rec.pop() == []


# --- MASTER: faults, ping, dual master, failback ---------------------------------------------------


def master(**kw):
    m, rec, clock = machine(**kw)
    clock.advance(2)
    rec.pop()
    return m, rec, clock


def test_master_with_a_local_fault_releases_and_tells_the_peer():
    m, rec, _ = master()
    m.local_health(False, "interface eth0 down")
    assert m.role is Role.FAULT
    assert rec.pop() == ["release", ("master", "fault"), "send_release"]
    assert m.why == "interface eth0 down"


def test_fault_cleared_with_the_peer_gone_takes_over_again():
    m, rec, clock = master()
    m.local_health(False, "proxy down")
    clock.advance(1)
    rec.pop()
    m.local_health(True)
    assert m.role is Role.SLAVE and rec.pop() == [("fault", "slave")]
    clock.advance(0.7)
    assert m.role is Role.MASTER
    assert rec.pop() == ["take", "announce", ("slave", "master")]


def test_fault_cleared_with_a_master_peer_stays_slave():
    m, rec, _ = master()
    m.local_health(False, "proxy down")
    m.heartbeat(beat(Role.MASTER))
    m.local_health(True)
    assert m.role is Role.SLAVE


def test_master_that_loses_its_ping_node_hands_over_only_if_the_peer_reaches_its_own():
    m, rec, _ = master()
    m.heartbeat(beat(Role.SLAVE, ping_ok=False))
    m.ping(False)
    assert m.role is Role.MASTER  # the peer is no better off
    m.heartbeat(beat(Role.SLAVE, ping_ok=True))
    assert m.role is Role.FAULT and "release" in rec.pop()


def test_a_fault_from_losing_the_ping_node_clears_when_it_answers_again():
    m, rec, clock = master()
    m.heartbeat(beat(Role.SLAVE))
    m.ping(False)
    assert m.role is Role.FAULT
    m.heartbeat(beat(Role.MASTER))
    rec.pop()
    m.ping(True)
    assert m.role is Role.SLAVE and rec.pop() == [("fault", "slave")]
    # and it can take over again when the peer goes
    clock.advance(0.7)
    assert m.role is Role.MASTER


def test_a_master_never_hands_over_to_a_peer_in_fault():
    m, rec, _ = master()
    m.heartbeat(beat(Role.FAULT, healthy=True, ping_ok=True))  # e.g. a peer whose own ping failed before
    m.ping(False)
    assert m.role is Role.MASTER and "release" not in rec.pop()
    m.heartbeat(beat(Role.FAULT, healthy=True, ping_ok=True))
    assert m.role is Role.MASTER


@pytest.mark.parametrize("winner_priority, loser_priority", [(200, 100), (100, 100)])
def test_dual_master_is_resolved_by_rank(winner_priority, loser_priority):
    lb1, rec1, clock = master(node="lb1", priority=winner_priority)
    lb2, rec2, _ = master(node="lb2", priority=loser_priority)
    clock.advance(1)
    lb1.heartbeat(beat(Role.MASTER, node="lb2", priority=loser_priority))
    lb2.heartbeat(beat(Role.MASTER, node="lb1", priority=winner_priority))
    assert lb1.role is Role.MASTER and lb2.role is Role.SLAVE
    assert rec1.pop() == [("note", "dual master with lb2; lb1 keeps the VIPs"), "announce"]
    assert rec2.pop() == [("note", "dual master with lb1; lb1 keeps the VIPs"), "release", ("master", "slave"),
                          "send_release"]  # fmt: skip
    assert lb2.stats.dual_masters[0].ended is not None
    # The winner's episode ends when it hears the loser as slave.
    assert lb1.stats.dual_masters[0].ended is None
    lb1.heartbeat(beat(Role.SLAVE, node="lb2", priority=loser_priority))
    assert lb1.stats.dual_masters[0].ended == clock.seconds()


def test_failback_off_master_keeps_the_vips_when_the_preferred_node_returns():
    m, rec, _ = master(node="lb2", priority=100)
    m.heartbeat(beat(Role.SLAVE, node="lb1", priority=200))
    assert m.role is Role.MASTER and rec.pop() == []


def test_failback_on_master_hands_back_to_a_healthy_preferred_node():
    m, rec, _ = master(node="lb2", priority=100, auto_failback=True)
    m.heartbeat(beat(Role.SLAVE, node="lb1", priority=200, healthy=False))
    assert m.role is Role.MASTER  # not to an unhealthy one
    m.heartbeat(beat(Role.SLAVE, node="lb1", priority=200))
    assert m.role is Role.SLAVE
    assert rec.pop() == ["release", ("master", "slave"), "send_release"]
    assert m.why == "failback to lb1"


def test_failback_on_never_hands_to_a_lower_ranked_node():
    m, _, _ = master(node="lb1", priority=200, auto_failback=True)
    m.heartbeat(beat(Role.SLAVE, node="lb2", priority=100))
    assert m.role is Role.MASTER


# --- operator failover and stop -------------------------------------------------------------------


def test_failover_hands_over_to_a_healthy_peer_and_does_not_take_back():
    m, rec, clock = master(node="lb1", priority=200)
    m.heartbeat(beat(Role.SLAVE, node="lb2", priority=100))
    assert m.failover() == "released the VIPs to lb2"
    assert m.role is Role.SLAVE and rec.pop() == ["release", ("master", "slave"), "send_release"]
    # lb2 has not taken over yet: lb1 outranks it but does not grab the VIPs back while yielding.
    m.heartbeat(beat(Role.SLAVE, node="lb2", priority=100))
    assert m.role is Role.SLAVE
    m.heartbeat(beat(Role.MASTER, node="lb2", priority=100))
    assert m.role is Role.SLAVE


@pytest.mark.parametrize(
    "peer, words",
    [(None, "not answering heartbeats"), (beat(Role.FAULT, node="lb2", healthy=False), "unhealthy"),
     (beat(Role.SLAVE, node="lb2", ping_ok=False), "unhealthy")],
)  # fmt: skip
def test_failover_to_an_unhealthy_peer_is_refused_unless_forced(peer, words):
    m, rec, _ = master(node="lb1")
    if peer is not None:
        m.heartbeat(peer)
    rec.pop()
    with pytest.raises(FailoverRefused, match=words):
        m.failover()
    assert m.role is Role.MASTER and rec.pop() == []
    m.failover(force=True)
    assert m.role is Role.SLAVE


def test_failover_that_failback_would_undo_is_refused_unless_forced():
    m, _, _ = master(node="lb1", priority=200, auto_failback=True)
    m.heartbeat(beat(Role.SLAVE, node="lb2", priority=100))
    with pytest.raises(FailoverRefused, match="hand the VIPs straight back"):
        m.failover()
    m.failover(force=True)
    assert m.role is Role.SLAVE


def test_failover_on_a_slave_is_refused():
    m, _, _ = slave()
    with pytest.raises(FailoverRefused, match="not master"):
        m.failover()


def test_clean_stop_of_a_master_releases_and_leaves_no_timers():
    m, rec, clock = master()
    m.heartbeat(beat(Role.SLAVE))
    rec.pop()
    m.stop()
    assert rec.pop() == ["release", ("master", "init"), "send_release"]
    assert clock.getDelayedCalls() == []


# --- whole scenarios on a simulated pair ----------------------------------------------------------


class Pair:
    """Two machines on one fake clock, heartbeating every interval over links that can be cut."""

    def __init__(self, auto_failback=False, timers=T):
        self.clock = task.Clock()
        self.link = {("lb1", "lb2"): True, ("lb2", "lb1"): True}
        self.nodes: dict[str, Machine] = {}
        self.recs: dict[str, Recorder] = {}
        self.alive = {"lb1": True, "lb2": True}
        self.both_held = 0.0
        for name, prio in (("lb1", 200), ("lb2", 100)):
            rec = Recorder()
            rec.send_release = lambda name=name: self.send(name, releasing=True)
            self.recs[name] = rec
            self.nodes[name] = Machine(name, prio, timers, rec, self.clock, auto_failback=auto_failback)
        self.timers = timers

    def send(self, sender, releasing=False):
        other = "lb2" if sender == "lb1" else "lb1"
        m = self.nodes[sender]
        if self.alive[sender] and self.alive[other] and self.link[(sender, other)]:
            self.nodes[other].heartbeat(PeerBeat(sender, m.role, m.priority, m.healthy, m.ping_ok, releasing))

    def start(self, name):
        self.alive[name] = True
        rec = Recorder()
        rec.send_release = lambda: self.send(name, releasing=True)
        self.recs[name] = rec
        old = self.nodes[name]
        self.nodes[name] = Machine(name, old.priority, self.timers, rec, self.clock, old.auto_failback)
        self.nodes[name].start()

    def kill(self, name):
        self.alive[name] = False
        self.recs[name].holds = False  # a dead node's addresses go with it

    def run(self, seconds):
        step = self.timers.interval / 4
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            if round(self.clock.seconds() / step) % 4 == 0:
                for name in self.nodes:
                    if self.alive[name]:
                        self.send(name)
            if self.recs["lb1"].holds and self.recs["lb2"].holds:
                self.both_held += step

    def holder(self):
        holders = [n for n, r in self.recs.items() if r.holds and self.alive[n]]
        return holders[0] if len(holders) == 1 else tuple(holders)


def fresh_pair(**kw):
    p = Pair(**kw)
    for name in ("lb1", "lb2"):
        p.nodes[name].start()
    p.run(1)
    return p


def test_pair_elects_the_preferred_node_without_waiting_for_initdead():
    p = fresh_pair()
    assert p.holder() == "lb1" and p.nodes["lb2"].role is Role.SLAVE and p.both_held == 0


def test_pair_master_killed_slave_takes_over_within_deadtime_plus_one_interval():
    p = fresh_pair()
    p.kill("lb1")
    killed = p.clock.seconds()
    while p.holder() != "lb2":
        p.run(0.05)
        assert p.clock.seconds() - killed < 2
    assert p.clock.seconds() - killed <= T.deadtime + T.interval


@pytest.mark.parametrize("failback, expected", [(False, "lb2"), (True, "lb1")])
def test_pair_returning_master_takes_back_only_with_failback(failback, expected):
    p = fresh_pair(auto_failback=failback)
    p.kill("lb1")
    p.run(2)
    assert p.holder() == "lb2"
    p.start("lb1")
    p.run(3)
    assert p.holder() == expected and p.both_held == 0


def test_pair_cut_heartbeats_make_two_masters_resolved_within_one_interval_of_reconnecting():
    p = fresh_pair()
    p.link[("lb1", "lb2")] = p.link[("lb2", "lb1")] = False
    p.run(2)
    assert p.holder() == ("lb1", "lb2")  # both reach their ping nodes: this is what a cut link looks like
    before = p.both_held
    p.link[("lb1", "lb2")] = p.link[("lb2", "lb1")] = True
    p.run(2)
    assert p.holder() == "lb1"
    assert p.both_held - before <= T.interval
    # lb2 hears lb1 as master first, and resolves the episode before lb1 can see it.
    [episode] = p.nodes["lb2"].stats.dual_masters
    assert episode.winner == "lb1" and episode.ended is not None


def test_pair_slave_cut_off_from_peer_and_ping_never_becomes_master():
    p = fresh_pair()
    p.nodes["lb2"].ping(False)
    p.link[("lb1", "lb2")] = p.link[("lb2", "lb1")] = False
    p.run(3)
    assert p.holder() == "lb1" and p.both_held == 0
    assert p.nodes["lb2"].stats.withheld_takeovers == 1


def test_pair_planned_failover_moves_the_vips_in_one_step_and_stays():
    p = fresh_pair()
    p.nodes["lb1"].failover()
    assert p.holder() == "lb2" and p.both_held == 0  # the release arrived synchronously
    p.run(5)
    assert p.holder() == "lb2"


def test_pair_clean_stop_hands_over_without_waiting_for_deadtime():
    p = fresh_pair()
    p.nodes["lb1"].stop()
    assert p.holder() == "lb2"
