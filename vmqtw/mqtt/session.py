"""
The MQTT 3.1/3.1.1/5.0 session state machine of one connection.

Sans-IO: it receives decoded packets with the current time and answers
through a small :class:`SessionIO` (write bytes, close, pause/resume
reading), which the Twisted protocol implements and unit tests fake.  It
reaches the rest of the broker only through the registry (register,
subscribe, publish) and the subscriber queue the registry hands it.

Acknowledgements to a publisher are written in the order the PUBLISHes
arrived [MQTT-4.6.0-2], even when one of them must first wait for the
message store; while too many wait, reading from the socket pauses
(backpressure instead of unbounded buffering).

MQTT 5.0 (a level-5 CONNECT) takes its own branches, each behind one
``self.v5`` test so the 3.1.1 path allocates and checks nothing more:
reason codes in CONNACK, the acknowledgements and a server DISCONNECT;
CONNACK properties (assigned client identifier, server keep alive, receive
maximum, maximum packet size, topic alias maximum, and the features we do
not offer); the session expiry interval in place of clean session; topic
aliases from the client; PUBLISH properties passed on to subscribers with
the message expiry counted down; the client's receive maximum and maximum
packet size; retain handling; enhanced authentication (section 4.12) by
the methods plugins provide, at CONNECT and when the client
re-authenticates, any other method refused with 0x8C; topic aliases
towards the client (``topic_alias_max_broker``); PUBACK / PUBREC 0x97
Quota exceeded for a message the cluster refused (a peer's backlog full).
``max_message_rate`` slows a publisher of either level down.
"""
from __future__ import annotations

import math
import os
import struct
from collections import OrderedDict, deque
from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Protocol,
                    Set, Tuple)

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmqtw.errors import BacklogFull, StoreUnavailable
from vmqtw.mqtt import packets as P
from vmqtw.mqtt import reasons as R
from vmqtw.mqtt.codec import encode, encode_publish, encode_publish5
from vmqtw.mqtt.properties import encode_properties, encode_varint
from vmqtw.topic import matches as topic_matches
from vmqtw.topic import parse_shared, validate_filter, validate_topic
from vmqtw.types import Message, SubscriberId, new_message_ref

NEW, CONNECTING, CONNECTED, CLOSED = range(4)

#: ``_EnhancedAuth.exchange`` while the authenticator works on a step.
_IN_FLIGHT = object()

#: Pre-encoded packets that never change.
_PINGRESP = encode(P.PingResp())

# Acknowledgements are built for every QoS 1/2 message: fixed header bytes
# plus the packet id, without a packet object.
_PUBACK = struct.Struct(">BBH").pack
#: The same with an MQTT 5.0 reason code (and no properties).
_PUBACK5 = struct.Struct(">BBHB").pack

#: An empty property set, to tell one left empty by removing a topic alias.
_NO_PROPERTIES = P.Properties()
_PUBACK_BYTE, _PUBREC_BYTE, _PUBREL_BYTE, _PUBCOMP_BYTE = 0x40, 0x50, 0x62, 0x70
#: The first byte of the acknowledgements a refused publish may get.
_ACK_KINDS = (bytes([_PUBACK_BYTE]), bytes([_PUBREC_BYTE]))

#: Stop reading from a publisher once this many acknowledgements wait for
#: storage; resume when half of them are written.
ACK_BACKLOG_PAUSE = 256

#: Seconds a server DISCONNECT may take to reach an MQTT 5.0 client before
#: the connection is aborted anyway.
DISCONNECT_GRACE = 5.0

#: The session expiry interval meaning "never" (MQTT 5.0, 3.1.2.11.2).
EXPIRY_NEVER = 0xFFFFFFFF

#: The MQTT 5.0 CONNACK reason code for each 3.1.1 return code an
#: authenticator or the session gives (section 3.2.2.2).
_CONNACK5 = {
    P.CONNACK_UNACCEPTABLE_PROTOCOL_VERSION: R.UNSUPPORTED_PROTOCOL_VERSION,
    P.CONNACK_IDENTIFIER_REJECTED: R.CLIENT_IDENTIFIER_NOT_VALID,
    P.CONNACK_SERVER_UNAVAILABLE: R.SERVER_UNAVAILABLE,
    P.CONNACK_BAD_USERNAME_OR_PASSWORD: R.BAD_USER_NAME_OR_PASSWORD,
    P.CONNACK_NOT_AUTHORIZED: R.NOT_AUTHORIZED,
}


class _PropertyBlocks:
    """
    The encoded property block of the last PUBLISH properties sent: a
    message fanned out to many MQTT 5.0 subscribers is delivered to them one
    after another with the same (never changed) Properties object, so one
    entry, keyed by identity and holding the object (its id cannot be
    reused meanwhile), saves all encodings but the first.
    """

    __slots__ = ("props", "encoded")

    def __init__(self) -> None:
        self.props: Optional[P.Properties] = None
        self.encoded = b""

    def block(self, props: P.Properties) -> bytes:
        if props is not self.props:
            self.encoded = encode_properties(props, P.PUBLISH)
            self.props = props
        return self.encoded


_BLOCKS = _PropertyBlocks()

_ALIAS = struct.Struct(">BH").pack
#: alias -> the property block holding only that topic alias.
_ALIAS_BLOCKS: Dict[int, bytes] = {}


def _with_alias(block: bytes, alias: int) -> bytes:
    """
    A PUBLISH property block (length first) with a topic alias added in
    front: the other properties stay encoded as they were, in order, so a
    message fanned out keeps its one shared encoding.
    """
    length = 0
    shift = 0
    pos = 0
    while True:
        byte = block[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    return b"".join((encode_varint(length + 3), _ALIAS(0x23, alias), block[pos:]))


class SessionIO(Protocol):
    """What the session needs of its connection."""

    def write(self, data: bytes) -> None: ...

    def close(self, grace: Optional[float] = None) -> None:
        """
        Close after writing what is buffered (e.g. after a CONNACK); with
        ``grace``, abort if that takes longer (a peer that stopped reading).
        """

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
               readable: Optional[Callable[[Message], bool]] = None,
               receive_maximum: int = 0) -> None: ...

    def discard(self) -> None: ...

    def drop_too_large(self, packet_id: Optional[int]) -> None: ...

    def pause_sending(self) -> None: ...

    def resume_sending(self) -> None: ...

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
                 session: Any, lease: Any = None,
                 session_expiry: Optional[float] = None) -> Tuple[SessionQueue, bool]:
        """
        Take the session of ``subscriber_id``: its queue, and whether it
        existed.  ``session_expiry``: an MQTT 5.0 session's (seconds,
        ``math.inf`` = never), kept with the session from now on.
        """

    def unregister(self, subscriber_id: SubscriberId, session: Any,
                   clean_session: bool, session_expiry: Optional[float] = None) -> None:
        """
        The connection is gone.  An MQTT 5.0 session passes its
        ``session_expiry`` (seconds; ``math.inf`` = never) to replace
        ``persistent_client_expiration``; None keeps that.
        """

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

    @property
    def unmatched(self) -> int:
        """How many routed messages matched no subscription so far."""

    def delay_will(self, subscriber_id: SubscriberId, delay: float,
                   publish: Callable[[], Any]) -> None:
        """MQTT 5.0: ``publish()`` after ``delay`` unless the client id comes back."""


@attrs.define(slots=True)
class SessionSettings:
    """
    The configuration a session consults, copied once from the Config.
    Not frozen: ``vmqtw-admin set`` changes the netsplit flags of a running
    node here (:mod:`vmqtw.admin.settings`), and sessions read them at use.
    """

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
    #: ``listener.allowed_protocol_versions``: protocol levels a CONNECT
    #: may name (3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0).
    protocol_versions: Tuple[int, ...] = (3, 4, 5)
    #: ``max_message_size`` (0 = none), announced to MQTT 5.0 clients as
    #: their maximum packet size.
    max_message_size: int = 0
    #: ``topic_alias_max_client``: the highest topic alias an MQTT 5.0
    #: client may use (0 = none), announced in CONNACK.
    topic_alias_max_client: int = 0
    #: ``topic_alias_max_broker``: the most topic aliases we use towards an
    #: MQTT 5.0 client (0 = none), within the client's topic alias maximum.
    topic_alias_max_broker: int = 0
    #: ``receive_max_broker``: QoS 1/2 PUBLISHes an MQTT 5.0 client may
    #: have unacknowledged towards us, announced in CONNACK.
    receive_max_broker: int = 65535
    #: MQTT 5.0 enhanced authentication: Authentication Method -> its
    #: :class:`~vmqtw.interfaces.IEnhancedAuthenticator` (the plugins of
    #: ``enhanced_auth.plugins``); a method not here gets 0x8C.
    enhanced_auth: Dict[str, Any] = attrs.field(factory=dict)
    #: ``max_message_rate``: PUBLISHes per second one client may send
    #: before reading from it pauses for the rest of the second (0 = no
    #: limit).
    max_message_rate: int = 0


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


def _routed_filter(flt: str) -> str:
    """The filter a subscription matches topics with: a shared one's own
    (``$share/<group>/<filter>``), so its identifier is sent too."""
    shared = parse_shared(flt) if flt.startswith("$share/") else None
    return flt if shared is None else shared[1]


class _RateWindow:
    """
    ``max_message_rate`` for one client: the second being counted, its
    PUBLISHes so far, and the call that resumes reading once a throttled
    second is over.  Made only when a rate is set.
    """

    __slots__ = ("second", "count", "throttle")

    def __init__(self) -> None:
        self.second = 0
        self.count = 0
        self.throttle: Optional[IDelayedCall] = None


class _EnhancedAuth:
    """
    A session's MQTT 5.0 enhanced authentication (section 4.12), made only
    for a client that names a method at CONNECT: the method and the plugin
    that speaks it, the exchange waiting for the client's next AUTH 0x18
    (``waiting``; None while no step is asked of it), and the data the last
    successful step gives the client.  Apart from the session, so that the
    sessions of every other client carry one slot for it, not five.
    """

    __slots__ = ("method", "authenticator", "exchange", "waiting", "data")

    def __init__(self, method: str, authenticator: Any) -> None:
        self.method = method
        self.authenticator = authenticator
        self.exchange: Any = None
        self.waiting = False
        self.data: Optional[bytes] = None


class Session:
    """One connection's MQTT state; see the module docstring."""

    log = Logger()

    # One per connection, idle or not: slots keep an idle one small (with
    # more than 30 attributes its __dict__ alone took 1.5 KB).  A new
    # attribute must be named here.
    __slots__ = (
        "io", "counters", "registry", "settings", "authenticator", "peer", "on_connected",
        "peer_identity", "state", "client_id", "subscriber_id", "username", "clean_session",
        "protocol_level", "close_reason", "keepalive", "will", "queue", "taken_over", "level",
        "v5", "session_expiry", "max_send_size", "_sub_ids", "aliases", "_connect_props",
        "_requested_keepalive", "_assigned_id", "_will_on_disconnect", "_disconnected",
        "_buffered", "_acks", "_paused", "_handlers", "_alias_max", "_out_aliases",
        "_rate", "_eauth")

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
        #: 4 for MQTT 3.1 and 3.1.1 (same packets), 5 for MQTT 5.0.
        self.level = P.PROTOCOL_LEVEL_311
        #: ``level == 5``, the one test on the per-packet paths.
        self.v5 = False
        #: MQTT 5.0: the session expiry interval in force (seconds).
        self.session_expiry = 0
        #: MQTT 5.0: the client's maximum packet size (0 = none given).
        self.max_send_size = 0
        #: MQTT 5.0: filter -> subscription identifier, for the filters
        #: that have one (the records hold them too; this is the session's
        #: copy, read on every delivery to it).
        #: Made on first use: most clients never use identifiers.
        self._sub_ids: Optional[Dict[str, int]] = None
        #: MQTT 5.0: topic alias -> topic, set by the client's PUBLISHes.
        self.aliases: Optional[Dict[int, str]] = None
        #: MQTT 5.0: how many topic aliases we may use towards the client:
        #: min(its topic alias maximum, ``topic_alias_max_broker``).
        self._alias_max = 0
        #: topic -> alias we gave it on this connection, least recently
        #: used first (see :meth:`_send_publish5`); made when aliases are
        #: on (an empty OrderedDict on every connection cost 128 bytes).
        self._out_aliases: "Optional[OrderedDict[str, int]]" = None
        self._connect_props: Optional[P.Properties] = None
        self._requested_keepalive = 0
        self._assigned_id = False
        #: MQTT 5.0 enhanced authentication (section 4.12); None when the
        #: client chose no method at CONNECT, so any AUTH is a protocol
        #: error.
        self._eauth: Optional[_EnhancedAuth] = None
        #: MQTT 5.0: a DISCONNECT other than 0x00 keeps the will.
        self._will_on_disconnect = False
        self._disconnected = False
        #: Packets pipelined behind a CONNECT being decided; None when none.
        self._buffered: Optional[List[Any]] = None
        #: Acknowledgements waiting for the message store (or behind one
        #: that does), in order; made on first use, as most clients never
        #: need it and an empty deque costs 600 bytes per connection.
        self._acks: Optional[Deque[List[Any]]] = None
        self._paused = False
        #: ``max_message_rate``: this client's count, made on its first
        #: PUBLISH when a rate is set.
        self._rate: Optional[_RateWindow] = None
        #: The packet handlers for this client's protocol level: a table
        #: shared by every session (see _HANDLERS below the class).
        self._handlers = _HANDLERS

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
            handler(self, packet, now)
        elif state == NEW:
            if type(packet) is not P.Connect:
                self.violation("first packet is not CONNECT")  # [MQTT-3.1.0-1]
                return
            self._on_connect(packet, now)
        elif state == CONNECTING:
            if type(packet) is P.Connect:
                self.violation("second CONNECT")
                return
            if self._eauth is not None:
                self._during_connect_auth(packet, now)
                return
            # Pipelined behind a CONNECT that is still being authenticated:
            # keep it, and stop reading more until the CONNECT is decided,
            # so a client cannot make us buffer without bound meanwhile.
            if self._buffered is None:
                self._buffered = []
            self._buffered.append(packet)
            if not self._paused:
                self._paused = True
                self.io.pause_reading()

    def violation(self, reason: str, code: int = R.PROTOCOL_ERROR) -> None:
        """
        A protocol violation: close; the will fires.  An MQTT 5.0 client
        connected is told why first, with DISCONNECT and ``code``
        (section 4.13.2); a 3.1.1 one gets no answer [MQTT-4.8.0-1].
        """
        if self.state == CONNECTED:
            self.ending("protocol error: " + reason)   # said in the disconnect line
        else:
            self.log.info("closing {peer}: {reason}", peer=self.peer, reason=reason)
        if self.v5 and self.state == CONNECTED:
            self.disconnect(code)
            return
        self.io.abort()

    def ending(self, reason: str) -> None:
        """This side closes the connection because of ``reason`` (the first one given stays)."""
        if self.close_reason is None:
            self.close_reason = reason

    def disconnect(self, code: int, reason: Optional[str] = None) -> None:
        """
        The server ends an MQTT 5.0 connection with DISCONNECT and a reason
        code (keep alive timeout, takeover, shutdown, protocol error), then
        closes after writing it; a 3.1.1 connection is just aborted.
        ``reason`` is what the disconnect line of the log says.
        """
        if reason is not None:
            self.ending(reason)
        if self.v5 and self.state == CONNECTED:
            self.io.write(encode(P.Disconnect(code), P.PROTOCOL_LEVEL_5))
            # A dead peer (keep alive timeout) never takes the bytes: the
            # connection must still end, and its will go, soon.
            self.io.close(DISCONNECT_GRACE)
        else:
            self.io.abort()

    # -- CONNECT --------------------------------------------------------------

    def _on_connect(self, connect: P.Connect, now: float) -> None:
        self.counters.connect_received += 1
        self.protocol_level = connect.protocol_level
        settings = self.settings
        level = connect.protocol_level
        if level == P.PROTOCOL_LEVEL_5:
            self.level = level
            self.v5 = True
            # Level-5 handlers where the packet differs: the 3.1.1 ones
            # stay free of level tests.
            self._handlers = _HANDLERS5
            if not self._connect5(connect):
                return
        if level not in settings.protocol_versions:
            # [MQTT-3.1.2-2]; a level-5 CONNECT only gets here when the
            # listener does not allow 5 while its decoder does (never).
            self._refuse(P.CONNACK_UNACCEPTABLE_PROTOCOL_VERSION)
            return
        client_id = connect.client_id
        if not client_id:
            if not connect.clean_session and not self.v5:
                self._refuse(P.CONNACK_IDENTIFIER_REJECTED)  # [MQTT-3.1.3-8]
                return
            # [MQTT-3.1.3-6]; MQTT 5.0 also with clean start 0 (the new id
            # names no earlier session), told in CONNACK [MQTT-3.2.2-16].
            client_id = "vmqtw-" + os.urandom(12).hex()
            self._assigned_id = True
        elif len(client_id) > settings.max_client_id_size:
            self._refuse(P.CONNACK_IDENTIFIER_REJECTED)  # [MQTT-3.1.3-9]
            return
        will = connect.will
        if will is not None and not validate_topic(will.topic, settings.topic_max_depth):
            if self.v5:
                self._refuse(R.TOPIC_NAME_INVALID)   # 3.2.2.2
            else:
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
        keepalive = self._requested_keepalive = connect.keepalive
        if settings.max_keepalive and (keepalive == 0 or keepalive > settings.max_keepalive):
            # At level 5 the client is told in CONNACK (server keep alive).
            keepalive = settings.max_keepalive
        self.keepalive = keepalive
        self.will = will
        self.state = CONNECTING
        info = ConnectInfo(client_id, username, password, self.peer, connect.clean_session,
                           identity)
        if self._eauth is not None:
            # The method is the proof: it replaces the password check.
            props = self._connect_props
            data = props.authentication_data if props is not None else None
            step = maybeDeferred(self._eauth.authenticator.begin, info, data)
            step.addCallbacks(self._connect_auth_step, self._authentication_failed,
                              callbackArgs=(now,))
            return
        result = maybeDeferred(self.authenticator.authenticate, info)
        result.addCallbacks(self._authenticated, self._authentication_failed,
                            callbackArgs=(now,))

    def _connect5(self, connect: P.Connect) -> bool:
        """
        Read the CONNECT properties of an MQTT 5.0 client; False when it was
        refused.
        """
        props = self._connect_props = connect.properties
        if props is None:
            return True
        method = props.authentication_method
        if method is not None:
            # Enhanced authentication (section 4.12): a method no plugin
            # speaks is refused [MQTT-4.12.0-1's counterpart, 3.2.2.2.19].
            enhanced = self.settings.enhanced_auth.get(method)
            if enhanced is None:
                self._refuse(R.BAD_AUTHENTICATION_METHOD)
                return False
            self._eauth = _EnhancedAuth(method, enhanced)
        expiry = props.session_expiry_interval
        if expiry is not None:
            self.session_expiry = expiry
        if props.maximum_packet_size is not None:
            self.max_send_size = props.maximum_packet_size
        if props.topic_alias_maximum:
            # [MQTT-3.3.2-11]: never above what the client accepts.
            self._alias_max = min(props.topic_alias_maximum,
                                  self.settings.topic_alias_max_broker)
            if self._alias_max:
                self._out_aliases = OrderedDict()
        return True

    def _connack5(self, present: bool) -> bytes:
        """CONNACK 0x00 of an MQTT 5.0 client, with what it must know of us."""
        settings = self.settings
        props = P.Properties()
        if self._assigned_id:
            props.assigned_client_identifier = self.client_id
        if settings.max_keepalive and self.keepalive != self._requested_keepalive:
            props.server_keep_alive = self.keepalive   # [MQTT-3.2.2-21]
        if settings.receive_max_broker < 65535:
            props.receive_maximum = settings.receive_max_broker
        if settings.max_message_size:
            props.maximum_packet_size = settings.max_message_size
        if settings.topic_alias_max_client:
            props.topic_alias_maximum = settings.topic_alias_max_client
        # Said outright, though absence means the same (3.2.2.3.18).
        props.shared_subscription_available = 1
        eauth = self._eauth
        if eauth is not None:
            props.authentication_method = eauth.method   # 3.2.2.3.17
            if eauth.data is not None:
                props.authentication_data = eauth.data
        return encode(P.ConnAck(R.SUCCESS, present, props), P.PROTOCOL_LEVEL_5)

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
        if self.v5:
            queue, present = self._register5(lease)
        else:
            queue, present = self.registry.register(self.subscriber_id, self.clean_session,
                                                    self, lease)
        self.queue = queue
        self.state = CONNECTED
        if self.v5:
            self.io.write(self._connack5(present))
            self.aliases = {}
            if present:
                # A resumed session's subscription identifiers.
                for flt, value in self.registry.subscriptions(self.subscriber_id).items():
                    if value >> 8:
                        self._identifiers()[flt] = value >> 8
        else:
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
        receive_maximum = 0
        if self.v5 and self._connect_props is not None:
            receive_maximum = self._connect_props.receive_maximum or 0
        queue.attach(self, self._read_check(), receive_maximum)
        buffered, self._buffered = self._buffered or [], None
        for packet in buffered:
            if self.state != CONNECTED:
                break
            self.handle(packet, now)
        if (self._paused and self.state == CONNECTED
                and len(self._acks or ()) < ACK_BACKLOG_PAUSE // 2):
            self._paused = False
            if not self._throttled():
                self.io.resume_reading()

    def _register5(self, lease: Any) -> Tuple[SessionQueue, bool]:
        """
        Register an MQTT 5.0 session.  The registry knows 3.1.1's clean
        session, which is two things at level 5 [MQTT-3.1.2-4..6]: clean
        start (discard the session there was) and a session expiry of 0
        (the session ends with the connection).  Registered persistent
        unless both hold; a clean start with an expiry discards what it
        found itself; an expiry of 0 without a clean start resumes the
        session and ends it at :meth:`connection_lost`.
        """
        assert self.subscriber_id is not None
        subscriber_id = self.subscriber_id
        clean_start = self.clean_session
        ends = self.session_expiry == 0
        self.clean_session = clean_start and ends
        expiry = self.session_expiry
        queue, present = self.registry.register(
            subscriber_id, self.clean_session, self, lease,
            math.inf if expiry == EXPIRY_NEVER else float(expiry))
        if clean_start and present:
            queue.discard()
            old = list(self.registry.subscriptions(subscriber_id))
            if old:
                self.registry.unsubscribe(subscriber_id, False, old)
            present = False
        return queue, present

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
        """
        CONNACK with an error code, then close [MQTT-3.2.2-5]; at level 5
        the 3.1.1 code is given as its reason code [MQTT-3.2.2-7].
        """
        self.state = CLOSED
        self.will = None
        if self.v5:
            code = _CONNACK5.get(return_code, return_code)
            if code not in R.CONNACK_CODES:
                code = R.UNSPECIFIED_ERROR
            self.io.write(encode(P.ConnAck(code, False), P.PROTOCOL_LEVEL_5))
        else:
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
        self.disconnect(R.SESSION_TAKEN_OVER)

    def close_by_admin(self) -> None:
        """
        ``vmqtw-admin session disconnect``: close the connection as a
        network failure would (the will is published, a persistent session
        stays).
        """
        self.disconnect(R.ADMINISTRATIVE_ACTION, "disconnected by vmqtw-admin")

    def connection_lost(self) -> None:
        """
        The socket closed.  Publish the will unless the client said
        DISCONNECT [MQTT-3.1.2-8], [MQTT-3.14.4-3]; end or park the session.
        """
        state = self.state
        self.state = CLOSED
        rate = self._rate
        if rate is not None and rate.throttle is not None:
            if rate.throttle.active():
                rate.throttle.cancel()
            rate.throttle = None
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
        if will is not None and (not self._disconnected or self._will_on_disconnect):
            delay = 0.0
            if will.properties is not None and will.properties.will_delay_interval:
                # [MQTT-3.1.3-9]: the will waits for its delay, or until the
                # session ends if that comes first; a client back in time
                # (this takeover included) cancels it.
                expiry = self.session_expiry
                delay = float(min(will.properties.will_delay_interval,
                                  math.inf if expiry == EXPIRY_NEVER else expiry))
            if delay <= 0:
                self._publish_will(will)
            elif not self.taken_over and self.subscriber_id is not None:
                self.registry.delay_will(self.subscriber_id, delay,
                                         lambda: self._publish_will(will))
        if not self.taken_over and self.subscriber_id is not None:
            if self.v5:
                expiry = self.session_expiry
                self.registry.unregister(self.subscriber_id, self, expiry == 0,
                                         math.inf if expiry == EXPIRY_NEVER else float(expiry))
            else:
                self.registry.unregister(self.subscriber_id, self, self.clean_session)
        self.queue = None

    def _publish_will(self, will: P.Will) -> None:
        kept = self.registry.publish(Message(new_message_ref(), will.topic, will.payload,
                                             will.qos, will.retain, False,
                                             self.registry.clock.seconds(),
                                             self.settings.mountpoint, None,
                                             self._will_properties(will)))
        if kept is not None:
            # Nobody is left to resend a will the cluster could not take
            # (a peer's backlog full): say so instead of an unhandled error.
            kept.addErrback(self._will_lost, will.topic)

    @staticmethod
    def _will_properties(will: P.Will) -> Optional[P.Properties]:
        """What of a will's properties its message carries (not the delay)."""
        props = will.properties
        if props is None or props.will_delay_interval is None:
            return props
        props = attrs.evolve(props, will_delay_interval=None)
        return None if props == P.Properties() else props

    def _will_lost(self, failure: Any, topic: str) -> None:
        self.log.warn("the will of {client_id} on {topic} is lost: {why}",
                      client_id=self.client_id, topic=topic, why=failure.getErrorMessage())

    # -- outlet for the subscriber queue -------------------------------------------

    def send_publish(self, message: Message, qos: int, packet_id: Optional[int],
                     dup: bool) -> None:
        self.counters.publish_sent += 1
        if self.v5:
            if message.properties is not None or self._sub_ids or self.max_send_size:
                self._send_publish5(message, qos, packet_id, dup)
            elif self._alias_max:
                self._send_aliased(message, qos, packet_id, dup)
            else:
                self.io.write(encode_publish5(message.topic, message.payload, qos,
                                              message.retain, dup, packet_id))
            return
        self.io.write(encode_publish(message.topic, message.payload, qos, message.retain,
                                     dup, packet_id))

    def _send_aliased(self, message: Message, qos: int, packet_id: Optional[int],
                      dup: bool) -> None:
        """
        :meth:`_send_publish5` for the common case with topic aliases on: a
        message without properties, no identifiers, no size limit -- the
        property block is the alias alone, encoded once per alias value.
        """
        topic = message.topic
        aliases = self._out_aliases
        assert aliases is not None   # only called with aliases on
        alias = aliases.get(topic)
        if alias is not None:
            aliases.move_to_end(topic)
            topic = ""   # [MQTT-3.3.2-12]
        else:
            if len(aliases) < self._alias_max:
                alias = len(aliases) + 1
            else:
                alias = aliases.popitem(last=False)[1]
            aliases[topic] = alias
        block = _ALIAS_BLOCKS.get(alias)
        if block is None:
            block = _ALIAS_BLOCKS[alias] = _with_alias(b"\x00", alias)
        self.io.write(encode_publish5(topic, message.payload, qos, message.retain, dup,
                                      packet_id, None, block))

    def _send_publish5(self, message: Message, qos: int, packet_id: Optional[int],
                       dup: bool) -> None:
        """
        A PUBLISH to an MQTT 5.0 client: the publisher's properties unchanged
        and in order [MQTT-3.3.2-17/18], [MQTT-3.3.2-20], the message expiry
        interval lowered by the time the message waited here [MQTT-3.3.2-6];
        dropped (counted) when larger than the client's maximum packet size
        [MQTT-3.1.2-25].
        """
        props = message.properties
        if props is not None and props.message_expiry_interval is not None:
            waited = int(self.registry.clock.seconds() - message.timestamp)
            if waited > 0:
                props = attrs.evolve(
                    props, message_expiry_interval=max(1, props.message_expiry_interval - waited))
        if self._sub_ids:
            # Every matching subscription's identifier [MQTT-3.3.4-3/4/5].
            topic = message.topic
            ids = tuple(sorted(sub_id for flt, sub_id in self._sub_ids.items()
                               if topic_matches(_routed_filter(flt), topic)))
            if ids:
                props = (P.Properties(subscription_identifiers=ids) if props is None
                         else attrs.evolve(props, subscription_identifiers=ids))
        if props is None:
            block = b"\x00"
        elif props is message.properties:
            # The publisher's properties unchanged: encoded once for every
            # subscriber of this message (see _PropertyBlocks).
            block = _BLOCKS.block(props)
        else:
            block = encode_properties(props, P.PUBLISH)
        topic = message.topic
        alias = 0
        aliases = self._out_aliases
        if aliases is not None:
            alias = aliases.get(topic, 0)
            if alias:
                # The client knows it: the alias alone [MQTT-3.3.2-12].
                topic = ""
            elif len(aliases) < self._alias_max:
                alias = len(aliases) + 1
            else:
                # All taken: the least recently used one changes topic.
                alias = aliases[next(iter(aliases))]
            block = _with_alias(block, alias)
        data = encode_publish5(topic, message.payload, qos, message.retain, dup,
                               packet_id, None, block)
        if self.max_send_size and len(data) > self.max_send_size:
            # Not sent: a new alias is not taken either, since the client
            # never learns it.
            if self.queue is not None:
                self.queue.drop_too_large(packet_id)
            return
        if alias:
            assert aliases is not None
            if topic:
                if len(aliases) >= self._alias_max:
                    aliases.popitem(last=False)
                aliases[topic] = alias
            else:
                aliases.move_to_end(message.topic)
        self.io.write(data)

    def _identifiers(self) -> Dict[str, int]:
        """filter -> subscription identifier (see ``_sub_ids``), made on first use."""
        ids = self._sub_ids
        if ids is None:
            ids = self._sub_ids = {}
        return ids

    def sending_paused(self) -> None:
        """The connection cannot take more for now (see SubscriberQueue.pause_sending)."""
        if self.queue is not None:
            self.queue.pause_sending()

    def sending_resumed(self) -> None:
        if self.queue is not None:
            self.queue.resume_sending()

    def send_pubrel(self, packet_id: int) -> None:
        self.counters.pubrel_sent += 1
        self.io.write(_PUBACK(_PUBREL_BYTE, 2, packet_id))

    # -- packets after CONNECT ---------------------------------------------------

    def _on_publish(self, publish: P.Publish, now: float) -> None:
        counters = self.counters
        counters.publish_received += 1
        if self.settings.max_message_rate:
            self._count_rate(now)
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

    def _on_publish5(self, publish: P.Publish, now: float) -> None:
        """
        :meth:`_on_publish` at level 5: topic aliases resolved, properties
        passed on, reason codes in PUBACK / PUBREC, the receive maximum we
        announced enforced.
        """
        counters = self.counters
        counters.publish_received += 1
        if self.settings.max_message_rate:
            self._count_rate(now)
        if not self.settings.allow_publish_during_netsplit and not self.registry.ready():
            return
        topic = publish.topic
        qos = publish.qos
        props = publish.properties
        if props is not None:
            resolved = self._publish_properties(topic, props)
            if resolved is None:
                return
            topic, props = resolved
        max_depth = self.settings.topic_max_depth
        if max_depth and topic.count("/") >= max_depth:
            self.violation("topic deeper than topic_max_depth", R.TOPIC_NAME_INVALID)
            return
        queue = self.queue
        assert queue is not None  # only CONNECTED sessions handle PUBLISH
        if (qos and len(self._acks or ()) + len(queue.awaiting_rel)
                >= self.settings.receive_max_broker
                and publish.packet_id not in queue.awaiting_rel):
            # More unacknowledged QoS 1/2 PUBLISHes than the receive
            # maximum we announced [MQTT-3.3.4-8].
            self.violation("receive maximum exceeded", R.RECEIVE_MAXIMUM_EXCEEDED)
            return
        if qos == 2 and publish.packet_id in queue.awaiting_rel:
            # A resend of a QoS 2 message already routed: answer, do not
            # route it again (exactly once) [MQTT-4.3.3-2].
            counters.pubrec_sent += 1
            self._acknowledge(None, _PUBACK(_PUBREC_BYTE, 2, publish.packet_id))
            return
        allowed = not topic.startswith("$") and self.authenticator.can_publish(
            self.client_id, self.username, topic)
        waiting = None
        matched = True
        if not allowed:
            counters.publish_denied += 1
        else:
            unmatched = self.registry.unmatched
            waiting = self.registry.publish(Message(
                new_message_ref(), topic, publish.payload, qos, publish.retain, False, now,
                self.settings.mountpoint, None, props),
                # Always: the router also needs it for "no local".
                (self.client_id, self.username))
            matched = self.registry.unmatched == unmatched
        # Refused: told it was not authorized (0x87), acknowledged anyway.
        if qos == 1:
            counters.puback_sent += 1
            if not matched:
                ack = _PUBACK5(_PUBACK_BYTE, 3, publish.packet_id, R.NO_MATCHING_SUBSCRIBERS)
            elif allowed:
                ack = _PUBACK(_PUBACK_BYTE, 2, publish.packet_id)
            else:
                ack = _PUBACK5(_PUBACK_BYTE, 3, publish.packet_id, R.NOT_AUTHORIZED)
            self._acknowledge(waiting, ack)
        elif qos == 2:
            counters.pubrec_sent += 1
            assert publish.packet_id is not None  # the codec refuses QoS > 0 without one
            if not matched:
                queue.awaiting_rel.add(publish.packet_id)
                ack = _PUBACK5(_PUBREC_BYTE, 3, publish.packet_id, R.NO_MATCHING_SUBSCRIBERS)
            elif allowed:
                queue.awaiting_rel.add(publish.packet_id)
                ack = _PUBACK(_PUBREC_BYTE, 2, publish.packet_id)
            else:
                # A PUBREC with an error code ends the exchange [MQTT-4.3.3-4]
                # (no PUBREL follows).
                ack = _PUBACK5(_PUBREC_BYTE, 3, publish.packet_id, R.NOT_AUTHORIZED)
            if waiting is not None:
                waiting.addErrback(self._not_routed, publish.packet_id)
            self._acknowledge(waiting, ack)

    def _publish_properties(self, topic: str, props: P.Properties
                            ) -> Optional[Tuple[str, Optional[P.Properties]]]:
        """
        An MQTT 5.0 PUBLISH's topic alias resolved (or set) and removed from
        the properties passed on [MQTT-3.3.2-12]; None after a violation.
        """
        if props.subscription_identifiers:
            self.violation("subscription identifier from a client",   # [MQTT-3.3.4-6]
                           R.PROTOCOL_ERROR)
            return None
        alias = props.topic_alias
        if alias is None:
            return topic, props
        if alias > self.settings.topic_alias_max_client:
            self.violation("topic alias above the maximum",           # [MQTT-3.3.2-9]
                           R.TOPIC_ALIAS_INVALID)
            return None
        aliases = self.aliases
        assert aliases is not None   # set at level 5 from CONNACK on
        if topic:
            aliases[alias] = topic
        else:
            known = aliases.get(alias)
            if known is None:
                self.violation("unknown topic alias", R.PROTOCOL_ERROR)
                return None
            topic = known
        rest = attrs.evolve(props, topic_alias=None)
        return topic, (None if rest == _NO_PROPERTIES else rest)

    def _count_rate(self, now: float) -> None:
        """
        ``max_message_rate``, as VerneMQ applies it: past the limit within
        one second, reading from the client pauses until that second is
        over (what was already read is still handled); nothing is dropped
        and the client is not disconnected -- it is slowed down.
        """
        rate = self._rate
        if rate is None:
            rate = self._rate = _RateWindow()
        second = int(now)
        if second != rate.second:
            rate.second = second
            rate.count = 0
        rate.count += 1
        if rate.count > self.settings.max_message_rate and rate.throttle is None:
            self.io.pause_reading()
            rate.throttle = self.registry.clock.callLater(second + 1 - now, self._end_throttle)

    def _end_throttle(self) -> None:
        assert self._rate is not None   # set before the call was made
        self._rate.throttle = None
        if self.state == CONNECTED and not self._paused:
            self.io.resume_reading()

    def _throttled(self) -> bool:
        """Reading is paused by ``max_message_rate`` until the second ends."""
        return self._rate is not None and self._rate.throttle is not None

    def _acknowledge(self, waiting: Optional[Deferred], ack: bytes) -> None:
        """Write ``ack`` once ``waiting`` fired and every earlier ack is out."""
        acks = self._acks
        if waiting is None and not acks:
            self.io.write(ack)
            return
        entry = [waiting is None, ack]
        if acks is None:
            acks = self._acks = deque()
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
        """
        Never acknowledge what was not stored: a 3.1.1 client resends it.
        An MQTT 5.0 client whose message the cluster refused whole (another
        node's backlog full: routed nowhere) is told so, with PUBACK or
        PUBREC 0x97 Quota exceeded (3.4.2.1, 3.5.2.1): the exchange ends
        there, and the client knows the message was not taken instead of
        resending it into the same full backlog.
        """
        kind = entry[1][:1]
        if self.v5 and failure.check(BacklogFull) and kind in _ACK_KINDS:
            entry[0] = True
            entry[1] = _PUBACK5(kind[0], 3, struct.unpack(">H", entry[1][2:4])[0],
                                R.QUOTA_EXCEEDED)
            self._flush_acks()
            return
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
        if acks is None:
            return
        while acks and acks[0][0]:
            data = acks.popleft()[1]
            if data and self.state == CONNECTED:
                self.io.write(data)
        if self._paused and len(acks) < ACK_BACKLOG_PAUSE // 2:
            self._paused = False
            if not self._throttled():
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
        if self.v5 and packet.packet_id not in queue.awaiting_rel:
            self._acknowledge(None, _PUBACK5(_PUBCOMP_BYTE, 3, packet.packet_id,
                                             R.PACKET_IDENTIFIER_NOT_FOUND))
            return
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
                                          [P.SUBACK_FAILURE] * len(subscribe.topics)),
                                 self.level))
            return
        if self.v5:
            self._on_subscribe5(subscribe)
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
        # Retained messages go to new non-shared subscriptions only
        # (MQTT 5.0 section 4.8.2, VerneMQ for 3.1.1 as well).
        granted = [(flt, qos) for flt, qos in granted if parse_shared(flt) is None]
        if routed is None:
            self._send_retained(queue, granted)
        else:
            routed.addCallback(lambda _: self._send_retained(queue, granted))

    def _on_subscribe5(self, subscribe: P.Subscribe) -> None:
        """
        SUBSCRIBE at level 5: a reason code per filter (section 3.9.3) and
        the retain handling option [MQTT-3.3.1-9..11].
        """
        settings = self.settings
        subscriber_id = self.subscriber_id
        queue = self.queue
        assert subscriber_id is not None and queue is not None
        props = subscribe.properties
        sub_id = 0
        if props is not None and props.subscription_identifiers:
            # Kept with each filter, above the options byte (see
            # vmqtw.broker.subscriptions).
            sub_id = props.subscription_identifiers[0]
        existing = self.registry.subscriptions(subscriber_id)
        limit = settings.max_subscriptions_per_client
        granted: List[Tuple[str, int]] = []
        retained: List[Tuple[str, int]] = []
        codes: List[int] = []
        for flt, options in subscribe.topics:
            if options & P.SUB_NO_LOCAL and validate_filter(flt, settings.topic_max_depth) \
                    and parse_shared(flt) is not None:
                self.violation("no local on a shared subscription")   # [MQTT-3.8.3-4]
                return
        for flt, options in subscribe.topics:
            qos = options & P.SUB_QOS_MASK
            if not validate_filter(flt, settings.topic_max_depth):
                codes.append(R.TOPIC_FILTER_INVALID)
            elif not self.authenticator.can_subscribe(self.client_id, self.username, flt):
                codes.append(R.NOT_AUTHORIZED)
            elif limit and flt not in existing and len(existing) >= limit:
                codes.append(R.QUOTA_EXCEEDED)
            else:
                handling = (options & P.SUB_RETAIN_HANDLING_MASK) >> P.SUB_RETAIN_HANDLING_SHIFT
                if parse_shared(flt) is not None:
                    pass   # no retained messages on shared subscriptions (4.8.2)
                elif handling == P.RETAIN_SEND or (handling == P.RETAIN_SEND_IF_NEW
                                                   and flt not in existing):
                    retained.append((flt, qos))
                existing[flt] = qos
                # Options without retain handling (only used here, now).
                value = (options & ~P.SUB_RETAIN_HANDLING_MASK) | (sub_id << 8)
                granted.append((flt, value))
                codes.append(qos)
        routed = None
        if granted:
            routed = self.registry.subscribe(subscriber_id, self.clean_session, granted)
            sub_ids = self._identifiers()
            for flt, value in granted:
                if sub_id:
                    sub_ids[flt] = sub_id
                else:
                    sub_ids.pop(flt, None)
        self._acknowledge(routed, encode(P.SubAck(subscribe.packet_id, codes),
                                         P.PROTOCOL_LEVEL_5))
        if routed is None:
            self._send_retained(queue, retained)
        else:
            routed.addCallback(lambda _: self._send_retained(queue, retained))

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
        if self.v5:
            # One reason code per filter [MQTT-3.11.3-1].
            existing = self.registry.subscriptions(self.subscriber_id)
            max_depth = self.settings.topic_max_depth
            codes = [R.SUCCESS if flt in existing
                     else R.NO_SUBSCRIPTION_EXISTED if validate_filter(flt, max_depth)
                     else R.TOPIC_FILTER_INVALID
                     for flt in unsubscribe.topics]
            if self._sub_ids:
                for flt in unsubscribe.topics:
                    self._sub_ids.pop(flt, None)
            self.registry.unsubscribe(self.subscriber_id, self.clean_session, unsubscribe.topics)
            self.counters.unsuback_sent += 1
            self.io.write(encode(P.UnsubAck(unsubscribe.packet_id, codes), P.PROTOCOL_LEVEL_5))
            return
        self.registry.unsubscribe(self.subscriber_id, self.clean_session, unsubscribe.topics)
        self.counters.unsuback_sent += 1
        self.io.write(encode(P.UnsubAck(unsubscribe.packet_id)))

    def _on_pingreq(self, packet: P.PingReq, now: float) -> None:
        self.counters.pingreq_received += 1
        self.counters.pingresp_sent += 1
        self.io.write(_PINGRESP)

    def _on_disconnect(self, packet: P.Disconnect, now: float) -> None:
        self.counters.disconnect_received += 1
        if self.v5:
            props = packet.properties
            if props is not None and props.session_expiry_interval is not None:
                if self.session_expiry == 0 and props.session_expiry_interval:
                    self.violation("session expiry set at DISCONNECT after 0",  # [MQTT-3.14.2-2]
                                   R.PROTOCOL_ERROR)
                    return
                self.session_expiry = props.session_expiry_interval
            if packet.reason_code != R.NORMAL_DISCONNECTION:
                # Only a normal disconnection deletes the will [MQTT-3.1.2-8];
                # 0x04 asks for it, an error code (0x80...) reports one.
                self._will_on_disconnect = True
        self._disconnected = True
        if not self._will_on_disconnect:
            self.will = None
        self.io.close()

    def _on_auth(self, packet: P.Auth, now: float) -> None:
        """
        AUTH from a connected client: re-authentication (0x19) with the
        method of its CONNECT [MQTT-4.12.1-1], or its answer (0x18) to a
        step of one.  Without a method at CONNECT any AUTH is a Protocol
        Error [MQTT-4.12.0-1].
        """
        eauth = self._eauth
        if eauth is None:
            self.violation("AUTH without an authentication method", R.PROTOCOL_ERROR)
            return
        props = packet.properties
        if props is None or props.authentication_method != eauth.method:
            self.violation("AUTH with another authentication method", R.PROTOCOL_ERROR)
            return
        data = props.authentication_data
        if packet.reason_code == R.RE_AUTHENTICATE and not eauth.waiting \
                and eauth.exchange is None:
            eauth.exchange = _IN_FLIGHT
            info = ConnectInfo(self.client_id, self.username, None, self.peer,
                               self.clean_session, self.peer_identity)
            step = maybeDeferred(eauth.authenticator.begin, info, data)
        elif packet.reason_code == R.CONTINUE_AUTHENTICATION and eauth.waiting:
            step = self._proceed(data)
        else:
            self.violation("unexpected AUTH %#x" % packet.reason_code, R.PROTOCOL_ERROR)
            return
        step.addCallbacks(self._reauth_step, self._reauth_failed)

    def _proceed(self, data: Optional[bytes]) -> Any:
        """Hand the client's answer to the authenticator (one step at a time)."""
        eauth = self._eauth
        assert eauth is not None   # only while a method is in use
        exchange, eauth.exchange = eauth.exchange, _IN_FLIGHT
        eauth.waiting = False
        return maybeDeferred(eauth.authenticator.proceed, exchange, data)

    def _send_auth(self, code: int, data: Optional[bytes]) -> None:
        props = P.Properties()
        assert self._eauth is not None   # only while a method is in use
        props.authentication_method = self._eauth.method
        if data is not None:
            props.authentication_data = data
        self.io.write(encode(P.Auth(code, props), P.PROTOCOL_LEVEL_5))

    def _during_connect_auth(self, packet: Any, now: float) -> None:
        """
        A packet while a CONNECT with an authentication method is decided:
        only the client's AUTH 0x18 answer to our step, or DISCONNECT, may
        come [MQTT-3.1.2-30].
        """
        kind = type(packet)
        if kind is P.Disconnect:
            self.io.close()
            return
        props = packet.properties if kind is P.Auth else None
        eauth = self._eauth
        assert eauth is not None   # only called while a method is in use
        if (kind is not P.Auth or not eauth.waiting
                or packet.reason_code != R.CONTINUE_AUTHENTICATION
                or props is None or props.authentication_method != eauth.method):
            self.violation("%s during enhanced authentication" % kind.__name__,
                           R.PROTOCOL_ERROR)
            return
        step = self._proceed(props.authentication_data)
        step.addCallbacks(self._connect_auth_step, self._authentication_failed,
                          callbackArgs=(now,))

    def _step(self, step: Any) -> Optional[str]:
        """
        What at CONNECT and on re-authentication alike follows from one of
        the authenticator's steps: ``continue`` asks the client (AUTH 0x18),
        ``success`` ends the exchange (and may name the user).  Returns the
        outcome, None when ``step`` is no AuthStep.
        """
        eauth = self._eauth
        assert eauth is not None   # only called while a method is in use
        outcome = getattr(step, "outcome", None)
        if outcome == "continue":
            eauth.exchange = step.exchange
            eauth.waiting = True
            self._send_auth(R.CONTINUE_AUTHENTICATION, step.data)
        elif outcome == "success":
            eauth.exchange = None
            if step.username is not None:
                self.username = step.username
        elif outcome != "fail":
            self.log.error("enhanced authentication {method} answered {step!r}, not an AuthStep",
                           method=eauth.method, step=step)
            return None
        return str(outcome)

    def _connect_auth_step(self, step: Any, now: float) -> None:
        """The authenticator's answer during CONNECT."""
        if self.state != CONNECTING:
            return  # the connection went away meanwhile
        outcome = self._step(step)
        if outcome == "success":
            assert self._eauth is not None   # _step said success
            self._eauth.data = step.data
            self._authenticated(P.CONNACK_ACCEPTED, now)
        elif outcome == "fail":
            code = step.reason_code
            self._refuse(code if code in R.CONNACK_CODES and code >= 0x80
                         else R.NOT_AUTHORIZED)
        elif outcome is None:
            self._refuse(R.UNSPECIFIED_ERROR)

    def _reauth_step(self, step: Any) -> None:
        """The authenticator's answer during a re-authentication."""
        if self.state != CONNECTED:
            return
        outcome = self._step(step)
        if outcome == "success":
            self._send_auth(R.SUCCESS, step.data)
        elif outcome != "continue":
            # [MQTT-4.12.1-2]: a failed re-authentication ends the connection.
            code = step.reason_code if outcome == "fail" else R.UNSPECIFIED_ERROR
            if code not in R.DISCONNECT_CODES or code < 0x80:
                code = R.NOT_AUTHORIZED
            self.disconnect(code, "re-authentication failed")

    def _reauth_failed(self, failure: Any) -> None:
        self.log.failure("re-authentication of {client_id} failed", failure,
                         client_id=self.client_id)
        if self.state == CONNECTED:
            self.disconnect(R.UNSPECIFIED_ERROR, "re-authentication failed")


#: What a connected session does with each packet from its client, by type:
#: one table for every session (a per-session dict of bound methods cost
#: about a kilobyte per connection).  MQTT 5.0 sessions differ only in
#: PUBLISH, so the 3.1.1 handlers stay free of level tests.
_HANDLERS: Dict[type, Callable[[Session, Any, float], None]] = {
    P.Publish: Session._on_publish,
    P.PubAck: Session._on_puback,
    P.PubRec: Session._on_pubrec,
    P.PubRel: Session._on_pubrel,
    P.PubComp: Session._on_pubcomp,
    P.Subscribe: Session._on_subscribe,
    P.Unsubscribe: Session._on_unsubscribe,
    P.PingReq: Session._on_pingreq,
    P.Disconnect: Session._on_disconnect,
    P.Auth: Session._on_auth,
}
_HANDLERS5: Dict[type, Callable[[Session, Any, float], None]] = dict(_HANDLERS)
_HANDLERS5[P.Publish] = Session._on_publish5
