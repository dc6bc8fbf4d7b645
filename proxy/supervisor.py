"""The proxy as the supervisor runs it with worker processes: one per core, each a reactor of its own.

So a saturated data plane never delays a heartbeat, and the proxy uses every core. The supervisor keeps
what must be decided once per node: the listening sockets (a SO_REUSEPORT group per address and port,
one socket per worker, sources steered by `proxy.steering`), the health checks and admin states (its own
`ProxyService(serve=False)`), and the configuration. It forwards every change to the workers and sums
their counters for `hapair status`. It offers the daemon the same methods as a `ProxyService`.

A worker that dies is started again on the same sockets (clients wait in the backlog meanwhile). One
that is not back within GRACE seconds (START_GRACE at the daemon's start) makes `serving()` false, so the cluster manager stops claiming the
VIPs rather than hold an address part of which nobody answers; a single crash costs only that worker's
clients a moment, not the whole node a failover.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols import amp

from hapair.config import AdminState, ClusterConfig, PersistenceMode
from proxy import channel, steering
from proxy.service import ProxyService, rebound
from proxy.stats import TRAFFIC

log = Logger(namespace="hapair.proxy")

#: Seconds before a dead worker is started again: doubled on each death in a row, up to the last.
RESTART_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0)
#: A worker that served this long before dying starts its next restart from the first delay again.
STABLE = 30.0
STOP_TIMEOUT = 5.0
#: Seconds a worker that served may be down (restarting) before the node stops counting as serving; and
#: the seconds a worker has to serve for the first time, at the daemon's start (interpreter start-up).
GRACE = 2.0
START_GRACE = 10.0
#: Persistence entries per Restore message to a (re)started worker.
RESTORE_CHUNK = 5000


class _Channel(amp.AMP):
    def __init__(self, worker: Worker):
        super().__init__()
        self.worker = worker

    @channel.Assigned.responder
    def assigned(self, entries: list) -> dict:
        self.worker.supervisor.assigned(entries)
        return {}


class _Process(protocol.ProcessProtocol):
    def __init__(self, worker: Worker):
        self.worker = worker

    def processEnded(self, reason: Any) -> None:
        self.worker.ended(reason.value)


class Worker:
    """One worker process: started, configured, watched, restarted."""

    def __init__(self, supervisor: Supervisor, index: int):
        self.supervisor, self.index = supervisor, index
        self.reactor = supervisor.reactor
        self.process = None
        #: The running process's pid (Twisted forgets it once the process is reaped, before processEnded).
        self.pid: int | None = None
        self.amp: _Channel | None = None
        self.ready = False
        self.failures = 0
        self.restarts = 0
        #: Sessions this worker's current process has served, as of the last snapshot.
        self.sessions = 0
        self.started_at = 0.0
        self.configured: ClusterConfig | None = None
        #: While this worker is not serving: the time by which it must (after that the node is not serving).
        self.deadline: float | None = None
        self._restart_call = None
        self._ended: defer.Deferred | None = None

    def start(self) -> None:
        self._restart_call = None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = self.reactor.spawnProcess(
                _Process(self), sys.executable, [sys.executable, "-m", "proxy.worker", "3", str(self.index)],
                env=os.environ.copy(), childFDs={0: 0, 1: 1, 2: 2, 3: child.fileno()},
            )  # fmt: skip
            self.pid = self.process.pid
        except Exception as e:  # no memory, no process slots: try again later, like a crash
            parent.close()
            self.process = None
            self._schedule_restart(None, f"could not be started: {e}")
            return
        finally:
            child.close()
        self.started_at = self.reactor.seconds()
        self._ended = defer.Deferred()
        self.amp = _Channel(self)
        self.reactor.adoptStreamConnection(parent.fileno(), socket.AF_UNIX, protocol.Factory.forProtocol(lambda: self.amp))
        parent.close()
        self.configure().addErrback(self._configure_failed)

    @defer.inlineCallbacks
    def configure(self) -> Any:
        """Sends this worker everything it serves with: its sockets, the configuration, every server's
        health and admin state, and the persistence entries of the sources steered to it. Until it is
        ready, changes are not sent to it one by one, so this repeats until a pass saw none."""
        sup = self.supervisor
        while True:
            generation = sup.generation
            if self.configured is not sup.cluster:
                cluster = sup.cluster
                for (ip, port), socks in list(sup.groups.items()):
                    yield self.amp.callRemote(channel.Listen, ip=ip, port=port, fd=socks[self.index].fileno())
                yield self.amp.callRemote(channel.Configure, cluster=cluster, workers=len(sup.workers))
                self.configured = cluster
            for label, pool in list(sup.control.pools.items()):
                for s in list(pool.servers.values()):
                    yield self.amp.callRemote(channel.Health, service=label, server=s.label, up=s.up)
                    yield self.amp.callRemote(channel.Admin, service=label, server=s.label, state=s.admin.value,
                                              clear=False)  # fmt: skip
            entries = sup.entries_of(self.index)
            for i in range(0, len(entries), RESTORE_CHUNK):
                yield self.amp.callRemote(channel.Restore, entries=entries[i : i + RESTORE_CHUNK])
            if generation == sup.generation and self.configured is sup.cluster:
                break
        self.ready = True
        self.deadline = None
        log.info("proxy worker {index} ready (pid {pid})", index=self.index, pid=self.pid)

    def _configure_failed(self, failure: Any) -> None:
        if self.process is None:
            return
        log.error("proxy worker {index} could not be configured: {why}; restarting it", index=self.index,
                  why=failure.getErrorMessage())  # fmt: skip
        self.signal("KILL")

    def call(self, command: type[amp.Command], **kw: Any) -> defer.Deferred:
        """Sends a command to a ready worker; one that is not ready gets the state when it is."""
        if not self.ready:
            return defer.succeed({})
        return self.amp.callRemote(command, **kw)

    def signal(self, name: str) -> None:
        try:
            self.process.signalProcess(name)
        except Exception:  # already gone: processEnded follows
            pass

    def ended(self, why: Any) -> None:
        if self.ready:
            self.deadline = self.reactor.seconds() + GRACE
        pid, self.pid, self.process, self.ready, self.configured = self.pid, None, None, False, None
        if self.amp is not None and self.amp.transport is not None:
            self.amp.transport.loseConnection()
        self.amp = None
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.callback(None)
        if self.reactor.seconds() - self.started_at >= STABLE:
            self.failures = 0
        self._schedule_restart(pid, f"ended: {getattr(why, 'args', why)}")

    def _schedule_restart(self, pid: int | None, what: str) -> None:
        if not self.supervisor.running:
            return
        delay = RESTART_DELAYS[min(self.failures, len(RESTART_DELAYS) - 1)]
        self.failures += 1
        self.restarts += 1
        log.error("proxy worker {index} (pid {pid}) {what}; starting it again in {delay}s", index=self.index,
                  pid=pid, what=what, delay=delay)  # fmt: skip
        self._restart_call = self.reactor.callLater(delay, self.start)

    def stop(self) -> defer.Deferred:
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        if self.process is None:
            return defer.succeed(None)
        d = self._ended
        self.signal("TERM")
        kill = self.reactor.callLater(STOP_TIMEOUT, self.signal, "KILL")
        return d.addBoth(lambda r: kill.cancel() if kill.active() else None)


def listeners(cluster: ClusterConfig) -> dict[tuple[str, int], bool]:
    """Every address and port of `cluster`'s services, and whether its clients are steered to a worker by
    their address (the service keeps source-IP persistence: all of a client's connections must meet the
    worker holding its entry) or each connection to any worker (no per-client state to keep together)."""
    return {(str(vs.ip), port): vs.persistence.mode is PersistenceMode.SOURCE_IP
            for vs in cluster.virtual_services for port in vs.ports}  # fmt: skip


class Supervisor(service.Service):
    def __init__(self, cluster: ClusterConfig, count: int, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor, self.cluster = reactor, cluster
        self.control = ProxyService(cluster, reactor, serve=False)
        self.control.on_health = self._health
        self.groups: dict[tuple[str, int], list[socket.socket]] = {}
        #: Whether each group steers by source address (see `listeners`) or spreads connections at random.
        self.by_source: dict[tuple[str, int], bool] = {}
        self.workers = [Worker(self, i) for i in range(count)]
        #: (service, source, server, seconds left) for each new persistence assignment; set by replication.
        self.on_persist: Any = None
        #: Counts changes a worker being configured must not miss (health, admin states, configuration).
        self.generation = 0
        self._apply_lock = defer.DeferredLock()

    # --- lifecycle ----------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Every socket before anything starts: a port that cannot be bound fails the start.
        self._bind(listeners(self.cluster))
        self.control.privilegedStartService()

    def startService(self) -> None:
        if not self.groups and self.cluster.virtual_services:
            self.privilegedStartService()
        super().startService()
        self.control.startService()
        for worker in self.workers:
            worker.deadline = self.reactor.seconds() + START_GRACE
            worker.start()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        yield defer.gatherResults([w.stop() for w in self.workers])
        yield self.control.stopService()
        for socks in self.groups.values():
            for sock in socks:
                sock.close()
        self.groups.clear()
        self.by_source.clear()

    def serving(self) -> bool:
        """Every worker serves, or is (re)starting within its grace."""
        now = self.reactor.seconds()
        return self.running and all(w.ready or (w.deadline is not None and now < w.deadline) for w in self.workers)

    def _bind(self, keys: dict[tuple[str, int], bool]) -> None:
        """Makes the groups of `keys` not made yet (all of them, or none and an error), and re-steers those
        whose service turned source-IP persistence on or off: the group's program is replaced, its sockets
        and their backlogs untouched."""
        made, count = {}, len(self.workers)
        try:
            for ip, port in sorted(keys.keys() - self.groups.keys()):
                made[(ip, port)] = steering.group(ip, port, count, keys[(ip, port)])
        except OSError as e:
            for socks in made.values():
                for sock in socks:
                    sock.close()
            raise OSError(e.errno, f"cannot listen on {ip} port {port}: {e.strerror}")
        self.groups.update(made)
        self.by_source.update((key, keys[key]) for key in made)
        for key, socks in self.groups.items():
            steer = keys.get(key)
            if steer is not None and steer != self.by_source[key]:
                if count > 1:
                    steering.attach(socks[0], count, steer)
                self.by_source[key] = steer

    # --- reload -------------------------------------------------------------------------------------

    def apply(self, cluster: ClusterConfig) -> defer.Deferred:
        """Binds what is new (or fails, having changed nothing), then moves every worker to `cluster`.
        One change at a time: a SIGHUP during `hapair reload` waits for it."""
        return self._apply_lock.run(self._apply, cluster)

    @defer.inlineCallbacks
    def _apply(self, cluster: ClusterConfig) -> Any:
        keys = listeners(cluster)
        self._bind(keys)
        moved = rebound(self.cluster, cluster)
        self.cluster = cluster
        self.generation += 1
        sends = []
        for worker in self.workers:
            if worker.ready:
                sends.append(self._reconfigure(worker, cluster, moved))
        yield defer.gatherResults(sends, consumeErrors=True)
        yield self.control.apply(cluster)
        for key in self.groups.keys() - keys.keys():
            del self.by_source[key]
            for sock in self.groups.pop(key):
                sock.close()

    @defer.inlineCallbacks
    def _reconfigure(self, worker: Worker, cluster: ClusterConfig, moved: set[str]) -> Any:
        try:
            for vs in cluster.virtual_services:
                if vs.label in moved:
                    for port in vs.ports:
                        key = (str(vs.ip), port)
                        yield worker.call(channel.Listen, ip=key[0], port=port, fd=self.groups[key][worker.index].fileno())
            yield worker.call(channel.Configure, cluster=cluster, workers=len(self.workers))
            worker.configured = cluster
        except Exception as e:
            log.error("proxy worker {index} refused the new configuration: {why}; restarting it",
                      index=worker.index, why=e)  # fmt: skip
            worker.signal("KILL")

    # --- what the daemon and replication ask --------------------------------------------------------

    def _to_all(self, command: type[amp.Command], **kw: Any) -> defer.Deferred:
        """Sends to every ready worker; fires with each answer, {} from a worker that failed to answer
        (it died meanwhile: its successor is configured from scratch)."""
        what = command.__name__.lower()
        return defer.gatherResults([w.call(command, **kw).addErrback(self._lost, what) for w in self.workers])

    def _health(self, service_label: str, server: str, up: bool) -> None:
        self.generation += 1
        self._to_all(channel.Health, service=service_label, server=server, up=up)

    def set_admin_state(self, server: str, state: AdminState, vs: str | None = None,
                        clear_persistence: bool = False) -> list[tuple[str, str]]:  # fmt: skip
        changed = self.control.set_admin_state(server, state, vs, clear_persistence)
        self.generation += 1
        for label, name in changed:
            self._to_all(channel.Admin, service=label, server=name, state=state.value, clear=clear_persistence)
        return changed

    def admin_states(self) -> list[list[str]]:
        return self.control.admin_states()

    def restore_admin_states(self, states: list) -> None:
        self.control.restore_admin_states(states)
        self.generation += 1
        for label, server, state in states:
            self._to_all(channel.Admin, service=label, server=server, state=state, clear=False)

    def persistence_entries(self) -> defer.Deferred:
        d = self._to_all(channel.Entries)
        return d.addCallback(lambda answers: [e for answer in answers for e in answer.get("entries", [])])

    def assigned(self, entries: list) -> None:
        """New assignments from a worker: kept here too (a restarted worker gets its share back) and
        handed to replication."""
        self.control.restore_persistence(entries)
        if self.on_persist is not None:
            for entry in entries:
                self.on_persist(*entry)

    def entries_of(self, index: int) -> list[list]:
        """The persistence entries, as this supervisor knows them, of the sources steered to worker `index`."""
        count = len(self.workers)
        return [[label, src, srv, left] for label, pool in self.control.pools.items() if pool.persistence is not None
                for src, srv, left in pool.persistence.entries() if steering.worker_of(src, count) == index]  # fmt: skip

    def restore_persistence(self, entries: list) -> None:
        """Each entry to the worker the kernel steers its source to (and to this supervisor's copy)."""
        count = len(self.workers)
        shares: list[list] = [[] for _ in range(count)]
        valid = []
        for entry in entries:
            try:
                shares[steering.worker_of(entry[1], count)].append(entry)
            except ValueError:
                continue  # not an address: nothing to restore
            valid.append(entry)
        self.control.restore_persistence(valid)
        self.generation += 1
        for worker, share in zip(self.workers, shares):
            if share:
                worker.call(channel.Restore, entries=share).addErrback(self._lost, "persistence")

    def snapshot(self) -> defer.Deferred:
        """The supervisor's view (health, admin states, checks) with the workers' counters summed in."""

        def merge(answers: list) -> list[dict]:
            for worker, answer in zip(self.workers, answers):
                if answer:
                    worker.sessions = sum(vs["total"] for vs in answer.get("services", []))
            result = self.control.snapshot()
            services = {vs["label"]: vs for vs in result}
            for vs in services.values():
                vs["persistence_entries"] = 0 if vs["persistence_entries"] is not None else None
            for answer in answers:
                for wvs in answer.get("services", []):
                    vs = services.get(wvs["label"])
                    if vs is None:
                        continue
                    for key in TRAFFIC:
                        vs[key] += wvs[key]
                    if vs["persistence_entries"] is not None and wvs["persistence_entries"] is not None:
                        vs["persistence_entries"] += wvs["persistence_entries"]
                    servers = {s["label"]: s for s in vs["servers"]}
                    for ws in wvs["servers"]:
                        if ws["label"] in servers:
                            for key in TRAFFIC:
                                servers[ws["label"]][key] += ws[key]
            return result

        return self._to_all(channel.Snapshot).addCallback(merge)

    def workers_status(self) -> list[dict[str, Any]]:
        return [{"index": w.index, "pid": w.pid, "ready": w.ready, "restarts": w.restarts, "sessions": w.sessions}
                for w in self.workers]  # fmt: skip

    def _lost(self, failure: Any, what: str) -> dict:
        log.warn("a proxy worker did not answer {what}: {why}", what=what, why=failure.getErrorMessage())
        return {}
