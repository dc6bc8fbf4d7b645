"""Listening sockets for virtual services, and the accept-time policy.

Sockets are made here rather than by `listenTCP`:
- a VIP is bound with IP_FREEBIND, so the slave listens on addresses it does not hold yet and serves the
  instant a takeover adds them;
- with worker processes, the supervisor makes one socket per worker with SO_REUSEPORT and steers each
  client address to one of them (or, for a service without persistence, each connection to any of them:
  `proxy.steering`), and the workers adopt them.
Accepted clients are turned away at once (closed) when their source is not allowed, the service is at
maxconn, or no real server may take them; the others become sessions (`proxy.relay`).
"""

from __future__ import annotations

import _socket
import ipaddress
import socket
from typing import TYPE_CHECKING

from proxy.loop import IN
from proxy.pool import Pool
from proxy.relay import Session

if TYPE_CHECKING:
    from proxy.service import ProxyRuntime

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
BACKLOG = 4096
#: Connections accepted per readiness event before other sockets get their turn.
ACCEPT_BATCH = 64
#: Seconds a listener rests after accept failed for want of descriptors or memory (it would spin:
#: the backlog stays readable).
ACCEPT_PAUSE = 0.1


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


class Listener:
    """One port of one virtual service, in the proxy's event loop."""

    def __init__(self, runtime: ProxyRuntime, pool: Pool, vip: str, vport: int, sock: socket.socket):
        self.runtime, self.pool, self.vip, self.vport, self.sock = runtime, pool, vip, vport, sock
        sock.setblocking(False)
        # What a client sends is passed on as it came (see Session.connect_server). Set once here: Linux
        # gives every accepted socket its listener's TCP options, which saves a system call per client.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = sock.fileno()
        self.family = int(sock.family)  # the socket property makes an enum member per read
        self._resume = None
        runtime.loop.add(self.fd, IN, self._ready)

    def _ready(self, events: int) -> None:
        accept, family = self.sock._accept, self.family  # the C accept: no Python socket wrapper
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                # Out of file descriptors (or memory): the client stays in the backlog until some close.
                self.runtime.accept_failed(self, e)
                self.runtime.loop.watch(self.fd, 0)
                self._resume = self.runtime.reactor.callLater(ACCEPT_PAUSE, self._rearm)
                return
            self._accepted(_socket.socket(family, socket.SOCK_STREAM, 0, fd), addr[0], addr[1])

    def _accepted(self, client: _socket.socket, host: str, port: int) -> None:
        pool = self.pool
        service = pool.service
        why = server = None
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
            client.close()
            self.runtime.log.line(f"{host}:{port} > {self.vip}:{self.vport} refused by {service.label}: {why}")
            return
        client.setblocking(False)
        Session(self.runtime, pool, server, self.vip, self.vport, client, host, port)

    def _rearm(self) -> None:
        self._resume = None
        self.runtime.loop.watch(self.fd, IN)

    def close(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self.runtime.loop.remove(self.fd)
        self.sock.close()
