"""Listening sockets for virtual services, and the accept-time policy.

Sockets are made here and adopted by the reactor, not made by `listenTCP`, because a VIP must be bound
with IP_FREEBIND: the slave listens on addresses it does not hold yet, and serves the instant takeover
adds them. (The same path later carries SO_REUSEPORT for worker processes.)
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from proxy.pool import Pool
from proxy.relay import ClientEnd, Session

if TYPE_CHECKING:
    from proxy.service import ProxyRuntime

log = Logger(namespace="hapair.proxy")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
BACKLOG = 4096


def listening_socket(ip: str, port: int, reuseport: bool = False) -> socket.socket:
    """A bound, listening, non-blocking TCP socket on `ip`:`port`, whether or not `ip` is local yet."""
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # IP_FREEBIND at SOL_IP governs IPv6 sockets too (inet6_bind checks the same flag).
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ip, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen(reactor: object, ip: str, port: int, factory: Factory, sock: socket.socket | None = None) -> IListeningPort:
    """Adopts `sock` (or a new listening socket on ip:port) into the reactor."""
    sock = sock or listening_socket(ip, port)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()  # the reactor holds its own duplicate


class ServiceFactory(Factory):
    """Accepts a client on one port of one virtual service, or turns it away at once.

    Turned away: a source outside the allowed list, the service at maxconn, no real server that may
    take the client. Returning None makes the reactor close the accepted socket immediately, so a
    refused client is never left hanging."""

    noisy = False

    def __init__(self, runtime: ProxyRuntime, pool: Pool, vip: str, vport: int):
        self.runtime, self.pool, self.vip, self.vport = runtime, pool, vip, vport

    def buildProtocol(self, addr: object) -> ClientEnd | None:
        pool = self.pool
        host = addr.host
        service = pool.service
        why = None
        if service.allowed_sources and not service.allows(ipaddress.ip_address(host)):
            why = "source not allowed"
        elif pool.at_maxconn():
            why = f"maxconn {service.maxconn} reached"
        else:
            server = pool.choose(host)
            if server is None:
                why = "no real server available"
        if why is not None:
            pool.counters.refused += 1
            log.info(
                "{client} > {vip} refused by {vs}: {why}",
                client=f"{host}:{addr.port}", vip=f"{self.vip}:{self.vport}", vs=service.label, why=why,
            )  # fmt: skip
            return None
        return Session(self.runtime, pool, server, self.vip, self.vport, host, addr.port).client
