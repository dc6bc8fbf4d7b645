"""Announcement frames, dissected with scapy, and the burst schedule on a fake clock."""

import ipaddress

import pytest

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from twisted.internet import task

from hapair.config import Garp
from hapair.garp import Announcer, frames

MAC = "02:00:00:00:00:01"
VIP = ipaddress.ip_address("198.18.0.10")


def test_ipv4_gets_a_gratuitous_request_and_a_reply_linux_accepts():
    request, reply = (Ether(f) for f in frames(VIP, MAC))
    for frame in (request, reply):
        assert frame.dst == "ff:ff:ff:ff:ff:ff" and frame.src == MAC
        assert frame[ARP].psrc == frame[ARP].pdst == "198.18.0.10" and frame[ARP].hwsrc == MAC
    assert request[ARP].op == 1 and request[ARP].hwdst == "00:00:00:00:00:00"
    # Linux takes a reply as gratuitous only when its target MAC is the sender's.
    assert reply[ARP].op == 2 and reply[ARP].hwdst == MAC


def test_ipv6_gets_an_unsolicited_neighbour_advertisement():
    [na] = (Ether(f) for f in frames(ipaddress.ip_address("2001:db8::10"), MAC))
    assert na.dst == "33:33:00:00:00:01" and na[IPv6].dst == "ff02::1" and na[IPv6].hlim == 255
    adv = na[ICMPv6ND_NA]
    assert adv.tgt == "2001:db8::10" and adv.O == 1 and adv.S == 0 and adv.R == 0
    assert na[ICMPv6NDOptDstLLAddr].lladdr == MAC


class FakeAnnouncer(Announcer):
    def __init__(self, clock, settings):
        super().__init__(clock, "eth0", settings)
        self.times = []

    def _send(self, payload):
        self.times.append((self.reactor.seconds(), len(payload)))
        self.sent += len(payload)


def test_bursts_repeat_and_refresh_on_schedule():
    clock = task.Clock()
    a = FakeAnnouncer(clock, Garp(count=3, interval=0.02, repeat_after=3.0, refresh=10.0))
    a.announce([VIP, ipaddress.ip_address("198.18.0.11")], MAC)
    clock.pump([0.01] * 1100)
    times = [t for t, _ in a.times]  # pumped in 10 ms steps: each fires within one step of its time
    assert times == pytest.approx([0.0, 0.02, 0.04, 3.0, 3.02, 3.04, 10.0], abs=0.011)
    assert all(n == 4 for _, n in a.times)  # two VIPs, two frames each
    a.cancel()
    assert clock.getDelayedCalls() == []


def test_a_new_announcement_replaces_the_queued_one():
    clock = task.Clock()
    a = FakeAnnouncer(clock, Garp(count=5, interval=0.1, repeat_after=0, refresh=0))
    a.announce([VIP], MAC)
    clock.advance(0.15)
    a.announce([VIP], MAC)  # e.g. a dual master won again
    clock.pump([0.1] * 10)
    assert len(a.times) == 2 + 5
