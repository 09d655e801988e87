"""
The MQTT 3.1/3.1.1 session state machine of one connection.

Sans-IO: it receives decoded packets with the current time and answers
through a small :class:`SessionIO` (write bytes, close, pause/resume
reading), which the Twisted protocol implements and unit tests fake.  It
reaches the rest of the broker only through the registry (register,
subscribe, publish) and the subscriber queue the registry hands it.

Acknowledgements to a publisher are written in the order the PUBLISHes
arrived [MQTT-4.6.0-2], even when one of them must first wait for the
message store; while too many wait, reading from the socket pauses
(backpressure instead of unbounded buffering).
"""
from __future__ import annotations

import os
import struct
from collections import deque
from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Protocol,
                    Set, Tuple)

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmqtw.errors import BacklogFull, StoreUnavailable
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import encode, encode_publish
from vmqtw.topic import parse_shared, validate_filter, validate_topic
from vmqtw.types import Message, SubscriberId, new_message_ref

NEW, CONNECTING, CONNECTED, CLOSED = range(4)

#: Pre-encoded packets that never change.
_PINGRESP = encode(P.PingResp())

# Acknowledgements are built for every QoS 1/2 message: fixed header bytes
# plus the packet id, without a packet object.
_PUBACK = struct.Struct(">BBH").pack
_PUBACK_BYTE, _PUBREC_BYTE, _PUBREL_BYTE, _PUBCOMP_BYTE = 0x40, 0x50, 0x62, 0x70

#: Stop reading from a publisher once this many acknowledgements wait for
#: storage; resume when half of them are written.
ACK_BACKLOG_PAUSE = 256


class SessionIO(Protocol):
    """What the session needs of its connection."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Close after writing what is buffered (e.g. after a CONNACK)."""

    def abort(self) -> None:
        """Close at once (protocol violation, takeover)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class SessionQueue(Protocol):
    """
    What the session uses of the subscriber queue the registry hands it
    (:class:`vmqtw.broker.queue.SubscriberQueue`); described here so this
    pure module does not import the broker.
    """

    #: Ids of incoming QoS 2 PUBLISHes answered with PUBREC, awaiting PUBREL.
    awaiting_rel: Set[int]

    @property
    def outlet(self) -> object:
        """The session delivering this queue's messages, or None."""

    def attach(self, outlet: "Session",
               readable: Optional[Callable[[Message], bool]] = None) -> None: ...

    def detach(self) -> None: ...

    def enqueue(self, message: Message, qos: int) -> Optional[Deferred]: ...

    def puback(self, packet_id: int) -> None: ...

    def pubrec(self, packet_id: int) -> None: ...

    def pubcomp(self, packet_id: int) -> None: ...


class SessionRegistry(Protocol):
    """
    What the session uses of the registry: registration, subscriptions,
    routing and retained messages.  A protocol rather than the concrete
    class, so the session depends on these calls only, whichever modules
    end up implementing them, and tests can pass small fakes.
    """

    @property
    def clock(self) -> IReactorTime:
        """For the timestamp of a will, published without a packet's ``now``."""

    def ready(self) -> bool:
        """False during a netsplit (the ``allow_*_during_netsplit`` flags)."""

    def coordinate(self, subscriber_id: SubscriberId) -> Optional[Deferred]:
        """
        None to register at once, or a Deferred firing with a lease once
        this CONNECT may register (registrations serialized cluster-wide).
        """

    def register(self, subscriber_id: SubscriberId, clean_session: bool,
                 session: Any, lease: Any = None) -> Tuple[SessionQueue, bool]:
        """Take the session of ``subscriber_id``: its queue, and whether it existed."""

    def unregister(self, subscriber_id: SubscriberId, session: Any,
                   clean_session: bool) -> None: ...

    def subscriptions(self, subscriber_id: SubscriberId) -> Dict[str, int]: ...

    def subscribe(self, subscriber_id: SubscriberId, clean_session: bool,
                  topics: Iterable[Tuple[str, int]]) -> Optional[Deferred]: ...

    def unsubscribe(self, subscriber_id: SubscriberId, clean_session: bool,
                    topics: Iterable[str]) -> None: ...

    def publish(self, message: Message,
                author: Optional[Tuple[str, Optional[str]]] = None) -> Optional[Deferred]:
        """Route ``message``; a Deferred when the acknowledgement must wait for storage."""

    def retained_matching(self, flt: str) -> Iterator[Tuple[Message, Any]]:
        """Retained messages for a new subscription, each with its author or None."""


@attrs.define(frozen=True, slots=True)
class SessionSettings:
    """The configuration a session consults, copied once from the Config."""

    max_client_id_size: int = 100
    topic_max_depth: int = 10
    #: Seconds; 0 = no cap on the client's keepalive.
    max_keepalive: int = 0
    max_subscriptions_per_client: int = 0
    mountpoint: str = ""
    #: TLS listeners with ``use_identity_as_username``: the verified client
    #: certificate's CN replaces the CONNECT user name.
    use_identity_as_username: bool = False
    #: What still works while the cluster is split (VerneMQ's flags; all
    #: off = consistency first).
    allow_register_during_netsplit: bool = False
    allow_publish_during_netsplit: bool = False
    allow_subscribe_during_netsplit: bool = False
    allow_unsubscribe_during_netsplit: bool = False


@attrs.define(slots=True, eq=False)
class MqttCounters:
    """
    What the sessions of one node received and sent, as plain integers:
    the hot path only adds one, and the metrics collector
    (:mod:`vmqtw.metrics`) reads them when it is scraped.  Names follow
    VerneMQ's ``mqtt_*`` metrics.
    """

    connect_received: int = 0
    #: CONNACKs sent, by return code (0 accepted .. 5 not authorized).
    connack_sent: List[int] = attrs.field(factory=lambda: [0] * 6)
    publish_received: int = 0
    publish_sent: int = 0
    puback_received: int = 0
    puback_sent: int = 0
    pubrec_received: int = 0
    pubrec_sent: int = 0
    pubrel_received: int = 0
    pubrel_sent: int = 0
    pubcomp_received: int = 0
    pubcomp_sent: int = 0
    subscribe_received: int = 0
    suback_sent: int = 0
    unsubscribe_received: int = 0
    unsuback_sent: int = 0
    pingreq_received: int = 0
    pingresp_sent: int = 0
    disconnect_received: int = 0
    #: PUBLISHes a client may not send (ACL, ``$`` topics): acknowledged, not routed.
    publish_denied: int = 0
    socket_open: int = 0
    socket_close: int = 0


@attrs.define(frozen=True, slots=True)
class ConnectInfo:
    """What an authenticator is told about a connecting client."""

    client_id: str
    username: Optional[str]
    password: Optional[bytes]
    peer: Any
    clean_session: bool
    #: The CN of a verified TLS client certificate when it is the user
    #: name (``use_identity_as_username``); the certificate is the proof,
    #: so no password is checked.
    identity: Optional[str] = None


class Authenticator(Protocol):
    """
    Decides CONNECT, PUBLISH and SUBSCRIBE.  ``authenticate`` may return a
    Deferred (password checks run a slow KDF off the reactor thread).
    """

    def authenticate(self, info: ConnectInfo) -> Any:
        """A CONNACK return code (0 accepts), or a Deferred firing with one."""

    def can_publish(self, client_id: str, username: Optional[str], topic: str) -> bool: ...

    def can_subscribe(self, client_id: str, username: Optional[str], flt: str) -> bool: ...

    #: Optional: ``can_read(client_id, username, topic) -> bool`` checked for
    #: every delivery, or None when reads are not restricted (no ACL).
    can_read: Optional[Callable[[str, Optional[str], str], bool]]


@attrs.define(slots=True)
class AnonymousGate:
    """
    The authenticator used when no auth plugin is on: it accepts every
    client while ``allow_anonymous`` is on; with it off nobody can be
    authenticated and every CONNECT gets CONNACK 5 (not authorized), as
    VerneMQ answers when no auth plugin accepts a client.
    """

    allow_anonymous: bool = False
    #: No ACL: every delivery is allowed.
    can_read: Optional[Callable[[str, Optional[str], str], bool]] = None

    def authenticate(self, info: ConnectInfo) -> int:
        return P.CONNACK_ACCEPTED if self.allow_anonymous else P.CONNACK_NOT_AUTHORIZED

    def can_publish(self, client_id: str, username: Optional[str], topic: str) -> bool:
        return True

    def can_subscribe(self, client_id: str, username: Optional[str], flt: str) -> bool:
        return True


class Session:
    """One connection's MQTT state; see the module docstring."""

    log = Logger()

    def __init__(self, io: SessionIO, registry: SessionRegistry, settings: SessionSettings,
                 authenticator: Authenticator, peer: Any = None,
                 on_connected: Optional[Callable[["Session"], None]] = None,
                 counters: Optional[MqttCounters] = None) -> None:
        self.io = io
        self.counters = counters if counters is not None else MqttCounters()
        self.registry = registry
        self.settings = settings
        self.authenticator = authenticator
        self.peer = peer
        self.on_connected = on_connected
        #: Set by the protocol for TLS connections: the verified client
        #: certificate's common name, or None.
        self.peer_identity: Optional[str] = None
        self.state = NEW
        self.client_id: str = ""
        self.subscriber_id: Optional[SubscriberId] = None
        self.username: Optional[str] = None
        self.clean_session = True
        self.protocol_level = 0
        #: Why the connection ends, when this side ends it (a protocol
        #: error, the keepalive, the listener closing); for the log line.
        self.close_reason: Optional[str] = None
        #: The keepalive in force, in seconds (0 = none); the connection is
        #: dropped after 1.5 times as long without a packet [MQTT-3.1.2-24].
        self.keepalive = 0
        self.will: Optional[P.Will] = None
        #: Set while connected (from CONNACK until the connection ends or
        #: is taken over); the packet handlers run only then.
        self.queue: Optional[SessionQueue] = None
        self.taken_over = False
        self._disconnected = False
        self._buffered: List[Any] = []
        self._acks: Deque[List[Any]] = deque()
        self._paused = False
        self._handlers: Dict[type, Callable[[Any, float], None]] = {
            P.Publish: self._on_publish,
            P.PubAck: self._on_puback,
            P.PubRec: self._on_pubrec,
            P.PubRel: self._on_pubrel,
            P.PubComp: self._on_pubcomp,
            P.Subscribe: self._on_subscribe,
            P.Unsubscribe: self._on_unsubscribe,
            P.PingReq: self._on_pingreq,
            P.Disconnect: self._on_disconnect,
        }

    # -- input ----------------------------------------------------------------

    def handle(self, packet: Any, now: float) -> None:
        """Act on one decoded packet from the client."""
        state = self.state
        if state == CONNECTED:
            handler = self._handlers.get(type(packet))
            if handler is None:
                # A second CONNECT [MQTT-3.1.0-2], or a packet only a server
                # sends (CONNACK, SUBACK, UNSUBACK, PINGRESP).
                self.violation("unexpected " + type(packet).__name__)
                return
            handler(packet, now)
        elif state == NEW:
            if type(packet) is not P.Connect:
                self.violation("first packet is not CONNECT")  # [MQTT-3.1.0-1]
                return
            self._on_connect(packet, now)
        elif state == CONNECTING:
            if type(packet) is P.Connect:
                self.violation("second CONNECT")
                return
            # Pipelined behind a CONNECT that is still being authenticated:
            # keep it, and stop reading more until the CONNECT is decided,
            # so a client cannot make us buffer without bound meanwhile.
            self._buffered.append(packet)
            if not self._paused:
                self._paused = True
                self.io.pause_reading()

    def violation(self, reason: str) -> None:
        """A protocol violation: close without answering; the will fires."""
        if self.state == CONNECTED:
            self.ending("protocol error: " + reason)   # said in the disconnect line
        else:
            self.log.info("closing {peer}: {reason}", peer=self.peer, reason=reason)
        self.io.abort()

    def ending(self, reason: str) -> None:
        """This side closes the connection because of ``reason`` (the first one given stays)."""
        if self.close_reason is None:
            self.close_reason = reason

    # -- CONNECT --------------------------------------------------------------

    def _on_connect(self, connect: P.Connect, now: float) -> None:
        self.counters.connect_received += 1
        self.protocol_level = connect.protocol_level
        settings = self.settings
        client_id = connect.client_id
        if not client_id:
            if not connect.clean_session:
                self._refuse(P.CONNACK_IDENTIFIER_REJECTED)  # [MQTT-3.1.3-8]
                return
            client_id = "vmqtw-" + os.urandom(12).hex()  # [MQTT-3.1.3-6]
        elif len(client_id) > settings.max_client_id_size:
            self._refuse(P.CONNACK_IDENTIFIER_REJECTED)  # [MQTT-3.1.3-9]
            return
        will = connect.will
        if will is not None and not validate_topic(will.topic, settings.topic_max_depth):
            self.violation("invalid will topic")
            return
        if not settings.allow_register_during_netsplit and not self.registry.ready():
            # A netsplit: a client id might be connected on the other side.
            self._refuse(P.CONNACK_SERVER_UNAVAILABLE)
            return
        username = connect.username
        password = connect.password
        identity = None
        if settings.use_identity_as_username:
            if self.peer_identity is None:
                self._refuse(P.CONNACK_NOT_AUTHORIZED)
                return
            identity = username = self.peer_identity
            password = None
        self.client_id = client_id
        self.subscriber_id = SubscriberId(settings.mountpoint, client_id)
        self.username = username
        self.clean_session = connect.clean_session
        keepalive = connect.keepalive
        if settings.max_keepalive and (keepalive == 0 or keepalive > settings.max_keepalive):
            keepalive = settings.max_keepalive
        self.keepalive = keepalive
        self.will = will
        self.state = CONNECTING
        info = ConnectInfo(client_id, username, password, self.peer, connect.clean_session,
                           identity)
        result = maybeDeferred(self.authenticator.authenticate, info)
        result.addCallbacks(self._authenticated, self._authentication_failed,
                            callbackArgs=(now,))

    def _authentication_failed(self, failure: Any) -> None:
        self.log.failure("authentication of {client_id} failed", failure,
                         client_id=self.client_id)
        if self.state == CONNECTING:
            self._refuse(P.CONNACK_SERVER_UNAVAILABLE)

    def _authenticated(self, return_code: int, now: float) -> None:
        if self.state != CONNECTING:
            return  # the connection went away meanwhile
        if return_code != P.CONNACK_ACCEPTED:
            self._refuse(return_code)
            return
        will = self.will
        if will is not None and (will.topic.startswith("$") or not self.authenticator.can_publish(
                self.client_id, self.username, will.topic)):
            self._refuse(P.CONNACK_NOT_AUTHORIZED)
            return
        assert self.subscriber_id is not None
        turn = self.registry.coordinate(self.subscriber_id)
        if turn is None:
            self._register(None, now)
        else:
            turn.addCallbacks(self._register, self._coordination_failed, callbackArgs=(now,))

    def _coordination_failed(self, failure: Any) -> None:
        self.log.info("registration of {client_id} not coordinated: {error}",
                      client_id=self.client_id, error=failure.getErrorMessage())
        if self.state == CONNECTING:
            self._refuse(P.CONNACK_SERVER_UNAVAILABLE)

    def _register(self, lease: Any, now: float) -> None:
        """Our turn to register (``lease``: the coordinator's, or None)."""
        if self.state != CONNECTING:
            if lease is not None:
                lease.release()   # the connection went away meanwhile
            return
        assert self.subscriber_id is not None
        queue, present = self.registry.register(self.subscriber_id, self.clean_session, self,
                                                lease)
        self.queue = queue
        self.state = CONNECTED
        self.io.write(encode(P.ConnAck(P.CONNACK_ACCEPTED, present)))
        self.counters.connack_sent[P.CONNACK_ACCEPTED] += 1
        peer = self.peer or (None, None)
        self.log.info("client {client_id} connected from {host}:{port} (MQTT level {protocol_level}, "
                      "{kind} session, session present: {present})",
                      client_id=self.client_id, host=peer[0], port=peer[1],
                      protocol_level=self.protocol_level,
                      kind="clean" if self.clean_session else "persistent", present=present)
        if self.on_connected is not None:
            self.on_connected(self)
        queue.attach(self, self._read_check())
        buffered, self._buffered = self._buffered, []
        for packet in buffered:
            if self.state != CONNECTED:
                break
            self.handle(packet, now)
        if self._paused and self.state == CONNECTED and len(self._acks) < ACK_BACKLOG_PAUSE // 2:
            self._paused = False
            self.io.resume_reading()

    def _read_check(self) -> Optional[Callable[[Message], bool]]:
        """
        The ACL's delivery-time check for this client, or None when reads
        are not restricted: a reload may narrow what was granted at
        SUBSCRIBE time (docs/bad-input.md, case 34).
        """
        can_read = getattr(self.authenticator, "can_read", None)
        if can_read is None:
            return None
        client_id, username = self.client_id, self.username
        return lambda message: can_read(client_id, username, message.topic)

    def _refuse(self, return_code: int) -> None:
        """CONNACK with an error code, then close [MQTT-3.2.2-5]."""
        self.state = CLOSED
        self.will = None
        self.io.write(encode(P.ConnAck(return_code, False)))
        if 0 <= return_code < len(self.counters.connack_sent):
            self.counters.connack_sent[return_code] += 1
        self.io.close()

    # -- the connection ends ----------------------------------------------------

    def take_over(self) -> None:
        """
        Another connection registered the same client id: leave the queue to
        it and close; the will is published as for any abnormal close.
        """
        self.taken_over = True
        if self.queue is not None and self.queue.outlet is self:
            self.queue.detach()
        self.queue = None
        self.io.abort()

    def close_by_admin(self) -> None:
        """
        ``vmqtw-admin session disconnect``: close the connection as a
        network failure would (the will is published, a persistent session
        stays).
        """
        self.ending("disconnected by vmqtw-admin")
        self.io.abort()

    def connection_lost(self) -> None:
        """
        The socket closed.  Publish the will unless the client said
        DISCONNECT [MQTT-3.1.2-8], [MQTT-3.14.4-3]; end or park the session.
        """
        state = self.state
        self.state = CLOSED
        if state != CONNECTED:
            return
        if self._disconnected:
            reason = "client DISCONNECT"
        elif self.taken_over:
            reason = "taken over by a new connection"
        else:
            reason = self.close_reason or "connection lost"
        peer = self.peer or (None, None)
        self.log.info("client {client_id} disconnected from {host}:{port}: {reason}",
                      client_id=self.client_id, host=peer[0], port=peer[1], reason=reason)
        will = self.will
        self.will = None
        if will is not None and not self._disconnected:
            kept = self.registry.publish(Message(new_message_ref(), will.topic, will.payload,
                                                 will.qos, will.retain, False,
                                                 self.registry.clock.seconds(),
                                                 self.settings.mountpoint))
            if kept is not None:
                # Nobody is left to resend a will the cluster could not take
                # (a peer's backlog full): say so instead of an unhandled error.
                kept.addErrback(self._will_lost, will.topic)
        if not self.taken_over and self.subscriber_id is not None:
            self.registry.unregister(self.subscriber_id, self, self.clean_session)
        self.queue = None

    def _will_lost(self, failure: Any, topic: str) -> None:
        self.log.warn("the will of {client_id} on {topic} is lost: {why}",
                      client_id=self.client_id, topic=topic, why=failure.getErrorMessage())

    # -- outlet for the subscriber queue -------------------------------------------

    def send_publish(self, message: Message, qos: int, packet_id: Optional[int],
                     dup: bool) -> None:
        self.counters.publish_sent += 1
        self.io.write(encode_publish(message.topic, message.payload, qos, message.retain,
                                     dup, packet_id))

    def send_pubrel(self, packet_id: int) -> None:
        self.counters.pubrel_sent += 1
        self.io.write(_PUBACK(_PUBREL_BYTE, 2, packet_id))

    # -- packets after CONNECT ---------------------------------------------------

    def _on_publish(self, publish: P.Publish, now: float) -> None:
        counters = self.counters
        counters.publish_received += 1
        if not self.settings.allow_publish_during_netsplit and not self.registry.ready():
            # No acknowledgement: the client resends once the cluster heals
            # (QoS 0 is lost), as VerneMQ does.
            return
        topic = publish.topic
        qos = publish.qos
        max_depth = self.settings.topic_max_depth
        if max_depth and topic.count("/") >= max_depth:
            self.violation("topic deeper than topic_max_depth")
            return
        queue = self.queue
        assert queue is not None  # only CONNECTED sessions handle PUBLISH
        if qos == 2 and publish.packet_id in queue.awaiting_rel:
            # A resend of a QoS 2 message already routed: answer, do not
            # route it again (exactly once) [MQTT-4.3.3-2].
            counters.pubrec_sent += 1
            self._acknowledge(None, _PUBACK(_PUBREC_BYTE, 2, publish.packet_id))
            return
        allowed = not topic.startswith("$") and self.authenticator.can_publish(
            self.client_id, self.username, topic)
        waiting = None
        if not allowed:
            counters.publish_denied += 1
        else:
            waiting = self.registry.publish(Message(
                new_message_ref(), topic, publish.payload, qos, publish.retain, False, now,
                self.settings.mountpoint),
                (self.client_id, self.username) if publish.retain else None)
        # A denied QoS 1/2 message is still acknowledged, as VerneMQ and the
        # ACL plugins do, so the client does not resend it forever.
        if qos == 1:
            counters.puback_sent += 1
            self._acknowledge(waiting, _PUBACK(_PUBACK_BYTE, 2, publish.packet_id))
        elif qos == 2:
            counters.pubrec_sent += 1
            assert publish.packet_id is not None  # the codec refuses QoS > 0 without one
            queue.awaiting_rel.add(publish.packet_id)
            if waiting is not None:
                waiting.addErrback(self._not_routed, publish.packet_id)
            self._acknowledge(waiting, _PUBACK(_PUBREC_BYTE, 2, publish.packet_id))

    def _acknowledge(self, waiting: Optional[Deferred], ack: bytes) -> None:
        """Write ``ack`` once ``waiting`` fired and every earlier ack is out."""
        acks = self._acks
        if waiting is None and not acks:
            self.io.write(ack)
            return
        entry = [waiting is None, ack]
        acks.append(entry)
        if waiting is not None:
            waiting.addCallbacks(self._ack_ready, self._ack_failed,
                                 callbackArgs=(entry,), errbackArgs=(entry,))
        if len(acks) >= ACK_BACKLOG_PAUSE and not self._paused:
            self._paused = True
            self.io.pause_reading()

    def _ack_ready(self, _: Any, entry: List[Any]) -> None:
        entry[0] = True
        self._flush_acks()

    def _not_routed(self, failure: Failure, packet_id: int) -> Failure:
        """
        A QoS 2 message that was not stored gets no PUBREC; its id must not
        stay "awaiting PUBREL", or the client's resend would be answered
        without being routed.
        """
        if self.queue is not None:
            self.queue.awaiting_rel.discard(packet_id)
        return failure

    def _ack_failed(self, failure: Failure, entry: List[Any]) -> None:
        # Never acknowledge what was not stored: the client resends it.
        if not failure.check(BacklogFull, StoreUnavailable):   # counted, or logged once
            self.log.failure("storing a message from {client_id} failed; not acknowledged",
                             failure, client_id=self.client_id)
        if entry[1][:1] == bytes([_PUBACK_BYTE]):
            self.counters.puback_sent -= 1      # counted when decided, never sent
        elif entry[1][:1] == bytes([_PUBREC_BYTE]):
            self.counters.pubrec_sent -= 1
        entry[0] = True
        entry[1] = b""
        self._flush_acks()

    def _flush_acks(self) -> None:
        acks = self._acks
        while acks and acks[0][0]:
            data = acks.popleft()[1]
            if data and self.state == CONNECTED:
                self.io.write(data)
        if self._paused and len(acks) < ACK_BACKLOG_PAUSE // 2:
            self._paused = False
            self.io.resume_reading()

    # The handlers below run only while CONNECTED, when ``queue`` is set.

    def _on_puback(self, packet: P.PubAck, now: float) -> None:
        self.counters.puback_received += 1
        queue = self.queue
        assert queue is not None
        queue.puback(packet.packet_id)

    def _on_pubrec(self, packet: P.PubRec, now: float) -> None:
        self.counters.pubrec_received += 1
        queue = self.queue
        assert queue is not None
        queue.pubrec(packet.packet_id)

    def _on_pubcomp(self, packet: P.PubComp, now: float) -> None:
        self.counters.pubcomp_received += 1
        queue = self.queue
        assert queue is not None
        queue.pubcomp(packet.packet_id)

    def _on_pubrel(self, packet: P.PubRel, now: float) -> None:
        """Release a QoS 2 id; PUBCOMP even for an unknown id [MQTT-4.3.3-2]."""
        queue = self.queue
        assert queue is not None
        queue.awaiting_rel.discard(packet.packet_id)
        self.counters.pubrel_received += 1
        self.counters.pubcomp_sent += 1
        self._acknowledge(None, _PUBACK(_PUBCOMP_BYTE, 2, packet.packet_id))

    def _on_subscribe(self, subscribe: P.Subscribe, now: float) -> None:
        self.counters.subscribe_received += 1
        self.counters.suback_sent += 1
        settings = self.settings
        if not settings.allow_subscribe_during_netsplit and not self.registry.ready():
            self.io.write(encode(P.SubAck(subscribe.packet_id,
                                          [P.SUBACK_FAILURE] * len(subscribe.topics))))
            return
        subscriber_id = self.subscriber_id
        queue = self.queue
        assert subscriber_id is not None and queue is not None
        existing = self.registry.subscriptions(subscriber_id)
        limit = settings.max_subscriptions_per_client
        granted: List[Tuple[str, int]] = []
        codes: List[int] = []
        for flt, qos in subscribe.topics:
            if (not validate_filter(flt, settings.topic_max_depth)
                    or parse_shared(flt) is not None
                    or not self.authenticator.can_subscribe(self.client_id, self.username, flt)
                    or (limit and flt not in existing and len(existing) >= limit)):
                codes.append(P.SUBACK_FAILURE)  # [MQTT-3.9.3-2]
                continue
            existing[flt] = qos
            granted.append((flt, qos))
            codes.append(qos)
        routed = None
        if granted:
            # Routed on this node at once; ``routed`` fires once every
            # reachable node routes the filter too, so that a publish
            # anywhere after the SUBACK reaches this subscriber.
            routed = self.registry.subscribe(subscriber_id, self.clean_session, granted)
        self._acknowledge(routed, encode(P.SubAck(subscribe.packet_id, codes)))
        if routed is None:
            self._send_retained(queue, granted)
        else:
            routed.addCallback(lambda _: self._send_retained(queue, granted))

    def _send_retained(self, queue: SessionQueue, granted: List[Tuple[str, int]]) -> None:
        if self.state != CONNECTED:
            return
        can_publish = self.authenticator.can_publish
        for flt, qos in granted:
            for message, author in self.registry.retained_matching(flt):
                # The author may have lost the right to publish it since
                # (CVE-2018-12546): such a retained message is not served.
                if author is not None and not can_publish(author[0], author[1], message.topic):
                    continue
                queue.enqueue(message, qos if qos < message.qos else message.qos)

    def _on_unsubscribe(self, unsubscribe: P.Unsubscribe, now: float) -> None:
        self.counters.unsubscribe_received += 1
        if (not self.settings.allow_unsubscribe_during_netsplit
                and not self.registry.ready()):
            return  # no UNSUBACK: the client resends after the split heals
        assert self.subscriber_id is not None
        self.registry.unsubscribe(self.subscriber_id, self.clean_session, unsubscribe.topics)
        self.counters.unsuback_sent += 1
        self.io.write(encode(P.UnsubAck(unsubscribe.packet_id)))

    def _on_pingreq(self, packet: P.PingReq, now: float) -> None:
        self.counters.pingreq_received += 1
        self.counters.pingresp_sent += 1
        self.io.write(_PINGRESP)

    def _on_disconnect(self, packet: P.Disconnect, now: float) -> None:
        self.counters.disconnect_received += 1
        self._disconnected = True
        self.will = None
        self.io.close()
