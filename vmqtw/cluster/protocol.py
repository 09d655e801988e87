"""
One inter-node TCP connection: bytes to frames and back, the handshake that
opens it, the heartbeat that notices when it died.

The protocol moves bytes and runs timers; every decision about peers (which
of two links survives, when to redial, who may connect) belongs to its
:class:`LinkOwner`, :class:`vmqtw.cluster.peers.PeerLinks`.  What it does
decide alone:

* **Handshake.**  It drives :class:`vmqtw.cluster.auth.Handshake` and
  gives up after ``handshake_timeout``; frames are limited to
  ``HANDSHAKE_MAX_FRAME_SIZE`` until the peer proved the cookie, so an
  unauthenticated stranger cannot make us buffer 16 MiB.
* **Well-formed data.**  A frame of the wrong shape or kind after the
  handshake closes the connection (``protocol_errors``): a length-prefixed
  stream cannot be resynchronised.
* **Heartbeat.**  A firewall DROP or a dead host blackholes packets and TCP
  notices only after minutes; a ping every ``heartbeat_interval`` and
  "down after ``heartbeat_timeout`` of silence" notices in seconds.
* **Backpressure.**  It is the ``IPushProducer`` of its TCP transport:
  ``paused`` tells the owner not to write.
"""
from __future__ import annotations

import os
import typing
from typing import Any, Callable, List, Optional

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, \
    IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.cluster import auth, wire

__all__ = ["LinkCounters", "LinkSettings", "LinkOwner", "ClusterProtocol",
           "ListenFactory", "well_typed"]

# One namespace for every part of the TCP transport, as before the split,
# so operators' log filters keep working.
log = Logger(namespace="vmqtw.cluster.link")


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


@attrs.define(slots=True, frozen=True)
class LinkSettings:
    """What every connection of one node shares."""

    node: str
    cookie: bytes = attrs.field(repr=False)
    clock: IReactorTime
    counters: LinkCounters
    nonce_source: Callable[[int], bytes] = os.urandom
    max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE
    handshake_timeout: float = 5.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0


class LinkOwner(typing.Protocol):
    """What a :class:`ClusterProtocol` tells the peer manager."""

    def connection_made(self, proto: "ClusterProtocol") -> bool:
        """Admit a new connection; False when it was refused and closed."""

    def handshake_failed(self, proto: "ClusterProtocol",
                         exc: auth.HandshakeFailed) -> None:
        """The handshake cannot succeed; log, count and close."""

    def initiator_verified(self, proto: "ClusterProtocol") -> None:
        """Responder side: the dialer proved the cookie; accept or refuse."""

    def established(self, proto: "ClusterProtocol") -> None:
        """Initiator side: the responder accepted and proved the cookie."""

    def frame_received(self, proto: "ClusterProtocol",
                       frame: wire.Frame) -> None:
        """A well-typed cast, call or reply arrived on an established link."""

    def resume(self, proto: "ClusterProtocol") -> None:
        """TCP can take more bytes again."""

    def connection_lost(self, proto: "ClusterProtocol") -> None:
        """The connection is closed."""


def well_typed(frame: wire.Frame) -> bool:
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


_DATA_KINDS = frozenset((wire.KIND_CAST, wire.KIND_CALL, wire.KIND_REPLY))


@implementer(IPushProducer)
class ClusterProtocol(Protocol):
    """One TCP connection: handshake, then frames to and from its owner."""

    # Twisted's Protocol declares ``transport`` as an ITransport; ours is a
    # TCP (or TLS) transport that also aborts and takes producers.
    transport: Any

    def __init__(self, owner: LinkOwner, settings: LinkSettings,
                 initiator: bool, expected_peer: Optional[str] = None
                 ) -> None:
        self.owner = owner
        self.settings = settings
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.decoder = wire.FrameDecoder(wire.HANDSHAKE_MAX_FRAME_SIZE)
        self.handshake = auth.Handshake(
            role=auth.INITIATOR if initiator else auth.RESPONDER,
            node=settings.node, cookie=settings.cookie,
            nonce=settings.nonce_source(auth.NONCE_SIZE),
            expected_peer=expected_peer)
        self.active = False
        self.closing = False
        self.paused = False
        self._producing = False
        self.last_rx = 0.0
        self.lost: defer.Deferred[None] = defer.Deferred()
        self._hs_timer: Optional[IDelayedCall] = None
        self._hb_timer: Optional[IDelayedCall] = None

    @property
    def peer(self) -> Optional[str]:
        """The peer's name once it said hello."""
        return self.handshake.peer

    @property
    def remote_ip(self) -> str:
        return str(getattr(self.transport.getPeer(), "host", "?"))

    def addresses(self) -> typing.Tuple[IAddress, IAddress]:
        """(local, remote) addresses of the connection."""
        return self.transport.getHost(), self.transport.getPeer()

    def connectionMade(self) -> None:
        clock = self.settings.clock
        self.last_rx = clock.seconds()
        if not self.owner.connection_made(self):
            return
        self._hs_timer = clock.callLater(self.settings.handshake_timeout,
                                         self._handshake_timed_out)
        self.send_frames(self.handshake.start())

    def send_frames(self, frames: List[wire.Frame]) -> None:
        """Write control frames directly, bypassing the peer's buffer."""
        if frames and not self.closing:
            data = b"".join(wire.encode_frame(f) for f in frames)
            self.settings.counters.frames_out += len(frames)
            self.settings.counters.bytes_out += len(data)
            self.transport.write(data)

    def write(self, data: bytes) -> None:
        """Write already framed data (the owner's batched buffer)."""
        self.transport.write(data)

    def close(self, abort: bool = False) -> None:
        if not self._start_closing():
            return
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def close_after_refusal(self) -> None:
        """
        Close after a refusal frame so that the peer reads it: only our
        writing side is shut, and the peer closes in turn (aborted after
        ``handshake_timeout`` if it does not).  Closing both sides with
        the peer's handshake bytes still unread makes the kernel answer
        with a reset, which can overtake the refusal: the peer would see
        "connection reset" instead of the reason.
        """
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.close()
            return
        if not self._start_closing():
            return
        half_close()
        self._hs_timer = self.settings.clock.callLater(
            self.settings.handshake_timeout, self.transport.abortConnection)

    def _start_closing(self) -> bool:
        """Stop timers and producing; False when closing had begun already."""
        if self.closing:
            return False
        self.closing = True
        self._cancel_timers()
        if self._producing:
            # A paused streaming producer would keep loseConnection waiting.
            self._producing = False
            self.transport.unregisterProducer()
        return True

    def _handshake_timed_out(self) -> None:
        self._hs_timer = None
        log.info("cluster handshake with {addr} timed out",
                 addr=self.remote_ip)
        self.close(abort=True)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        counters = self.settings.counters
        self.last_rx = self.settings.clock.seconds()
        counters.bytes_in += len(data)
        decoder = self.decoder
        decoder.push(data)
        while not self.closing:
            try:
                frame = decoder.next_frame()
            except wire.ProtocolError as e:
                self._protocol_error(str(e))
                return
            if frame is None:
                return
            counters.frames_in += 1
            if self.handshake.established:
                self._data_frame(frame)
            else:
                self._handshake_frame(frame)

    def _data_frame(self, frame: wire.Frame) -> None:
        kind = frame[0]
        if not well_typed(frame):
            self._protocol_error("malformed frame of kind %r" % (kind,))
        elif kind in _DATA_KINDS:
            self.owner.frame_received(self, frame)
        elif kind != wire.KIND_PING:
            self._protocol_error("unexpected frame kind %r after the "
                                 "handshake" % (kind,))

    def _protocol_error(self, error: str) -> None:
        self.settings.counters.protocol_errors += 1
        log.warn("cluster protocol error from {peer} ({addr}), closing "
                 "the link: {error}", peer=self.peer or "?",
                 addr=self.remote_ip, error=error)
        self.close(abort=True)

    def _handshake_frame(self, frame: wire.Frame) -> None:
        hs = self.handshake
        try:
            self.send_frames(hs.receive(frame))
        except auth.HandshakeFailed as e:
            self.owner.handshake_failed(self, e)
            return
        if hs.established:  # initiator: responder proved itself
            self.owner.established(self)
        elif hs.verified:   # responder: initiator proved itself
            self.owner.initiator_verified(self)

    def handshake_done(self) -> None:
        """Switch from handshake to data mode (called by the owner)."""
        self.active = True
        if self._hs_timer is not None and self._hs_timer.active():
            self._hs_timer.cancel()
        self._hs_timer = None
        self.decoder.max_frame_size = self.settings.max_frame_size
        self.transport.registerProducer(self, True)
        self._producing = True
        self._hb_timer = self.settings.clock.callLater(
            self.settings.heartbeat_interval, self._heartbeat)

    def _heartbeat(self) -> None:
        self._hb_timer = None
        settings = self.settings
        now = settings.clock.seconds()
        if now - self.last_rx >= settings.heartbeat_timeout:
            log.warn("cluster link to {peer} silent for {secs:.1f}s, closing",
                     peer=self.peer, secs=now - self.last_rx)
            self.close(abort=True)
            return
        self.send_frames([wire.ping()])
        self._hb_timer = settings.clock.callLater(settings.heartbeat_interval,
                                                  self._heartbeat)

    # IPushProducer: TCP tells us when its send buffer is full.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.owner.resume(self)

    def stopProducing(self) -> None:
        self.paused = True

    def _cancel_timers(self) -> None:
        for timer in (self._hs_timer, self._hb_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._hs_timer = self._hb_timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        self._cancel_timers()
        self.owner.connection_lost(self)
        self.lost.callback(None)


class ListenFactory(Factory):
    """Accepted connections: responders that take any verified node."""

    noisy = False

    def __init__(self, owner: LinkOwner, settings: LinkSettings) -> None:
        self.owner = owner
        self.settings = settings

    def buildProtocol(self, addr: Optional[IAddress]) -> ClusterProtocol:
        return ClusterProtocol(self.owner, self.settings, initiator=False)
