"""The commands between the supervisor and its proxy workers: AMP over a socketpair made at fork.

The supervisor owns the listening sockets (it passes each worker its own with SCM_RIGHTS, `Listen`),
the configuration (`Configure`), health results and admin states; a worker owns its sessions and its
share of the persistence tables, reports new assignments (`Assigned`) and answers for its counters.
"""

from __future__ import annotations

from twisted.protocols import amp

from hapair.ampargs import JSON, Pickled


class Listen(amp.Command):
    arguments = [(b"ip", amp.Unicode()), (b"port", amp.Integer()), (b"fd", amp.Descriptor())]
    response: list = []


class Configure(amp.Command):
    """The whole cluster configuration (a ClusterConfig); the worker applies it as a diff."""

    arguments = [(b"cluster", Pickled()), (b"workers", amp.Integer())]
    response: list = []
    errors = {OSError: b"OS_ERROR", KeyError: b"NO_SOCKET"}


class Health(amp.Command):
    arguments = [(b"service", amp.Unicode()), (b"server", amp.Unicode()), (b"up", amp.Boolean())]
    response: list = []


class Admin(amp.Command):
    arguments = [(b"service", amp.Unicode()), (b"server", amp.Unicode()), (b"state", amp.Unicode()),
                 (b"clear", amp.Boolean())]  # fmt: skip
    response: list = []


class Restore(amp.Command):
    """Persistence entries [service, source, server, seconds left], all of them this worker's sources."""

    arguments = [(b"entries", JSON())]
    response: list = []


class Snapshot(amp.Command):
    arguments: list = []
    response = [(b"services", JSON())]


class Entries(amp.Command):
    arguments: list = []
    response = [(b"entries", JSON())]


class Assigned(amp.Command):
    """Worker -> supervisor: new persistence assignments [service, source, server, seconds left]."""

    arguments = [(b"entries", JSON())]
    response: list = []
    requiresAnswer = False
