"""The cluster manager as a Twisted service: the HA machine wired to the world.

It sends a heartbeat on every path each interval, feeds authenticated ones to the machine, checks local
health (the VIP interface's link, the proxy) and the ping node, and carries out what the machine decides:
VIPs added and removed through netlink, takeovers announced with gratuitous ARP, hooks run in order.
Every transition sends a heartbeat at once, so the peer learns of it without waiting an interval.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.internet.utils import getProcessValue
from twisted.logger import Logger

from hapair.config import ClusterConfig, NodeConfig
from hapair.garp import Announcer
from hapair.ha import FailoverRefused, Machine, Role
from hapair.heartbeat import Codec, Dropped, next_epoch
from hapair.pingnode import PingMonitor
from hapair.vips import VipManager

log = Logger(namespace="hapair.cluster")

#: Releases are sent this many times: a lost datagram must not cost a deadtime.
RELEASE_COPIES = 3
#: Seconds a VIP stays on the interface unless the master renews it (every interval): the kernel drops
#: the VIPs of a master whose daemon was killed.
VIP_LEASE = 2


class _PathProtocol(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, cluster: ClusterService, index: int):
        self.cluster, self.index = cluster, index

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.cluster.received(data, self.index, addr)


class ClusterService(service.Service):
    def __init__(self, node: NodeConfig, cluster: ClusterConfig, proxy: Any, reactor: Any, key: bytes | None):
        self.node, self.cluster, self.proxy, self.reactor = node, cluster, proxy, reactor
        ha, local = cluster.ha, node.ha
        self.local = local
        self.priority = 200 if ha.preferred_master == node.name else 100
        self.timers = ha.timers
        self.machine = Machine(node.name, self.priority, self.timers, self, reactor, ha.auto_failback,
                               confirm_ping=bool(local.ping_nodes))  # fmt: skip
        # No key: not paired yet. The node then stands alone (claims its VIPs after initdead) and neither
        # sends nor believes heartbeats until pairing gives it the pair's key.
        self.epoch = next_epoch(os.path.join(node.state_dir, "heartbeat.epoch"))
        self.codec = Codec(node.name, local.peer, key, self.epoch) if key else None
        self.vips = VipManager(local.interface)
        self.announcer = Announcer(reactor, local.interface, ha.garp)
        # Takeovers confirm the ping node with a fresh echo (confirm_ping below), so the passive verdict
        # can take its time: it flips only after a sustained silence, never on a busy reactor.
        window = max(1.0, 3 * ha.deadtime)
        self.ping = PingMonitor(reactor, local.ping_nodes, max(ha.interval, 0.1), window, self.machine.ping)
        self.confirm_timeout = max(2 * ha.interval, 0.05)
        self.ports: list[Any] = []
        self.path_seen: list[float | None] = [None] * len(local.paths)
        self.peer_fingerprint: bytes | None = None
        self.history: list[dict[str, Any]] = []
        self.last_drop: str | None = None
        self._hooks: defer.Deferred = defer.succeed(None)
        self._peer_master_waiters: list[defer.Deferred] = []
        #: Why the VIPs could not be added, if they could not: this node cannot serve until that changes.
        self._vip_error: str | None = None
        self._sender = self._loop(self.send_heartbeats)
        self._health = self._loop(self.check_health)
        self._renew = self._loop(self._renew_vips)
        #: Called when this node becomes master (replication settles pending conflicts then).
        self.on_master: Any = None

    def _loop(self, fn: Any) -> task.LoopingCall:
        """A LoopingCall whose body logs its errors instead of dying of them: a netlink hiccup must not
        stop heartbeats, health checks or VIP renewal for good."""

        def guarded() -> None:
            try:
                fn()
            except Exception:
                log.failure("{fn} failed; trying again next interval", fn=fn.__name__)

        loop = task.LoopingCall(guarded)
        loop.clock = self.reactor
        return loop

    # --- lifecycle ----------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        for index, path in enumerate(self.local.paths):
            port = self.reactor.listenUDP(self.cluster.ha.port, _PathProtocol(self, index), interface=str(path.local))
            self.ports.append(port)
        # A node that died as master may have left its VIPs behind; it claims nothing until INIT is over.
        stale = self.vips.remove(self.cluster.floating_ips())
        if stale:
            log.warn("removed VIPs left from an earlier run: {vips}", vips=", ".join(map(str, stale)))

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        self.machine.start()
        self.ping.start()
        self._sender.start(self.timers.interval, now=True)
        self._health.start(self.timers.interval, now=True)
        log.info("cluster: {node} (priority {p}) with peer {peer} on {n} path(s)", node=self.node.name,
                 p=self.priority, peer=self.local.peer, n=len(self.ports))  # fmt: skip

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for loop in (self._sender, self._health, self._renew):
            if loop.running:
                loop.stop()
        self.machine.stop()  # a master releases here and tells its peer to take over now
        self.ping.stop()
        self.announcer.close()
        self.vips.close()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    # --- heartbeats ---------------------------------------------------------------------------------

    def set_key(self, key: bytes | None) -> None:
        self.codec = Codec(self.node.name, self.local.peer, key, self.epoch) if key else None

    def send_heartbeats(self, releasing: bool = False) -> None:
        if self.codec is None:
            return
        m = self.machine
        data = self.codec.encode(m.role, self.priority, self.cluster.fingerprint(), m.healthy, m.ping_ok, releasing)
        for port, path in zip(self.ports, self.local.paths):
            try:
                port.write(data, (str(path.peer), self.cluster.ha.port))
            except OSError:
                pass  # that path is down; the others carry the heartbeat

    def received(self, data: bytes, index: int, addr: Any) -> None:
        if self.codec is None:
            return  # not paired: nothing can be authenticated
        try:
            got = self.codec.decode(data, index)
        except Dropped as e:
            if self.last_drop != e.reason:
                log.warn("heartbeat from {addr} dropped: {why}", addr=addr[0], why=str(e))
            self.last_drop = e.reason
            return
        self.path_seen[index] = self.reactor.seconds()
        if got.fresh:
            self.peer_fingerprint = got.fingerprint
            self.machine.heartbeat(got.beat)
            if got.beat.role is Role.MASTER and self._peer_master_waiters:
                waiters, self._peer_master_waiters = self._peer_master_waiters, []
                for d in waiters:
                    d.callback(None)

    def check_health(self) -> None:
        if self.machine.role is not Role.MASTER:
            self._vip_error = None  # it mattered only while master; a later takeover tries again
        if self._vip_error is not None:
            self.machine.local_health(False, self._vip_error)
        elif not self.vips.link_up():
            self.machine.local_health(False, f"interface {self.local.interface} is down")
        elif not self.proxy.serving():
            self.machine.local_health(False, "the proxy is not serving")
        else:
            self.machine.local_health(True)

    # --- what the machine decides (hapair.ha.Effects) -----------------------------------------------

    def take_vips(self) -> None:
        try:
            added = self.vips.add(self.cluster.floating_ips(), lease=VIP_LEASE)
        except OSError as e:
            # The machine goes on as master; the next health check reports the fault, which releases
            # (and tells the peer) from a clean state rather than from inside this transition.
            self._vip_error = f"cannot add the VIPs to {self.local.interface}: {e}"
            log.error("{why}", why=self._vip_error)
            self.reactor.callLater(0, self.check_health)
            return
        self._vip_error = None
        log.info("took VIPs {vips}", vips=", ".join(map(str, added)) or "(already held)")
        if not self._renew.running:
            self._renew.start(self.timers.interval, now=False)

    def _renew_vips(self) -> None:
        self.vips.add(self.cluster.floating_ips(), lease=VIP_LEASE)

    def release_vips(self) -> None:
        if self._renew.running:
            self._renew.stop()
        self.announcer.cancel()
        try:
            removed = self.vips.remove(self.cluster.floating_ips())
        except OSError as e:  # e.g. the interface is gone, and the addresses with it
            log.warn("releasing VIPs: {e}", e=e)
            removed = []
        log.info("released VIPs {vips}", vips=", ".join(map(str, removed)) or "(none held)")

    def announce(self) -> None:
        try:
            self.announcer.announce(self.cluster.floating_ips(), self.vips.mac())
        except OSError as e:
            log.error("cannot announce the VIPs on {i}: {e}", i=self.local.interface, e=e)

    def confirm_ping(self) -> None:
        self.ping.confirm(self.confirm_timeout, self.machine.ping_confirmed)

    def send_release(self) -> None:
        for _ in range(RELEASE_COPIES):
            self.send_heartbeats(releasing=True)

    def transition(self, old: Role, new: Role, why: str) -> None:
        log.info("{old} -> {new}: {why}", old=old.value.upper(), new=new.value.upper(), why=why)
        self.history.append({"at": time.time(), "from": old.value, "to": new.value, "why": why})
        del self.history[:-50]
        if self.running:
            self.send_heartbeats()
        self._run_hooks(old, new)
        if new is Role.MASTER and self.on_master is not None:
            self.on_master()

    def note(self, event: str) -> None:
        log.warn("{event}", event=event)

    def _run_hooks(self, old: Role, new: Role) -> None:
        env = {**os.environ, "HAPAIR_STATE": new.value, "HAPAIR_PREVIOUS": old.value,
               "HAPAIR_VIPS": " ".join(map(str, self.cluster.floating_ips())), "HAPAIR_NODE": self.node.name}  # fmt: skip
        for hook in self.local.hooks:
            def run(_: Any, hook: str = hook) -> defer.Deferred:
                # One hook's failure is logged and never stops the hooks after it.
                d = defer.maybeDeferred(getProcessValue, "/bin/sh", ["-c", hook], env=env, reactor=self.reactor)
                d.addCallback(lambda code: code and log.warn("hook {hook!r} exited {code}", hook=hook, code=code))
                return d.addErrback(lambda f: log.failure("hook {hook!r} failed", f, hook=hook))

            self._hooks.addBoth(run)

    # --- operator -----------------------------------------------------------------------------------

    def failover(self, force: bool) -> defer.Deferred:
        """Hands the VIPs to the peer; fires with what happened once the peer's heartbeat says it is
        master (or after three deadtimes without that)."""
        started = self.reactor.seconds()
        try:
            done = self.machine.failover(force)
        except FailoverRefused as e:
            return defer.fail(e)
        peer = self.local.peer
        waiter: defer.Deferred = defer.Deferred()
        self._peer_master_waiters.append(waiter)
        timer = self.reactor.callLater(3 * self.timers.deadtime, lambda: waiter.called or waiter.callback("late"))

        def report(result: Any) -> str:
            if result == "late":
                self._peer_master_waiters.remove(waiter)
                return f"{done}; {peer} has not reported master yet"
            timer.cancel()
            ms = (self.reactor.seconds() - started) * 1000
            return f"{done}; {peer} is master ({ms:.0f} ms)"

        return waiter.addCallback(report)

    def apply(self, cluster: ClusterConfig) -> None:
        """A reloaded cluster section: a master moves to the new set of VIPs at once."""
        old = set(self.cluster.floating_ips())
        self.cluster = cluster
        if self.machine.role is Role.MASTER:
            new = set(cluster.floating_ips())
            self.vips.remove(old - new)
            if new - old:
                self.vips.add(new - old, lease=VIP_LEASE)
                self.announce()

    # --- status -------------------------------------------------------------------------------------

    def _held(self) -> set[str]:
        try:
            return self.vips.held()
        except OSError:
            return set()

    def status(self) -> dict[str, Any]:
        m, now = self.machine, self.reactor.seconds()
        floating = {str(ip) for ip in self.cluster.floating_ips()}
        return {
            "role": m.role.value,
            "why": m.why,
            "priority": self.priority,
            "healthy": m.healthy,
            "ping_node_reachable": m.ping_ok,
            "peer": {
                "node": self.local.peer,
                "role": m.peer.role.value if m.peer_alive and m.peer else "unknown",
                "alive": m.peer_alive,
                "config_in_sync": self.peer_fingerprint == self.cluster.fingerprint() if self.peer_fingerprint else None,
            },
            "paths": [
                {"local": str(p.local), "peer": str(p.peer),
                 "last_heartbeat_age": None if seen is None else round(now - seen, 3)}
                for p, seen in zip(self.local.paths, self.path_seen)
            ],  # fmt: skip
            "vips": sorted(floating),
            "vips_held": sorted(self._held() & floating),
            "garps_sent": self.announcer.sent,
            "paired": self.codec is not None,
            "heartbeats_dropped": dict(self.codec.dropped) if self.codec else {},
            "takeovers": m.stats.takeovers,
            "releases": m.stats.releases,
            "late_heartbeats": m.stats.late_heartbeats,
            "withheld_takeovers": m.stats.withheld_takeovers,
            "dual_masters": [vars(e) for e in m.stats.dual_masters],
            "history": self.history[-10:],
        }
