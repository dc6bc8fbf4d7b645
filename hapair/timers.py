"""Heartbeat's four timers, as the HA state machine uses them and the configuration validates them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timers:
    """Seconds, as heartbeat names them: keepalive interval, late-heartbeat warning, dead peer, boot wait."""

    interval: float = 0.2
    warntime: float = 0.5
    deadtime: float = 0.7
    initdead: float = 2.0

    def problems(self) -> list[str]:
        """What heartbeat itself would refuse."""
        found = []
        if self.deadtime <= 2 * self.interval:
            found.append(f"deadtime ({self.deadtime:g}s) must be more than twice the interval ({self.interval:g}s)")
        if not self.interval < self.warntime < self.deadtime:
            found.append(f"warntime ({self.warntime:g}s) must lie between the interval and deadtime")
        if self.initdead < self.deadtime:
            found.append(f"initdead ({self.initdead:g}s) must be at least deadtime ({self.deadtime:g}s)")
        return found
