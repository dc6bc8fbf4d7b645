"""A proxy worker process: `python -m proxy.worker FD INDEX`, started by the supervisor (proxy.supervisor).

It serves the listening sockets the supervisor hands it over the channel on FD, with the configuration,
health results and admin states the supervisor sends; it runs no health checks of its own. It reports
new persistence assignments every 100 ms. When the channel closes (the supervisor died) it stops: a
worker never serves on its own.
"""

from __future__ import annotations

import ctypes
import gc
import ipaddress
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import amp

from hapair.config import AdminState, ClusterConfig
from proxy import channel
from proxy.service import ProxyService

log = Logger(namespace="hapair.worker")

#: Seconds new persistence assignments wait to share one message to the supervisor.
ASSIGNED_DELAY = 0.1
#: Niceness a worker adds to the supervisor's: when the cores are saturated the kernel runs the
#: supervisor (heartbeats, health checks) first, so proxy load cannot make a peer declare this node dead.
#: The systemd unit starts the daemon at Nice=-5, so there the workers run at 0.
NICENESS = 5


class WorkerProtocol(amp.AMP):
    def __init__(self, reactor: Any, index: int):
        super().__init__()
        self.reactor, self.index = reactor, index
        self.proxy: ProxyService | None = None
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self._assigned: list[list] = []
        self._flush_call = None

    @channel.Listen.responder
    def listen(self, ip: str, port: int, fd: int) -> dict:
        family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        old = self.sockets.pop((ip, port), None)
        if old is not None:
            old.close()
        self.sockets[(ip, port)] = socket.socket(family, socket.SOCK_STREAM, 0, fileno=fd)
        return {}

    def _socket(self, ip: str, port: int) -> socket.socket:
        try:
            return self.sockets.pop((ip, port))
        except KeyError:
            raise KeyError(f"the supervisor sent no socket for {ip} port {port}")

    @channel.Configure.responder
    def configure(self, cluster: ClusterConfig, workers: int) -> Any:
        if self.proxy is None:
            self.proxy = ProxyService(cluster, self.reactor, check=False, sockets=self._socket, share=workers)
            self.proxy.on_persist = self.assigned
            self.proxy.privilegedStartService()
            self.proxy.startService()
            log.info("worker {index} serving (pid {pid})", index=self.index, pid=os.getpid())
            # What exists now lives as long as the worker: out of the collector's way for good.
            gc.freeze()
            self._close_unused()
            return {}
        d = self.proxy.apply(cluster)
        d.addBoth(lambda result: (self._close_unused(), result)[1])
        return d.addCallback(lambda _: {})

    def _close_unused(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

    @channel.Health.responder
    def health(self, service: str, server: str, up: bool) -> dict:
        if self.proxy is not None:
            self.proxy.set_health(service, server, up)
        return {}

    @channel.Admin.responder
    def admin(self, service: str, server: str, state: str, clear: bool) -> dict:
        pool = self.proxy.pools.get(service) if self.proxy is not None else None
        if pool is not None and server in pool.servers:
            pool.set_admin_state(server, AdminState(state), clear)
        return {}

    @channel.Restore.responder
    def restore(self, entries: list) -> dict:
        if self.proxy is not None:
            self.proxy.restore_persistence(entries)
        return {}

    @channel.Snapshot.responder
    def snapshot(self) -> dict:
        return {"services": self.proxy.snapshot() if self.proxy is not None else []}

    @channel.Entries.responder
    def entries(self) -> Any:
        if self.proxy is None:
            return {"entries": []}
        return self.proxy.persistence_entries().addCallback(lambda entries: {"entries": entries})

    def assigned(self, service: str, source: str, server: str, remaining: float) -> None:
        self._assigned.append([service, source, server, remaining])
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(ASSIGNED_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        entries, self._assigned = self._assigned, []
        if entries:
            self.callRemote(channel.Assigned, entries=entries)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self.reactor.running:
            log.info("worker {index}: the supervisor is gone; stopping", index=self.index)
            self.reactor.stop()


def main(argv: list[str]) -> int:
    from twisted.internet.main import installReactor

    from hapair import logs
    from proxy.loop import LoopReactor

    reactor = LoopReactor()
    installReactor(reactor)

    fd, index = int(argv[0]), int(argv[1])
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never outlive the supervisor
    os.nice(NICENESS)
    logs.begin(sys.stdout)
    worker = WorkerProtocol(reactor, index)
    reactor.adoptStreamConnection(fd, socket.AF_UNIX, protocol.Factory.forProtocol(lambda: worker))
    os.close(fd)  # the reactor holds its own duplicate

    def stopping() -> Any:
        if worker.proxy is not None and worker.proxy.running:
            return worker.proxy.stopService()
        return None

    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
