"""Runs the health checks of one virtual service's real servers and feeds results to its pool."""

from __future__ import annotations

from typing import Callable

from twisted.internet import task
from twisted.logger import Logger
from twisted.python.failure import Failure

from hapair.config import CheckKind, RealServer
from proxy.checks import Prober, probe
from proxy.health import HealthState
from proxy.pool import Pool

log = Logger(namespace="hapair.health")


class _ServerCheck:
    def __init__(self, monitor: HealthMonitor, server: RealServer, up: bool):
        hc = monitor.pool.service.health_check
        self.monitor, self.server = monitor, server
        self.state = HealthState(rise=hc.rise, fall=hc.fall, up=up)
        self.in_flight = False
        self.last_error: str | None = None
        self.loop = task.LoopingCall(self.run)
        self.loop.clock = monitor.reactor
        self.start_call = None

    def start(self, offset: float) -> None:
        interval = self.monitor.pool.service.health_check.interval
        self.start_call = self.monitor.reactor.callLater(offset, self.loop.start, interval, True)

    def stop(self) -> None:
        if self.start_call is not None and self.start_call.active():
            self.start_call.cancel()
        if self.loop.running:
            self.loop.stop()

    def run(self) -> None:
        if self.in_flight:
            return
        self.in_flight = True
        service = self.monitor.pool.service
        d = self.monitor.prober(self.monitor.reactor, service.health_check, str(self.server.ip),
                                service.check_port(self.server))  # fmt: skip
        d.addCallbacks(lambda _: self.result(None), lambda f: self.result(f))

    def result(self, failure: Failure | None) -> None:
        self.in_flight = False
        if not self.loop.running:
            return
        self.last_error = None if failure is None else failure.getErrorMessage()
        changed = self.state.observe(failure is None)
        if changed is not None:
            self.monitor.transition(self.server.label, changed, self.last_error)


class HealthMonitor:
    def __init__(
        self,
        reactor: object,
        pool: Pool,
        on_change: Callable[[Pool, str, bool], None],
        prober: Prober = probe,
    ):
        self.reactor, self.pool, self.on_change, self.prober = reactor, pool, on_change, prober
        self.checks: dict[str, _ServerCheck] = {}

    def start(self) -> None:
        service = self.pool.service
        if service.health_check.kind is CheckKind.NONE:
            return
        servers = service.real_servers
        for index, server in enumerate(servers):
            check = _ServerCheck(self, server, self.pool.servers[server.label].up)
            self.checks[server.label] = check
            # Spread the servers' checks over one interval instead of probing them all at once.
            check.start(service.health_check.interval * index / max(1, len(servers)))

    def stop(self) -> None:
        for check in self.checks.values():
            check.stop()
        self.checks.clear()

    def restart(self) -> None:
        """After the pool took a new service definition: check the new servers, with the new settings."""
        self.stop()
        if self.pool.service.health_check.kind is CheckKind.NONE:
            for label in self.pool.servers:
                self.pool.set_health(label, True)
        self.start()

    def transition(self, label: str, up: bool, why: str | None) -> None:
        if label not in self.pool.servers or not self.pool.set_health(label, up):
            return
        vs = self.pool.service.label
        if up:
            log.info("{vs}/{server} is UP", vs=vs, server=label)
        else:
            log.warn("{vs}/{server} is DOWN: {why}", vs=vs, server=label, why=why)
        self.on_change(self.pool, label, up)
