"""
The TCP implementation of :class:`vmqtw.interfaces.IClusterTransport`.

One authenticated TCP connection per pair of nodes carries casts, calls and
replies as frames of :mod:`vmqtw.cluster.wire`.  What it does and why:

* **One link per pair.**  Both nodes dial each other; when both dials meet,
  the one dialed by the smaller node name wins, decided by the responder
  right after it verified the initiator (before any data flows), so the
  loser never carries a message.  A newer link replaces an older one of the
  same direction (the peer only dials when it believes the old one dead).
* **Source address.**  Outgoing connections bind the node's own clustering
  IP, so multi-homed hosts and firewall-based partition tests see the
  node's real address.
* **Bounded buffer, batched writes.**  Frames for a peer queue in one
  bytes-bounded buffer whether the link is up or not; past the bound they
  are dropped and counted.  While the link is up the buffer is written once
  per reactor turn (or as soon as it passes ``flush_threshold``) in a single
  ``write``, and not at all while TCP pushes back (``IPushProducer``), so
  memory stays bounded for a slow peer as well as for a dead one.
* **Heartbeat.**  A firewall DROP or a dead host blackholes packets and TCP
  notices only after minutes; a ping every ``heartbeat_interval`` and
  "down after ``heartbeat_timeout`` of silence" notices in seconds.
* **Reconnect** with exponential backoff and jitter; clock and RNG are
  injected so tests can drive it.
* **Optional mutual TLS** (``tls=``, :class:`vmqtw.tls.ClusterTLS`) under
  the cookie handshake: certificates from one CA on both sides, the dialer
  checking the listener's certificate against the dialed address.

Delivery is at-most-once: frames written to a connection that then dies are
lost (callers that need more use ``call`` and retry).
"""
from __future__ import annotations

import itertools
import os
import random
from collections import deque
from typing import (Any, Callable, Deque, Dict, List, Optional, Set, Tuple)

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.cluster import auth, wire
from vmqtw.cluster.auth import is_admin_name
from vmqtw.errors import CallTimeout, PeerUnreachable, RemoteCallError
from vmqtw.interfaces import IClusterTransport
from vmqtw.tls import ClusterTLS, TLSClientFactory, TLSServerFactory

__all__ = ["TcpTransport", "PeerUnreachable", "RemoteCallError",
           "CallTimeout", "LinkCounters"]

log = Logger(namespace="vmqtw.cluster.link")

Address = Tuple[str, int]

@attrs.define(slots=True)
class LinkCounters:
    """Totals over every link of one transport, for metrics and tests."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped_frames: int = 0
    dropped_bytes: int = 0
    handshake_failures: int = 0
    protocol_errors: int = 0
    refused_rate_limited: int = 0


@attrs.define(slots=True, eq=False)
class _Peer:
    name: str
    address: Optional[Address] = None
    link: Optional["ClusterProtocol"] = None
    connector: Any = None
    dialing: Optional["ClusterProtocol"] = None
    retry: Any = None
    attempts: int = 0
    queue: Deque[bytes] = attrs.Factory(deque)
    queued_bytes: int = 0
    flush_call: Any = None


def _well_typed(frame: wire.Frame) -> bool:
    """Field types of data frames, checked before they are used as keys."""
    kind = frame[0]
    if kind == wire.KIND_CAST:
        return type(frame[1]) is str
    if kind == wire.KIND_CALL:
        return (type(frame[1]) is int and type(frame[2]) is str
                and type(frame[3]) is tuple)
    if kind == wire.KIND_REPLY:
        return type(frame[1]) is int and type(frame[2]) is bool
    return True


@attrs.define(slots=True, eq=False)
class _PendingCall:
    peer: str
    deferred: defer.Deferred
    timer: Any


@implementer(IPushProducer)
class ClusterProtocol(Protocol):
    """
    One TCP connection: handshake, then frames to and from the transport.

    The protocol only moves bytes and timers; every decision about peers
    lives in :class:`TcpTransport`.
    """

    def __init__(self, owner: "TcpTransport", initiator: bool,
                 expected_peer: Optional[str] = None) -> None:
        self.owner = owner
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.decoder = wire.FrameDecoder(wire.HANDSHAKE_MAX_FRAME_SIZE)
        self.handshake = auth.Handshake(
            role=auth.INITIATOR if initiator else auth.RESPONDER,
            node=owner.node, cookie=owner._cookie,
            nonce=owner._nonce_source(auth.NONCE_SIZE),
            expected_peer=expected_peer)
        self.active = False
        self.closing = False
        self.paused = False
        self._producing = False
        self.last_rx = 0.0
        self.lost: defer.Deferred = defer.Deferred()
        self._hs_timer: Any = None
        self._hb_timer: Any = None

    @property
    def peer(self) -> Optional[str]:
        return self.handshake.peer

    @property
    def remote_ip(self) -> str:
        return getattr(self.transport.getPeer(), "host", "?")

    def connectionMade(self) -> None:
        clock = self.owner._reactor
        self.last_rx = clock.seconds()
        if not self.owner._connection_made(self):
            return
        self._hs_timer = clock.callLater(self.owner.handshake_timeout,
                                         self._handshake_timed_out)
        self.send_frames(self.handshake.start())

    def send_frames(self, frames: List[wire.Frame]) -> None:
        """Write control frames directly, bypassing the peer's queue."""
        if frames and not self.closing:
            data = b"".join(wire.encode_frame(f) for f in frames)
            self.owner.counters.frames_out += len(frames)
            self.owner.counters.bytes_out += len(data)
            self.transport.write(data)

    def close(self, abort: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        self._cancel_timers()
        if self._producing:
            # A paused streaming producer would keep loseConnection waiting.
            self._producing = False
            self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _handshake_timed_out(self) -> None:
        self._hs_timer = None
        log.info("cluster handshake with {addr} timed out",
                 addr=self.remote_ip)
        self.close(abort=True)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        owner = self.owner
        self.last_rx = owner._reactor.seconds()
        owner.counters.bytes_in += len(data)
        decoder = self.decoder
        decoder.push(data)
        while not self.closing:
            try:
                frame = decoder.next_frame()
            except wire.ProtocolError as e:
                owner._protocol_error(self, str(e))
                return
            if frame is None:
                return
            owner.counters.frames_in += 1
            if self.handshake.established:
                owner._frame_received(self, frame)
            else:
                self._handshake_frame(frame)

    def _handshake_frame(self, frame: wire.Frame) -> None:
        hs = self.handshake
        try:
            self.send_frames(hs.receive(frame))
        except auth.HandshakeFailed as e:
            self.owner._handshake_failed(self, e)
            return
        if hs.established:  # initiator: responder proved itself
            self.owner._activate(self)
        elif hs.verified:   # responder: initiator proved itself
            self.owner._responder_verified(self)

    def handshake_done(self) -> None:
        """Switch from handshake to data mode (called by the owner)."""
        self.active = True
        if self._hs_timer is not None and self._hs_timer.active():
            self._hs_timer.cancel()
        self._hs_timer = None
        self.decoder.max_frame_size = self.owner.max_frame_size
        self.transport.registerProducer(self, True)
        self._producing = True
        self._hb_timer = self.owner._reactor.callLater(
            self.owner.heartbeat_interval, self._heartbeat)

    def _heartbeat(self) -> None:
        self._hb_timer = None
        owner = self.owner
        now = owner._reactor.seconds()
        if now - self.last_rx >= owner.heartbeat_timeout:
            log.warn("cluster link to {peer} silent for {secs:.1f}s, closing",
                     peer=self.peer, secs=now - self.last_rx)
            self.close(abort=True)
            return
        self.send_frames([wire.ping()])
        self._hb_timer = owner._reactor.callLater(owner.heartbeat_interval,
                                                  self._heartbeat)

    # IPushProducer: TCP tells us when its send buffer is full.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.owner._resume(self)

    def stopProducing(self) -> None:
        self.paused = True

    def _cancel_timers(self) -> None:
        for timer in (self._hs_timer, self._hb_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._hs_timer = self._hb_timer = None

    def connectionLost(self, reason: Failure = None) -> None:
        self.closing = True
        self._cancel_timers()
        self.owner._connection_lost(self)
        self.lost.callback(None)


class _ListenFactory(Factory):
    noisy = False

    def __init__(self, owner: "TcpTransport") -> None:
        self.owner = owner

    def buildProtocol(self, addr: Any) -> ClusterProtocol:
        return ClusterProtocol(self.owner, initiator=False)


class _DialFactory(ClientFactory):
    noisy = False

    def __init__(self, owner: "TcpTransport", peer: str) -> None:
        self.owner = owner
        self.peer = peer

    def buildProtocol(self, addr: Any) -> ClusterProtocol:
        proto = ClusterProtocol(self.owner, initiator=True,
                                expected_peer=self.peer)
        self.owner._dial_connected(self.peer, proto)
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.owner._dial_ended(self.peer, connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.owner._dial_ended(self.peer, connector, reason)


@implementer(IClusterTransport)
class TcpTransport:
    """
    Links to the other nodes over TCP; see the module docstring.

    ``reactor`` must provide ``IReactorTCP`` and ``IReactorTime`` (tests
    pass a ``MemoryReactorClock`` or the real reactor).  ``source_ip``
    defaults to the host of ``listen_address`` unless that is a wildcard.
    """

    def __init__(self, node: str, cookie: bytes, listen_address: Address,
                 reactor: Any, *,
                 source_ip: Optional[str] = None,
                 max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
                 buffer_limit: int = 64 * 1024 * 1024,
                 flush_threshold: int = 64 * 1024,
                 handshake_timeout: float = 5.0,
                 heartbeat_interval: float = 1.0,
                 heartbeat_timeout: float = 3.0,
                 connect_timeout: float = 5.0,
                 backoff_min: float = 0.5,
                 backoff_max: float = 10.0,
                 rng: Optional[random.Random] = None,
                 nonce_source: Callable[[int], bytes] = os.urandom,
                 limiter: Optional[auth.FailureLimiter] = None,
                 tls: Optional[ClusterTLS] = None) -> None:
        if isinstance(cookie, str):
            cookie = cookie.encode("utf-8")
        self.node = node
        self._cookie = cookie
        self.listen_address = listen_address
        self._reactor = reactor
        host = listen_address[0]
        if source_ip is None and host not in ("", "0.0.0.0", "::"):
            source_ip = host
        self.source_ip = source_ip
        self.max_frame_size = max_frame_size
        self.buffer_limit = buffer_limit
        self.flush_threshold = flush_threshold
        self.handshake_timeout = handshake_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._rng = rng if rng is not None else random.Random()
        self._nonce_source = nonce_source
        self.limiter = limiter if limiter is not None else \
            auth.FailureLimiter()
        #: Mutual TLS under the cookie handshake, or None for plain TCP.
        self.tls = tls
        self.counters = LinkCounters()
        self._peers: Dict[str, _Peer] = {}
        self._protocols: Set[ClusterProtocol] = set()
        self._cast_handlers: Dict[str, Callable[..., Any]] = {}
        self._call_handlers: Dict[str, Callable[..., Any]] = {}
        self._listeners: List[Tuple[Callable[[str], Any],
                                    Callable[[str], Any]]] = []
        self._calls: Dict[int, _PendingCall] = {}
        self._call_ids = itertools.count(1)
        self._port: Any = None
        self._running = False

    # -- IClusterTransport ------------------------------------------------

    def start(self) -> defer.Deferred:
        """
        Listen on ``listen_address`` and dial every known peer.  Fails
        (``CannotListenError``) when the address cannot be bound.
        """
        host, port = self.listen_address
        try:
            factory: Any = _ListenFactory(self)
            if self.tls is not None:
                factory = TLSServerFactory(self.tls.server_options, factory,
                                           self._reactor)
            self._port = self._reactor.listenTCP(port, factory,
                                                 interface=host)
        except Exception:
            return defer.fail()  # e.g. CannotListenError: port in use
        self._running = True
        for peer in list(self._peers.values()):
            self._dial(peer)
        return defer.succeed(None)

    @property
    def address(self) -> Address:
        """The address actually listened on (port 0 resolved)."""
        h = self._port.getHost()
        return (h.host, h.port)

    def stop(self) -> defer.Deferred:
        """
        Flush what is queued to live links, close every connection, stop
        listening and reconnecting; pending calls fail with
        ``PeerUnreachable``.  Fires when every connection is closed.
        """
        self._running = False
        waits = []
        for peer in self._peers.values():
            self._cancel_retry(peer)
            self._flush(peer)
            if peer.connector is not None and peer.dialing is None:
                peer.connector.disconnect()
        for proto in list(self._protocols):
            waits.append(proto.lost)
            proto.close()
        if self._port is not None:
            waits.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        for call_id in list(self._calls):
            self._fail_call(call_id, PeerUnreachable("transport stopped"))
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def set_peer_address(self, peer: str,
                         address: Optional[Address]) -> None:
        if peer == self.node:
            return
        if address is None:
            self._forget(peer)
            return
        address = (address[0], int(address[1]))
        p = self._peer_for(peer)
        if p.address == address:
            return
        p.address = address
        if not self._running or p.link is not None:
            return
        if p.connector is not None:
            # Dialing the old address: drop it, _dial_ended redials.
            if p.dialing is not None:
                p.dialing.close(abort=True)
            else:
                p.connector.disconnect()
            return
        self._cancel_retry(p)
        p.attempts = 0
        self._dial(p)

    def connected(self, peer: str) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.link is not None

    def connected_peers(self) -> List[str]:
        return sorted(name for name, p in self._peers.items()
                      if p.link is not None)

    def known_peers(self) -> List[str]:
        """Every peer with an address or that connected to us."""
        return sorted(self._peers)

    def link_info(self, peer: str) -> Optional[Dict[str, Any]]:
        """
        ``{"local": (host, port), "remote": (host, port), "dialed_by":
        name}`` of the authenticated link to ``peer``, or None when down.
        """
        p = self._peers.get(peer)
        if p is None or p.link is None:
            return None
        t = p.link.transport
        local, remote = t.getHost(), t.getPeer()
        return {"local": (local.host, local.port),
                "remote": (remote.host, remote.port),
                "dialed_by": self.node if p.link.initiator else peer}

    @property
    def open_connections(self) -> int:
        """TCP connections open now, authenticated or still handshaking."""
        return len(self._protocols)

    def buffered_bytes(self, peer: str) -> int:
        """Bytes queued for ``peer`` and not yet written."""
        p = self._peers.get(peer)
        return p.queued_bytes if p is not None else 0

    def cast(self, peer: str, channel: str, message: Any) -> bool:
        """
        Queue a cast.  Raises ``TypeError`` for a message msgpack cannot
        carry: that is a programming error, not a network condition.
        """
        data = self._encode(wire.cast(channel, message))
        p = self._peers.get(peer)
        if p is None or len(data) - wire.HEADER_SIZE > self.max_frame_size:
            self._drop(data)
            return False
        return self._enqueue(p, data)

    def call(self, peer: str, method: str, args: Tuple[Any, ...],
             timeout: float) -> defer.Deferred:
        p = self._peers.get(peer)
        if p is None or p.link is None:
            return defer.fail(PeerUnreachable(peer))
        call_id = next(self._call_ids)
        data = self._encode(wire.call(call_id, method, tuple(args)))
        if (len(data) - wire.HEADER_SIZE > self.max_frame_size
                or not self._enqueue(p, data)):
            return defer.fail(PeerUnreachable(
                "%s: call dropped (buffer full or too large)" % (peer,)))
        d = defer.Deferred(lambda _d: self._forget_call(call_id))
        timer = self._reactor.callLater(timeout, self._call_timed_out,
                                        call_id, timeout)
        self._calls[call_id] = _PendingCall(peer, d, timer)
        return d

    def register_cast_handler(self, channel: str,
                              handler: Callable[[str, Any], Any]) -> None:
        self._cast_handlers[channel] = handler

    def register_call_handler(self, method: str,
                              handler: Callable[..., Any]) -> None:
        self._call_handlers[method] = handler

    def add_peer_listener(self, on_up: Callable[[str], Any],
                          on_down: Callable[[str], Any]) -> None:
        self._listeners.append((on_up, on_down))

    # -- queue and writes -------------------------------------------------

    @staticmethod
    def _encode(frame: wire.Frame) -> bytes:
        try:
            return wire.encode_frame(frame)
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError("cluster message is not plain data: %s" % (e,))

    def _drop(self, data: bytes) -> None:
        self.counters.dropped_frames += 1
        self.counters.dropped_bytes += len(data)

    def _enqueue(self, p: _Peer, data: bytes) -> bool:
        if p.queued_bytes + len(data) > self.buffer_limit:
            self._drop(data)
            return False
        p.queue.append(data)
        p.queued_bytes += len(data)
        if p.link is not None and not p.link.paused:
            if p.queued_bytes >= self.flush_threshold:
                self._flush(p)
            elif p.flush_call is None:
                p.flush_call = self._reactor.callLater(0, self._flush, p)
        return True

    def _flush(self, p: _Peer) -> None:
        if p.flush_call is not None:
            if p.flush_call.active():
                p.flush_call.cancel()
            p.flush_call = None
        link = p.link
        if link is None or link.paused or link.closing or not p.queue:
            return
        data = b"".join(p.queue)
        self.counters.frames_out += len(p.queue)
        self.counters.bytes_out += len(data)
        p.queue.clear()
        p.queued_bytes = 0
        link.transport.write(data)

    def _resume(self, proto: ClusterProtocol) -> None:
        p = self._peers.get(proto.peer or "")
        if p is not None and p.link is proto:
            self._flush(p)

    # -- peers, dialing ---------------------------------------------------

    def _peer_for(self, name: str) -> _Peer:
        p = self._peers.get(name)
        if p is None:
            p = self._peers[name] = _Peer(name)
        return p

    def _forget(self, name: str) -> None:
        p = self._peers.pop(name, None)
        if p is None:
            return
        self._cancel_retry(p)
        # Write what is queued before closing: e.g. the notice that tells a
        # node it was removed from the cluster is the last frame it gets.
        self._flush(p)
        if p.dialing is not None:
            p.dialing.close(abort=True)
        elif p.connector is not None:
            p.connector.disconnect()
        link, p.link = p.link, None
        if link is not None:
            link.close()
            self._peer_down(name)

    def _cancel_retry(self, p: _Peer) -> None:
        if p.retry is not None and p.retry.active():
            p.retry.cancel()
        p.retry = None

    def backoff_delay(self, attempt: int) -> float:
        """Delay before reconnect ``attempt`` (0-based), with +-20% jitter."""
        base = min(self.backoff_max, self.backoff_min * 2 ** min(attempt, 32))
        jittered = base * (0.8 + 0.4 * self._rng.random())
        return min(self.backoff_max, max(self.backoff_min, jittered))

    def _schedule_dial(self, p: _Peer) -> None:
        if (not self._running or p.address is None or p.link is not None
                or p.connector is not None or p.retry is not None
                or self._peers.get(p.name) is not p):
            return
        delay = self.backoff_delay(p.attempts)
        p.attempts += 1
        p.retry = self._reactor.callLater(delay, self._retry, p)

    def _retry(self, p: _Peer) -> None:
        p.retry = None
        self._dial(p)

    def _dial(self, p: _Peer) -> None:
        if (not self._running or p.address is None or p.link is not None
                or p.connector is not None
                or self._peers.get(p.name) is not p):
            return
        host, port = p.address
        bind = (self.source_ip, 0) if self.source_ip else None
        factory: Any = _DialFactory(self, p.name)
        if self.tls is not None:
            # The peer's certificate must name the address we dial.
            factory = TLSClientFactory(self.tls.client_creator(host), factory,
                                       self._reactor)
        p.connector = self._reactor.connectTCP(
            host, port, factory,
            timeout=self.connect_timeout, bindAddress=bind)

    def _dial_connected(self, name: str, proto: ClusterProtocol) -> None:
        p = self._peers.get(name)
        if p is not None:
            p.dialing = proto

    def _dial_ended(self, name: str, connector: Any, reason: Failure) -> None:
        p = self._peers.get(name)
        if p is None or p.connector is not connector:
            return
        p.connector = None
        p.dialing = None
        if p.link is None:
            log.debug("dial to {peer} at {addr} ended: {why}", peer=name,
                      addr=p.address, why=reason.getErrorMessage())
            self._schedule_dial(p)

    # -- connection life cycle -------------------------------------------

    def _connection_made(self, proto: ClusterProtocol) -> bool:
        """Admit a new connection; False when it was refused and closed."""
        if not self._running:
            proto.close(abort=True)
            return False
        self._protocols.add(proto)
        if not proto.initiator:
            ip = proto.remote_ip
            if not self.limiter.allowed(ip, self._reactor.seconds()):
                self.counters.refused_rate_limited += 1
                proto.close(abort=True)
                return False
        return True

    def _handshake_failed(self, proto: ClusterProtocol,
                          exc: auth.HandshakeFailed) -> None:
        self.counters.handshake_failures += 1
        ip = proto.remote_ip
        if isinstance(exc, auth.HandshakeRefused):
            if exc.reason.startswith("duplicate"):
                log.debug("{peer} kept its other link to us ({reason})",
                          peer=proto.expected_peer, reason=exc.reason)
            else:
                log.warn("cluster peer {peer} at {addr} refused our "
                         "handshake: {reason}", peer=proto.expected_peer,
                         addr=ip, reason=exc.reason)
        else:
            log.warn("cluster handshake with {addr} failed: {reason}",
                     addr=ip, reason=exc.reason)
            if not proto.initiator:
                proto.send_frames([wire.refuse(
                    "authentication failed" if exc.auth else exc.reason)])
                if exc.auth:
                    now = self._reactor.seconds()
                    if self.limiter.failure(ip, now):
                        log.warn("refusing cluster handshakes from {addr} "
                                 "for {secs:.0f}s after repeated failures",
                                 addr=ip,
                                 secs=self.limiter.blocked_for(ip, now))
        proto.close()

    def _responder_verified(self, proto: ClusterProtocol) -> None:
        """
        The initiator proved the cookie: keep this link or refuse it as a
        duplicate.  Only the link dialed by the smaller name survives a
        simultaneous dial, so both ends decide the same way.
        """
        name = proto.peer
        assert name is not None
        new_preferred = name < self.node
        p = self._peers.get(name)
        if p is not None:
            existing = p.link
            if existing is not None and existing is not proto:
                dialer = self.node if existing.initiator else name
                if dialer == min(self.node, name) and not new_preferred:
                    self._refuse(proto, "duplicate link")
                    return
            elif p.dialing is not None and not p.dialing.closing:
                if not new_preferred:
                    self._refuse(proto, "duplicate link (simultaneous dial)")
                    return
        proto.send_frames(proto.handshake.accept())
        self.limiter.success(proto.remote_ip)
        self._activate(proto)

    def _refuse(self, proto: ClusterProtocol, reason: str) -> None:
        proto.send_frames([wire.refuse(reason)])
        proto.close()

    def _activate(self, proto: ClusterProtocol) -> None:
        name = proto.peer
        assert name is not None
        p = self._peer_for(name)
        proto.handshake_done()
        old, p.link = p.link, proto
        p.attempts = 0
        self._cancel_retry(p)
        if p.dialing is not None and p.dialing is not proto:
            p.dialing.close(abort=True)
        elif p.connector is not None and p.dialing is None:
            p.connector.disconnect()
        if old is not None and old is not proto:
            log.info("cluster link to {peer} replaced by a newer one",
                     peer=name)
            old.close()
        elif is_admin_name(name):
            log.debug("admin client {peer} connected ({addr})", peer=name,
                      addr=proto.remote_ip)
        else:
            log.info("cluster link to {peer} up ({addr})", peer=name,
                     addr=proto.remote_ip)
            for on_up, _ in list(self._listeners):
                self._notify(on_up, name)
        self._flush(p)

    def _connection_lost(self, proto: ClusterProtocol) -> None:
        self._protocols.discard(proto)
        name = proto.peer
        p = self._peers.get(name) if name is not None else None
        if p is None:
            return
        if p.dialing is proto:
            p.dialing = None
        if p.link is not proto:
            return
        p.link = None
        if p.flush_call is not None and p.flush_call.active():
            p.flush_call.cancel()
        p.flush_call = None
        if is_admin_name(name):
            # Never redialed, never a member: nothing to keep.
            del self._peers[name]
            return
        log.info("cluster link to {peer} down", peer=name)
        self._peer_down(name)
        self._schedule_dial(p)

    def _peer_down(self, name: str) -> None:
        for call_id, pending in list(self._calls.items()):
            if pending.peer == name:
                self._fail_call(call_id, PeerUnreachable(
                    "%s went down during the call" % (name,)))
        for _, on_down in list(self._listeners):
            self._notify(on_down, name)

    def _notify(self, listener: Callable[[str], Any], name: str) -> None:
        try:
            listener(name)
        except Exception:
            log.failure("peer listener failed for {peer}", peer=name)

    def _protocol_error(self, proto: ClusterProtocol, error: str) -> None:
        self.counters.protocol_errors += 1
        log.warn("cluster protocol error from {peer} ({addr}), closing "
                 "the link: {error}", peer=proto.peer or "?",
                 addr=proto.remote_ip, error=error)
        proto.close(abort=True)

    # -- incoming frames --------------------------------------------------

    def _frame_received(self, proto: ClusterProtocol,
                        frame: wire.Frame) -> None:
        kind = frame[0]
        peer = proto.peer
        if not _well_typed(frame):
            self._protocol_error(proto, "malformed frame of kind %r" % (
                kind,))
            return
        if kind == wire.KIND_CAST:
            _, channel, message = frame
            handler = self._cast_handlers.get(channel)
            if handler is None:
                log.debug("cast on unknown channel {channel} from {peer}",
                          channel=channel, peer=peer)
                return
            try:
                handler(peer, message)
            except Exception:
                log.failure("cast handler for {channel} failed",
                            channel=channel)
        elif kind == wire.KIND_CALL:
            self._incoming_call(peer, frame[1], frame[2], frame[3])
        elif kind == wire.KIND_REPLY:
            _, call_id, ok, value = frame
            pending = self._forget_call(call_id)
            if pending is None:
                return  # timed out or cancelled already
            if ok:
                pending.deferred.callback(value)
            else:
                pending.deferred.errback(RemoteCallError(value))
        elif kind == wire.KIND_PING:
            pass
        else:
            self._protocol_error(proto, "unexpected frame kind %r after "
                                 "the handshake" % (kind,))

    def _incoming_call(self, peer: str, call_id: Any, method: Any,
                       args: Any) -> None:
        handler = self._call_handlers.get(method)
        if handler is None:
            self._send_reply(peer, call_id, False,
                             "UnknownMethod: %r" % (method,))
            return
        d = defer.maybeDeferred(handler, peer, *args)

        def ok(value: Any) -> None:
            self._send_reply(peer, call_id, True, value)

        def failed(f: Failure) -> None:
            self._send_reply(peer, call_id, False, "%s: %s" % (
                f.type.__name__, f.getErrorMessage()))

        d.addCallbacks(ok, failed)
        d.addErrback(lambda f: log.failure("reply to {method} failed",
                                           f, method=method))

    def _send_reply(self, peer: str, call_id: Any, ok: bool,
                    value: Any) -> None:
        p = self._peers.get(peer)
        if p is None or p.link is None:
            return  # the caller sees PeerUnreachable on its side
        try:
            data = wire.encode_frame(wire.reply(call_id, ok, value))
        except (TypeError, ValueError, OverflowError) as e:
            data = wire.encode_frame(wire.reply(
                call_id, False, "UnserialisableResult: %s" % (e,)))
        self._enqueue(p, data)

    def _forget_call(self, call_id: Any) -> Optional[_PendingCall]:
        pending = self._calls.pop(call_id, None)
        if pending is not None and pending.timer.active():
            pending.timer.cancel()
        return pending

    def _fail_call(self, call_id: int, exc: Exception) -> None:
        pending = self._forget_call(call_id)
        if pending is not None:
            pending.deferred.errback(exc)

    def _call_timed_out(self, call_id: int, timeout: float) -> None:
        pending = self._calls.get(call_id)
        if pending is not None:
            self._fail_call(call_id, CallTimeout(
                "no reply from %s within %ss" % (pending.peer, timeout)))
