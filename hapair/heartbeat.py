"""The heartbeat datagram: what a node tells its peer every interval, authenticated.

Layout (network byte order), 154 bytes at most:

    magic "HPHB" | version u8 | flags u8 | role u8 | priority u16 | epoch u64 | seq u64
    | fingerprint 32 bytes (SHA-256 of the replicated configuration) | node-id length u8 | node id
    | HMAC-SHA256 over everything before it, 32 bytes

flags: 1 releasing (take over now), 2 healthy, 4 ping node reachable.
epoch is the sender's boot time in nanoseconds and seq counts up from 1, so (epoch, seq) only ever grows
for a sender: a datagram that does not raise it is a replay, also across the sender's restarts. The same
datagram goes out on every path, so the window is kept per path: the first copy to arrive is `fresh` and
reaches the state machine; a copy on another path only shows that path is alive.

Decoding is pure. Every datagram that is not accepted raises `Dropped` with one reason from `REASONS`; the
caller counts it. Nothing in a datagram can change state unless its MAC verifies with the pair's key.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from dataclasses import dataclass

from hapair.ha import PeerBeat, Role

MAGIC = b"HPHB"
VERSION = 1
MAX_SIZE = 256
MIN_KEY = 16
_HEAD = struct.Struct("!4sBBBHQQ32sB")
_MAC_LEN = 32
_ROLES = list(Role)
F_RELEASING, F_HEALTHY, F_PING_OK = 1, 2, 4

REASONS = ("oversized", "malformed", "bad_version", "bad_mac", "unknown_node", "replayed")


class Dropped(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Received:
    beat: PeerBeat
    fingerprint: bytes
    epoch: int
    seq: int
    #: False for a copy already received on another path.
    fresh: bool = True


class Codec:
    """One node's heartbeat encoder and its peer's decoder, with the replay window."""

    def __init__(self, node: str, peer: str, key: bytes, epoch: int | None = None):
        if len(key) < MIN_KEY:
            raise ValueError(f"the heartbeat key must be at least {MIN_KEY} bytes (it is {len(key)})")
        if len(node.encode()) > 64 or len(peer.encode()) > 64:
            raise ValueError("node names are at most 64 bytes")
        self.node, self.peer, self._key = node, peer, key
        self.epoch = epoch if epoch is not None else time.time_ns()
        self.seq = 0
        self._last: tuple[int, int] = (0, 0)
        self._last_on_path: dict[int, tuple[int, int]] = {}
        self.dropped = dict.fromkeys(REASONS, 0)

    def encode(self, role: Role, priority: int, fingerprint: bytes, healthy: bool = True, ping_ok: bool = True,
               releasing: bool = False) -> bytes:  # fmt: skip
        self.seq += 1
        flags = (F_RELEASING if releasing else 0) | (F_HEALTHY if healthy else 0) | (F_PING_OK if ping_ok else 0)
        node = self.node.encode()
        body = _HEAD.pack(MAGIC, VERSION, flags, _ROLES.index(role), priority, self.epoch, self.seq, fingerprint, len(node)) + node
        return body + hmac.new(self._key, body, hashlib.sha256).digest()

    def decode(self, data: bytes, path: int = 0) -> Received:
        """The peer's heartbeat as received on `path`, or `Dropped` (already counted) saying why not."""
        try:
            received = self._decode(data, path)
        except Dropped as e:
            self.dropped[e.reason] += 1
            raise
        stamp = (received.epoch, received.seq)
        self._last_on_path[path] = stamp
        if stamp <= self._last:
            return Received(received.beat, received.fingerprint, received.epoch, received.seq, fresh=False)
        self._last = stamp
        return received

    def _decode(self, data: bytes, path: int) -> Received:
        if len(data) > MAX_SIZE:
            raise Dropped("oversized", f"{len(data)} bytes")
        if len(data) < _HEAD.size + _MAC_LEN:
            raise Dropped("malformed", f"{len(data)} bytes is too short")
        magic, version, flags, role, priority, epoch, seq, fingerprint, node_len = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise Dropped("malformed", "not a hapair heartbeat")
        if version != VERSION:
            raise Dropped("bad_version", f"version {version}")
        if len(data) != _HEAD.size + node_len + _MAC_LEN:
            raise Dropped("malformed", "length does not match the node id")
        body, mac = data[:-_MAC_LEN], data[-_MAC_LEN:]
        if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()):
            raise Dropped("bad_mac")
        try:
            node = data[_HEAD.size : _HEAD.size + node_len].decode()
        except UnicodeDecodeError:
            raise Dropped("malformed", "node id is not UTF-8")
        if node != self.peer:
            raise Dropped("unknown_node", repr(node))
        if role >= len(_ROLES) or flags & ~(F_RELEASING | F_HEALTHY | F_PING_OK):
            raise Dropped("malformed", "unknown role or flags")
        if (epoch, seq) <= self._last_on_path.get(path, (0, 0)):
            raise Dropped("replayed", f"epoch {epoch} seq {seq}")
        beat = PeerBeat(node=node, role=_ROLES[role], priority=priority, healthy=bool(flags & F_HEALTHY),
                        ping_ok=bool(flags & F_PING_OK), releasing=bool(flags & F_RELEASING))  # fmt: skip
        return Received(beat, fingerprint, epoch, seq)


def next_epoch(path: str) -> int:
    """A boot epoch above every earlier one of this node, even if the clock stepped back: the peer drops
    anything that does not raise (epoch, seq), so a lower epoch would make this node unheard."""
    try:
        with open(path, encoding="ascii") as f:
            previous = int(f.read().strip() or 0)
    except (OSError, ValueError):
        previous = 0
    epoch = max(time.time_ns(), previous + 1)
    from replication.store import write_atomic

    write_atomic(path, str(epoch).encode())
    return epoch


def read_key(path: str) -> bytes:
    """The pair's heartbeat key from a file: hex, at least 16 bytes once decoded."""
    with open(path, encoding="ascii") as f:
        text = f.read().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: the heartbeat key must be written in hex")
    if len(key) < MIN_KEY:
        raise ValueError(f"{path}: the heartbeat key must be at least {MIN_KEY} bytes ({2 * MIN_KEY} hex digits)")
    return key
