"""One line per connection, formatted in batches and written in batches.

Twisted's logger costs about 14 us per event (an event dict, the observer chain, strftime, a flush),
a tenth of a short connection's budget, and even an f-string per session cost about a tenth of the
proxy's instructions per short connection (callgrind: the temporary strings of ten formatted fields, the
join, the copies). So a line is kept as its format and its fields until the batch is written: then one
`%` formats all of them at once, in C, straight into one string. A session's line costs two list
operations. The lines have the daemon's usual shape (`<time> [hapair.proxy#info] <text>`), with the
timestamp prefix made once a second, and are written with one write every `DELAY` seconds, or as soon as
`LINES` wait (so a batch stalls the proxy for a fraction of a millisecond at any connection rate, where
50 ms of lines at 10,000 connections a second took over a millisecond to format): up to DELAY late
relative to other log lines, never dropped, and `flush()` writes them out at shutdown.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: Seconds a line may wait for others to share its write, and the most lines written at once.
DELAY = 0.05
LINES = 128
#: A session's line after the prefix: client > virtual service address > service/server, bytes from and to
#: the client, seconds open, why it ended.
SESSION = "%s:%d > %s:%d > %s/%s in=%d out=%d %.3fs %s\n"


class AccessLog:
    def __init__(self, reactor: Any, out: TextIO | None = None):
        self.reactor = reactor
        self.out = out if out is not None else sys.stdout
        #: The formats of the lines waiting to be written, and all their fields, in order.
        self._formats: list[str] = []
        self._fields: list[Any] = []
        #: The prefix's second ends at `_until`; `_text` and `_session` are the formats of a free line and
        #: a session's line with that prefix (any % in it doubled, so that it formats as itself).
        self._until = float("-inf")
        self._text = self._session = ""
        self._call = None

    def _stamp(self) -> None:
        """Makes the prefix of the current second, once a second."""
        now = time.time()
        if now >= self._until:
            second = int(now)
            self._until = second + 1
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second)) + " [hapair.proxy#info] "
            prefix = prefix.replace("%", "%%")
            self._text, self._session = prefix + "%s\n", prefix + SESSION
        if self._call is None:
            self._call = self.reactor.callLater(DELAY, self.flush)

    def line(self, text: str) -> None:
        self._stamp()
        self._formats.append(self._text)
        self._fields.append(text)
        if len(self._formats) >= LINES:
            self.flush()

    def session(self, *fields: Any) -> None:
        """A session's line: its fields in the order of `SESSION`. Inline rather than through `line`: this
        runs once per connection."""
        now = time.time()
        if now >= self._until or self._call is None:
            self._stamp()
        self._formats.append(self._session)
        self._fields += fields
        if len(self._formats) >= LINES:
            self.flush()

    def flush(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._formats:
            text = "".join(self._formats) % tuple(self._fields)
            self._formats, self._fields = [], []
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):
                pass  # a closed or full log must not take the proxy down
