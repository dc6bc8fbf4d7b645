"""The local control channel: typed AMP commands over a UNIX socket, used by the CLI.

The CLI changes nothing itself; every action is a command the daemon carries out and answers, so what
the CLI prints is what the daemon did.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IListeningPort
from twisted.protocols import amp

from hapair.ampargs import JSON


class UnknownServerError(Exception):
    pass


class ConfigInvalidError(Exception):
    pass


class FailoverRefusedError(Exception):
    pass


class PairingError(Exception):
    pass


class Status(amp.Command):
    arguments: list = []
    response = [(b"status", JSON())]


class SetAdminState(amp.Command):
    arguments = [
        (b"server", amp.Unicode()),
        (b"state", amp.Unicode()),
        (b"vs", amp.Unicode(optional=True)),
        (b"clear_persistence", amp.Boolean()),
    ]
    response = [(b"changed", JSON())]
    errors = {UnknownServerError: b"UNKNOWN_SERVER"}


class Reload(amp.Command):
    arguments: list = []
    response = [(b"result", JSON())]
    errors = {ConfigInvalidError: b"CONFIG_INVALID"}


class Failover(amp.Command):
    arguments = [(b"force", amp.Boolean())]
    response = [(b"result", amp.Unicode())]
    errors = {FailoverRefusedError: b"FAILOVER_REFUSED"}


class Pair(amp.Command):
    arguments = [(b"address", amp.Unicode()), (b"password", amp.Unicode())]
    response = [(b"result", amp.Unicode())]
    errors = {PairingError: b"PAIRING_FAILED"}


class Unpair(amp.Command):
    arguments: list = []
    response = [(b"result", amp.Unicode())]
    errors = {PairingError: b"PAIRING_FAILED"}


class ControlProtocol(amp.AMP):
    """Answers commands by calling the daemon's handlers: `status()`, `set_admin_state()`, `reload()`,
    `failover()`."""

    def __init__(self, daemon: Any):
        super().__init__()
        self.daemon = daemon

    @Status.responder
    def status(self) -> defer.Deferred:
        return defer.maybeDeferred(self.daemon.status).addCallback(lambda status: {"status": status})

    @SetAdminState.responder
    def set_admin_state(self, server: str, state: str, vs: str | None, clear_persistence: bool) -> dict:
        return {"changed": self.daemon.set_admin_state(server, state, vs, clear_persistence)}

    @Failover.responder
    def failover(self, force: bool) -> defer.Deferred:
        return defer.maybeDeferred(self.daemon.failover, force).addCallback(lambda result: {"result": result})

    @Pair.responder
    def pair(self, address: str, password: str) -> defer.Deferred:
        return defer.maybeDeferred(self.daemon.pair, address, password).addCallback(lambda r: {"result": r})

    @Unpair.responder
    def unpair(self) -> defer.Deferred:
        return defer.maybeDeferred(self.daemon.unpair).addCallback(lambda r: {"result": r})

    @Reload.responder
    def reload(self) -> defer.Deferred:
        return defer.maybeDeferred(self.daemon.reload).addCallback(lambda result: {"result": result})


class ControlService(service.Service):
    """Listens on the control socket: owner root, group `hapair` when that group exists, mode 0660."""

    def __init__(self, path: str, daemon: Any, reactor: Any):
        self.path, self.daemon, self.reactor = path, daemon, reactor
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        # wantPID: a lock file beside the socket refuses a second daemon and clears a dead one's socket.
        factory = protocol.Factory.forProtocol(lambda: ControlProtocol(self.daemon))
        factory.noisy = False
        self.port = self.reactor.listenUNIX(self.path, factory, mode=0o660, wantPID=True)
        try:
            import grp

            os.chown(self.path, 0, grp.getgrnam("hapair").gr_gid)
        except (KeyError, PermissionError):
            pass

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> defer.Deferred | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None


def call(socket_path: str, command: type[amp.Command], reactor: Any = None, **kwargs: Any) -> defer.Deferred:
    """Connects to a daemon's control socket, sends one command and fires with its answer."""
    if reactor is None:
        from twisted.internet import reactor
    creator = protocol.ClientCreator(reactor, amp.AMP)
    d = creator.connectUNIX(socket_path, timeout=5)

    def send(proto: amp.AMP) -> defer.Deferred:
        result = proto.callRemote(command, **kwargs)
        result.addBoth(_close(proto))
        return result

    return d.addCallback(send)


def _close(proto: amp.AMP) -> Callable[[Any], Any]:
    def close(result: Any) -> Any:
        proto.transport.loseConnection()
        return result

    return close
