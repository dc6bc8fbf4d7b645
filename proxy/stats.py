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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
