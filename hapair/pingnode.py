"""Is the ping node (typically the gateway) reachable? ICMP echo on a raw socket, in the reactor.

A node that has lost its peer must not take over unless it can still reach the network beyond it; this
answers that. Echoes go out every interval to each ping node; the node counts as reachable while some
ping node answered within `window` seconds.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Callable, Sequence

from twisted.internet import task

from hapair.config import IPAddress


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"hapair-ping"
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def parse_reply(packet: bytes, ident: int) -> bool:
    """Whether an IPv4 packet from a raw ICMP socket is an echo reply to us."""
    if len(packet) < 20:
        return False
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return False
    kind, _, _, reply_id, _ = struct.unpack_from("!BBHHH", packet, ihl)
    return kind == 0 and reply_id == ident


class PingMonitor:
    def __init__(self, reactor: Any, targets: Sequence[IPAddress], interval: float, window: float,
                 on_change: Callable[[bool], None]):  # fmt: skip
        self.reactor, self.targets = reactor, [str(t) for t in targets if t.version == 4]
        self.interval, self.window, self.on_change = interval, window, on_change
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.last_reply: float | None = None
        self.reachable = True
        self.started = 0.0
        self._socket: socket.socket | None = None
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

    # IReadDescriptor, so the reactor tells us when a reply is waiting.
    def fileno(self) -> int:
        return self._socket.fileno() if self._socket else -1

    def logPrefix(self) -> str:
        return "PingMonitor"

    def doRead(self) -> None:
        while True:
            try:
                packet = self._socket.recv(2048)
            except (BlockingIOError, OSError):
                return
            if parse_reply(packet, self.ident):
                self.last_reply = self.reactor.seconds()
                self._set(True)

    def connectionLost(self, reason: Any) -> None:
        pass

    def start(self) -> None:
        if not self.targets:
            return
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self._socket.setblocking(False)
        self.reactor.addReader(self)
        self.started = self.reactor.seconds()
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._socket is not None:
            self.reactor.removeReader(self)
            self._socket.close()
            self._socket = None

    def _tick(self) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        for target in self.targets:
            try:
                self._socket.sendto(echo_request(self.ident, self.seq), (target, 0))
            except OSError:
                pass  # unreachable network: no reply will come, and that is the answer
        now = self.reactor.seconds()
        heard = self.last_reply if self.last_reply is not None else self.started
        if now - heard > self.window:
            self._set(False)

    def _set(self, reachable: bool) -> None:
        if reachable != self.reachable:
            self.reachable = reachable
            self.on_change(reachable)
