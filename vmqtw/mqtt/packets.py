"""
MQTT 3.1 / 3.1.1 control packets as plain value objects.

Pure: no I/O.  :mod:`vmqtw.mqtt.codec` turns bytes into these and back.
Classes use ``slots=True`` and no validators because one is built for every
frame on the hot path; the codec is where the spec's rules are enforced.
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

# CONNACK return codes (MQTT 3.1.1 section 3.2.2.3).
CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL_VERSION = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_USERNAME_OR_PASSWORD = 4
CONNACK_NOT_AUTHORIZED = 5

#: SUBACK return code for a refused filter.
SUBACK_FAILURE = 0x80

#: Protocol levels: 3 is MQTT 3.1 ("MQIsdp"), 4 is MQTT 3.1.1 ("MQTT").
PROTOCOL_LEVEL_31 = 3
PROTOCOL_LEVEL_311 = 4


@attrs.define(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@attrs.define(slots=True)
class Connect:
    client_id: str
    protocol_name: str = "MQTT"
    protocol_level: int = PROTOCOL_LEVEL_311
    clean_session: bool = True
    keepalive: int = 0
    will: Optional[Will] = None
    username: Optional[str] = None
    password: Optional[bytes] = None


@attrs.define(slots=True)
class ConnAck:
    return_code: int = CONNACK_ACCEPTED
    session_present: bool = False


@attrs.define(slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    #: ``None`` for QoS 0, 1..65535 otherwise.
    packet_id: Optional[int] = None


@attrs.define(slots=True)
class PubAck:
    packet_id: int


@attrs.define(slots=True)
class PubRec:
    packet_id: int


@attrs.define(slots=True)
class PubRel:
    packet_id: int


@attrs.define(slots=True)
class PubComp:
    packet_id: int


@attrs.define(slots=True)
class Subscribe:
    packet_id: int
    #: ``[(filter, requested_qos), ...]``, at least one.
    topics: List[Tuple[str, int]]


@attrs.define(slots=True)
class SubAck:
    packet_id: int
    #: One per requested filter: granted QoS 0..2 or :data:`SUBACK_FAILURE`.
    return_codes: List[int]


@attrs.define(slots=True)
class Unsubscribe:
    packet_id: int
    topics: List[str]


@attrs.define(slots=True)
class UnsubAck:
    packet_id: int


@attrs.define(slots=True)
class PingReq:
    pass


@attrs.define(slots=True)
class PingResp:
    pass


@attrs.define(slots=True)
class Disconnect:
    pass


Packet = (Connect | ConnAck | Publish | PubAck | PubRec | PubRel | PubComp
          | Subscribe | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp
          | Disconnect)
