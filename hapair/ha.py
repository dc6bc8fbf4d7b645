"""The HA state machine of one node: who holds the floating IPs.

Pure: no sockets, no netlink. Inputs are method calls (a peer's authenticated heartbeat, local health,
ping-node reachability, an operator's failover, stop); time comes from an injected clock, whose timers
the machine arms itself (deadtime, warntime, initdead); outputs are calls on an injected `Effects`.

Rules, after Linux-HA heartbeat and keepalived:
- A starting node (INIT) claims nothing until it hears its peer or initdead passes.
- A slave takes over when the peer has been silent for deadtime, or at once when the peer sends a
  release (clean stop, operator failover, local fault), but never without reaching its ping node: a
  node that lost its peer *and* its gateway is the one cut off, and taking over would make two masters.
  Reachability is confirmed at that moment (an echo sent then, answered within a bound), not read from
  a passive verdict that may be as stale as the silence itself; a failed confirmation is retried every
  deadtime while the peer stays silent.
- When neither node is master, the election winner takes over: higher priority, then smaller node id.
- Two masters that see each other resolve by the same rank: the loser releases, the winner announces
  again so that every neighbour table points at it. Every such episode is recorded.
- auto_failback (off by default, as the appliances ship): a master hands the VIPs back to a
  higher-ranked peer as soon as that peer is up and healthy.
- A master that cannot serve (proxy down, interface down) releases and goes to FAULT. One that loses its
  ping node hands over only if the peer still reaches its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from hapair.timers import Timers  # noqa: F401 - part of this module's interface


class Role(enum.Enum):
    INIT = "init"
    SLAVE = "slave"
    MASTER = "master"
    FAULT = "fault"


@dataclass(frozen=True)
class PeerBeat:
    """What an authenticated heartbeat says about the peer."""

    node: str
    role: Role
    priority: int
    healthy: bool = True
    ping_ok: bool = True
    releasing: bool = False


class Effects(Protocol):
    def take_vips(self) -> None: ...
    def release_vips(self) -> None: ...
    def announce(self) -> None: ...
    def send_release(self) -> None: ...
    def confirm_ping(self) -> None: ...
    def transition(self, old: Role, new: Role, why: str) -> None: ...
    def note(self, event: str) -> None: ...


class FailoverRefused(Exception):
    pass


@dataclass
class DualMaster:
    started: float
    peer: str
    winner: str
    ended: float | None = None


@dataclass
class HAStats:
    takeovers: int = 0
    releases: int = 0
    late_heartbeats: int = 0
    #: Times the peer was lost while the ping node was unreachable too, so this node held back.
    withheld_takeovers: int = 0
    dual_masters: list[DualMaster] = field(default_factory=list)


class Machine:
    def __init__(
        self,
        node: str,
        priority: int,
        timers: Timers,
        effects: Effects,
        clock: IReactorTime,
        auto_failback: bool = False,
        confirm_ping: bool = False,
    ):
        self.node, self.priority, self.timers = node, priority, timers
        #: Ping nodes are configured: takeovers after silence wait for `ping_confirmed`.
        self.confirm_ping = confirm_ping
        self._confirming: str | None = None
        self._withholding = False
        self.effects, self.clock, self.auto_failback = effects, clock, auto_failback
        self.role = Role.INIT
        self.why = "starting"
        self.healthy = True
        self.ping_ok = True
        self.peer: PeerBeat | None = None
        self.peer_seen: float | None = None
        self.peer_alive = False
        self.stats = HAStats()
        self._yield_until = 0.0
        self._timers: dict[str, IDelayedCall] = {}

    # --- timers -------------------------------------------------------------------------------------

    def _arm(self, name: str, delay: float, fn: Any) -> None:
        call = self._timers.get(name)
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._timers[name] = self.clock.callLater(delay, fn)

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    # --- inputs -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._arm("initdead", self.timers.initdead, self._initdead_passed)

    def heartbeat(self, beat: PeerBeat) -> None:
        self.peer, self.peer_seen, self.peer_alive = beat, self.clock.seconds(), True
        self._confirming, self._withholding = None, False
        self._arm("dead", self.timers.deadtime, self._peer_dead)
        self._arm("warn", self.timers.warntime, self._peer_late)
        if beat.releasing:
            if self.role in (Role.INIT, Role.SLAVE) and self._can_claim():
                self._become_master(f"{beat.node} released the VIPs")
            return
        if self.role is Role.INIT:
            if beat.role is Role.MASTER:
                self._move(Role.SLAVE, f"{beat.node} is master")
            elif self._should_claim_from(beat):
                self._become_master(self._claim_reason(beat))
            else:
                self._move(Role.SLAVE, f"{beat.node} ranks higher")
        elif self.role is Role.SLAVE:
            if beat.role is not Role.MASTER and self._should_claim_from(beat):
                self._become_master(self._claim_reason(beat))
        elif self.role is Role.MASTER:
            if beat.role is Role.MASTER:
                self._dual_master(beat)
            else:
                self._end_dual_master()
                if (self.auto_failback and beat.role is Role.SLAVE and beat.healthy and beat.ping_ok
                        and not self._outranks(beat)):  # fmt: skip
                    self._release(Role.SLAVE, f"failback to {beat.node}")
                elif not self.ping_ok and self._peer_can_serve():
                    self._release(Role.FAULT, "ping node unreachable; peer reaches its own")

    def local_health(self, healthy: bool, why: str = "") -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if not healthy:
            if self.role is Role.MASTER:
                self._release(Role.FAULT, why or "local fault")
            elif self.role is not Role.FAULT:
                self._cancel("initdead")
                self._move(Role.FAULT, why or "local fault")
        elif self.role is Role.FAULT:
            self._move(Role.SLAVE, "healthy again")
            self._reconsider()

    def ping(self, reachable: bool) -> None:
        if reachable == self.ping_ok:
            return
        self.ping_ok = reachable
        if reachable:
            if self.role is Role.FAULT and self.healthy:
                self._move(Role.SLAVE, "ping node reachable again")
            self._reconsider()
        elif self.role is Role.MASTER and self._peer_can_serve():
            self._release(Role.FAULT, "ping node unreachable; peer reaches its own")

    def ping_confirmed(self, reachable: bool) -> None:
        """The answer to `Effects.confirm_ping`: whether the ping node answered just now."""
        why, self._confirming = self._confirming, None
        if why is None or self.peer_alive or self.role not in (Role.INIT, Role.SLAVE) or not self.healthy:
            return
        if reachable:
            self._become_master(why)
            return
        if self.role is Role.INIT:
            self._move(Role.SLAVE, "no peer, and the ping node does not answer")
        self._withhold("ping node unreachable")
        self._arm("dead", self.timers.deadtime, self._peer_dead)  # try again while the peer stays silent

    def failover(self, force: bool = False) -> str:
        """The operator's planned failover: hand the VIPs to the peer. Returns what was done."""
        if self.role is not Role.MASTER:
            raise FailoverRefused(f"this node ({self.node}) is {self.role.value}, not master: nothing to hand over")
        if not force:
            if not self.peer_alive:
                raise FailoverRefused("the peer is not answering heartbeats (use --force to release anyway)")
            if not (self.peer.healthy and self.peer.ping_ok) or self.peer.role is Role.FAULT:
                raise FailoverRefused(f"the peer {self.peer.node} is unhealthy (use --force to release anyway)")
            if self.auto_failback and self._outranks(self.peer):
                raise FailoverRefused(f"auto_failback is on and this node outranks {self.peer.node}: it would hand "
                                      "the VIPs straight back (use --force to release anyway)")  # fmt: skip
        self._yield_until = self.clock.seconds() + self.timers.initdead
        self._release(Role.SLAVE, "operator failover")
        return f"released the VIPs to {self.peer.node if self.peer else 'the peer'}"

    def stop(self) -> None:
        """A clean stop: a master releases so its peer acts at once instead of after deadtime."""
        if self.role is Role.MASTER:
            self._release(Role.INIT, "stopping")
        for name in list(self._timers):
            self._cancel(name)

    # --- timer events -------------------------------------------------------------------------------

    def _initdead_passed(self) -> None:
        self._timers.pop("initdead", None)
        if self.role is not Role.INIT:
            return
        if not self._can_claim():
            self._move(Role.SLAVE, "no peer within initdead, but " + self._blocked())
            self._withhold(self._blocked())
            return
        self._claim_after_silence(f"no peer within initdead ({self.timers.initdead:g}s)")

    def _peer_dead(self) -> None:
        self._timers.pop("dead", None)
        self._cancel("warn")
        self.peer_alive = False
        if self.role is Role.MASTER:
            self._end_dual_master()
        if self.role is not Role.SLAVE:
            return
        if not self._can_claim():
            self._withhold(self._blocked())
            return
        self._claim_after_silence(f"peer silent for deadtime ({self.timers.deadtime:g}s)")

    def _claim_after_silence(self, why: str) -> None:
        if self.confirm_ping:
            self._confirming = why
            self.effects.confirm_ping()
        else:
            self._become_master(why)

    def _withhold(self, why: str) -> None:
        if not self._withholding:
            self._withholding = True
            self.stats.withheld_takeovers += 1
            self.effects.note("peer lost, but not taking over: " + why)

    def _peer_late(self) -> None:
        self._timers.pop("warn", None)
        self.stats.late_heartbeats += 1

    # --- decisions ----------------------------------------------------------------------------------

    def _can_claim(self) -> bool:
        return self.healthy and self.ping_ok

    def _peer_can_serve(self) -> bool:
        """Whether the peer, as its last heartbeat described it, could take the VIPs now."""
        p = self.peer
        return self.peer_alive and p is not None and p.role is not Role.FAULT and p.healthy and p.ping_ok

    def _blocked(self) -> str:
        return "ping node unreachable" if self.healthy else "this node is unhealthy"

    def _rank(self) -> tuple[int, str]:
        return (-self.priority, self.node)

    def _outranks(self, beat: PeerBeat) -> bool:
        return self._rank() < (-beat.priority, beat.node)

    def _should_claim_from(self, beat: PeerBeat) -> bool:
        """No master is visible: take over if the peer cannot, or if this node wins the election."""
        if not self._can_claim() or self.clock.seconds() < self._yield_until:
            return False
        if beat.role is Role.FAULT or not beat.healthy or not beat.ping_ok:
            return True
        return self._outranks(beat)

    def _claim_reason(self, beat: PeerBeat) -> str:
        if beat.role is Role.FAULT or not beat.healthy or not beat.ping_ok:
            return f"{beat.node} cannot serve"
        return f"no master, and this node outranks {beat.node}"

    def _reconsider(self) -> None:
        """After health or ping came back: act on what is known of the peer. Silence heard while this
        node was cut off proves nothing (the same cut may have eaten the peer's heartbeats), so a node
        that hears no peer waits one full deadtime from now before it takes over."""
        if self.role is not Role.SLAVE or not self._can_claim():
            return
        if not self.peer_alive:
            if self.peer is not None or "initdead" not in self._timers:
                self._arm("dead", self.timers.deadtime, self._peer_dead)
        elif self.peer.role is not Role.MASTER and self._should_claim_from(self.peer):
            self._become_master(self._claim_reason(self.peer))

    def _dual_master(self, beat: PeerBeat) -> None:
        episode = self.stats.dual_masters[-1] if self.stats.dual_masters else None
        winner = self.node if self._outranks(beat) else beat.node
        if episode is None or episode.ended is not None:
            self.stats.dual_masters.append(DualMaster(self.clock.seconds(), beat.node, winner))
            self.effects.note(f"dual master with {beat.node}; {winner} keeps the VIPs")
        if winner == self.node:
            self.effects.announce()  # every neighbour must point at the winner again
        else:
            self._release(Role.SLAVE, f"dual master: {beat.node} outranks this node")
            self.stats.dual_masters[-1].ended = self.clock.seconds()

    def _end_dual_master(self) -> None:
        if self.stats.dual_masters and self.stats.dual_masters[-1].ended is None:
            self.stats.dual_masters[-1].ended = self.clock.seconds()

    # --- outputs ------------------------------------------------------------------------------------

    def _move(self, role: Role, why: str) -> None:
        old, self.role, self.why = self.role, role, why
        if role is not Role.INIT:
            self._cancel("initdead")
        self.effects.transition(old, role, why)

    def _become_master(self, why: str) -> None:
        self._withholding = False
        self.stats.takeovers += 1
        self.effects.take_vips()
        self.effects.announce()
        self._move(Role.MASTER, why)

    def _release(self, role: Role, why: str) -> None:
        self.stats.releases += 1
        self.effects.release_vips()
        self._move(role, why)  # first, so the release message carries the role this node now has
        self.effects.send_release()
