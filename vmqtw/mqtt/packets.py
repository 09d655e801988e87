"""
MQTT 3.1 / 3.1.1 / 5.0 control packets as plain value objects.

Pure: no I/O.  :mod:`vmqtw.mqtt.codec` turns bytes into these and back.
Classes use ``slots=True`` and no validators because one is built for every
frame on the hot path; the codec is where the spec's rules are enforced.

MQTT 5.0 (OASIS, 2019) adds reason codes and properties to most packets.
They are extra fields *with defaults* at the end of each class, so every
3.1.1 caller keeps building packets as before, and a packet without
properties carries ``properties=None``: no :class:`Properties` object is
allocated for it (most PUBLISHes on the QoS 0/1 path).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import attrs

# Control packet types (MQTT 3.1.1 section 2.2.1).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
#: MQTT 5.0 only; reserved (so malformed) in 3.1.1.
AUTH = 15

# CONNACK return codes (MQTT 3.1.1 section 3.2.2.3).
CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL_VERSION = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_USERNAME_OR_PASSWORD = 4
CONNACK_NOT_AUTHORIZED = 5

#: SUBACK return code for a refused filter.
SUBACK_FAILURE = 0x80

#: Protocol levels: 3 is MQTT 3.1 ("MQIsdp"), 4 is MQTT 3.1.1 ("MQTT"),
#: 5 is MQTT 5.0 ("MQTT").
PROTOCOL_LEVEL_31 = 3
PROTOCOL_LEVEL_311 = 4
PROTOCOL_LEVEL_5 = 5

# Subscription options byte of MQTT 5.0 (section 3.8.3.1).  In 3.1.1 the
# byte is the requested QoS alone, which is a valid options byte with the
# other bits clear, so ``Subscribe.topics`` keeps one ``int`` per filter at
# both levels and the session reads the bits it needs.
SUB_QOS_MASK = 0x03
SUB_NO_LOCAL = 0x04
SUB_RETAIN_AS_PUBLISHED = 0x08
SUB_RETAIN_HANDLING_SHIFT = 4
SUB_RETAIN_HANDLING_MASK = 0x30
#: Retain handling values: send retained messages at subscribe, only if the
#: subscription is new, never.
RETAIN_SEND = 0
RETAIN_SEND_IF_NEW = 1
RETAIN_DONT_SEND = 2


def subscription_options(qos: int, no_local: bool = False,
                         retain_as_published: bool = False,
                         retain_handling: int = RETAIN_SEND) -> int:
    """Pack the fields of section 3.8.3.1 into one options byte."""
    return (qos | (SUB_NO_LOCAL if no_local else 0)
            | (SUB_RETAIN_AS_PUBLISHED if retain_as_published else 0)
            | (retain_handling << SUB_RETAIN_HANDLING_SHIFT))


@attrs.define(slots=True)
class Properties:
    """
    The properties of one MQTT 5.0 packet (section 2.2.2), or of a will.

    One optional field per property identifier (``None``: absent); the two
    that may repeat are tuples, kept in wire order with their duplicates.
    Which packet may carry which property, and the value rules, are in
    :mod:`vmqtw.mqtt.properties`; packets without any property carry
    ``properties=None`` rather than an empty instance.  Tuples rather than
    lists because one decoded PUBLISH's properties are forwarded to many
    subscribers: nobody can append to a shared instance by mistake.
    """

    payload_format_indicator: Optional[int] = None       # 0x01
    message_expiry_interval: Optional[int] = None        # 0x02
    content_type: Optional[str] = None                   # 0x03
    response_topic: Optional[str] = None                 # 0x08
    correlation_data: Optional[bytes] = None             # 0x09
    #: 0x0B: at most one in SUBSCRIBE, any number in PUBLISH.
    subscription_identifiers: Tuple[int, ...] = ()
    session_expiry_interval: Optional[int] = None        # 0x11
    assigned_client_identifier: Optional[str] = None     # 0x12
    server_keep_alive: Optional[int] = None              # 0x13
    authentication_method: Optional[str] = None          # 0x15
    authentication_data: Optional[bytes] = None          # 0x16
    request_problem_information: Optional[int] = None    # 0x17
    will_delay_interval: Optional[int] = None            # 0x18
    request_response_information: Optional[int] = None   # 0x19
    response_information: Optional[str] = None           # 0x1A
    server_reference: Optional[str] = None               # 0x1C
    reason_string: Optional[str] = None                  # 0x1F
    receive_maximum: Optional[int] = None                # 0x21
    topic_alias_maximum: Optional[int] = None            # 0x22
    topic_alias: Optional[int] = None                    # 0x23
    maximum_qos: Optional[int] = None                    # 0x24
    retain_available: Optional[int] = None               # 0x25
    #: 0x26: ``((name, value), ...)`` in wire order, duplicates kept.
    user_properties: Tuple[Tuple[str, str], ...] = ()
    maximum_packet_size: Optional[int] = None            # 0x27
    wildcard_subscription_available: Optional[int] = None     # 0x28
    subscription_identifier_available: Optional[int] = None   # 0x29
    shared_subscription_available: Optional[int] = None       # 0x2A
    #: The PUBLISH property block these were decoded from, sent on as it
    #: came (the client's order) instead of being encoded again for every
    #: message passed through.  Never compared, and not copied by
    #: ``attrs.evolve`` (``init=False``): a changed copy is encoded afresh.
    #: Decoded PUBLISH properties are never changed in place.
    wire: Optional[bytes] = attrs.field(default=None, init=False, eq=False, repr=False)


@attrs.define(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    #: MQTT 5.0 will properties (section 3.1.3.2).
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class Connect:
    client_id: str
    protocol_name: str = "MQTT"
    protocol_level: int = PROTOCOL_LEVEL_311
    clean_session: bool = True
    keepalive: int = 0
    will: Optional[Will] = None
    username: Optional[str] = None
    #: MQTT 5.0 allows a password without a user name.
    password: Optional[bytes] = None
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class ConnAck:
    #: The 3.1.1 return code, or at level 5 the reason code.
    return_code: int = CONNACK_ACCEPTED
    session_present: bool = False
    properties: Optional[Properties] = None

    @property
    def reason_code(self) -> int:
        """The MQTT 5.0 name of :attr:`return_code`."""
        return self.return_code


@attrs.define(slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    #: ``None`` for QoS 0, 1..65535 otherwise.
    packet_id: Optional[int] = None
    #: MQTT 5.0; the topic may be empty when ``properties.topic_alias`` is set.
    properties: Optional[Properties] = None


# The four QoS 1/2 acknowledgements: at level 5 a reason code (0x00 Success
# when omitted on the wire) and properties.

@attrs.define(slots=True)
class PubAck:
    packet_id: int
    reason_code: int = 0
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class PubRec:
    packet_id: int
    reason_code: int = 0
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class PubRel:
    packet_id: int
    reason_code: int = 0
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class PubComp:
    packet_id: int
    reason_code: int = 0
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class Subscribe:
    packet_id: int
    #: ``[(filter, options), ...]``, at least one.  In 3.1.1 ``options`` is
    #: the requested QoS; in 5.0 the options byte (:func:`subscription_options`),
    #: whose low two bits are the requested QoS.
    topics: List[Tuple[str, int]]
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class SubAck:
    packet_id: int
    #: One per requested filter: granted QoS 0..2 or :data:`SUBACK_FAILURE`;
    #: at level 5 any SUBACK reason code.
    return_codes: List[int]
    properties: Optional[Properties] = None

    @property
    def reason_codes(self) -> List[int]:
        """The MQTT 5.0 name of :attr:`return_codes`."""
        return self.return_codes


@attrs.define(slots=True)
class Unsubscribe:
    packet_id: int
    topics: List[str]
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class UnsubAck:
    packet_id: int
    #: MQTT 5.0 only: one reason code per filter (3.1.1 UNSUBACK has none).
    reason_codes: List[int] = attrs.field(factory=list)
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class PingReq:
    pass


@attrs.define(slots=True)
class PingResp:
    pass


@attrs.define(slots=True)
class Disconnect:
    #: MQTT 5.0 only; 0x00 is Normal disconnection.
    reason_code: int = 0
    properties: Optional[Properties] = None


@attrs.define(slots=True)
class Auth:
    """MQTT 5.0 enhanced authentication exchange (section 3.15)."""

    #: 0x00 Success, 0x18 Continue authentication or 0x19 Re-authenticate.
    reason_code: int = 0
    properties: Optional[Properties] = None


Packet = (Connect | ConnAck | Publish | PubAck | PubRec | PubRel | PubComp
          | Subscribe | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp
          | Disconnect | Auth)
