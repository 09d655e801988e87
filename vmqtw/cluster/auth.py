"""
The handshake that opens an inter-node link, and a limiter of failed ones.

Both sides prove they hold ``distributed_cookie`` without ever sending it:
each sends its node name, the cluster protocol version and a fresh random
32-byte nonce (``HELLO``), then each answers with
``HMAC-SHA256(cookie, b"vmqtw-cluster-v1" + role + nonces + names)``
(``PROOF``).  The role byte differs between the dialing side (``I``) and the
answering side (``R``), so a proof can never be reflected back to its
sender, and the fresh nonces of *both* sides make a recorded proof useless
later.  Names are covered by the MAC so a man in the middle cannot rename a
node.

The responder checks the initiator's proof before it sends its own, so a
stranger without the cookie learns nothing but "refused".  After the
initiator's proof is verified the caller (the link) decides whether to
accept the link (it might be a duplicate of an existing one) -- hence the
separate :meth:`Handshake.accept`.

Everything here is pure: nonces are passed in, time is passed in.

The names that tell an admin client from a node live here too: an admin
client proves the cookie like a node, and what it is (a node or a client)
is part of who said hello, not of the TCP adapter.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Dict, List, Optional

import attrs

from vmqtw.cluster import wire

__all__ = ["ADMIN_PREFIX", "is_admin_name", "PROTOCOL_VERSION", "NONCE_SIZE", "INITIATOR", "RESPONDER",
           "HandshakeFailed", "HandshakeRefused", "Handshake", "compute_proof",
           "FailureLimiter"]

#: Version of the inter-node protocol; both sides must speak the same one.
PROTOCOL_VERSION = 1
NONCE_SIZE = 32
INITIATOR = b"I"
RESPONDER = b"R"
_DOMAIN = b"vmqtw-cluster-v1"
_MAX_NAME = 255

#: Name prefix of ``vmqtw-admin`` clients.  They prove the cookie like a
#: node but are not peers: their links are never announced to peer
#: listeners (membership, plumtree, readiness would take them for a node
#: coming up) and are forgotten when they close.  A node name cannot
#: contain ':', so no real node is ever mistaken for one.
ADMIN_PREFIX = "admin:"


def is_admin_name(name: str) -> bool:
    """True for the handshake name of an admin client."""
    return name.startswith(ADMIN_PREFIX)


class HandshakeFailed(Exception):
    """
    The handshake cannot succeed; close the connection.

    ``auth`` is True when the peer failed to prove the cookie or sent
    garbage -- the failures a rate limit counts.
    """

    def __init__(self, reason: str, auth: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth = auth


class HandshakeRefused(HandshakeFailed):
    """The other side refused us (wrong cookie, duplicate link, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, auth=False)


def _name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def compute_proof(cookie: bytes, role: bytes, initiator_nonce: bytes,
                  responder_nonce: bytes, initiator: str,
                  responder: str) -> bytes:
    """
    The MAC one side sends to prove it holds ``cookie``.

    Names are length-prefixed so that no two different (name, name) pairs
    produce the same MAC input.
    """
    msg = b"".join((_DOMAIN, role, initiator_nonce, responder_nonce,
                    _name_bytes(initiator), _name_bytes(responder)))
    return hmac.new(cookie, msg, hashlib.sha256).digest()


def _check_hello(frame: wire.Frame, own_name: str) -> tuple:
    if frame[0] != wire.KIND_HELLO:
        raise HandshakeFailed("expected HELLO, got frame kind %r" % (
            frame[0],))
    _, name, version, nonce = frame
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
        raise HandshakeFailed("invalid node name in HELLO")
    if type(version) is not int:
        raise HandshakeFailed("invalid version in HELLO")
    if version != PROTOCOL_VERSION:
        raise HandshakeFailed(
            "cluster protocol version %d, we speak %d"
            % (version, PROTOCOL_VERSION), auth=False)
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise HandshakeFailed("invalid nonce in HELLO")
    if name == own_name:
        raise HandshakeFailed("peer claims our own name %r" % (name,))
    return name, nonce


@attrs.define(slots=True, eq=False)
class Handshake:
    """
    One side of the handshake as a small state machine.

    Initiator: ``start()`` -> HELLO; ``receive(HELLO)`` -> PROOF;
    ``receive(PROOF)`` -> ``[]`` and ``established``.
    Responder: ``start()`` -> ``[]``; ``receive(HELLO)`` -> HELLO;
    ``receive(PROOF)`` -> ``[]`` and ``verified``; then ``accept()`` -> PROOF
    and ``established`` (or the caller sends ``wire.refuse(...)``).
    Any deviation raises :class:`HandshakeFailed`.
    """

    role: bytes
    node: str
    cookie: bytes = attrs.field(repr=False)
    nonce: bytes = attrs.field(repr=False)
    #: The initiator's expectation of the responder's name (None: anyone).
    expected_peer: Optional[str] = None
    peer: Optional[str] = None
    verified: bool = False
    established: bool = False
    _peer_nonce: Optional[bytes] = attrs.field(default=None, repr=False)
    _state: str = "new"

    def start(self) -> List[wire.Frame]:
        if self._state != "new":
            raise RuntimeError("handshake already started")
        self._state = "hello"
        if self.role == INITIATOR:
            return [wire.hello(self.node, PROTOCOL_VERSION, self.nonce)]
        return []

    def _names_nonces(self) -> tuple:
        assert self.peer is not None and self._peer_nonce is not None
        if self.role == INITIATOR:
            return (self.nonce, self._peer_nonce, self.node, self.peer)
        return (self._peer_nonce, self.nonce, self.peer, self.node)

    def _proof(self, role: bytes) -> bytes:
        return compute_proof(self.cookie, role, *self._names_nonces())

    def receive(self, frame: wire.Frame) -> List[wire.Frame]:
        """Handle one frame from the peer; returns the frames to send."""
        if frame[0] == wire.KIND_REFUSE:
            reason = frame[1] if isinstance(frame[1], str) else "?"
            raise HandshakeRefused(reason[:200])
        if self._state == "hello":
            name, nonce = _check_hello(frame, self.node)
            if (self.expected_peer is not None
                    and name != self.expected_peer):
                raise HandshakeFailed(
                    "expected node %r, found %r" % (self.expected_peer, name))
            self.peer, self._peer_nonce = name, nonce
            self._state = "proof"
            if self.role == INITIATOR:
                return [wire.proof(self._proof(INITIATOR))]
            return [wire.hello(self.node, PROTOCOL_VERSION, self.nonce)]
        if self._state == "proof":
            if frame[0] != wire.KIND_PROOF or not isinstance(frame[1], bytes):
                raise HandshakeFailed("expected PROOF")
            other = RESPONDER if self.role == INITIATOR else INITIATOR
            if not hmac.compare_digest(frame[1], self._proof(other)):
                raise HandshakeFailed("wrong cookie (bad proof)")
            self.verified = True
            if self.role == INITIATOR:
                self.established = True
                self._state = "done"
            else:
                self._state = "verified"
            return []
        raise HandshakeFailed("unexpected frame kind %r during handshake" % (
            frame[0],))

    def accept(self) -> List[wire.Frame]:
        """Responder only: the initiator is verified and welcome."""
        if self.role != RESPONDER or self._state != "verified":
            raise RuntimeError("accept() before the initiator was verified")
        self._state = "done"
        self.established = True
        return [wire.proof(self._proof(RESPONDER))]


@attrs.define(slots=True)
class _Record:
    failures: List[float] = attrs.Factory(list)
    strikes: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0


@attrs.define(slots=True)
class FailureLimiter:
    """
    Refuses handshakes from a source IP that failed too often.

    After ``max_failures`` failures within ``window`` seconds an IP is
    blocked for ``base_block`` seconds, doubling with every further block up
    to ``max_block``; a quiet ``max_block`` without failures forgets the IP.
    At most ``max_tracked`` IPs are remembered (oldest forgotten first) so a
    scan from many addresses cannot grow memory without bound.
    """

    max_failures: int = 5
    window: float = 10.0
    base_block: float = 10.0
    max_block: float = 300.0
    max_tracked: int = 10000
    _records: Dict[str, _Record] = attrs.Factory(dict)

    def allowed(self, ip: str, now: float) -> bool:
        """True unless ``ip`` is blocked at ``now``."""
        rec = self._records.get(ip)
        if rec is None:
            return True
        if now < rec.blocked_until:
            return False
        if now - max(rec.last_failure, rec.blocked_until) > self.max_block:
            del self._records[ip]
        return True

    def blocked_for(self, ip: str, now: float) -> float:
        """Seconds ``ip`` stays blocked (0 when allowed)."""
        rec = self._records.get(ip)
        return max(0.0, rec.blocked_until - now) if rec else 0.0

    def failure(self, ip: str, now: float) -> bool:
        """
        Record a failed handshake; returns True when this failure started
        a block (so the caller logs one line per block, not per attempt).
        """
        rec = self._records.pop(ip, None) or _Record()
        self._records[ip] = rec  # re-insert: dict order = recency
        while len(self._records) > self.max_tracked:
            del self._records[next(iter(self._records))]
        rec.last_failure = now
        rec.failures = [t for t in rec.failures if now - t < self.window]
        rec.failures.append(now)
        if len(rec.failures) >= self.max_failures:
            rec.failures.clear()
            rec.blocked_until = now + min(
                self.max_block, self.base_block * 2 ** rec.strikes)
            rec.strikes += 1
            return True
        return False

    def success(self, ip: str) -> None:
        """A successful handshake clears the record of ``ip``."""
        self._records.pop(ip, None)
