"""Counters per virtual service and per real server, kept for `hapair status`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


#: The counters that count traffic (summed over workers), as opposed to health_changes (decided once).
TRAFFIC = ("current", "total", "bytes_in", "bytes_out", "spliced", "refused", "failed")


@dataclass(slots=True)
class Counters:
    current: int = 0
    total: int = 0
    #: Bytes from clients to servers, and back.
    bytes_in: int = 0
    bytes_out: int = 0
    #: Of those, bytes moved by splice (zero-copy) rather than copied through the process.
    spliced: int = 0
    #: Clients turned away: source not allowed, no server, maxconn (service); connect failures (server).
    refused: int = 0
    failed: int = 0
    health_changes: int = 0

    def add_traffic(self, bytes_in: int, bytes_out: int, spliced: int) -> None:
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.spliced += spliced

    def as_dict(self, live: tuple[int, int, int] = (0, 0, 0)) -> dict[str, int]:
        """The counters, with `live`: the traffic of the sessions still open (counted here when they end)."""
        d = asdict(self)
        d["bytes_in"] += live[0]
        d["bytes_out"] += live[1]
        d["spliced"] += live[2]
        return d
