"""The proxy as a Twisted service: pools, listeners, health monitors and the idle sweep, built from the
cluster configuration and reloaded as a diff.

Reload keeps whatever did not change: a virtual service whose address and ports stay keeps its listening
sockets (and so its clients' connections), its persistence table, its counters and its servers' health.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, TextIO

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from hapair.config import AdminState, ClusterConfig, VirtualService
from proxy.accesslog import AccessLog
from proxy.listener import Listener, listening_socket
from proxy.loop import Loop
from proxy.monitor import HealthMonitor
from proxy.pipes import PipePool
from proxy.pool import Pool
from proxy.relay import Session

log = Logger(namespace="hapair.proxy")

#: The idle sweep runs this often relative to the shortest timeout. It is also what notices activity
#: (`Session.idle_reason`), so a session closes between 1x its idle timeout after its last byte and two
#: sweep periods later: 1.25x. No timer per connection, and no clock read per byte.
SWEEP_FRACTION = 0.125
SWEEP_MIN, SWEEP_MAX = 0.05, 5.0


class ProxyRuntime:
    """What sessions share: the event loop, the pipe pool, the access log and the set of live sessions."""

    def __init__(self, reactor: Any, out: TextIO | None = None):
        self.reactor = reactor
        self.loop = Loop(reactor)
        self.pipes = PipePool()
        self.log = AccessLog(reactor, out)
        self.sessions: set[Session] = set()
        self.accept_errors = 0
        self._accept_error_logged = 0.0

    def accept_failed(self, listener: Listener, e: OSError) -> None:
        self.accept_errors += 1
        now = self.reactor.seconds()
        if now - self._accept_error_logged >= 1.0:  # once a second at most: this happens in floods
            self._accept_error_logged = now
            log.error("{vs} cannot accept on {vip}:{port}: {why} ({n} so far)", vs=listener.pool.service.label,
                      vip=listener.vip, port=listener.vport, why=e.strerror, n=self.accept_errors)  # fmt: skip

    def close(self) -> None:
        self.log.flush()
        self.pipes.close()
        self.loop.close()


def rebound(old: ClusterConfig, new: ClusterConfig) -> set[str]:
    """Labels of the services of `new` that need listeners made: new ones, and those whose address or
    ports changed (they are closed and made again)."""
    was = {vs.label: (vs.ip, vs.ports) for vs in old.virtual_services}
    return {vs.label for vs in new.virtual_services if was.get(vs.label) != (vs.ip, vs.ports)}


class UnknownServer(KeyError):
    pass


class ProxyService(service.Service):
    """Pools, listeners and sessions (`serve`), and health checks (`check`).

    In one process both; with workers, the supervisor's instance only checks and decides (its pools hold
    health and admin states, `proxy.supervisor` forwards them) and each worker's only serves, on
    listening sockets the supervisor made (`sockets`)."""

    def __init__(self, cluster: ClusterConfig, reactor: Any = None, out: TextIO | None = None, serve: bool = True,
                 check: bool = True, sockets: Callable[[str, int], socket.socket] = listening_socket,
                 share: int = 1):  # fmt: skip
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.serve, self.check, self.share = serve, check, share
        self._socket_for = sockets
        self.runtime = ProxyRuntime(reactor, out) if serve else None
        self.cluster = cluster
        self.pools: dict[str, Pool] = {}
        self.monitors: dict[str, HealthMonitor] = {}
        self.ports: dict[str, dict[int, Listener]] = {}
        #: (service, source, server, seconds left) for each new persistence assignment; set by replication.
        self.on_persist: Any = None
        #: (service, server, up) on each health transition; set by the supervisor of workers.
        self.on_health: Any = None
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = reactor

    # --- lifecycle ----------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bind every listener before anything else starts: a port that cannot be bound fails the start.
        for vs in self.cluster.virtual_services:
            self._add(vs)

    def startService(self) -> None:
        if not self.pools and self.cluster.virtual_services:
            self.privilegedStartService()
        super().startService()
        for monitor in self.monitors.values():
            monitor.start()
        self._start_sweeper()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._sweeper.running:
            self._sweeper.stop()
        for label in list(self.pools):
            self._remove(label)
        if self.serve:
            for session in list(self.runtime.sessions):
                session.abort("proxy stopping")
            self.runtime.log.flush()
        return defer.succeed(None)

    def _start_sweeper(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        shortest = min(
            (min(vs.timeouts.client, vs.timeouts.server, vs.timeouts.connect) for vs in self.cluster.virtual_services),
            default=60.0,
        )
        self._sweeper.start(min(SWEEP_MAX, max(SWEEP_MIN, shortest * SWEEP_FRACTION)), now=False)

    def _add(self, vs: VirtualService, bound: dict | None = None) -> None:
        pool = Pool(vs, self.reactor)
        pool.share = self.share
        pool.on_assign = lambda source, server, label=vs.label: self._assigned(label, source, server)
        ports: dict[int, Listener] = {}
        if self.serve:
            try:
                for port in vs.ports:
                    sock = (bound or {}).pop((str(vs.ip), port), None) or self._socket_for(str(vs.ip), port)
                    ports[port] = Listener(self.runtime, pool, str(vs.ip), port, sock)
            except Exception:
                for p in ports.values():
                    p.close()
                raise
            log.info("{vs} listening on {ip} ports {ports}", vs=vs.label, ip=vs.ip, ports=",".join(map(str, vs.ports)))
        self.pools[vs.label] = pool
        self.ports[vs.label] = ports
        if self.check:
            self.monitors[vs.label] = HealthMonitor(self.reactor, pool, self._health_changed)

    def _remove(self, label: str) -> None:
        monitor = self.monitors.pop(label, None)
        if monitor is not None:
            monitor.stop()
        self.pools.pop(label)
        for listener in self.ports.pop(label).values():
            listener.close()

    # --- reload -------------------------------------------------------------------------------------

    def apply(self, cluster: ClusterConfig) -> defer.Deferred:
        """Moves to a new cluster configuration, touching only what changed. Fires when it is in place;
        fails, having changed nothing, when a new address and port cannot be bound."""
        new = {vs.label: vs for vs in cluster.virtual_services}
        old = {vs.label: vs for vs in self.cluster.virtual_services}
        moved = rebound(self.cluster, cluster)
        rebind = moved & old.keys()
        # Bind every address and port that is new to this node before touching anything; ours that
        # only move between services are re-bound once their old listener is closed.
        ours = {(str(vs.ip), port) for vs in old.values() for port in vs.ports}
        bound: dict[tuple[str, int], Any] = {}
        try:
            for label in moved if self.serve else ():
                for port in new[label].ports:
                    key = (str(new[label].ip), port)
                    if key not in ours:
                        bound[key] = self._socket_for(*key)
        except (OSError, KeyError) as e:
            for sock in bound.values():
                sock.close()
            why = e.strerror if isinstance(e, OSError) else e.args[0]
            return defer.fail(OSError(getattr(e, "errno", None), f"cannot listen on {key[0]} port {key[1]}: {why}"))
        # A failure past this point (a socket a worker was not sent) fails the Deferred, not the caller.
        return defer.maybeDeferred(self._move_to, cluster, old, (old.keys() - new.keys()) | rebind, bound)

    def _move_to(self, cluster: ClusterConfig, old: dict[str, VirtualService], closing: set[str], bound: dict) -> None:
        for label in closing:
            self._remove(label)
        for vs in cluster.virtual_services:
            label = vs.label
            if label not in self.pools:
                self._add(vs, bound)
                if self.running and label in self.monitors:
                    self.monitors[label].start()
            elif vs != self.pools[label].service:
                restart = vs.health_check != old[label].health_check or vs.real_servers != old[label].real_servers
                self.pools[label].update(vs)
                if restart and self.running and label in self.monitors:
                    self.monitors[label].restart()
        self.cluster = cluster
        if self.running:
            self._start_sweeper()

    # --- operator actions ---------------------------------------------------------------------------

    def set_admin_state(
        self, server: str, state: AdminState, vs: str | None = None, clear_persistence: bool = False
    ) -> list[tuple[str, str]]:
        """Drain, halt or bring online a real server, in one virtual service or in every one that has it.
        Returns the (service, server) pairs changed; raises UnknownServer when there are none."""
        changed = []
        for label, pool in self.pools.items():
            if (vs is None or vs == label) and server in pool.servers:
                pool.set_admin_state(server, state, clear_persistence)
                changed.append((label, server))
                log.info("{vs}/{server} set to {state}", vs=label, server=server, state=state.value)
        if not changed:
            where = f"virtual service {vs!r}" if vs else "any virtual service"
            raise UnknownServer(f"no real server {server!r} in {where}")
        return changed

    def _assigned(self, label: str, source: str, server: str) -> None:
        if self.on_persist is not None:
            pool = self.pools.get(label)
            if pool is not None and pool.persistence is not None:
                self.on_persist(label, source, server, pool.persistence.timeout)

    def _health_changed(self, pool: Pool, label: str, up: bool) -> None:
        if self.on_health is not None:
            self.on_health(pool.service.label, label, up)
        if up or not self.serve or not pool.service.health_check.shutdown_sessions:
            return
        for session in [s for s in self.runtime.sessions if s.pool is pool and s.server_state.label == label]:
            session.abort("real server down")

    def set_health(self, service_label: str, server: str, up: bool) -> None:
        """A health result decided elsewhere (the supervisor's checks, for a worker)."""
        pool = self.pools.get(service_label)
        if pool is not None and server in pool.servers and pool.set_health(server, up):
            self._health_changed(pool, server, up)

    # --- persistence and admin states, as replication sees them -------------------------------------

    def persistence_entries(self) -> defer.Deferred:
        """[service, source, server, seconds left] for every live entry."""
        entries = []
        for label, pool in self.pools.items():
            if pool.persistence is not None:
                entries += [[label, src, srv, left] for src, srv, left in pool.persistence.entries()]
        return defer.succeed(entries)

    def restore_persistence(self, entries: list) -> None:
        """Entries a peer (or the supervisor) reported; those naming an unknown service or server go."""
        batches: dict[str, list[tuple[str, str, float]]] = {}
        for service_label, source, server, remaining in entries:
            pool = self.pools.get(service_label)
            if pool is not None and pool.persistence is not None and server in pool.servers:
                batches.setdefault(service_label, []).append((str(source), str(server), float(remaining)))
        for service_label, batch in batches.items():
            self.pools[service_label].persistence.restore_many(batch)

    def admin_states(self) -> list[list[str]]:
        """[service, server, state] for every server, online included."""
        return [[label, s.label, s.admin.value] for label, pool in self.pools.items() for s in pool.servers.values()]

    def restore_admin_states(self, states: list) -> None:
        for service_label, server, state in states:
            pool = self.pools.get(service_label)
            if pool is not None and server in pool.servers:
                pool.set_admin_state(server, AdminState(state))

    def serving(self) -> bool:
        return self.running

    def workers_status(self) -> list[dict[str, Any]]:
        """No worker processes: the proxy runs here (`proxy.supervisor` has them)."""
        return []

    def sweep(self) -> None:
        for pool in self.pools.values():
            if pool.persistence is not None:
                pool.persistence.purge()
        if not self.serve:
            return
        now = self.runtime.loop.now = self.reactor.seconds()  # a redispatch from here stamps the real time
        expired = []
        for session in self.runtime.sessions:
            reason = session.idle_reason(now)
            if reason is not None:
                expired.append((session, reason))
        for session, reason in expired:
            session.expire(reason)
        self.runtime.pipes.trim()

    # --- status -------------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        live = self._live_traffic()
        none = (0, 0, 0)
        result = []
        for label, pool in self.pools.items():
            vs = pool.service
            monitor = self.monitors.get(label)
            servers = []
            for s in pool.servers.values():
                check = monitor.checks.get(s.label) if monitor else None
                servers.append(dict(
                    label=s.label, ip=str(s.config.ip), port=s.config.port, weight=s.weight,
                    admin=s.admin.value, health="up" if s.up else "down",
                    last_check_error=check.last_error if check else None,
                    **s.counters.as_dict(live.get((pool, s.label), none)),
                ))  # fmt: skip
            result.append(dict(
                label=label, ip=str(vs.ip), ports=list(vs.ports), balance=vs.balance.value,
                persistence_entries=len(pool.persistence) if pool.persistence is not None else None,
                servers=servers, **pool.counters.as_dict(live.get((pool, None), none)),
            ))  # fmt: skip
        return result

    def _live_traffic(self) -> dict[tuple[Pool, str | None], tuple[int, int, int]]:
        """The traffic of open sessions, by service (label None) and by real server: sessions count their
        bytes themselves and add them to the counters only when they end."""
        live: dict[tuple[Pool, str | None], tuple[int, int, int]] = {}
        for session in self.runtime.sessions if self.serve else ():
            traffic = session.traffic()
            for key in ((session.pool, None), (session.pool, session.server_state.label)):
                a, b, c = live.get(key, (0, 0, 0))
                live[key] = (a + traffic[0], b + traffic[1], c + traffic[2])
        return live
