"""The proxy as the supervisor runs it with worker processes: one per core, each a reactor of its own.

So a saturated data plane never delays a heartbeat, and the proxy uses every core. The supervisor keeps
what must be decided once per node: the listening sockets (a SO_REUSEPORT group per address and port,
one socket per worker, sources steered by `proxy.steering`), the health checks and admin states (its own
`ProxyService(serve=False)`), and the configuration. It forwards every change to the workers and sums
their counters for `hapair status`. It offers the daemon the same methods as a `ProxyService`.

A worker that dies is started again on the same sockets (clients wait in the backlog meanwhile). One
that is not back within GRACE seconds makes `serving()` false, so the cluster manager stops claiming the
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

from hapair.config import AdminState, ClusterConfig
from proxy import channel, steering
from proxy.service import ProxyService, rebound
from proxy.stats import TRAFFIC

log = Logger(namespace="hapair.proxy")

#: Seconds before a dead worker is started again: doubled on each death in a row, up to the last.
RESTART_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0)
#: A worker that served this long before dying starts its next restart from the first delay again.
STABLE = 30.0
STOP_TIMEOUT = 5.0
#: Seconds a worker may be down (restarting) before the node stops counting as serving.
GRACE = 2.0


class _Channel(amp.AMP):
    def __init__(self, worker: Worker):
        super().__init__()
        self.worker = worker

    @channel.Assigned.responder
    def assigned(self, entries: list) -> dict:
        on_persist = self.worker.supervisor.on_persist
        if on_persist is not None:
            for entry in entries:
                on_persist(*entry)
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
        #: When this worker stopped serving, while it is down; None while it serves (or before it first does).
        self.down_since: float | None = None
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
        """Sends this worker everything it serves with: its sockets, the configuration, the health and
        admin states decided so far. Repeated if the configuration changed meanwhile."""
        sup = self.supervisor
        while self.configured is not sup.cluster:
            cluster = sup.cluster
            for (ip, port), socks in list(sup.groups.items()):
                yield self.amp.callRemote(channel.Listen, ip=ip, port=port, fd=socks[self.index].fileno())
            yield self.amp.callRemote(channel.Configure, cluster=cluster, workers=len(sup.workers))
            self.configured = cluster
        for label, pool in sup.control.pools.items():
            for s in pool.servers.values():
                if not s.up:
                    yield self.amp.callRemote(channel.Health, service=label, server=s.label, up=False)
                if s.admin is not s.config.state:
                    yield self.amp.callRemote(channel.Admin, service=label, server=s.label, state=s.admin.value,
                                              clear=False)  # fmt: skip
        self.ready = True
        self.down_since = None
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
            self.down_since = self.reactor.seconds()
        pid, self.pid, self.process, self.ready, self.configured = self.pid, None, None, False, None
        if self.amp is not None and self.amp.transport is not None:
            self.amp.transport.loseConnection()
        self.amp = None
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.callback(None)
        if not self.supervisor.running:
            return
        if self.reactor.seconds() - self.started_at >= STABLE:
            self.failures = 0
        delay = RESTART_DELAYS[min(self.failures, len(RESTART_DELAYS) - 1)]
        self.failures += 1
        self.restarts += 1
        log.error("proxy worker {index} (pid {pid}) ended: {why}; starting it again in {delay}s", index=self.index,
                  pid=pid, why=getattr(why, "args", why), delay=delay)  # fmt: skip
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


class Supervisor(service.Service):
    def __init__(self, cluster: ClusterConfig, count: int, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor, self.cluster = reactor, cluster
        self.control = ProxyService(cluster, reactor, serve=False)
        self.control.on_health = self._health
        self.groups: dict[tuple[str, int], list[socket.socket]] = {}
        self.workers = [Worker(self, i) for i in range(count)]
        #: (service, source, server, seconds left) for each new persistence assignment; set by replication.
        self.on_persist: Any = None

    @property
    def pools(self) -> dict:
        return self.control.pools

    # --- lifecycle ----------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Every socket before anything starts: a port that cannot be bound fails the start.
        self._bind({(str(vs.ip), port) for vs in self.cluster.virtual_services for port in vs.ports})
        self.control.privilegedStartService()

    def startService(self) -> None:
        if not self.groups and self.cluster.virtual_services:
            self.privilegedStartService()
        super().startService()
        self.control.startService()
        for worker in self.workers:
            worker.down_since = self.reactor.seconds()  # the first start has the same grace as a restart
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

    def serving(self) -> bool:
        """Every worker serves, or is being restarted and has been down less than GRACE."""
        now = self.reactor.seconds()
        return self.running and all(
            w.ready or (w.down_since is not None and now - w.down_since < GRACE) for w in self.workers
        )

    def _bind(self, keys: set[tuple[str, int]]) -> None:
        made = {}
        try:
            for ip, port in sorted(keys - self.groups.keys()):
                made[(ip, port)] = steering.group(ip, port, len(self.workers))
        except OSError as e:
            for socks in made.values():
                for sock in socks:
                    sock.close()
            raise OSError(e.errno, f"cannot listen on {ip} port {port}: {e.strerror}")
        self.groups.update(made)

    # --- reload -------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def apply(self, cluster: ClusterConfig) -> Any:
        """Binds what is new (or fails, having changed nothing), then moves every worker to `cluster`."""
        keys = {(str(vs.ip), port) for vs in cluster.virtual_services for port in vs.ports}
        self._bind(keys)
        moved = rebound(self.cluster, cluster)
        old, self.cluster = self.cluster, cluster
        sends = []
        for worker in self.workers:
            if worker.ready:
                sends.append(self._reconfigure(worker, cluster, moved))
        yield defer.gatherResults(sends, consumeErrors=True)
        yield self.control.apply(cluster)
        for key in self.groups.keys() - keys:
            for sock in self.groups.pop(key):
                sock.close()
        del old

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
        return defer.gatherResults([w.call(command, **kw) for w in self.workers], consumeErrors=True)

    def _health(self, service_label: str, server: str, up: bool) -> None:
        self._to_all(channel.Health, service=service_label, server=server, up=up).addErrback(self._lost, "health")

    def set_admin_state(self, server: str, state: AdminState, vs: str | None = None,
                        clear_persistence: bool = False) -> list[tuple[str, str]]:  # fmt: skip
        changed = self.control.set_admin_state(server, state, vs, clear_persistence)
        for label, name in changed:
            self._to_all(channel.Admin, service=label, server=name, state=state.value,
                         clear=clear_persistence).addErrback(self._lost, "admin state")  # fmt: skip
        return changed

    def admin_states(self) -> list[list[str]]:
        return self.control.admin_states()

    def restore_admin_states(self, states: list) -> None:
        self.control.restore_admin_states(states)
        for label, server, state in states:
            self._to_all(channel.Admin, service=label, server=server, state=state, clear=False).addErrback(
                self._lost, "admin state")  # fmt: skip

    def persistence_entries(self) -> defer.Deferred:
        d = self._to_all(channel.Entries)
        return d.addCallback(lambda answers: [e for answer in answers for e in answer.get("entries", [])])

    def restore_persistence(self, entries: list) -> None:
        """Each entry to the worker the kernel steers its source to."""
        count = len(self.workers)
        shares: list[list] = [[] for _ in range(count)]
        for entry in entries:
            try:
                shares[steering.worker_of(entry[1], count)].append(entry)
            except ValueError:
                continue  # not an address: nothing to restore
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

    def _lost(self, failure: Any, what: str) -> None:
        log.warn("a proxy worker did not take the {what}: {why}", what=what, why=failure.getErrorMessage())
