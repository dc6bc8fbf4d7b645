"""The decisions of one virtual service: which real server a new client goes to.

Pure: no sockets, no reactor, an injected clock. It combines each server's health and admin state, the
balancer and the persistence table under the guide's rules:
- a server takes new clients only when healthy, online and weighted above zero;
- a drained server keeps the clients persistence already sends to it, and takes no new ones;
- a halted or unhealthy server gets nothing new, and its persistence entries are moved on use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from twisted.internet.interfaces import IReactorTime

from hapair.config import AdminState, PersistenceMode, RealServer, VirtualService
from proxy.balancer import make_balancer
from proxy.persistence import PersistenceTable
from proxy.stats import Counters


@dataclass
class ServerState:
    config: RealServer
    admin: AdminState
    weight: int
    up: bool = True
    counters: Counters = field(default_factory=Counters)
    #: (family, sockaddr) to connect to, by the port the client came in on: made once, not per connection.
    addresses: dict = field(default_factory=dict, repr=False, compare=False)
    #: The config's label, as a field: read for every candidate of every pick. (Python 3.11 calls a
    #: property through C, in a frame of its own: about four times the cost of a method call, which
    #: is why the questions below are methods.)
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.label = self.config.label

    @property
    def active(self) -> int:
        return self.counters.current

    def takes_new(self) -> bool:
        return self.up and self.admin is AdminState.ONLINE and self.weight > 0

    def keeps_persistent(self) -> bool:
        return self.up and self.admin is not AdminState.HALT


class Pool:
    def __init__(self, service: VirtualService, clock: IReactorTime):
        self.service = service
        self._clock = clock
        self.counters = Counters()
        self.servers: dict[str, ServerState] = {
            s.label: ServerState(config=s, admin=s.state, weight=s.weight) for s in service.real_servers
        }
        self._balancer = make_balancer(service.balance)
        p = service.persistence
        self.persistence = (
            PersistenceTable(p.timeout, p.table_size, clock) if p.mode is PersistenceMode.SOURCE_IP else None
        )
        #: Processes sharing this service's clients (workers): each takes its share of maxconn.
        self.share = 1
        #: Called with (source, server) when persistence sticks a client to a server it was not stuck to:
        #: what a slave needs to send the client to the same server after a failover.
        self.on_assign: Callable[[str, str], None] | None = None

    def choose(self, source: str, exclude: frozenset[str] = frozenset()) -> ServerState | None:
        """The server for a new connection from `source`, or None when no server may take it.

        `exclude` names servers that just failed to connect (a redispatch): the client is moved off a
        persistent entry pointing at one of them."""
        table = self.persistence
        if table is not None:
            label = table.renew(source)
            if label is not None:
                server = self.servers.get(label)
                if server is not None and server.keeps_persistent() and label not in exclude:
                    return server
                table.forget(source)
        eligible = [s for s in self.servers.values() if s.takes_new() and s.label not in exclude]
        server = self._balancer.pick(eligible)
        if server is not None and table is not None:
            table.record(source, server.label)
            if self.on_assign is not None:
                self.on_assign(source, server.label)
        return server

    def at_maxconn(self) -> bool:
        return self.counters.current * self.share >= self.service.maxconn

    def set_admin_state(self, label: str, state: AdminState, clear_persistence: bool = False) -> ServerState:
        server = self.servers[label]
        server.admin = state
        if clear_persistence and self.persistence is not None:
            self.persistence.forget_server(label)
        return server

    def set_weight(self, label: str, weight: int) -> None:
        self.servers[label].weight = weight

    def set_health(self, label: str, up: bool) -> bool:
        """Records a health transition; returns True when the state changed."""
        server = self.servers[label]
        if server.up == up:
            return False
        server.up = up
        server.counters.health_changes += 1
        return True

    def update(self, service: VirtualService) -> None:
        """Takes a new definition of this service, keeping what still applies: health, counters and
        persistence for servers that stay. Admin states and weights come from the new definition."""
        old = self.servers
        self.servers = {}
        for s in service.real_servers:
            state = ServerState(config=s, admin=s.state, weight=s.weight)
            if s.label in old:
                state.up, state.counters = old[s.label].up, old[s.label].counters
            self.servers[s.label] = state
        for label in old.keys() - self.servers.keys():
            self._balancer.forget(label)
            if self.persistence is not None:
                self.persistence.forget_server(label)
        if service.balance is not self.service.balance:
            self._balancer = make_balancer(service.balance)
        p = service.persistence
        if p.mode is PersistenceMode.NONE:
            self.persistence = None
        elif self.persistence is None:
            self.persistence = PersistenceTable(p.timeout, p.table_size, self._clock)
        else:
            self.persistence.timeout, self.persistence.size = p.timeout, p.table_size
        self.service = service
