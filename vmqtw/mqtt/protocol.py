"""
The Twisted adapter between MQTT sockets and :class:`Session`.

It only moves bytes: ``dataReceived`` feeds the codec, which returns every
complete packet in the buffer, and hands them to the session; the session
writes through this protocol.  Timers live here too -- the CONNECT deadline
(``connect_timeout``, against idle sockets and slowloris) and the keepalive
(1.5 × keepalive of silence closes the connection [MQTT-3.1.2-24]), both
on the listener's one :class:`~vmqtw.mqtt.deadlines.Deadlines` timer rather
than a timer per connection.  A keepalive check re-enters the connection
for the remaining time, so ``dataReceived`` only records the time of the
last byte.

What one read causes to be written leaves before that read returns to the
reactor (see :class:`TurnWrites`), not a reactor turn later.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, List, Optional, Set, cast

from twisted.internet.interfaces import (IConsumer, IHandshakeListener, IPushProducer,
                                         IReactorTime, ITCPTransport)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.logger import Logger
from zope.interface import implementer

from vmqtw.mqtt import packets as P
from vmqtw.mqtt import reasons as R
from vmqtw.mqtt.deadlines import Deadlines
from vmqtw.mqtt.codec import Decoder, ProtocolError, UnacceptableProtocolLevel, encode
from vmqtw.mqtt.session import (CONNECTED, CONNECTING, NEW, Authenticator, MqttCounters,
                                Session, SessionRegistry, SessionSettings)
from vmqtw.tls import peer_common_name


class _IConnection(ITCPTransport, IPushProducer, IConsumer):
    """
    What :class:`MQTTProtocol` uses of its transport, for the type checker
    only: a TCP connection (plain, or TLS over TCP) that can be aborted,
    paused, and given a producer.  Twisted's TCP and TLS transports have
    all these methods without declaring this combination, so nothing
    checks it at run time.
    """


class TurnWrites:
    """
    Sends what handling one read wrote to plain TCP connections before that
    read returns to the reactor.

    Twisted's ``transport.write`` only buffers: the bytes leave when the
    reactor next polls and finds the socket writable, after it handled every
    other socket that was ready in this turn.  A subscriber's PUBACKs free
    room in its in-flight window, but the messages that fill it waited for
    the reads of every publisher in the turn, and the turn after that; a
    publisher's PUBACK waited as long.  With a window of 20 those round trips,
    not the CPU, bounded QoS 1 delivery (the broker idled half the time).
    So what handling one read writes to a connection is collected on that
    connection (one list, no transport call per packet) and noted here; when
    the read is done each connection hands the transport all it got in one
    piece and writes it out -- one ``send``, as Twisted would have done a
    turn later.

    One instance is shared by every MQTT listener of a node, so that a
    publisher's read also pushes out what it routed to subscribers on other
    listeners.  TLS and WebSocket connections keep Twisted's own timing.
    """

    __slots__ = ("depth", "dirty")

    def __init__(self) -> None:
        #: Reads being handled (1 inside ``dataReceived``; more only if a
        #: transport delivers one read inside another).
        self.depth = 0
        self.dirty: List["MQTTProtocol"] = []

    def flush(self) -> None:
        dirty = self.dirty
        self.dirty = []
        for protocol in dirty:
            protocol.send_now()

    def run(self, handle: Callable[..., Any], *args: Any) -> Any:
        """
        ``handle(*args)`` as one read: what it writes to plain TCP
        connections is collected, and leaves when the outermost read ends.
        """
        self.depth += 1
        try:
            return handle(*args)
        finally:
            self.depth -= 1
            if not self.depth and self.dirty:
                self.flush()

    def as_one_read(self, handle: Callable[..., Any]) -> Callable[..., Any]:
        """
        ``handle`` (what takes a frame from another cluster node) made to
        write as a client's read does: the messages one frame delivers to
        this node's clients leave when it is handled, one send per client,
        rather than one transport write per message.
        """
        return partial(self.run, handle)


def _session_connected(session: Session) -> None:
    """A session's CONNECT was accepted: its keepalive deadline replaces the
    CONNECT deadline.  A module function, not a bound method kept by every
    session."""
    cast(MQTTProtocol, session.io).session_connected(session)


@implementer(IHandshakeListener, IPushProducer)
class MQTTProtocol(Protocol):
    """
    One client connection.

    It is also the push producer of its connection's outgoing bytes (TCP,
    TLS or WebSocket): Twisted pauses it when more than its buffer size
    (64 KiB) waits for the socket, and resumes it once that drained.  The
    subscriber's queue then holds what comes meanwhile, within its limits,
    instead of the transport growing without bound behind a slow or
    stalled subscriber.
    """

    log = Logger()
    # Set by Twisted before connectionMade; never None while we use it.
    transport: _IConnection

    # One per connection: slots (Twisted's own two included) rather than an
    # instance dictionary.
    __slots__ = ("factory", "clock", "decoder", "session", "closing", "last_seen",
                 "_deadline", "_close_timer", "_writes", "_tcp", "_out", "_producing",
                 "transport", "connected")

    def __init__(self, factory: "MQTTFactory") -> None:
        # Twisted's class-level defaults, hidden by the slots of these names.
        self.connected = 0
        self.transport = None   # type: ignore[assignment]
        self.factory = factory
        self.clock: IReactorTime = factory.clock
        # Built here rather than in connectionMade so that neither is ever
        # None; the peer address is filled in once the connection exists.
        self.decoder = Decoder(factory.max_packet_size, connect_first=True,
                               accept_v5=P.PROTOCOL_LEVEL_5 in factory.settings.protocol_versions)
        self.session = Session(self, factory.registry, factory.settings, factory.authenticator,
                               on_connected=_session_connected,
                               counters=factory.counters)
        self.closing = False
        self.last_seen = 0.0
        #: The handle of this connection's deadline in ``factory.deadlines``
        #: (the CONNECT deadline until connected, then the keepalive), or None.
        self._deadline: Optional[int] = None
        self._close_timer: Any = None
        self._writes = factory.writes
        #: The plain TCP transport, when what is written may be sent at
        #: once (see :class:`TurnWrites`); None otherwise.
        self._tcp: Optional[Connection] = None
        #: What handling the current read wrote, not yet given to the
        #: transport; None when nothing (see :class:`TurnWrites`).
        self._out: Optional[List[bytes]] = None
        #: This protocol is its transport's registered push producer.
        self._producing = False

    # -- Protocol -----------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        peer = self.transport.getPeer()
        self.session.peer = (getattr(peer, "host", None), getattr(peer, "port", None))
        self.last_seen = self.clock.seconds()
        if factory.connect_timeout > 0:
            self._deadline = factory.deadlines.add(self.last_seen + factory.connect_timeout,
                                                   self)
        factory.connections.add(self)
        factory.counters.socket_open += 1
        transport = self.transport
        if isinstance(transport, Connection) and not getattr(transport, "TLS", False):
            self._tcp = transport
            # What one read writes leaves as one piece already (TurnWrites):
            # Nagle's algorithm could only hold it back, waiting for an ACK.
            transport.setTcpNoDelay(True)
        if isinstance(transport, (Connection, TLSMemoryBIOProtocol)) \
                or getattr(transport, "passes_producer_on", False):
            # TCP, TLS (which passes us on to its TCP transport) and
            # WebSocket (to its TLS or TCP one): a slow subscriber's bytes
            # wait in its queue, within its limits, not in the transport.
            transport.registerProducer(self, True)
            self._producing = True

    def dataReceived(self, data: bytes) -> None:
        if not self.closing:
            self._writes.run(self._handle, data)

    def _handle(self, data: bytes) -> None:
        now = self.clock.seconds()
        self.last_seen = now
        error: Optional[ProtocolError] = None
        try:
            packets = self.decoder.feed(data)
        except ProtocolError as malformed:
            # Act on the packets that preceded the malformed one, then close.
            error = malformed
            packets = getattr(malformed, "packets", None) or []
        session = self.session
        handle = session.handle
        try:
            for packet in packets:
                handle(packet, now)
                if self.closing:
                    return
        except Exception:
            # A bug, never the client's fault: drop this connection only.
            self.log.failure("internal error handling a packet from {peer}",
                             peer=session.peer)
            self.abort()
            return
        if error is None:
            return
        if isinstance(error, UnacceptableProtocolLevel) and session.state == NEW:
            # [MQTT-3.1.2-2]: CONNACK 1, then close.
            self.log.info("refusing {peer}: {reason}", peer=session.peer,
                          reason=error.reason)
            self.write(encode(P.ConnAck(P.CONNACK_UNACCEPTABLE_PROTOCOL_VERSION, False)))
            self.close()
            return
        if session.state == CONNECTED:
            session.ending("protocol error: malformed packet: " + error.reason)
        else:
            self.log.info("closing {peer}: malformed packet: {reason}",
                          peer=session.peer, reason=error.reason)
        if session.state == NEW and self.decoder.protocol_level == P.PROTOCOL_LEVEL_5:
            # A level-5 CONNECT that breaks a rule: CONNACK with the reason
            # code, then close (section 4.13.1).
            code = error.reason_code
            self.write(encode(P.ConnAck(code if code in R.CONNACK_CODES else R.UNSPECIFIED_ERROR,
                                        False), P.PROTOCOL_LEVEL_5))
            self.close()
            return
        # An MQTT 5.0 client is told why (DISCONNECT with the codec's
        # reason code, section 4.13.1); a 3.1.1 one is just dropped.
        session.disconnect(error.reason_code)

    def handshakeCompleted(self) -> None:
        """
        TLS listeners only: the handshake (and client certificate check) is
        done, before any application byte arrives.  Taking the identity here
        keeps ``dataReceived`` free of any TLS check.
        """
        if self.factory.identity_from_certificate:
            self.session.peer_identity = peer_common_name(self.transport)

    def connectionLost(self, reason: Any = None) -> None:
        self.closing = True
        if self._deadline is not None:
            self.factory.deadlines.discard(self._deadline, self)
            self._deadline = None
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        self.factory.connections.discard(self)
        self.factory.counters.socket_close += 1
        try:
            self.session.connection_lost()
        except Exception:
            self.log.failure("internal error closing the session of {peer}",
                             peer=self.session.peer)

    # -- timers ---------------------------------------------------------------------

    def deadline_passed(self, now: float) -> None:
        """The CONNECT deadline (until connected), else the keepalive's."""
        self._deadline = None
        if self.closing:
            return
        session = self.session
        if session.state in (NEW, CONNECTING):
            self.log.info("closing {peer}: no CONNECT within {timeout} s",
                          peer=session.peer, timeout=self.factory.connect_timeout)
            self.abort()
            return
        if session.state != CONNECTED or session.keepalive <= 0:
            return
        grace = session.keepalive * 1.5
        if now - self.last_seen >= grace:
            session.disconnect(R.KEEP_ALIVE_TIMEOUT, "keepalive timeout")
            return
        self._deadline = self.factory.deadlines.add(self.last_seen + grace, self)

    def session_connected(self, session: Session) -> None:
        deadlines = self.factory.deadlines
        if self._deadline is not None:
            deadlines.discard(self._deadline, self)
            self._deadline = None
        if session.keepalive > 0:
            self._deadline = deadlines.add(self.clock.seconds() + session.keepalive * 1.5, self)

    # -- SessionIO ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        if self._tcp is not None and self._writes.depth:
            # Inside a read: collected, and handed to the transport at once
            # when the read is done (see TurnWrites).
            out = self._out
            if out is None:
                self._out = [data]
                self._writes.dirty.append(self)
            else:
                out.append(data)
            return
        self.transport.write(data)

    def send_now(self) -> None:
        """
        Write out what this connection got during the read now ending, in
        one piece (see :class:`TurnWrites`).

        When the transport holds nothing yet (the usual case) the bytes go
        straight to the socket: ``transport.write`` would register the
        socket with the reactor for writing and ``doWrite`` unregister it
        again, two ``epoll_ctl`` calls and a stack of Python per send, all
        before the bytes leave.  Only what the socket does not take is given
        to the transport, which sends it when the socket is writable and
        pauses the session's sending past its buffer size.  A failed send
        is left to the reactor too: the bytes stay buffered and its next
        attempt ends the connection.
        """
        out, self._out = self._out, None
        tcp = self._tcp
        if not out or tcp is None or self.closing or not tcp.connected or tcp.disconnecting:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        # Twisted's own buffer, empty: nothing of ours waits to go before it.
        if not tcp.dataBuffer and not tcp._tempDataBuffer:
            sent = tcp.writeSomeData(data)
            if sent == len(data):
                return
            if type(sent) is int and sent > 0:
                data = data[sent:]
            tcp.write(data)
            return
        tcp.write(data)
        tcp.doWrite()

    def _hand_over_writes(self) -> None:
        """What a read collected goes to the transport before it closes."""
        out, self._out = self._out, None
        if out:
            self.transport.write(b"".join(out))

    def close(self, grace: Optional[float] = None) -> None:
        if not self.closing:
            self._hand_over_writes()
            self.closing = True
            if self._producing:
                # A paused producer would keep Twisted from closing once
                # the buffer drained (it resumes the producer instead).
                self._producing = False
                self.transport.unregisterProducer()
            self.transport.loseConnection()
            if grace is not None:
                self._close_timer = self.clock.callLater(grace, self.transport.abortConnection)

    def abort(self, reason: Optional[str] = None) -> None:
        """Close at once; ``reason`` (e.g. the listener closing) is logged with the disconnect."""
        if reason is not None:
            self.session.ending(reason)
        if not self.closing:
            self.closing = True
            self.transport.abortConnection()

    def shut_down(self) -> None:
        """The listener stops: an MQTT 5.0 client is told (0x8B) first."""
        self.session.disconnect(R.SERVER_SHUTTING_DOWN,
                                "listener closed (server shutdown or leave)")

    # -- IPushProducer (what Twisted asks of our sending) --------------------------

    def pauseProducing(self) -> None:
        self.session.sending_paused()

    def resumeProducing(self) -> None:
        self.session.sending_resumed()

    def stopProducing(self) -> None:
        """The connection is gone; the session hears of it in connectionLost."""

    # -- reading -------------------------------------------------------------------

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()


class MQTTFactory(Factory):
    """Builds :class:`MQTTProtocol` for one listener; holds what they share."""

    noisy = False

    def __init__(self, registry: SessionRegistry, settings: SessionSettings,
                 authenticator: Authenticator,
                 clock: IReactorTime, max_packet_size: int = 0, connect_timeout: float = 10.0,
                 max_connections: int = 0, identity_from_certificate: bool = False,
                 counters: Optional[MqttCounters] = None,
                 writes: Optional[TurnWrites] = None) -> None:
        self.registry = registry
        self.settings = settings
        self.authenticator = authenticator
        self.clock = clock
        self.max_packet_size = max_packet_size
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        #: TLS listener verifying client certificates: sessions learn the
        #: certificate's CN (``Session.peer_identity``) after the handshake.
        self.identity_from_certificate = identity_from_certificate
        self.connections: Set[MQTTProtocol] = set()
        #: Shared by every listener of a node: what its metrics show.
        self.counters = counters if counters is not None else MqttCounters()
        #: Shared by every listener of a node (see :class:`TurnWrites`).
        self.writes = writes if writes is not None else TurnWrites()
        #: The CONNECT and keepalive deadlines of this listener's connections.
        self.deadlines = Deadlines(clock)

    def buildProtocol(self, addr: Any) -> Optional[MQTTProtocol]:
        if self.max_connections and len(self.connections) >= self.max_connections:
            return None  # refused: Twisted closes the socket
        return MQTTProtocol(self)
