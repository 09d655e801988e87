"""
The peers of one node: dialing them, one link per pair, and what waits to be
written to each.

* **One link per pair.**  Both nodes dial each other; when both dials meet,
  the one dialed by the smaller node name wins, decided by the responder
  right after it verified the initiator (before any data flows), so the
  loser never carries a message.  A newer link replaces an older one of the
  same direction (the peer only dials when it believes the old one dead).
* **Source address.**  Outgoing connections bind the node's own clustering
  IP, so multi-homed hosts and firewall-based partition tests see the
  node's real address.
* **Reconnect** with exponential backoff and jitter, reset only once a
  link is *authenticated* (a peer that accepts TCP and then refuses the
  handshake is not hammered); clock and RNG are injected so tests drive it.
* **Optional mutual TLS** (:class:`vmqtw.tls.ClusterTLS`) under the cookie
  handshake, the dialer checking the listener's certificate against the
  dialed address.
* **Rate limit.**  Source IPs that fail the handshake too often are refused
  before the handshake (:class:`vmqtw.cluster.auth.FailureLimiter`).
* **Admin clients** (:func:`vmqtw.cluster.auth.is_admin_name`) are linked
  like nodes but never announced to peer listeners nor redialed.
* **Bounded buffer, batched writes.**  Frames for a peer queue in one
  bytes-bounded :class:`OutBuffer` whether the link is up or not; past the
  bound they are dropped and counted.  While the link is up the buffer is
  written once per reactor turn (or as soon as it passes
  ``flush_threshold``) in a single ``write``, and not at all while TCP
  pushes back, so memory stays bounded for a slow peer as well as for a
  dead one.

Why not ``twisted.application.internet.ClientService``: it would express
the bind address and TLS (an endpoint with ``bindAddress`` around a
``TLSClientFactory``) and, with ``prepareConnection`` waiting for the
handshake, even the backoff reset.  But a ClientService wants its own
connection up at all times, while here the surviving link of a pair is
often the *peer's* dial: the dialer must stay idle exactly while an
inbound link is up, restart when that link drops, and restart against a
new address when the peer moved.  With ClientService that is a service
per peer started and stopped on every link transition (and ``stopService``
drops its connection, which may be the survivor), i.e. the same state
machine as below plus a second one inside Twisted to keep in step.
"""
from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import (IAddress, IConnector, IDelayedCall,
                                         IReactorTCP, IReactorTime)
from twisted.internet.protocol import ClientFactory, Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmqtw.cluster import auth, wire
from vmqtw.cluster.auth import is_admin_name
from vmqtw.cluster.protocol import ClusterProtocol, LinkSettings, \
    ListenFactory
from vmqtw.tls import ClusterTLS, TLSClientFactory, TLSServerFactory

__all__ = ["Address", "OutBuffer", "Peer", "PeerLinks", "listen_factory"]

# One namespace for every part of the TCP transport, as before the split,
# so operators' log filters keep working.
log = Logger(namespace="vmqtw.cluster.link")

Address = Tuple[str, int]
PeerListener = Callable[[str], object]


@attrs.define(slots=True, eq=False)
class OutBuffer:
    """Framed bytes waiting for one peer, bounded in bytes."""

    limit: int
    frames: Deque[bytes] = attrs.Factory(deque)
    size: int = 0

    def add(self, data: bytes) -> bool:
        """Append ``data``; False (nothing kept) past the limit."""
        if self.size + len(data) > self.limit:
            return False
        self.frames.append(data)
        self.size += len(data)
        return True

    def take(self) -> Tuple[int, bytes]:
        """(frame count, every byte) and empty the buffer."""
        count, data = len(self.frames), b"".join(self.frames)
        self.frames.clear()
        self.size = 0
        return count, data


@attrs.define(slots=True, eq=False)
class Peer:
    """What this node knows and holds for one other node."""

    name: str
    buffer: OutBuffer
    address: Optional[Address] = None
    #: The authenticated link, whoever dialed it.
    link: Optional[ClusterProtocol] = None
    #: Our dial in progress (before TCP connected) ...
    connector: Optional[IConnector] = None
    #: ... and its protocol once TCP connected, until it is the link or gone.
    dialing: Optional[ClusterProtocol] = None
    retry: Optional[IDelayedCall] = None
    attempts: int = 0
    flush_call: Optional[IDelayedCall] = None

    @property
    def queued_bytes(self) -> int:
        return self.buffer.size


class _DialFactory(ClientFactory):
    noisy = False

    def __init__(self, owner: "PeerLinks", peer: str) -> None:
        self.owner = owner
        self.peer = peer

    def buildProtocol(self, addr: Optional[IAddress]) -> ClusterProtocol:
        proto = ClusterProtocol(self.owner, self.owner.settings,
                                initiator=True, expected_peer=self.peer)
        self.owner._dial_connected(self.peer, proto)
        return proto

    def clientConnectionFailed(self, connector: IConnector,
                               reason: Failure) -> None:
        self.owner._dial_ended(self.peer, connector, reason)

    def clientConnectionLost(self, connector: IConnector,
                             reason: Failure) -> None:
        self.owner._dial_ended(self.peer, connector, reason)


class PeerLinks:
    """
    Every peer of one node and its link; the :class:`LinkOwner` of each
    :class:`ClusterProtocol`.  See the module docstring.

    ``on_frame(peer, frame)`` receives the casts, calls and replies of
    established links; ``on_link_down(peer)`` runs when a peer's link is
    gone, before the peer listeners hear of it.
    """

    def __init__(self, settings: LinkSettings, reactor: IReactorTCP,
                 clock: IReactorTime, *,
                 on_frame: Callable[[str, wire.Frame], None],
                 on_link_down: Callable[[str], None],
                 source_ip: Optional[str] = None,
                 tls: Optional[ClusterTLS] = None,
                 buffer_limit: int = 64 * 1024 * 1024,
                 flush_threshold: int = 64 * 1024,
                 connect_timeout: float = 5.0,
                 backoff_min: float = 0.5,
                 backoff_max: float = 10.0,
                 rng: Optional[random.Random] = None,
                 limiter: Optional[auth.FailureLimiter] = None) -> None:
        self.settings = settings
        self.node = settings.node
        self.counters = settings.counters
        self._reactor = reactor
        self._clock = clock
        self._on_frame = on_frame
        self._on_link_down = on_link_down
        self.source_ip = source_ip
        self.tls = tls
        self.buffer_limit = buffer_limit
        self.flush_threshold = flush_threshold
        self.connect_timeout = connect_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._rng = rng if rng is not None else random.Random()
        self.limiter = limiter if limiter is not None else \
            auth.FailureLimiter()
        self.peers: Dict[str, Peer] = {}
        self.protocols: Set[ClusterProtocol] = set()
        self._listeners: List[Tuple[PeerListener, PeerListener]] = []
        self.running = False

    # -- the node's view ---------------------------------------------------

    def start(self) -> None:
        """Dial every peer with an address, from now on."""
        self.running = True
        for peer in list(self.peers.values()):
            self._dial(peer)

    def stop(self) -> List["defer.Deferred[None]"]:
        """
        Write what is queued to live links, close every connection, stop
        dialing; returns the Deferreds of the connections' ends.
        """
        self.running = False
        waits: List[defer.Deferred[None]] = []
        for peer in self.peers.values():
            self._cancel_retry(peer)
            self.flush(peer)
            if peer.connector is not None and peer.dialing is None:
                peer.connector.disconnect()
        for proto in list(self.protocols):
            waits.append(proto.lost)
            proto.close()
        return waits

    def add_listener(self, on_up: PeerListener,
                     on_down: PeerListener) -> None:
        self._listeners.append((on_up, on_down))

    def set_address(self, name: str, address: Optional[Address]) -> None:
        """Keep a link to ``name`` at ``address``; None forgets the peer."""
        if name == self.node:
            return
        if address is None:
            self._forget(name)
            return
        address = (address[0], int(address[1]))
        p = self._peer_for(name)
        if p.address == address:
            return
        p.address = address
        if not self.running or p.link is not None:
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

    def connected(self, name: str) -> bool:
        p = self.peers.get(name)
        return p is not None and p.link is not None

    def connected_peers(self) -> List[str]:
        return sorted(name for name, p in self.peers.items()
                      if p.link is not None)

    # -- buffer and writes -------------------------------------------------

    def drop(self, data: bytes) -> None:
        """Count ``data`` as dropped."""
        self.counters.dropped_frames += 1
        self.counters.dropped_bytes += len(data)

    def enqueue(self, name: str, data: bytes) -> bool:
        """
        Queue framed ``data`` for ``name``; False (dropped and counted) for
        an unknown peer or a full buffer.
        """
        p = self.peers.get(name)
        if p is None:
            self.drop(data)
            return False
        if not p.buffer.add(data):
            self.drop(data)
            return False
        if p.link is not None and not p.link.paused:
            if p.buffer.size >= self.flush_threshold:
                self.flush(p)
            elif p.flush_call is None:
                p.flush_call = self._clock.callLater(0, self.flush, p)
        return True

    def flush(self, p: Peer) -> None:
        """Write everything queued for ``p`` in one ``write``, if we may."""
        self._cancel_flush(p)
        link = p.link
        if link is None or link.paused or link.closing or not p.buffer.size:
            return
        count, data = p.buffer.take()
        self.counters.frames_out += count
        self.counters.bytes_out += len(data)
        link.write(data)

    def _cancel_flush(self, p: Peer) -> None:
        if p.flush_call is not None and p.flush_call.active():
            p.flush_call.cancel()
        p.flush_call = None

    # -- peers, dialing ----------------------------------------------------

    def _peer_for(self, name: str) -> Peer:
        p = self.peers.get(name)
        if p is None:
            p = self.peers[name] = Peer(name, OutBuffer(self.buffer_limit))
        return p

    def _forget(self, name: str) -> None:
        p = self.peers.pop(name, None)
        if p is None:
            return
        self._cancel_retry(p)
        # Write what is queued before closing: e.g. the notice that tells a
        # node it was removed from the cluster is the last frame it gets.
        self.flush(p)
        if p.dialing is not None:
            p.dialing.close(abort=True)
        elif p.connector is not None:
            p.connector.disconnect()
        link, p.link = p.link, None
        if link is not None:
            link.close()
            self._peer_down(name)

    def _cancel_retry(self, p: Peer) -> None:
        if p.retry is not None and p.retry.active():
            p.retry.cancel()
        p.retry = None

    def backoff_delay(self, attempt: int) -> float:
        """Delay before reconnect ``attempt`` (0-based), with +-20% jitter."""
        base = min(self.backoff_max, self.backoff_min * 2 ** min(attempt, 32))
        jittered = base * (0.8 + 0.4 * self._rng.random())
        return min(self.backoff_max, max(self.backoff_min, jittered))

    def _schedule_dial(self, p: Peer) -> None:
        if (not self.running or p.address is None or p.link is not None
                or p.connector is not None or p.retry is not None
                or self.peers.get(p.name) is not p):
            return
        delay = self.backoff_delay(p.attempts)
        p.attempts += 1
        p.retry = self._clock.callLater(delay, self._retry, p)

    def _retry(self, p: Peer) -> None:
        p.retry = None
        self._dial(p)

    def _dial(self, p: Peer) -> None:
        if (not self.running or p.address is None or p.link is not None
                or p.connector is not None
                or self.peers.get(p.name) is not p):
            return
        host, port = p.address
        bind = (self.source_ip, 0) if self.source_ip else None
        factory: ClientFactory[Any] = _DialFactory(self, p.name)
        if self.tls is not None:
            # The peer's certificate must name the address we dial.
            factory = TLSClientFactory(self.tls.client_creator(host), factory,
                                       self._clock)
        p.connector = self._reactor.connectTCP(
            host, port, factory,
            timeout=self.connect_timeout, bindAddress=bind)

    def _dial_connected(self, name: str, proto: ClusterProtocol) -> None:
        p = self.peers.get(name)
        if p is not None:
            p.dialing = proto

    def _dial_ended(self, name: str, connector: IConnector,
                    reason: Failure) -> None:
        p = self.peers.get(name)
        if p is None or p.connector is not connector:
            return
        p.connector = None
        p.dialing = None
        if p.link is None:
            log.debug("dial to {peer} at {addr} ended: {why}", peer=name,
                      addr=p.address, why=reason.getErrorMessage())
            self._schedule_dial(p)

    # -- LinkOwner: connection life cycle ---------------------------------

    def connection_made(self, proto: ClusterProtocol) -> bool:
        """Admit a new connection; False when it was refused and closed."""
        if not self.running:
            proto.close(abort=True)
            return False
        self.protocols.add(proto)
        if not proto.initiator:
            ip = proto.remote_ip
            if not self.limiter.allowed(ip, self._clock.seconds()):
                self.counters.refused_rate_limited += 1
                proto.close(abort=True)
                return False
        return True

    def handshake_failed(self, proto: ClusterProtocol,
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
                    now = self._clock.seconds()
                    if self.limiter.failure(ip, now):
                        log.warn("refusing cluster handshakes from {addr} "
                                 "for {secs:.0f}s after repeated failures",
                                 addr=ip,
                                 secs=self.limiter.blocked_for(ip, now))
                proto.close_after_refusal()
                return
        proto.close()

    def initiator_verified(self, proto: ClusterProtocol) -> None:
        """
        The initiator proved the cookie: keep this link or refuse it as a
        duplicate.  Only the link dialed by the smaller name survives a
        simultaneous dial, so both ends decide the same way.
        """
        name = proto.peer
        assert name is not None
        new_preferred = name < self.node
        p = self.peers.get(name)
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
        self.established(proto)

    def _refuse(self, proto: ClusterProtocol, reason: str) -> None:
        proto.send_frames([wire.refuse(reason)])
        proto.close_after_refusal()

    def established(self, proto: ClusterProtocol) -> None:
        """``proto`` is the link to its peer from now on."""
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
        self.flush(p)

    def frame_received(self, proto: ClusterProtocol,
                       frame: wire.Frame) -> None:
        peer = proto.peer
        assert peer is not None
        self._on_frame(peer, frame)

    def resume(self, proto: ClusterProtocol) -> None:
        p = self.peers.get(proto.peer or "")
        if p is not None and p.link is proto:
            self.flush(p)

    def connection_lost(self, proto: ClusterProtocol) -> None:
        self.protocols.discard(proto)
        name = proto.peer
        p = self.peers.get(name) if name is not None else None
        if p is None or name is None:
            return
        if p.dialing is proto:
            p.dialing = None
        if p.link is not proto:
            return
        p.link = None
        self._cancel_flush(p)
        if is_admin_name(name):
            # Never redialed, never a member: nothing to keep.
            del self.peers[name]
            return
        log.info("cluster link to {peer} down", peer=name)
        self._peer_down(name)
        self._schedule_dial(p)

    def _peer_down(self, name: str) -> None:
        self._on_link_down(name)
        for _, on_down in list(self._listeners):
            self._notify(on_down, name)

    def _notify(self, listener: PeerListener, name: str) -> None:
        try:
            listener(name)
        except Exception:
            log.failure("peer listener failed for {peer}", peer=name)


def listen_factory(links: PeerLinks) -> Factory[Any]:
    """The factory of accepted connections, in TLS when the node uses it."""
    factory: Factory[Any] = ListenFactory(links, links.settings)
    if links.tls is not None:
        factory = TLSServerFactory(links.tls.server_options, factory,
                                   links._clock)
    return factory
