"""Source-IP persistence: which real server a client address was last sent to.

One table per virtual service, shared by all its ports, so one Outlook client reaches the same CAS on
135, 60200 and 60201. Entries live `timeout` seconds after their last use (HAProxy's stick-table `expire`)
and at most `size` are kept; the least recently used goes first. The table is ordered by last use and
every entry has the same lifetime, so the expired ones are always at the front: purging costs only what
it removes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

from twisted.internet.interfaces import IReactorTime


class PersistenceTable:
    def __init__(self, timeout: float, size: int, clock: IReactorTime):
        self.timeout = timeout
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, source: str) -> str | None:
        """The server `source` is stuck to, if the entry is still alive. Does not renew it."""
        entry = self._entries.get(source)
        if entry is None:
            return None
        if entry[1] <= self._clock.seconds():
            del self._entries[source]
            return None
        return entry[0]

    def renew(self, source: str) -> str | None:
        """The server `source` is stuck to, renewed for another full timeout as `record` would: the
        lookup and the renewal of a returning client in one step (one dictionary read, one clock read)."""
        entries = self._entries
        entry = entries.get(source)
        if entry is None:
            return None
        now = self._clock.seconds()
        if entry[1] <= now:
            del entries[source]
            return None
        entries[source] = (entry[0], now + self.timeout)
        entries.move_to_end(source)
        return entry[0]

    def record(self, source: str, server: str) -> None:
        """Sticks `source` to `server` for another full timeout, evicting the least recently used."""
        entries = self._entries
        entries[source] = (server, self._clock.seconds() + self.timeout)
        entries.move_to_end(source)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def forget(self, source: str) -> None:
        self._entries.pop(source, None)

    def forget_server(self, server: str) -> int:
        """Drops every entry pointing at `server` (drain with clear); returns how many went."""
        stale = [source for source, (label, _) in self._entries.items() if label == server]
        for source in stale:
            del self._entries[source]
        return len(stale)

    def purge(self) -> int:
        """Drops expired entries; returns how many went."""
        now, entries, gone = self._clock.seconds(), self._entries, 0
        while entries:
            source, (_, expires) = next(iter(entries.items()))
            if expires > now:
                break
            del entries[source]
            gone += 1
        return gone

    def entries(self) -> Iterator[tuple[str, str, float]]:
        """(source, server, seconds left) for each live entry, oldest first: what a peer needs to restore."""
        now = self._clock.seconds()
        for source, (server, expires) in self._entries.items():
            if expires > now:
                yield source, server, expires - now

    def restore(self, source: str, server: str, remaining: float) -> None:
        self.restore_many([(source, server, remaining)])

    def restore_many(self, entries: list[tuple[str, str, float]]) -> None:
        """Adds entries with the lifetimes a peer reported (never longer than this table's timeout),
        keeping the table ordered by expiry. Entries that arrive in expiry order (the master's stream of
        new assignments) are appended; only a batch that breaks the order (a snapshot) costs a sort."""
        now, table = self._clock.seconds(), self._entries
        last = next(reversed(table.values()))[1] if table else float("-inf")
        ordered = True
        for source, server, remaining in entries:
            if remaining <= 0:
                continue
            expires = now + min(remaining, self.timeout)
            table.pop(source, None)
            table[source] = (server, expires)
            if expires < last:
                ordered = False
            last = max(last, expires)
        if not ordered:
            self._entries = OrderedDict(sorted(table.items(), key=lambda kv: kv[1][1]))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
