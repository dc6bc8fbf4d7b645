"""The configuration model every part of hapair shares.

Frozen value objects only: no parsing, no I/O. `hapair.configfile` builds them from YAML and is the only
place that knows about files and line numbers. The split between `NodeConfig` (never leaves the node) and
`ClusterConfig` (replicated to the peer) is structural, so replication cannot leak a node-local setting by
forgetting to filter it: it only ever serialises `ClusterConfig`.
"""

from __future__ import annotations

import enum
import os
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Union

from hapair.timers import Timers

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class BalanceMode(enum.Enum):
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
    WEIGHTED_LEAST_CONNECTION = "weighted_least_connection"


class PersistenceMode(enum.Enum):
    NONE = "none"
    SOURCE_IP = "source_ip"


class AdminState(enum.Enum):
    """What the operator asked of a real server, independent of its health."""

    ONLINE = "online"
    #: Keeps the clients persistence already sends to it; takes no new ones.
    DRAIN = "drain"
    #: Takes nothing new at all, persistent clients included.
    HALT = "halt"


class CheckKind(enum.Enum):
    NONE = "none"
    CONNECT = "connect"
    SMTP = "smtp"
    IMAP = "imap"
    POP3 = "pop3"
    HTTP = "http"


@dataclass(frozen=True)
class AddressRange:
    """An inclusive range of addresses: a host, a CIDR block, or `a.b.c.d-a.b.c.e` (guide appendix 2)."""

    first: IPAddress
    last: IPAddress

    def __contains__(self, address: IPAddress) -> bool:
        return address.version == self.first.version and self.first <= address <= self.last

    def __str__(self) -> str:
        if self.first == self.last:
            return str(self.first)
        return f"{self.first}-{self.last}"


@dataclass(frozen=True)
class RealServer:
    label: str
    ip: IPAddress
    #: None: the port the client connected to on the virtual service (the guide's "leave blank").
    port: int | None
    weight: int = 100
    state: AdminState = AdminState.ONLINE

    def target_port(self, client_port: int) -> int:
        return self.port if self.port is not None else client_port


@dataclass(frozen=True)
class Persistence:
    mode: PersistenceMode = PersistenceMode.NONE
    #: Seconds an entry lives after its last use.
    timeout: float = 3600.0
    #: Entries kept at most; the least recently used goes first.
    table_size: int = 100_000


@dataclass(frozen=True)
class Timeouts:
    """Seconds. client/server: inactivity before the proxy closes the session; connect: to a real server."""

    client: float = 3600.0
    server: float = 3600.0
    connect: float = 4.0


@dataclass(frozen=True)
class HealthCheck:
    kind: CheckKind = CheckKind.CONNECT
    #: None: check each real server on its own port, or on the service's first port when that is blank.
    port: int | None = None
    interval: float = 2.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    #: Close a server's open sessions when it is marked down (HAProxy's on-marked-down shutdown-sessions).
    shutdown_sessions: bool = False
    #: HTTP checks only.
    http_path: str = "/"
    http_host: str | None = None


@dataclass(frozen=True)
class VirtualService:
    label: str
    ip: IPAddress
    ports: tuple[int, ...]
    real_servers: tuple[RealServer, ...]
    balance: BalanceMode = BalanceMode.WEIGHTED_ROUND_ROBIN
    persistence: Persistence = field(default_factory=Persistence)
    timeouts: Timeouts = field(default_factory=Timeouts)
    health_check: HealthCheck = field(default_factory=HealthCheck)
    maxconn: int = 40_000
    #: Empty: every source may connect.
    allowed_sources: tuple[AddressRange, ...] = ()

    def allows(self, source: IPAddress) -> bool:
        return not self.allowed_sources or any(source in r for r in self.allowed_sources)

    def check_port(self, server: RealServer) -> int:
        if self.health_check.port is not None:
            return self.health_check.port
        return server.target_port(self.ports[0])


@dataclass(frozen=True)
class Garp:
    """Gratuitous ARP (and IPv6 unsolicited neighbour advertisements) sent on takeover."""

    count: int = 5
    interval: float = 0.02
    #: A second burst this long after the first, for neighbours that missed it; 0: none.
    repeat_after: float = 3.0
    #: Keep announcing this often while master; 0: never.
    refresh: float = 0.0


@dataclass(frozen=True)
class HASettings:
    """The pair's shared HA settings (replicated). The four timers are heartbeat's, written flat in the
    file as heartbeat writes them; `timers` gathers them for the state machine."""

    preferred_master: str | None = None
    auto_failback: bool = False
    interval: float = Timers.interval
    warntime: float = Timers.warntime
    deadtime: float = Timers.deadtime
    initdead: float = Timers.initdead
    port: int = 694
    garp: Garp = field(default_factory=Garp)

    @property
    def timers(self) -> Timers:
        return Timers(self.interval, self.warntime, self.deadtime, self.initdead)


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that replicates: the same on both nodes of a pair."""

    virtual_services: tuple[VirtualService, ...] = ()
    ha: HASettings | None = None

    def floating_ips(self) -> tuple[IPAddress, ...]:
        """Every address a master holds: each virtual service's IP, once, in order."""
        return tuple(dict.fromkeys(vs.ip for vs in self.virtual_services))

    def fingerprint(self) -> bytes:
        """SHA-256 of the configuration: equal on both nodes exactly when they run the same one. Sent in
        every heartbeat, so it is computed once per (immutable) configuration."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            import hashlib

            cached = hashlib.sha256(repr(self).encode()).digest()
            object.__setattr__(self, "_fingerprint", cached)  # frozen: a cache, not a field
        return cached


@dataclass(frozen=True)
class HeartbeatPath:
    local: IPAddress
    peer: IPAddress


@dataclass(frozen=True)
class NodeHA:
    """This node's side of the pair: addresses and interfaces, which differ between the two nodes."""

    peer: str
    interface: str
    paths: tuple[HeartbeatPath, ...]
    key_file: str
    ping_nodes: tuple[IPAddress, ...] = ()
    #: Commands run in order on each transition, with HAPAIR_STATE, HAPAIR_PREVIOUS and HAPAIR_VIPS set.
    hooks: tuple[str, ...] = ()
    #: This node's admin password (the appliance's "loadbalancer" user), asked of whoever pairs with it.
    admin_password_file: str | None = None


@dataclass(frozen=True)
class NodeConfig:
    """Settings that belong to one node and never travel to its peer (guide, appendix 6).

    hapair acts on `name`, `state_dir` and `control_socket`; the appliance settings the guide lists are
    kept verbatim so that an operator's file round-trips and replication can prove it never sends them.
    """

    name: str
    state_dir: str = "/var/lib/hapair"
    control_socket: str = "/run/hapair/control.sock"
    #: Proxy worker processes; None: one per core; 0: the proxy runs in the supervisor's own reactor.
    workers: int | None = None
    ha: NodeHA | None = None
    appliance: Mapping[str, object] = field(default_factory=dict)


#: More worker processes than this buys nothing on an appliance and costs descriptors per listener.
MAX_WORKERS = 64


def worker_count(node: NodeConfig) -> int:
    """How many proxy workers `node` runs (0: none, the proxy is in the supervisor)."""
    return node.workers if node.workers is not None else (os.cpu_count() or 1)


#: The node-local settings of the guide's appendix 6, as keys of the `node` section.
NODE_LOCAL_APPLIANCE_KEYS = (
    "hostname",
    "dns",
    "network",
    "routing",
    "date_time",
    "physical_advanced",
    "snmp",
    "graphing",
    "firewall_script",
    "firewall_lockdown_script",
    "software_updates",
)


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    cluster: ClusterConfig
