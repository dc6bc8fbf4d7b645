"""Daemon wiring: one service tree per node, built from its configuration file.

Children start in order and stop in reverse: the proxy binds its listeners first (a port that cannot be
bound stops the start), then the control socket opens. SIGHUP, like `hapair reload`, re-reads the file
and applies the cluster section as a diff.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from hapair import configfile, control
from hapair.config import AdminState, Config, worker_count
from proxy.service import ProxyService, UnknownServer
from proxy.supervisor import Supervisor

log = Logger(namespace="hapair.daemon")


class Daemon:
    def __init__(self, config_path: str, config: Config, reactor: Any):
        self.config_path, self.config, self.reactor = config_path, config, reactor
        workers = worker_count(config.node)
        self.proxy = Supervisor(config.cluster, workers, reactor) if workers else ProxyService(config.cluster, reactor)
        self.cluster = self.replication = None
        if config.node.ha is not None:
            from hapair.cluster import ClusterService
            from hapair.heartbeat import read_key
            from replication.service import ReplicationService

            key = read_key(config.node.ha.key_file) if os.path.exists(config.node.ha.key_file) else None
            self.cluster = ClusterService(config.node, config.cluster, self.proxy, reactor, key)
            self.replication = ReplicationService(self, reactor, config.node.ha.admin_password_file)
            self.proxy.on_persist = self.replication.persistence_recorded
            self.cluster.on_master = self.replication.became_master
        self.control = control.ControlService(config.node.control_socket, self, reactor)
        # Started in this order, stopped in reverse: the cluster manager releases the VIPs (and tells
        # the peer) before the proxy closes its listeners.
        self.top = service.MultiService()
        self.proxy.setServiceParent(self.top)
        if self.cluster is not None:
            self.cluster.setServiceParent(self.top)
            self.replication.setServiceParent(self.top)
        self.control.setServiceParent(self.top)

    # --- control commands ---------------------------------------------------------------------------

    def status(self) -> defer.Deferred:
        def whole(services: list) -> dict[str, Any]:
            return {
                "node": self.config.node.name,
                "pid": os.getpid(),
                "config": os.path.abspath(self.config_path),
                "workers": self.proxy.workers_status(),
                "cluster": self.cluster.status() if self.cluster is not None else None,
                "replication": self.replication.status() if self.replication is not None else None,
                "virtual_services": services,
            }

        return defer.maybeDeferred(self.proxy.snapshot).addCallback(whole)

    def failover(self, force: bool) -> defer.Deferred:
        if self.cluster is None:
            raise control.FailoverRefusedError("this node is not part of a pair (no node.ha in its configuration)")
        from hapair.ha import FailoverRefused

        def refused(f: Any) -> None:
            f.trap(FailoverRefused)
            raise control.FailoverRefusedError(f.getErrorMessage())

        return self.cluster.failover(force).addErrback(refused)

    def set_admin_state(self, server: str, state: str, vs: str | None, clear_persistence: bool) -> list:
        try:
            admin = AdminState(state)
        except ValueError:
            raise control.UnknownServerError(f"{state!r} is not one of online, drain, halt")
        try:
            changed = [list(pair) for pair in self.proxy.set_admin_state(server, admin, vs, clear_persistence)]
        except UnknownServer as e:
            raise control.UnknownServerError(e.args[0])
        if self.replication is not None:
            self.replication.admin_changed()
        return changed

    # --- pairing and replication --------------------------------------------------------------------

    def pair(self, address: str, password: str) -> defer.Deferred:
        if self.replication is None:
            raise control.PairingError("this node has no node.ha section: it cannot be paired")

        def refused(f: Any) -> None:
            raise control.PairingError(f"pairing with {address} failed: {f.getErrorMessage()}")

        return self.replication.pair(address, password.encode()).addErrback(refused)

    def unpair(self) -> defer.Deferred:
        if self.replication is None or self.replication.pin is None:
            raise control.PairingError("this node is not paired")
        if self.cluster.machine.peer_alive:
            raise control.PairingError(f"{self.config.node.ha.peer} is still running: unpaired, both nodes would "
                                       "claim the VIPs; stop it first")  # fmt: skip
        return self.replication.unpair()

    def set_heartbeat_key(self, key: bytes | None) -> None:
        from replication.store import write_atomic

        path = self.config.node.ha.key_file
        if key is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            write_atomic(path, key.hex().encode())
            os.chmod(path, 0o600)
        self.cluster.set_key(key)

    def apply_replicated(self, new: Config) -> defer.Deferred:
        """A configuration from the master, already parsed: the node section stays this node's."""

        def applied(_: object) -> None:
            self.config = Config(node=self.config.node, cluster=new.cluster)
            if self.cluster is not None:
                self.cluster.apply(new.cluster)

        return self.proxy.apply(new.cluster).addCallback(applied)

    def reload(self) -> defer.Deferred:
        if self.replication is not None:  # one configuration change at a time, with the peer's pushes
            return self.replication.apply_lock.run(self._reload)
        return defer.maybeDeferred(self._reload)

    def _reload(self) -> defer.Deferred:
        try:
            new = configfile.load(self.config_path)
        except configfile.ConfigError as e:
            log.error("reload refused, still running the previous configuration:\n{problems}", problems=str(e))
            raise control.ConfigInvalidError(str(e))
        if new.node != self.config.node:
            log.warn("node section changed: it takes effect at the next restart")
        if new.cluster.ha != self.config.cluster.ha:
            why = ("cluster.ha changed: the pair's timers and heartbeat port must change on both nodes at once; "
                   "edit both files and restart both daemons")  # fmt: skip
            log.error("reload refused: {why}", why=why)
            raise control.ConfigInvalidError(why)
        if (self.replication is not None and self.replication.pin is not None and not self.replication.is_master()
                and new.cluster != self.config.cluster):  # fmt: skip
            why = (f"this node is the slave: change the cluster section on the master ({self.config.node.ha.peer}); "
                   "it replicates here")  # fmt: skip
            log.error("reload refused: {why}", why=why)
            raise control.ConfigInvalidError(why)
        d = self.proxy.apply(new.cluster)

        def applied(_: object) -> dict[str, Any]:
            self.config = Config(node=self.config.node, cluster=new.cluster)
            if self.cluster is not None:
                self.cluster.apply(new.cluster)
            if self.replication is not None:
                self.replication.local_change()
            labels = [vs.label for vs in new.cluster.virtual_services]
            log.info("reloaded {path}: {labels}", path=self.config_path, labels=", ".join(labels))
            return {"virtual_services": labels}

        return d.addCallback(applied)


def run(config_path: str) -> int:
    """Runs the daemon in the foreground until SIGTERM/SIGINT; returns the exit status."""
    from twisted.internet import reactor

    from hapair import logs

    try:
        config = configfile.load(config_path)
    except configfile.ConfigError as e:
        print(f"hapair: not starting, {config_path} has errors:\n{e}", file=sys.stderr)
        return 2
    logs.begin(sys.stdout)

    def reload() -> None:
        d = defer.maybeDeferred(daemon.reload)
        d.addErrback(lambda f: log.error("reload on SIGHUP failed: {why}", why=f.getErrorMessage()))

    def on_hup(signum: int, frame: object) -> None:
        reactor.callFromThread(reload)  # runs once the reactor does, after the start

    # Before the listeners are bound: from then on the ports accept, a reload may follow at once
    # (`systemctl reload`, a script that waits for the port), and SIGHUP's default action kills.
    signal.signal(signal.SIGHUP, on_hup)
    try:
        daemon = Daemon(config_path, config, reactor)
        daemon.top.privilegedStartService()
    except Exception as e:  # a port or socket that cannot be bound
        print(f"hapair: not starting: {e}", file=sys.stderr)
        return 1
    from hapair import sdnotify

    def started() -> None:
        daemon.top.startService()
        sdnotify.start_watchdog(reactor)
        sdnotify.notify(f"READY=1\nSTATUS=node {config.node.name}: {len(config.cluster.virtual_services)} virtual services")

    def stopping() -> Any:
        sdnotify.notify("STOPPING=1")
        return daemon.top.stopService()

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)

    log.info("hapair node {name} running (pid {pid})", name=config.node.name, pid=os.getpid())
    reactor.run()
    return 0
