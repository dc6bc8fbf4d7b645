#!/usr/bin/env python3
"""The least Python a TCP relay can be: what any proxy written in CPython pays per request at the least.

hapair's user time per request and per connection is about twice HAProxy's. This relay says how much of
that is the interpreter's floor rather than hapair's design: one epoll set, level-triggered, each
socket's handler a closure that reads once into one buffer and writes what it read; accept, connect,
close. Nothing else: no balancing, persistence, health, timeouts, counters, log line, flow control or
half-close. It only serves small request/response traffic (wrk's 1 KiB keep-alive and Connection: close
workloads): a write the kernel takes only in part ends it with an error rather than lose bytes, and its
connect to the backend blocks (on loopback it completes at once).

    python3 bench/python_floor.py LISTEN_PORT BACKEND_PORT

bench/paired.py --floor runs it next to the hapair versions and HAProxy, on the same CPU, in the same run.
"""

from __future__ import annotations

import select
import socket
import sys
from typing import Callable

HOST = "127.0.0.1"


def main(listen_port: int, backend_port: int) -> None:
    buf = bytearray(32768)
    view = memoryview(buf)
    epoll = select.epoll()
    handlers: dict[int, Callable[[int], None]] = {}
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    listener.bind((HOST, listen_port))
    listener.listen(4096)
    listener.setblocking(False)

    def relay(src: socket.socket, dst: socket.socket) -> Callable[[int], None]:
        recv_into, send = src.recv_into, dst.send

        def handle(events: int) -> None:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if n:
                try:
                    sent = send(view[:n])
                except OSError:
                    sent = n  # the peer is gone: its own event closes the pair
                if sent != n:
                    sys.exit(f"python_floor: the kernel took {sent} of {n} bytes; this relay is for small messages")
                return
            for sock in (src, dst):
                if handlers.pop(sock.fileno(), None) is not None:
                    sock.close()  # leaves the epoll set by itself

        return handle

    def accept(events: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            server = socket.create_connection((HOST, backend_port))
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setblocking(False)
            server.setblocking(False)
            for src, dst in ((client, server), (server, client)):
                handlers[src.fileno()] = relay(src, dst)
                epoll.register(src.fileno(), select.EPOLLIN)

    handlers[listener.fileno()] = accept
    epoll.register(listener.fileno(), select.EPOLLIN)
    poll = epoll.poll
    while True:
        for fd, events in poll(-1, 512):
            handler = handlers.get(fd)
            if handler is not None:
                handler(events)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[2].strip())
    main(int(sys.argv[1]), int(sys.argv[2]))
