"""Two real hapair daemons in the namespace lab: faults, failover, split-brain guards, failback.

Each test starts a fresh pair (lb1 preferred) on the guide's services and checks what a client sees:
who holds the VIP (`ip addr` on both nodes, sampled every 10 ms), where the client's neighbour table
points (`ip neigh`), and whether TCP connections to the VIP succeed through the new master's proxy.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time

import pytest

from hapair.cluster import VIP_LEASE
from hapair.lab import HOSTS, PING_NODE, VIP, pair_config
from tests.integration.conftest import Node, greeting

INTERVAL, DEADTIME = 0.2, 0.7


class VipWatch:
    """Samples who holds the VIP every 10 ms; records the longest stretch both nodes held it."""

    def __init__(self, lab):
        self.lab, self.samples = lab, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.lab.holds("lb1", VIP), self.lab.holds("lb2", VIP)))
            except Exception:  # the lab went away under a failed test
                return
            time.sleep(0.01)

    def stop(self) -> VipWatch:
        self._stop.set()
        self._thread.join()
        return self

    def longest_both(self) -> float:
        longest, start = 0.0, None
        for t, a, b in self.samples:
            if a and b:
                start = t if start is None else start
                longest = max(longest, t - start)
            else:
                start = None
        return longest


def wait_for(predicate, timeout: float, what: str) -> float:
    """Polls (bounded) until predicate() is true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - started


def points_at(lab, host: str, timeout: float = 1.0) -> None:
    """The client's neighbour table maps the VIP to `host`'s MAC, within `timeout` (the GARP's trip)."""
    wait_for(lambda: lab.neigh("client", VIP) == lab.macs[host], timeout, f"client's ip neigh points at {host}")


def role(node: Node) -> str:
    status = node.status()
    return status["cluster"]["role"]


@pytest.fixture
def pair(lab):
    started: list[Node] = []

    def start(host: str, mutate=None, **ha) -> Node:
        node = Node(lab, host, pair_config(host, lab.dir, mutate, **ha))
        started.append(node)
        return node

    def start_pair(mutate=None, **ha) -> tuple[Node, Node]:
        # lb2 starts once lb1's cluster runs. Started together, a busy machine may bring lb2's cluster up
        # more than initdead before lb1's: lb2 then rightly claims the VIPs and keeps them (failback is
        # off), which is no part of what these tests are about. Deadlines count from the cluster's start,
        # not from the process's: importing Twisted and scapy can take seconds.
        lb1 = start("lb1", mutate, **ha)
        lb1.wait_log(r"cluster: ", timeout=20)
        lb2 = start("lb2", mutate, **ha)
        lb2.wait_log(r"cluster: ", timeout=20)
        try:
            wait_for(lambda: lab.holds("lb1", VIP), 5, "lb1 master")
        except AssertionError as e:  # say why: the two logs are all a CI run leaves behind
            raise AssertionError(f"{e}\n--- lb1:\n{lb1.log()[-3000:]}\n--- lb2:\n{lb2.log()[-3000:]}") from None
        lb2.wait_log(r"INIT -> SLAVE")
        return lb1, lb2

    start_pair.node = start
    yield start_pair
    for node in started:
        node.stop()
    for host in ("lb1", "lb2"):
        lab.set_link(host, True)
        lab.del_address(host, VIP, 32)
        lab.run(host, "nft", "flush", "ruleset", check=False)
    lab.set_hb_link(True)


def serves_through(lab, node: Node) -> None:
    """A TCP connection to the VIP succeeds, and `node`'s proxy is the one that carried it."""
    offset = len(node.log())
    answer = lab.call("client", greeting, VIP, 135)
    assert answer.split()[0] in ("CAS1", "CAS2")
    node.wait_log(rf"> {VIP}:135 > CAS-RPC/CAS\d", after=offset, timeout=3)


def test_master_killed_slave_takes_over_and_the_client_follows(lab, pair):
    lb1, lb2 = pair()
    serves_through(lab, lb1)
    assert lab.neigh("client", VIP) == lab.macs["lb1"]
    watch = VipWatch(lab)
    lb1.proc.stop(9)  # SIGKILL: no goodbye, no cleanup
    took = wait_for(lambda: lab.holds("lb2", VIP), 3, "lb2 takes the VIP")
    assert took <= DEADTIME + INTERVAL + 0.3
    points_at(lab, "lb2")  # the gratuitous ARP moved the client
    serves_through(lab, lb2)
    # The dead daemon could not remove its VIP; the kernel does when the lease runs out.
    wait_for(lambda: not lab.holds("lb1", VIP), VIP_LEASE + 1.5, "lb1's stale VIP expires")
    assert watch.stop().longest_both() <= VIP_LEASE + 1.0
    assert lab.neigh("client", VIP) == lab.macs["lb2"]

    # The old master comes back (as systemd would restart it): failback is off, so lb2 keeps the VIPs.
    lb1 = pair.node("lb1")
    lb1.wait_log(r"INIT -> SLAVE: lb2 is master")
    time.sleep(1)
    assert lab.holds("lb2", VIP) and not lab.holds("lb1", VIP)
    assert role(lb1) == "slave" and role(lb2) == "master"


def test_master_link_down_hands_over_at_once(lab, pair):
    lb1, lb2 = pair()
    watch = VipWatch(lab)
    lab.set_link("lb1", False)  # lb1's cable to the switch; the heartbeat cable still works
    took = wait_for(lambda: lab.holds("lb2", VIP), 3, "lb2 takes the VIP")
    # lb1 sees its own interface down within an interval and releases; its release crosses hb0.
    assert took <= 2 * INTERVAL + 0.3
    assert not lab.holds("lb1", VIP)
    assert watch.stop().longest_both() <= INTERVAL
    lb1.wait_log(r"MASTER -> FAULT: interface eth0 is down")
    # lb1's first heartbeat as FAULT, or its release message right after it: whichever lb2 reads first.
    lb2.wait_log(r"SLAVE -> MASTER: lb1 (cannot serve|released the VIPs)")
    serves_through(lab, lb2)
    points_at(lab, "lb2")
    lab.set_link("lb1", True)
    lb1.wait_log(r"FAULT -> SLAVE: healthy again")
    time.sleep(1)
    assert lab.holds("lb2", VIP) and not lab.holds("lb1", VIP)


def test_cutting_only_the_heartbeat_cable_changes_nothing(lab, pair):
    lb1, lb2 = pair()
    watch = VipWatch(lab)
    lab.set_hb_link(False)
    time.sleep(3 * DEADTIME)
    assert watch.stop().longest_both() == 0
    assert lab.holds("lb1", VIP) and not lab.holds("lb2", VIP)
    status = lb2.status()["cluster"]
    assert status["role"] == "slave" and status["peer"]["alive"]
    switch_path, cable = status["paths"]
    assert switch_path["last_heartbeat_age"] < DEADTIME < cable["last_heartbeat_age"]


def test_slave_cut_off_from_peer_and_ping_node_does_not_take_over(lab, pair):
    lb1, lb2 = pair()
    watch = VipWatch(lab)
    # lb2's link stays up (it is healthy) but it hears neither lb1 nor its ping node.
    lab.set_hb_link(False)
    lab.run("lb2", "nft", "add table inet cut; add chain inet cut in { type filter hook input priority 0; }; "
            f"add rule inet cut in ip saddr {{ {HOSTS['lb1']}, {PING_NODE} }} drop")  # fmt: skip
    lb2.wait_log(r"peer lost, but not taking over: ping node unreachable", timeout=5)
    time.sleep(DEADTIME)
    assert not lab.holds("lb2", VIP) and lab.holds("lb1", VIP)
    lab.run("lb2", "nft", "flush", "ruleset")
    lab.set_hb_link(True)
    time.sleep(3 * INTERVAL)
    assert watch.stop().longest_both() == 0
    status = lb2.status()["cluster"]
    assert status["role"] == "slave" and status["withheld_takeovers"] >= 1 and status["dual_masters"] == []


def test_two_masters_are_resolved_as_soon_as_they_hear_each_other(lab, pair):
    lb1, lb2 = pair()
    serves_through(lab, lb1)  # the client uses the VIP, so it has a neighbour entry for the GARPs to move
    # Heartbeats alone are cut, on both paths: both nodes still reach the ping node, so both serve.
    lab.set_hb_link(False)
    lab.run("lb2", "nft", "add table inet cut; add chain inet cut in { type filter hook input priority 0; }; "
            "add rule inet cut in udp dport 694 drop")  # fmt: skip
    wait_for(lambda: lab.holds("lb2", VIP), 3, "lb2 takes over")
    assert lab.holds("lb1", VIP)
    watch = VipWatch(lab)
    lab.run("lb2", "nft", "flush", "ruleset")
    resolved = wait_for(lambda: not lab.holds("lb2", VIP), 2, "the loser releases")
    assert resolved <= INTERVAL + 0.3
    watch.stop()
    assert lab.holds("lb1", VIP)
    episodes = lb2.status()["cluster"]["dual_masters"] + lb1.status()["cluster"]["dual_masters"]
    assert episodes and all(e["winner"] == "lb1" and e["ended"] is not None for e in episodes)
    points_at(lab, "lb1")  # the winner announced again
    serves_through(lab, lb1)


def test_planned_failover_moves_the_vips_in_milliseconds_and_back(lab, pair):
    lb1, lb2 = pair()
    watch = VipWatch(lab)
    result = lb1.cli("failover")
    assert result.returncode == 0, result.stderr
    assert "released the VIPs to lb2; lb2 is master" in result.stdout
    assert lab.holds("lb2", VIP) and not lab.holds("lb1", VIP)
    assert watch.stop().longest_both() == 0
    serves_through(lab, lb2)
    refused = lb1.cli("failover")
    assert refused.returncode == 1 and "not master" in refused.stderr
    back = lb2.cli("--json", "failover")
    assert back.returncode == 0 and "lb1 is master" in back.stdout
    wait_for(lambda: lab.holds("lb1", VIP), 2, "lb1 master again")


def test_failover_to_a_dead_peer_is_refused_unless_forced(lab, pair):
    lb1, lb2 = pair()
    lb2.stop()  # a clean stop of the slave: it has nothing to release
    wait_for(lambda: not lb1.status()["cluster"]["peer"]["alive"], 3, "lb1 notices")
    refused = lb1.cli("failover")
    assert refused.returncode == 1 and "not answering heartbeats" in refused.stderr
    assert lab.holds("lb1", VIP)
    status = lb1.cli("status")
    assert status.returncode == 3 and "peer lb2 is not answering heartbeats" in status.stdout
    forced = lb1.cli("failover", "--force")
    assert forced.returncode == 0 and not lab.holds("lb1", VIP)


def test_clean_stop_of_the_master_hands_over_without_waiting_for_deadtime(lab, pair):
    lb1, lb2 = pair()
    watch = VipWatch(lab)
    lb1.stop()  # SIGTERM
    took = wait_for(lambda: lab.holds("lb2", VIP), 2, "lb2 takes over")
    assert took < DEADTIME
    lb2.wait_log(r"SLAVE -> MASTER: lb1 released the VIPs")
    assert watch.stop().longest_both() == 0


def test_with_failback_the_returning_master_takes_the_vips_back(lab, pair):
    lb1, lb2 = pair(auto_failback=True)
    serves_through(lab, lb1)
    lb1.proc.stop(9)
    wait_for(lambda: lab.holds("lb2", VIP), 3, "lb2 takes over")
    wait_for(lambda: not lab.holds("lb1", VIP), VIP_LEASE + 1.5, "lb1's stale VIP expires")
    watch = VipWatch(lab)
    lb1 = pair.node("lb1", auto_failback=True)
    lb1.wait_log(r"cluster: ", timeout=20)
    wait_for(lambda: lab.holds("lb1", VIP) and not lab.holds("lb2", VIP), 5, "failback to lb1")
    assert watch.stop().longest_both() <= INTERVAL
    lb2.wait_log(r"MASTER -> SLAVE: failback to lb1")
    points_at(lab, "lb1")
    serves_through(lab, lb1)


def test_garbage_sent_to_the_heartbeat_port_is_dropped_and_counted(lab, pair):
    lb1, lb2 = pair()
    rng = random.Random(3)

    def spray() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(300):
            size = rng.choice([0, 5, 60, 150, 154, 200, 1400])
            data = b"HPHB\x01" + rng.randbytes(max(0, size - 5)) if i % 2 else rng.randbytes(size)
            s.sendto(data, (HOSTS["lb1"], 694))
            time.sleep(0.002)  # paced: a burst would overflow the receive buffer, not test the daemon
        s.close()

    lab.call("client", spray)
    time.sleep(0.5)
    status = lb1.status()["cluster"]
    assert sum(status["heartbeats_dropped"].values()) >= 295
    assert status["role"] == "master" and status["peer"]["alive"] and lb1.proc.alive()
    assert lab.holds("lb1", VIP) and not lab.holds("lb2", VIP)


def test_hooks_run_in_order_on_every_transition_with_the_state_and_vips(lab, pair, tmp_path):
    def hooks(doc: dict) -> None:
        out = tmp_path / f"{doc['node']['name']}.log"
        doc["node"]["ha"]["hooks"] = [
            f'echo "$HAPAIR_NODE $HAPAIR_PREVIOUS $HAPAIR_STATE $HAPAIR_VIPS" >> {out}',
            f"sleep 0.1; echo second >> {out}",
        ]

    lb1, lb2 = pair(hooks)
    assert lb1.cli("failover").returncode == 0
    wait_for(lambda: (tmp_path / "lb2.log").exists() and len((tmp_path / "lb2.log").read_text().splitlines()) == 4,
             3, "lb2's hooks")  # fmt: skip
    time.sleep(0.3)
    assert (tmp_path / "lb1.log").read_text().splitlines() == [
        f"lb1 init master {VIP}", "second", f"lb1 master slave {VIP}", "second"]
    assert (tmp_path / "lb2.log").read_text().splitlines() == [
        f"lb2 init slave {VIP}", "second", f"lb2 slave master {VIP}", "second"]


def test_a_master_whose_workers_cannot_be_kept_running_stands_down(lab, pair):
    """One crash costs only that worker's clients a restart; workers that stay down past the grace
    period make the master release the VIPs, since it can no longer serve them."""
    lb1, lb2 = pair()
    lb1.wait_log(r"proxy worker 0 ready")
    victim = lb1.status()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)  # a single crash: restarted, no failover
    lb1.wait_log(r"proxy worker 0 ready \(pid (?!%d\))" % victim, timeout=5)
    time.sleep(2 * INTERVAL)
    assert lab.holds("lb1", VIP) and not lab.holds("lb2", VIP), lb1.log()[-3000:]
    serves_through(lab, lb1)

    deadline = time.monotonic() + 6  # bounded: kill every new worker 0 for at most 6 s
    while time.monotonic() < deadline and not lab.holds("lb2", VIP):
        for pid in lb1.pids()[1:]:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[-3:-1] == [b"3", b"0"]:
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
    assert lab.holds("lb2", VIP), "lb2 did not take over from a master without its workers"
    lb1.wait_log(r"MASTER -> FAULT: the proxy is not serving", timeout=3)
    points_at(lab, "lb2")
    serves_through(lab, lb2)
    lb1.wait_log(r"FAULT -> SLAVE: healthy again", timeout=10)  # left alone, worker 0 comes back
