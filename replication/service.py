"""Replication as a Twisted service: pairing, configuration sync and the persistence stream.

Each paired node keeps one outgoing connection to its peer (reconnecting with back-off) and answers the
peer's. On every (re)connection the two offer their versions: the higher one wins, the other catches up
(push or fetch); at one version with two digests, the HA master settles it by publishing the next
version. A master publishes every local change at once, and streams its new persistence entries (every
100 ms) and a full snapshot with each entry's remaining lifetime (on connect and every 30 s), with the
operators' drain/halt states, so that after a failover a client reaches the same real server.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.application import internet, service
from twisted.internet import defer, endpoints, protocol, task, threads
from twisted.logger import Logger

from hapair import configfile
from replication import identity as ident
from replication.channel import (
    Fetch,
    Offer,
    PairHello,
    PairingRefusedError,
    PairKey,
    PairProve,
    PairRemove,
    PeerProtocol,
    Persist,
    Push,
    PushRefusedError,
    TLSContext,
)
from replication.document import Verdict, Versioned, cluster_document, digest, judge
from replication.store import commit, load_version, prepare, save_version

if TYPE_CHECKING:
    from hapair.daemon import Daemon

log = Logger(namespace="hapair.replication")

PORT = 7694
PERSIST_FLUSH = 0.1
SNAPSHOT_EVERY = 30.0
#: Persistence entries per message: a large table goes in bounded pieces.
SNAPSHOT_CHUNK = 20_000
PAIRING_TIMEOUT = 20.0


class ReplicationService(service.Service):
    def __init__(self, daemon: Daemon, reactor: Any, password_file: str | None):
        self.daemon, self.reactor = daemon, reactor
        node = daemon.config.node
        self.node, self.peer_name = node.name, node.ha.peer
        self.state_dir = node.state_dir
        self.local_address = str(node.ha.paths[0].local)
        self.peer_address = str(node.ha.paths[0].peer)
        self.password_file = password_file
        self.identity = ident.ensure_identity(self.state_dir, self.node)
        self.pin = ident.load_pin(self.state_dir)
        self.state_path = os.path.join(self.state_dir, "replication.json")
        self.backoff = ident.Backoff()
        #: One configuration change at a time (a reload here, a push from the peer, a fetch).
        self.apply_lock = defer.DeferredLock()
        self.outgoing: PeerProtocol | None = None
        self.peer_version: Versioned | None = None
        self.sync = "not paired" if self.pin is None else "connecting"
        self.last_error: str | None = None
        self._port = None
        self._client: internet.ClientService | None = None
        self._pending: list[list[Any]] = []
        self._flush = task.LoopingCall(self._flush_persistence)
        self._flush.clock = reactor
        self._snapshot = task.LoopingCall(self._send_snapshot)
        self._snapshot.clock = reactor
        self.version = self._startup_version()

    # --- versions -----------------------------------------------------------------------------------

    def _doc(self) -> dict[str, Any]:
        return cluster_document(self.daemon.config.cluster)

    def _startup_version(self) -> Versioned:
        """The version of what this node runs. Edits made to the file while the daemon was down keep the
        version number, so they can never win over the peer: the master settles the conflict."""
        now = digest(self._doc())
        saved = load_version(self.state_path)
        if saved is None:
            version = Versioned(1, now)
            save_version(self.state_path, version, self.node)
            return version
        if saved[0].digest != now:
            log.warn("the cluster section changed while hapair was stopped; the master will settle it")
        return Versioned(saved[0].version, now)

    def is_master(self) -> bool:
        cluster = self.daemon.cluster
        return cluster is None or cluster.machine.role.value == "master"

    def local_change(self) -> None:
        """The operator reloaded a changed configuration here: publish it as the next version."""
        new = digest(self._doc())
        if new == self.version.digest:
            return
        top = max(self.version.version, self.peer_version.version if self.peer_version else 0)
        self.version = Versioned(top + 1, new)
        save_version(self.state_path, self.version, self.node)
        log.info("configuration version {v} ({d})", v=self.version.version, d=new[:12])
        self._publish()

    # --- lifecycle ----------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        factory = protocol.Factory.forProtocol(lambda: PeerProtocol(self, outgoing=False))
        factory.noisy = False
        self._port = self.reactor.listenSSL(PORT, factory, TLSContext(self.identity), interface=self.local_address)

    def startService(self) -> None:
        if self._port is None:
            self.privilegedStartService()
        super().startService()
        self._connect()
        self._flush.start(PERSIST_FLUSH, now=False)
        self._snapshot.start(SNAPSHOT_EVERY, now=False)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for loop in (self._flush, self._snapshot):
            if loop.running:
                loop.stop()
        waits = [defer.maybeDeferred(self._port.stopListening)]
        if self._client is not None:
            waits.append(defer.maybeDeferred(self._client.stopService))
            self._client = None
        return defer.gatherResults(waits)

    def _connect(self) -> None:
        if self.pin is None or self._client is not None:
            return
        endpoint = endpoints.SSL4ClientEndpoint(self.reactor, self.peer_address, PORT, TLSContext(self.identity),
                                                timeout=5, bindAddress=(self.local_address, 0))  # fmt: skip
        factory = protocol.Factory.forProtocol(lambda: PeerProtocol(self, outgoing=True))
        factory.noisy = False
        policy = internet.backoffPolicy(initialDelay=0.2, maxDelay=2.0, factor=1.5)
        self._client = internet.ClientService(endpoint, factory, retryPolicy=policy, clock=self.reactor)
        self._client.startService()

    # --- connections --------------------------------------------------------------------------------

    def is_pinned(self, fp: str) -> bool:
        return self.pin is not None and ident.fingerprint(self.pin) == fp

    def handshake(self, proto: PeerProtocol) -> None:
        if not proto.outgoing:
            return
        if not proto.verified:
            self.sync = "failed: the peer's certificate is not the one paired"
            self.last_error = self.sync
            log.warn("{addr} presented a certificate that is not the paired one; disconnecting",
                     addr=proto.peer_address())  # fmt: skip
            proto.transport.abortConnection()
            return
        self.outgoing = proto
        d = proto.callRemote(Offer, version=self.version.version, digest=self.version.digest, master=self.is_master())
        d.addCallback(lambda answer: self._reconcile(proto, Versioned(answer["version"], answer["digest"])))
        d.addErrback(self._failed, "offer")

    def lost(self, proto: PeerProtocol) -> None:
        if proto is self.outgoing:
            self.outgoing = None
            if self.pin is not None:
                self.sync = "connecting"

    def _reconcile(self, proto: PeerProtocol, theirs: Versioned) -> Any:
        self.peer_version = theirs
        self.last_error = None
        verdict = judge(theirs, self.version)  # what the peer would do with ours
        if verdict is Verdict.APPLY:
            return self._push(proto)
        if verdict is Verdict.OLDER:
            return self._fetch(proto)
        if verdict is Verdict.CONFLICT and self.is_master():
            self.version = Versioned(max(self.version.version, theirs.version) + 1, self.version.digest)
            save_version(self.state_path, self.version, self.node)
            return self._push(proto)
        self.sync = "in sync" if verdict is Verdict.CURRENT else "pending: waiting for the master to settle"
        if verdict is Verdict.CURRENT and self.is_master():
            self._send_snapshot()
        return None

    def _publish(self) -> None:
        if self.outgoing is not None:
            self._push(self.outgoing).addErrback(self._failed, "push")

    def _push(self, proto: PeerProtocol) -> defer.Deferred:
        self.sync = "pending"
        version = self.version
        d = proto.callRemote(Push, version=version.version, digest=version.digest, doc=self._doc())

        def answered(answer: dict) -> None:
            self.peer_version = version
            self.sync = "in sync"
            log.info("peer {peer} {verdict} version {v}", peer=self.peer_name, verdict=answer["verdict"], v=version.version)
            if self.is_master():
                self._send_snapshot()

        return d.addCallback(answered)

    def _fetch(self, proto: PeerProtocol) -> defer.Deferred:
        self.sync = "pending"
        d = proto.callRemote(Fetch)
        d.addCallback(lambda got: self.pushed(got["version"], got["digest"], got["doc"]))
        d.addCallback(lambda _: setattr(self, "sync", "in sync"))
        return d

    def _failed(self, failure: Any, what: str) -> None:
        self.sync = f"failed: {what}: {failure.getErrorMessage()}"
        self.last_error = self.sync
        log.warn("replication {what} failed: {why}", what=what, why=failure.getErrorMessage())

    # --- the slave's side ---------------------------------------------------------------------------

    def offered(self, proto: PeerProtocol, version: int, digest_: str, master: bool) -> dict:
        self.peer_version = Versioned(version, digest_)
        return {"version": self.version.version, "digest": self.version.digest}

    def current(self) -> dict:
        return {"version": self.version.version, "digest": self.version.digest, "doc": self._doc()}

    def pushed(self, version: int, digest_: str, doc: dict) -> defer.Deferred:
        """A configuration from the peer: applied whole and atomically, or refused with nothing changed."""
        offered = Versioned(version, digest_)
        verdict = judge(self.version, offered)
        if verdict is Verdict.CURRENT:
            return defer.succeed({"verdict": "already had", "detail": ""})
        if verdict is not Verdict.APPLY:
            reason = f"version {version} is {verdict.value}: this node runs version {self.version.version}"
            log.warn("refused a configuration from {peer}: {why}", peer=self.peer_name, why=reason)
            return defer.fail(PushRefusedError(reason))
        if not isinstance(doc, dict) or digest(doc) != digest_:
            log.warn("refused a configuration from {peer}: digest mismatch", peer=self.peer_name)
            return defer.fail(PushRefusedError("the document does not match its digest"))
        return self.apply_lock.run(self._apply, offered, doc)

    def _apply(self, offered: Versioned, doc: dict) -> defer.Deferred:
        version = offered.version
        if judge(self.version, offered) is not Verdict.APPLY:  # another change got there first
            return defer.succeed({"verdict": "already had", "detail": ""})
        try:
            new_text, new_config = prepare(self.daemon.config_path, doc)
        except configfile.ConfigError as e:
            self.last_error = f"refused version {version}: {e}"
            log.error("refused version {v} from {peer}, still running version {mine}:\n{e}",
                      v=version, peer=self.peer_name, mine=self.version.version, e=str(e))  # fmt: skip
            return defer.fail(PushRefusedError(f"this node cannot use version {version}: {e}"))
        d = defer.maybeDeferred(self.daemon.apply_replicated, new_config)

        def applied(_: Any) -> dict:
            try:
                commit(self.daemon.config_path, new_text, self.state_path, offered, self.peer_name)
            except OSError as e:
                raise PushRefusedError(f"applied version {version} but could not save it: {e}") from e
            self.version = self.peer_version = offered
            self.sync = "in sync"
            self.last_error = None
            log.info("applied version {v} from {peer}", v=version, peer=self.peer_name)
            return {"verdict": "applied", "detail": ""}

        def refused(failure: Any) -> None:
            if failure.check(PushRefusedError):
                return failure
            self.last_error = f"refused version {version}: {failure.getErrorMessage()}"
            log.error("could not apply version {v}, still running version {mine}: {why}", v=version,
                      mine=self.version.version, why=failure.getErrorMessage())  # fmt: skip
            raise PushRefusedError(f"this node cannot apply version {version}: {failure.getErrorMessage()}")

        return d.addCallbacks(applied, refused)

    # --- persistence and admin states ---------------------------------------------------------------

    def persistence_recorded(self, service_label: str, source: str, server: str, remaining: float) -> None:
        if self.is_master() and self.outgoing is not None:
            self._pending.append([service_label, source, server, remaining])

    def _flush_persistence(self) -> None:
        if self._pending and self.outgoing is not None:
            entries, self._pending = self._pending, []
            self.outgoing.callRemote(Persist, entries=entries, admin=[]).addErrback(self._failed, "persistence")

    def _send_snapshot(self) -> None:
        if not self.is_master() or self.outgoing is None:
            return
        proxy = self.daemon.proxy
        # Every server's state, online included: a server brought back online must come back on the slave too.
        admin = proxy.admin_states()

        def send(entries: list) -> None:
            if self.outgoing is None:
                return
            chunks = [entries[i : i + SNAPSHOT_CHUNK] for i in range(0, len(entries), SNAPSHOT_CHUNK)] or [[]]
            for i, chunk in enumerate(chunks):
                d = self.outgoing.callRemote(Persist, entries=chunk, admin=admin if i == 0 else [])
                d.addErrback(self._failed, "snapshot")

        proxy.persistence_entries().addCallback(send).addErrback(self._failed, "snapshot")

    def admin_changed(self) -> None:
        self._send_snapshot()

    def became_master(self) -> None:
        """Offer again: a conflict both nodes left to 'the master' while neither was one is settled now."""
        if self.outgoing is not None and self.sync.startswith("pending"):
            self.handshake(self.outgoing)

    def persisted(self, entries: list, admin: list) -> None:
        self.daemon.proxy.restore_persistence(entries)
        self.daemon.proxy.restore_admin_states(admin)

    # --- pairing ------------------------------------------------------------------------------------

    def pair(self, address: str, password: bytes) -> defer.Deferred:
        """Pairs with the node at `address` whose admin password is `password` (the client's side)."""
        endpoint = endpoints.SSL4ClientEndpoint(self.reactor, address, PORT, TLSContext(self.identity), timeout=5)
        handshaken: defer.Deferred = defer.Deferred()

        class Pairing(PeerProtocol):
            def handshakeCompleted(inner) -> None:
                PeerProtocol.handshakeCompleted(inner)
                handshaken.callback(inner)

            def connectionLost(inner, reason: Any) -> None:
                PeerProtocol.connectionLost(inner, reason)
                if not handshaken.called:  # the TLS handshake failed
                    handshaken.errback(reason)

        factory = protocol.Factory.forProtocol(lambda: Pairing(self, outgoing=None))
        d = endpoint.connect(factory).addCallback(lambda _: handshaken)
        d.addCallback(self._pair_as_client, password)
        return d.addTimeout(PAIRING_TIMEOUT, self.reactor)

    @defer.inlineCallbacks
    def _pair_as_client(self, proto: PeerProtocol, password: bytes) -> Any:
        try:
            nonce_c = os.urandom(16)
            hello = yield proto.callRemote(PairHello, node=self.node, nonce=nonce_c)
            if hello["node"] != self.peer_name:
                raise PairingRefusedError(f"that node is {hello['node']!r}, but this node's peer is {self.peer_name!r}")
            script = ident.transcript(self.node, hello["node"], nonce_c, hello["nonce"], self.identity.fingerprint,
                                      proto.peer_fingerprint)  # fmt: skip
            key = yield threads.deferToThread(ident.derive, password, hello["salt"])
            answer = yield proto.callRemote(PairProve, proof=ident.proof(key, b"client", script))
            if answer["proof"] != ident.proof(key, b"server", script):
                raise PairingRefusedError("the peer could not prove it knows the password")
            heartbeat_key = os.urandom(32)
            yield proto.callRemote(PairKey, key=heartbeat_key)
            self._paired(proto.peer_cert_pem, heartbeat_key)
            return f"paired with {hello['node']} at {proto.peer_address()}"
        finally:
            proto.transport.loseConnection()

    def pair_hello(self, proto: PeerProtocol, node: str, nonce: bytes) -> dict:
        wait = self.backoff.wait(proto.peer_address(), self.reactor.seconds())
        if wait > 0:
            raise PairingRefusedError(f"too many failed attempts: try again in {wait:.0f}s")
        if node != self.peer_name:
            raise PairingRefusedError(f"this node ({self.node}) pairs only with {self.peer_name!r}")
        proto.pairing = {"node": node, "nonce_c": nonce, "nonce_s": os.urandom(16), "salt": os.urandom(16)}
        return {"node": self.node, "salt": proto.pairing["salt"], "nonce": proto.pairing["nonce_s"]}

    def pair_prove(self, proto: PeerProtocol, proof: bytes) -> defer.Deferred:
        p, source, now = proto.pairing, proto.peer_address(), self.reactor.seconds()
        if not p or self.backoff.wait(source, now) > 0:
            raise PairingRefusedError("say hello first" if not p else "too many failed attempts")
        password = self._password()
        # PBKDF2 takes tens of milliseconds: off the reactor, so heartbeats are not held up.
        d = threads.deferToThread(ident.derive, password, p["salt"])
        return d.addCallback(self._check_proof, proto, proof, source, now)

    def _check_proof(self, key: bytes, proto: PeerProtocol, proof: bytes, source: str, now: float) -> dict:
        p = proto.pairing
        script = ident.transcript(p["node"], self.node, p["nonce_c"], p["nonce_s"], proto.peer_fingerprint,
                                  self.identity.fingerprint)  # fmt: skip
        if proof != ident.proof(key, b"client", script):
            self.backoff.failed(source, now)
            proto.pairing = {}
            log.warn("pairing from {addr} refused: wrong password", addr=source)
            raise PairingRefusedError("wrong password")
        self.backoff.succeeded(source)
        p["proven"] = True
        return {"proof": ident.proof(key, b"server", script)}

    def pair_key(self, proto: PeerProtocol, key: bytes) -> dict:
        if not proto.pairing.get("proven"):
            raise PairingRefusedError("prove the password first")
        if len(key) < 16:
            raise PairingRefusedError("the heartbeat key is too short")
        self._paired(proto.peer_cert_pem, key)
        return {}

    def _password(self) -> bytes:
        if not self.password_file:
            raise PairingRefusedError(f"{self.node} has no admin password set (node.admin_password_file)")
        try:
            with open(self.password_file, "rb") as f:
                password = f.read().strip()
        except OSError as e:
            raise PairingRefusedError(f"{self.node} cannot read its admin password: {e.strerror}") from e
        if len(password) < 4:
            raise PairingRefusedError(f"{self.node}'s admin password is empty or too short: pairing is off")
        return password

    def _paired(self, peer_cert_pem: bytes, heartbeat_key: bytes) -> None:
        ident.save_pin(self.state_dir, peer_cert_pem)
        self.pin = peer_cert_pem
        self.daemon.set_heartbeat_key(heartbeat_key)
        self.sync = "connecting"
        log.info("paired with {peer}", peer=self.peer_name)
        if self.running:
            self._connect()

    def unpair(self, from_peer: bool = False) -> defer.Deferred:
        d = defer.succeed(None)
        if not from_peer and self.outgoing is not None:
            d = self.outgoing.callRemote(PairRemove).addErrback(lambda f: None)

        def forget(_: Any) -> str:
            ident.forget_pin(self.state_dir)
            self.pin = None
            self.sync = "not paired"
            self.daemon.set_heartbeat_key(None)
            if self._client is not None:
                self._client.stopService()
                self._client = None
            log.info("unpaired from {peer}", peer=self.peer_name)
            return f"unpaired from {self.peer_name}"

        return d.addCallback(forget)

    # --- status -------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "paired": self.pin is not None,
            "peer": self.peer_name,
            "sync": self.sync,
            "version": self.version.version,
            "digest": self.version.digest,
            "peer_version": self.peer_version.version if self.peer_version else None,
            "peer_digest": self.peer_version.digest if self.peer_version else None,
            "last_error": self.last_error,
            "fingerprint": self.identity.fingerprint,
        }
