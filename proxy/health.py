"""Rise/fall counting for health checks: a pure step function, as keepalived and HAProxy count."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HealthState:
    """A server is marked down after `fall` failed checks in a row while up, and up again after `rise`
    passed checks in a row while down. Servers start up, so a node serves the moment it starts (or takes
    over) and a dead server costs at most fall x interval of redispatched connections."""

    rise: int
    fall: int
    up: bool = True
    _streak: int = 0

    def observe(self, ok: bool) -> bool | None:
        """Feeds one check result; returns the new state when it changes, else None."""
        if ok == self.up:
            self._streak = 0
            return None
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.up, self._streak = ok, 0
            return ok
        return None
