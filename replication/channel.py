"""The peer channel: AMP commands over mutual TLS.

TLS on both sides presents the node's certificate and asks for the peer's; the handshake accepts any
certificate, and the protocol decides what it may do: the pinned peer (fingerprint, and its node name
checked with service-identity) may replicate; anyone else may only attempt pairing. Garbage, a failed
handshake or an oversized box ends the connection; commands from an unpaired peer are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLContextFactory
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from hapair.control import JSON
from replication.identity import Identity, fingerprint_of

if TYPE_CHECKING:
    from replication.service import ReplicationService

log = Logger(namespace="hapair.replication")

#: Bytes one AMP box may take before the connection is dropped (a replicated config is far smaller);
#: a peer that has not shown the pinned certificate gets only enough for the pairing commands.
MAX_BOX = 8 * 1024 * 1024
MAX_BOX_UNVERIFIED = 64 * 1024
#: Seconds a connection may take to finish its TLS handshake: a stalled one is dropped.
HANDSHAKE_TIMEOUT = 10.0


class NotPairedError(Exception):
    pass


class PairingRefusedError(Exception):
    pass


class PushRefusedError(Exception):
    pass


_NOT_PAIRED = {NotPairedError: b"NOT_PAIRED"}


class PairHello(amp.Command):
    arguments = [(b"node", amp.Unicode()), (b"nonce", amp.String())]
    response = [(b"node", amp.Unicode()), (b"salt", amp.String()), (b"nonce", amp.String())]
    errors = {PairingRefusedError: b"PAIRING_REFUSED"}


class PairProve(amp.Command):
    arguments = [(b"proof", amp.String())]
    response = [(b"proof", amp.String())]
    errors = {PairingRefusedError: b"PAIRING_REFUSED"}


class PairKey(amp.Command):
    arguments = [(b"key", amp.String())]
    response: list = []
    errors = {PairingRefusedError: b"PAIRING_REFUSED"}


class PairRemove(amp.Command):
    arguments: list = []
    response: list = []
    errors = _NOT_PAIRED


class Offer(amp.Command):
    arguments = [(b"version", amp.Integer()), (b"digest", amp.Unicode()), (b"master", amp.Boolean())]
    response = [(b"version", amp.Integer()), (b"digest", amp.Unicode())]
    errors = _NOT_PAIRED


class Push(amp.Command):
    arguments = [(b"version", amp.Integer()), (b"digest", amp.Unicode()), (b"doc", JSON())]
    response = [(b"verdict", amp.Unicode()), (b"detail", amp.Unicode())]
    errors = {**_NOT_PAIRED, PushRefusedError: b"PUSH_REFUSED"}


class Fetch(amp.Command):
    arguments: list = []
    response = [(b"version", amp.Integer()), (b"digest", amp.Unicode()), (b"doc", JSON())]
    errors = _NOT_PAIRED


class Persist(amp.Command):
    """Persistence entries [service, source, server, seconds left] and admin states
    [service, server, state] of the master, for the slave to hold in case it takes over."""

    arguments = [(b"entries", JSON()), (b"admin", JSON())]
    response: list = []
    errors = _NOT_PAIRED


@implementer(IOpenSSLContextFactory)
class TLSContext:
    """Presents this node's certificate and asks for the peer's; the protocol judges the peer."""

    def __init__(self, identity: Identity):
        self.identity = identity

    def getContext(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_privatekey_file(self.identity.key_path)
        ctx.use_certificate_file(self.identity.cert_path)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        return ctx


@implementer(IHandshakeListener)
class PeerProtocol(amp.AMP):
    def __init__(self, service: ReplicationService, outgoing: bool):
        super().__init__()
        self.service, self.outgoing = service, outgoing
        self.verified = False
        self.peer_fingerprint: str | None = None
        self.peer_cert_pem: bytes | None = None
        self.pairing: dict[str, Any] = {}
        self._box_bytes = 0

    # --- transport ----------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._handshake_timer = self.service.reactor.callLater(HANDSHAKE_TIMEOUT, self._handshake_too_slow)

    def _handshake_too_slow(self) -> None:
        log.warn("dropped {peer}: no TLS handshake within {t:g}s", peer=self.peer_address(), t=HANDSHAKE_TIMEOUT)
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        if self._handshake_timer.active():
            self._handshake_timer.cancel()
        cert = self.transport.getPeerCertificate()
        self.peer_fingerprint = fingerprint_of(cert)
        self.peer_cert_pem = crypto.dump_certificate(crypto.FILETYPE_PEM, cert)
        self.verified = self.service.is_pinned(self.peer_fingerprint) and self._identity_ok()
        self.service.handshake(self)

    def _identity_ok(self) -> bool:
        try:
            verify_hostname(self.transport.getHandle(), self.service.peer_name)
            return True
        except VerificationError as e:
            log.warn("pinned certificate does not name {peer}: {e}", peer=self.service.peer_name, e=e)
            return False

    def dataReceived(self, data: bytes) -> None:
        self._box_bytes += len(data)
        limit = MAX_BOX if self.verified else MAX_BOX_UNVERIFIED
        if self._box_bytes > limit:
            log.warn("dropped {peer}: a message over {n} bytes", peer=self.peer_address(), n=limit)
            self.transport.abortConnection()
            return
        super().dataReceived(data)

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self._box_bytes = 0
        super().ampBoxReceived(box)

    def connectionLost(self, reason: Any) -> None:
        timer = getattr(self, "_handshake_timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        super().connectionLost(reason)
        self.service.lost(self)

    def peer_address(self) -> str:
        peer = self.transport.getPeer()
        return getattr(peer, "host", str(peer))

    def _require_pinned(self) -> None:
        # Checked again on every command: unpairing (or pairing anew) revokes an open connection too.
        if not (self.verified and self.service.is_pinned(self.peer_fingerprint)):
            raise NotPairedError("this node is not paired with you")

    # --- pairing ------------------------------------------------------------------------------------

    @PairHello.responder
    def pair_hello(self, node: str, nonce: bytes) -> dict:
        return self.service.pair_hello(self, node, nonce)

    @PairProve.responder
    def pair_prove(self, proof: bytes) -> dict:
        return self.service.pair_prove(self, proof)

    @PairKey.responder
    def pair_key(self, key: bytes) -> dict:
        return self.service.pair_key(self, key)

    @PairRemove.responder
    def pair_remove(self) -> dict:
        self._require_pinned()
        self.service.unpair(from_peer=True)
        return {}

    # --- replication --------------------------------------------------------------------------------

    @Offer.responder
    def offer(self, version: int, digest: str, master: bool) -> dict:
        self._require_pinned()
        return self.service.offered(self, version, digest, master)

    @Push.responder
    def push(self, version: int, digest: str, doc: dict) -> Any:
        self._require_pinned()
        return self.service.pushed(version, digest, doc)

    @Fetch.responder
    def fetch(self) -> dict:
        self._require_pinned()
        return self.service.current()

    @Persist.responder
    def persist(self, entries: list, admin: list) -> dict:
        self._require_pinned()
        self.service.persisted(entries, admin)
        return {}
