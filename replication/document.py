"""What replicates, as a document: the cluster section, canonical, versioned and digested.

The document is built from `ClusterConfig` alone, never from a whole `Config`, so no node-local setting
can enter it: the split is made by the type, not by a filter. It is plain JSON-able data in the very shape
of the YAML `cluster:` section, so the slave parses it with the same reader as an operator's file.

Versions only grow. A slave applies a document only if its version is newer than what it runs; at one
version two different digests are a conflict, and the node that is master settles it by publishing the
next version.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from hapair.config import AddressRange, ClusterConfig, Garp, HASettings, HealthCheck, Persistence, RealServer, Timeouts, VirtualService


def format_duration(seconds: float) -> str:
    """The shortest exact way to write a duration the reader accepts."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


_DURATIONS = {
    Persistence: ("timeout",),
    Timeouts: ("client", "server", "connect"),
    HealthCheck: ("interval", "timeout"),
    HASettings: ("interval", "warntime", "deadtime", "initdead"),
    Garp: ("interval", "repeat_after", "refresh"),
}


def _value(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, AddressRange):
        return str(obj)
    if isinstance(obj, tuple):
        return [_value(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        durations = _DURATIONS.get(type(obj), ())
        out = {}
        for name in obj.__dataclass_fields__:
            v = getattr(obj, name)
            out[name] = format_duration(v) if name in durations else _value(v)
        return out
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)  # addresses


def cluster_document(cluster: ClusterConfig) -> dict[str, Any]:
    """The `cluster:` section that reproduces `cluster` exactly when read back."""
    doc: dict[str, Any] = {"virtual_services": [_value(vs) for vs in cluster.virtual_services]}
    if cluster.ha is not None:
        doc["ha"] = _value(cluster.ha)
    return doc


def digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Versioned:
    version: int
    digest: str


class Verdict(enum.Enum):
    APPLY = "apply"
    CURRENT = "current"  # already running it
    OLDER = "older"
    CONFLICT = "conflict"


def judge(running: Versioned, offered: Versioned) -> Verdict:
    """What a node does with a configuration it is offered, given the one it runs."""
    if offered.version > running.version:
        return Verdict.APPLY
    if offered.version < running.version:
        return Verdict.OLDER
    return Verdict.CURRENT if offered.digest == running.digest else Verdict.CONFLICT


#: Used by tests to prove the split: every key that may appear anywhere in a replicated document.
REPLICATED_KEYS = frozenset(
    name
    for cls in (ClusterConfig, VirtualService, RealServer, Persistence, Timeouts, HealthCheck, HASettings, Garp)
    for name in cls.__dataclass_fields__
)
