"""Kernel pipes for zero-copy forwarding, lent to a direction of a session only while it moves data.

`splice` moves pages socket -> pipe -> socket without copying them through the process. A pipe is taken
when a direction reads and given back once it is empty and the event that emptied it has found the source
empty too (or stopped), so idle connections hold none (they would cost two file descriptors and kernel
memory each) and a few pipes serve thousands of sessions.

Sizes: the pipe's size bounds each read, so it sets the cost per byte (64 KiB pipes cost about 2.5 times
the CPU per Gbit of 1 MiB ones). An unprivileged process may grow pipes only while its user stays under
`fs.pipe-user-pages-soft` (16384 pages: 64 pipes of 1 MiB); past that the kernel refuses F_SETPIPE_SZ
and new pipes get a single page. So pipes are pooled (at most KEEP, and those unused between two of the
proxy's sweeps are closed: an idle proxy holds none), and a pipe that still holds bytes (its session was
aborted mid-transfer) is closed, never lent again.
"""

from __future__ import annotations

import fcntl
import os

from twisted.logger import Logger

log = Logger(namespace="hapair.proxy")

#: Bytes per pipe asked for; 1 MiB is the most an unprivileged process may ask (fs.pipe-max-size).
PIPE_SIZE = 1 << 20
#: Empty pipes kept for reuse.
KEEP = 16


class Pipe:
    __slots__ = ("r", "w", "size")

    def __init__(self, r: int, w: int, size: int):
        self.r, self.w, self.size = r, w, size

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class PipePool:
    def __init__(self, size: int = PIPE_SIZE, keep: int = KEEP):
        self.size, self.keep = size, keep
        self._free: list[Pipe] = []
        #: The fewest free pipes since the last trim: that many were not needed.
        self._low = 0
        #: Pipes in use and in the pool.
        self.open = 0
        self._warned = False

    def take(self) -> Pipe | None:
        """An empty pipe, or None when no more can be opened (the caller copies instead)."""
        if self._free:
            pipe = self._free.pop()
            if len(self._free) < self._low:
                self._low = len(self._free)
            return pipe
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
            if not self._warned:  # once: it stays true for as long as the user's pipes fill the limit
                self._warned = True
                log.warn("pipes limited to {size} bytes (this user reached fs.pipe-user-pages-soft): zero-copy "
                         "costs more CPU per byte; raise that sysctl", size=size)  # fmt: skip
        self.open += 1
        return Pipe(r, w, size)

    def give(self, pipe: Pipe, empty: bool = True) -> None:
        if empty and len(self._free) < self.keep:
            self._free.append(pipe)
        else:
            self.open -= 1
            pipe.close()

    def trim(self) -> int:
        """Closes the free pipes nobody needed since the last trim; returns how many."""
        spare, self._low = self._low, 0
        for _ in range(spare):
            self._free.pop(0).close()
        self.open -= spare
        self._low = len(self._free)
        return spare

    def close(self) -> None:
        for pipe in self._free:
            pipe.close()
        self.open -= len(self._free)
        self._free.clear()
