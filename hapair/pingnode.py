"""Is the ping node (typically the gateway) reachable? ICMP echo on a raw socket, in the reactor.

A node that has lost its peer must not take over unless it can still reach the network beyond it; this
answers that, two ways: `confirm()` sends an echo now and reports whether any ping node answers within
a bound (what a takeover decision uses: as fresh as it gets), and a passive verdict from echoes every
interval, reachable while some ping node answered within `window` seconds (for status, and for a master
deciding whether its own gateway is gone; a long window keeps reactor latency from flapping it).
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


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply to us in an IPv4 packet from a raw ICMP socket, or None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    kind, _, _, reply_id, seq = struct.unpack_from("!BBHHH", packet, ihl)
    return seq if kind == 0 and reply_id == ident else None


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
        self._confirm: tuple[int, Callable[[bool], None], Any] | None = None
        self._socket: socket.socket | None = None
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

    # IReadDescriptor, so the reactor tells us when a reply is waiting.
    def fileno(self) -> int:
        return self._socket.fileno() if self._socket else -1

    def logPrefix(self) -> str:
        return "PingMonitor"

    def doRead(self) -> None:
        if self._socket is None:
            return
        while True:
            try:
                packet = self._socket.recv(2048)
            except (BlockingIOError, OSError):
                return
            seq = parse_reply(packet, self.ident)
            if seq is None:
                continue
            self.last_reply = self.reactor.seconds()
            self._set(True)
            # A confirmation wants an answer to the echo it sent, not one that was already queued.
            if self._confirm is not None and seq == self._confirm[0]:
                _, callback, timer = self._confirm
                self._confirm = None
                timer.cancel()
                callback(True)

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
        if self._confirm is not None:
            self._confirm[2].cancel()
            self._confirm = None
        if self._loop.running:
            self._loop.stop()
        if self._socket is not None:
            self.reactor.removeReader(self)
            self._socket.close()
            self._socket = None

    def confirm(self, timeout: float, callback: Callable[[bool], None]) -> None:
        """Sends an echo to every ping node now; calls back True on the first answer, else False."""
        if self._socket is None:
            callback(True)  # no ping nodes: nothing to confirm
            return
        if self._confirm is not None:
            self._confirm[2].cancel()

        def expired() -> None:
            pending, self._confirm = self._confirm, None
            if pending is not None:
                pending[1](False)

        self._send_echoes()
        self._confirm = (self.seq, callback, self.reactor.callLater(timeout, expired))

    def _send_echoes(self) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        for target in self.targets:
            try:
                self._socket.sendto(echo_request(self.ident, self.seq), (target, 0))
            except OSError:
                pass  # unreachable network: no reply will come, and that is the answer

    def _tick(self) -> None:
        self._send_echoes()
        now = self.reactor.seconds()
        heard = self.last_reply if self.last_reply is not None else self.started
        if now - heard > self.window:
            self._set(False)

    def _set(self, reachable: bool) -> None:
        if reachable != self.reachable:
            self.reachable = reachable
            self.on_change(reachable)
