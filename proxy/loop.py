"""The data plane's event loop: an epoll set of its own, nested in the Twisted reactor.

Twisted dispatches every readiness event through `callWithLogger` and the selectable's doRead/doWrite,
which costs several microseconds per event; a proxied request is two to four events. The relay's sockets
therefore live in one epoll set of their own, whose file descriptor the reactor watches like any other
reader: when it is ready, `doRead` polls it without blocking and calls each socket's handler directly.
Timers, health checks and the control channel stay on the reactor.

Level-triggered, with one rule that keeps it from spinning: a socket with nothing to wait for is taken
out of the set (`watch(fd, 0)`), because epoll reports HUP and ERR even for an empty mask.
"""

from __future__ import annotations

import select
from typing import Any, Callable

from twisted.logger import Logger

log = Logger(namespace="hapair.proxy")

IN, OUT, ERR, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
#: Events handled per wake-up of the reactor; the rest wait for the next one (level-triggered).
BATCH = 512


class Loop:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._masks: dict[int, int] = {}
        #: The time of the current batch of events: one clock read per wake-up, not one per socket.
        self._seconds = reactor.seconds
        self.now = self._seconds()
        reactor.addReader(self)

    # --- what the reactor sees (IReadDescriptor) ------------------------------------------------------

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "proxy"

    def doRead(self) -> None:
        self.now = self._seconds()
        handlers = self._handlers
        for fd, events in self._epoll.poll(0, BATCH):
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception:
                log.failure("proxy event handler failed on fd {fd}", fd=fd)

    def connectionLost(self, reason: object) -> None:
        pass

    # --- sockets ------------------------------------------------------------------------------------

    def add(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        self._handlers[fd] = handler
        self._masks[fd] = 0
        self.watch(fd, mask)

    def watch(self, fd: int, mask: int) -> None:
        """Waits for `mask` on `fd` (0: for nothing, and out of the epoll set)."""
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        self._masks[fd] = mask
        if not mask:
            self._epoll.unregister(fd)
        elif not old:
            self._epoll.register(fd, mask)
        else:
            self._epoll.modify(fd, mask)

    def forget(self, fd: int) -> None:
        """Forgets `fd` without telling epoll: for a socket about to be closed, which leaves the set
        by itself (it is never duplicated)."""
        self._handlers.pop(fd, None)
        self._masks.pop(fd, None)

    def remove(self, fd: int) -> None:
        """Forgets `fd`; call before closing it."""
        self._handlers.pop(fd, None)
        if self._masks.pop(fd, 0):
            self._epoll.unregister(fd)

    def __len__(self) -> int:
        return len(self._handlers)

    def close(self) -> None:
        self.reactor.removeReader(self)
        self._epoll.close()
