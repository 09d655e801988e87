"""
The TCP implementation of :class:`vmqtw.interfaces.IClusterTransport`: a
small façade composing the parts.

One authenticated TCP connection per pair of nodes carries casts, calls and
replies as frames of :mod:`vmqtw.cluster.wire`.  Who owns what:

* :mod:`vmqtw.cluster.auth` -- the cookie handshake, the failure rate
  limiter, and the names that tell admin clients from nodes;
* :mod:`vmqtw.cluster.protocol` -- one connection: bytes <-> frames,
  handshake driving, heartbeat, backpressure (``IPushProducer``);
* :mod:`vmqtw.cluster.peers` -- dialing, backoff, one link per pair,
  source address and TLS, rate limiting, and the bounded per-peer buffer
  with batched writes;
* :mod:`vmqtw.cluster.calls` -- call ids, the pending-call table and its
  timeouts, incoming cast and call dispatch.

This module only wires them and encodes outgoing messages.  Delivery is
at-most-once: frames written to a connection that then dies are lost
(callers that need more use ``call`` and retry).
"""
from __future__ import annotations

import os
import random
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IListeningPort
from zope.interface import implementer

from vmqtw.cluster import auth, wire
from vmqtw.cluster.calls import CallHandler, CallTable, CastHandler, \
    Dispatcher
from vmqtw.cluster.peers import Address, Peer, PeerLinks, listen_factory
from vmqtw.cluster.protocol import LinkCounters, LinkSettings
from vmqtw.errors import CallTimeout, PeerUnreachable, RemoteCallError
from vmqtw.interfaces import IClusterTransport
from vmqtw.tls import ClusterTLS

__all__ = ["TcpTransport", "PeerUnreachable", "RemoteCallError",
           "CallTimeout", "LinkCounters"]


def _encode(frame: wire.Frame) -> bytes:
    try:
        return wire.encode_frame(frame)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError("cluster message is not plain data: %s" % (e,))


def _host_port(address: IAddress) -> Address:
    """``(host, port)`` of a TCP address (IPv4 or IPv6; both have them)."""
    tcp = cast(Union[IPv4Address, IPv6Address], address)
    return (tcp.host, tcp.port)


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
        self.listen_address = listen_address
        self._reactor = reactor
        host = listen_address[0]
        if source_ip is None and host not in ("", "0.0.0.0", "::"):
            source_ip = host
        self.max_frame_size = max_frame_size
        self.counters = LinkCounters()
        settings = LinkSettings(
            node=node, cookie=cookie, clock=reactor, counters=self.counters,
            nonce_source=nonce_source, max_frame_size=max_frame_size,
            handshake_timeout=handshake_timeout,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout)
        self._calls = CallTable(reactor)
        self._dispatch = Dispatcher()
        self.links = PeerLinks(
            settings, reactor, reactor, on_frame=self._frame_received,
            on_link_down=self._calls.peer_down, source_ip=source_ip, tls=tls,
            buffer_limit=buffer_limit, flush_threshold=flush_threshold,
            connect_timeout=connect_timeout, backoff_min=backoff_min,
            backoff_max=backoff_max, rng=rng, limiter=limiter)
        self._port: Optional[IListeningPort] = None

    @property
    def source_ip(self) -> Optional[str]:
        return self.links.source_ip

    @property
    def tls(self) -> Optional[ClusterTLS]:
        """Mutual TLS under the cookie handshake, or None for plain TCP."""
        return self.links.tls

    @property
    def limiter(self) -> auth.FailureLimiter:
        return self.links.limiter

    @property
    def _peers(self) -> Dict[str, Peer]:
        """Every peer record (tests look at a peer's link)."""
        return self.links.peers

    # -- IClusterTransport ------------------------------------------------

    def start(self) -> "defer.Deferred[None]":
        """
        Listen on ``listen_address`` and dial every known peer.  Fails
        (``CannotListenError``) when the address cannot be bound.
        """
        host, port = self.listen_address
        try:
            self._port = self._reactor.listenTCP(
                port, listen_factory(self.links), interface=host)
        except Exception:
            return defer.fail()  # e.g. CannotListenError: port in use
        self.links.start()
        return defer.succeed(None)

    @property
    def address(self) -> Address:
        """The address actually listened on (port 0 resolved)."""
        assert self._port is not None, "not listening"
        return _host_port(self._port.getHost())

    def stop(self) -> "defer.Deferred[None]":
        """
        Flush what is queued to live links, close every connection, stop
        listening and reconnecting; pending calls fail with
        ``PeerUnreachable``.  Fires when every connection is closed.
        """
        waits: List[defer.Deferred[Any]] = list(self.links.stop())
        if self._port is not None:
            waits.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        self._calls.fail_all(PeerUnreachable("transport stopped"))
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def set_peer_address(self, peer: str,
                         address: Optional[Address]) -> None:
        self.links.set_address(peer, address)

    def connected(self, peer: str) -> bool:
        return self.links.connected(peer)

    def connected_peers(self) -> List[str]:
        return self.links.connected_peers()

    def cast(self, peer: str, channel: str, message: Any) -> bool:
        """
        Queue a cast.  Raises ``TypeError`` for a message msgpack cannot
        carry: that is a programming error, not a network condition.
        """
        data = _encode(wire.cast(channel, message))
        if len(data) - wire.HEADER_SIZE > self.max_frame_size:
            self.links.drop(data)
            return False
        return self.links.enqueue(peer, data)

    def call(self, peer: str, method: str, args: Tuple[Any, ...],
             timeout: float) -> "defer.Deferred[Any]":
        if not self.links.connected(peer):
            return defer.fail(PeerUnreachable(peer))
        call_id = self._calls.next_id()
        data = _encode(wire.call(call_id, method, tuple(args)))
        if (len(data) - wire.HEADER_SIZE > self.max_frame_size
                or not self.links.enqueue(peer, data)):
            return defer.fail(PeerUnreachable(
                "%s: call dropped (buffer full or too large)" % (peer,)))
        return self._calls.track(call_id, peer, timeout)

    def register_cast_handler(self, channel: str,
                              handler: CastHandler) -> None:
        self._dispatch.register_cast_handler(channel, handler)

    def register_call_handler(self, method: str,
                              handler: CallHandler) -> None:
        self._dispatch.register_call_handler(method, handler)

    def add_peer_listener(self, on_up: Callable[[str], Any],
                          on_down: Callable[[str], Any]) -> None:
        self.links.add_listener(on_up, on_down)

    # -- for operators and tests ------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        """Delay before reconnect ``attempt`` (0-based), with +-20% jitter."""
        return self.links.backoff_delay(attempt)

    def known_peers(self) -> List[str]:
        """Every peer with an address or that connected to us."""
        return sorted(self.links.peers)

    def link_info(self, peer: str) -> Optional[Dict[str, Any]]:
        """
        ``{"local": (host, port), "remote": (host, port), "dialed_by":
        name}`` of the authenticated link to ``peer``, or None when down.
        """
        p = self.links.peers.get(peer)
        if p is None or p.link is None:
            return None
        local, remote = p.link.addresses()
        return {"local": _host_port(local), "remote": _host_port(remote),
                "dialed_by": self.node if p.link.initiator else peer}

    @property
    def open_connections(self) -> int:
        """TCP connections open now, authenticated or still handshaking."""
        return len(self.links.protocols)

    def buffered_bytes(self, peer: str) -> int:
        """Bytes queued for ``peer`` and not yet written."""
        p = self.links.peers.get(peer)
        return p.queued_bytes if p is not None else 0

    # -- incoming frames --------------------------------------------------

    def _frame_received(self, peer: str, frame: wire.Frame) -> None:
        kind = frame[0]
        if kind == wire.KIND_CAST:
            self._dispatch.cast(peer, frame[1], frame[2])
        elif kind == wire.KIND_CALL:
            self._dispatch.call(peer, frame[1], frame[2], frame[3],
                                self._send_reply)
        elif kind == wire.KIND_REPLY:
            self._calls.reply(frame[1], frame[2], frame[3])

    def _send_reply(self, peer: str, call_id: Any, ok: bool,
                    value: Any) -> None:
        if not self.links.connected(peer):
            return  # the caller sees PeerUnreachable on its side
        try:
            data = wire.encode_frame(wire.reply(call_id, ok, value))
        except (TypeError, ValueError, OverflowError) as e:
            data = wire.encode_frame(wire.reply(
                call_id, False, "UnserialisableResult: %s" % (e,)))
        self.links.enqueue(peer, data)
