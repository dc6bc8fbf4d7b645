"""Announcing a takeover: gratuitous ARP for IPv4 VIPs, unsolicited neighbour advertisements for IPv6.

Frames are built with scapy and sent through one AF_PACKET socket. For each IPv4 VIP both forms go out:
the request (who-has VIP tell VIP) and the reply, whose target MAC equals its sender MAC, because Linux
only treats a reply as gratuitous when it does. Bursts are queued on the reactor (count, interval), with
a second burst a few seconds later and an optional periodic refresh, as keepalived does.
"""

from __future__ import annotations

import socket
from typing import Any, Iterable

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from hapair.config import Garp, IPAddress

BROADCAST = "ff:ff:ff:ff:ff:ff"


def frames(ip: IPAddress, mac: str) -> list[bytes]:
    """The announcement frames for one address."""
    if ip.version == 4:
        request = Ether(src=mac, dst=BROADCAST) / ARP(op=1, hwsrc=mac, psrc=str(ip), hwdst="00:00:00:00:00:00", pdst=str(ip))
        reply = Ether(src=mac, dst=BROADCAST) / ARP(op=2, hwsrc=mac, psrc=str(ip), hwdst=mac, pdst=str(ip))
        return [bytes(request), bytes(reply)]
    na = (
        Ether(src=mac, dst="33:33:00:00:00:01")
        / IPv6(src=str(ip), dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(tgt=str(ip), R=0, S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=mac)
    )
    return [bytes(na)]


class Announcer:
    def __init__(self, reactor: Any, interface: str, settings: Garp):
        self.reactor, self.interface, self.settings = reactor, interface, settings
        self.sent = 0
        self._calls: list[Any] = []
        self._socket: socket.socket | None = None

    def _send(self, payload: list[bytes]) -> None:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self._socket.bind((self.interface, 0))
        for frame in payload:
            try:
                self._socket.send(frame)
                self.sent += 1
            except OSError:
                pass  # a link that went down; the next burst tries again

    def announce(self, addresses: Iterable[IPAddress], mac: str) -> None:
        """Sends a burst now, queues its repeats, and restarts the refresh if there is one."""
        self.cancel()
        payload = [frame for ip in addresses for frame in frames(ip, mac)]
        if not payload:
            return
        s = self.settings

        def burst(at: float) -> None:
            for i in range(s.count):
                if at == 0 and i == 0:
                    self._send(payload)
                else:
                    self._calls.append(self.reactor.callLater(at + i * s.interval, self._send, payload))

        burst(0)
        if s.repeat_after > 0:
            burst(s.repeat_after)
        if s.refresh > 0:
            self._calls.append(self.reactor.callLater(s.refresh, self._refresh, payload))

    def _refresh(self, payload: list[bytes]) -> None:
        self._send(payload)
        self._calls.append(self.reactor.callLater(self.settings.refresh, self._refresh, payload))

    def cancel(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []

    def close(self) -> None:
        self.cancel()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
