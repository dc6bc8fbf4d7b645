"""A node's TLS identity, its pinned peer, and the pairing proof.

Each node makes its own key and self-signed certificate at first start (subjectAltName DNS = its node
name). Pairing, like the appliance's "Add new node", proves knowledge of the peer's admin password: both
sides compute HMAC(PBKDF2(password, salt), transcript), where the transcript binds the two node names, two
fresh nonces and the fingerprints of both TLS certificates as each side saw them, so a man in the middle
(whose certificates differ on each side) cannot relay it. From then on each node accepts only the
certificate it pinned, and checks the peer's identity in it with service-identity.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

PBKDF2_ROUNDS = 100_000


@dataclass(frozen=True)
class Identity:
    key_path: str
    cert_path: str
    cert_pem: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)


def fingerprint(cert_pem: bytes) -> str:
    cert = crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem)
    return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)).hexdigest()


def fingerprint_of(cert: crypto.X509) -> str:
    return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)).hexdigest()


def ensure_identity(state_dir: str, node: str) -> Identity:
    """This node's key and certificate, made on first use (key readable by its owner only)."""
    key_path, cert_path = os.path.join(state_dir, "node.key"), os.path.join(state_dir, "node.crt")
    if not (os.path.exists(key_path) and os.path.exists(cert_path)):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(cert_path, "rb") as f:
        return Identity(key_path, cert_path, f.read())


def peer_pin_path(state_dir: str) -> str:
    return os.path.join(state_dir, "peer.crt")


def load_pin(state_dir: str) -> bytes | None:
    try:
        with open(peer_pin_path(state_dir), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def save_pin(state_dir: str, cert_pem: bytes) -> None:
    from replication.store import write_atomic

    write_atomic(peer_pin_path(state_dir), cert_pem)


def forget_pin(state_dir: str) -> None:
    try:
        os.unlink(peer_pin_path(state_dir))
    except FileNotFoundError:
        pass


def derive(password: bytes, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, salt, PBKDF2_ROUNDS)


def transcript(client: str, server: str, nonce_c: bytes, nonce_s: bytes, fp_client: str, fp_server: str) -> bytes:
    parts = [b"hapair-pair-v1", client.encode(), server.encode(), nonce_c, nonce_s, fp_client.encode(), fp_server.encode()]
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


def proof(key: bytes, role: bytes, script: bytes) -> bytes:
    return hmac.new(key, role + script, hashlib.sha256).digest()


@dataclass
class Backoff:
    """Failed pairing attempts per source: after `free` failures each attempt waits twice as long as
    the one before (at most `cap` seconds), so a password cannot be guessed at wire speed."""

    free: int = 3
    cap: float = 300.0
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def wait(self, source: str, now: float) -> float:
        """Seconds `source` must still wait before its next attempt is even checked."""
        count, last = self._failures.get(source, (0, 0.0))
        if count < self.free:
            return 0.0
        return max(0.0, last + min(self.cap, 2.0 ** (count - self.free + 1)) - now)

    def failed(self, source: str, now: float) -> None:
        count, _ = self._failures.get(source, (0, 0.0))
        self._failures[source] = (count + 1, now)

    def succeeded(self, source: str) -> None:
        self._failures.pop(source, None)
