"""The data plane's event loop: an epoll set of its own, next to the Twisted reactor's.

Twisted dispatches every readiness event through `callWithLogger` and the selectable's doRead/doWrite,
which costs several microseconds per event; a proxied request is two to four events. The relay's sockets
therefore live in one epoll set of their own, and handlers are called straight from its poll. Two ways to
join it to the reactor:
- in a worker process (`LoopReactor`), the reactor waits on the proxy's set, of which the reactor's own
  epoll set is one member: Twisted's machinery runs only when one of its own descriptors (the
  supervisor's channel) is ready, or a timer is due or added (`Loop.wait`);
- anywhere else (the proxy inside the supervisor, tests), the proxy's set is one more reader of the
  reactor, polled without blocking when it is ready.
Timers, health checks and the control channel stay on the reactor either way.

Level-triggered, with one rule that keeps it from spinning: a socket with nothing to wait for is taken
out of the set (`watch(fd, 0)`), because epoll reports HUP and ERR even for an empty mask.
"""

from __future__ import annotations

import select
from typing import Any, Callable

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

log = Logger(namespace="hapair.proxy")

IN, OUT, ERR, HUP, RDHUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP, select.EPOLLRDHUP
#: Events handled per poll; and, where the proxy's set is a reader of the reactor (`Loop.doRead`), polls
#: per call while events keep coming, so that the reactor's own cost per wake-up is shared by more events.
BATCH = 512
ROUNDS = 4


class Loop:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._masks: dict[int, int] = {}
        #: Fds forgotten during the current batch of events, and the handlers of new sockets that took
        #: one of their numbers (accept and socket() take the lowest free one) in the same batch: the
        #: batch's leftover events for such a number belong to the old socket, so its new handler starts
        #: with the next batch.
        self._stale: set[int] = set()
        self._reborn: dict[int, Callable[[int], None]] = {}
        self._dispatching = False
        #: The time of the current batch of events: one clock read per wake-up, not one per socket.
        self._seconds = reactor.seconds
        self.now = self._seconds()
        if isinstance(reactor, LoopReactor) and reactor.loop is None:
            reactor.loop = self
            self.add(reactor._poller.fileno(), IN, reactor.poll_own)
        else:
            reactor.addReader(self)

    # --- what the reactor sees (IReadDescriptor) ------------------------------------------------------

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "proxy"

    def doRead(self) -> None:
        poll = self._epoll.poll
        for _ in range(ROUNDS):
            ready = poll(0, BATCH)
            if not ready:
                return
            self._dispatch(ready)

    def _dispatch(self, ready: list[tuple[int, int]]) -> None:
        """Calls each ready socket's handler: none for an fd closed earlier in the same batch, even if a new
        socket has its number by now (see `_reborn`)."""
        self.now = self._seconds()
        handlers = self._handlers
        self._dispatching = True
        for fd, events in ready:
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception:
                log.failure("proxy event handler failed on fd {fd}", fd=fd)
        self._dispatching = False
        if self._stale:
            self._stale.clear()
            handlers.update(self._reborn)
            self._reborn.clear()

    def connectionLost(self, reason: object) -> None:
        pass

    # --- sockets ------------------------------------------------------------------------------------

    def add(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        """Calls `handler` with the events of `fd`, from now on waiting for `mask` (an fd already here
        changes handler)."""
        if fd in self._stale:
            self._reborn[fd] = handler
        else:
            self._handlers[fd] = handler
        if fd in self._masks:
            self.watch(fd, mask)
        else:
            self._masks[fd] = mask
            if mask:
                self._epoll.register(fd, mask)

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
        if self._dispatching:
            self._stale.add(fd)
            if self._reborn:
                self._reborn.pop(fd, None)

    def remove(self, fd: int) -> None:
        """Forgets `fd` and takes it out of the epoll set; call before closing it."""
        watched = self._masks.get(fd, 0)
        self.forget(fd)
        if watched:
            self._epoll.unregister(fd)

    def wait(self, timeout: float) -> None:
        """Waits up to `timeout` seconds (-1: until something happens) and handles what is ready; then goes
        on waiting, for what is left of `timeout`, for as long as the reactor has nothing to do: its own
        turn (timers, its main loop: a few microseconds of Python per turn, paid for every wake-up of a
        busy proxy) is taken only when one of its descriptors was ready, a timer was added, or the time
        it gave is up."""
        poll, reactor, seconds = self._epoll.poll, self.reactor, self._seconds
        deadline = seconds() + timeout if timeout >= 0 else None
        ready = poll(timeout, BATCH)
        while ready:
            self._dispatch(ready)
            if reactor.has_work():
                return
            if deadline is None:
                ready = poll(-1, BATCH)
            else:
                left = deadline - seconds()
                if left <= 0:
                    return
                ready = poll(left, BATCH)

    def close(self) -> None:
        if isinstance(self.reactor, LoopReactor) and self.reactor.loop is self:
            self.remove(self.reactor._poller.fileno())
            self.reactor.loop = None
        else:
            self.reactor.removeReader(self)
        self._epoll.close()


class LoopReactor(EPollReactor):
    """A worker's reactor: it waits on the proxy's epoll set (once a `Loop` exists), in which its own epoll
    set is one member. Until then, and after, it is the plain epoll reactor."""

    loop: Loop | None = None
    #: One of the reactor's own descriptors was ready since its last turn.
    _own_ready = False

    def doPoll(self, timeout: float | None) -> None:
        if self.loop is None:
            super().doPoll(timeout)
        else:
            self._own_ready = False
            self.loop.wait(-1 if timeout is None else timeout)

    doIteration = doPoll

    def poll_own(self, events: int) -> None:
        """The reactor's own descriptors are ready (the supervisor's channel, the waker, a signal): Twisted
        handles them."""
        self._own_ready = True
        super().doPoll(0)

    def has_work(self) -> bool:
        """Whether the reactor needs its turn now: its own descriptors were ready (what they ran may have
        stopped it), or a timer or a call from another thread was added (the wait in progress may be too
        long for it)."""
        return bool(self._own_ready or self._newTimedCalls or self.threadCallQueue or self._justStopped)
