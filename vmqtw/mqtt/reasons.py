"""
MQTT 5.0 reason codes (OASIS MQTT 5.0, section 2.4, table 2-6), which
packets may carry which, and the decoding errors that carry one.

Pure.  The codec uses the per-packet sets to refuse a reason code a packet
may not carry, and the session picks its answers from the names below, so
no bare hex numbers need to appear anywhere else.

Several codes share a value with a packet-dependent meaning (0x00 is
Success, Normal disconnection and Granted QoS 0); each meaning gets its own
name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, FrozenSet, List

if TYPE_CHECKING:
    from vmqtw.mqtt.packets import Packet

SUCCESS = 0x00
NORMAL_DISCONNECTION = 0x00
GRANTED_QOS_0 = 0x00
GRANTED_QOS_1 = 0x01
GRANTED_QOS_2 = 0x02
DISCONNECT_WITH_WILL_MESSAGE = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
CONTINUE_AUTHENTICATION = 0x18
RE_AUTHENTICATE = 0x19
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC_ERROR = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_IDENTIFIER_NOT_VALID = 0x85
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
BANNED = 0x8A
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_IDENTIFIER_IN_USE = 0x91
PACKET_IDENTIFIER_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
MESSAGE_RATE_TOO_HIGH = 0x96
QUOTA_EXCEEDED = 0x97
ADMINISTRATIVE_ACTION = 0x98
PAYLOAD_FORMAT_INVALID = 0x99
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
USE_ANOTHER_SERVER = 0x9C
SERVER_MOVED = 0x9D
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
CONNECTION_RATE_EXCEEDED = 0x9F
MAXIMUM_CONNECT_TIME = 0xA0
SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

#: Human names for logs, one per value (the first meaning of shared values).
NAMES: Dict[int, str] = {
    0x00: "Success",
    0x01: "Granted QoS 1",
    0x02: "Granted QoS 2",
    0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers",
    0x11: "No subscription existed",
    0x18: "Continue authentication",
    0x19: "Re-authenticate",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}


def name(code: int) -> str:
    """A log-friendly name, also for codes the spec does not define."""
    return NAMES.get(code, "reason code 0x%02X" % code)


# Which packets may carry which code: the "MQTT Control Packets" column of
# table 2-6, inverted.  The codec raises a Protocol Error (0x82) for any
# other code received in that packet, and refuses to encode one.

CONNACK_CODES: FrozenSet[int] = frozenset((
    SUCCESS, UNSPECIFIED_ERROR, MALFORMED_PACKET, PROTOCOL_ERROR,
    IMPLEMENTATION_SPECIFIC_ERROR, UNSUPPORTED_PROTOCOL_VERSION,
    CLIENT_IDENTIFIER_NOT_VALID, BAD_USER_NAME_OR_PASSWORD, NOT_AUTHORIZED,
    SERVER_UNAVAILABLE, SERVER_BUSY, BANNED, BAD_AUTHENTICATION_METHOD,
    TOPIC_NAME_INVALID, PACKET_TOO_LARGE, QUOTA_EXCEEDED,
    PAYLOAD_FORMAT_INVALID, RETAIN_NOT_SUPPORTED, QOS_NOT_SUPPORTED,
    USE_ANOTHER_SERVER, SERVER_MOVED, CONNECTION_RATE_EXCEEDED))

#: PUBACK and PUBREC share their list (sections 3.4.2.1 and 3.5.2.1).
PUBACK_CODES: FrozenSet[int] = frozenset((
    SUCCESS, NO_MATCHING_SUBSCRIBERS, UNSPECIFIED_ERROR,
    IMPLEMENTATION_SPECIFIC_ERROR, NOT_AUTHORIZED, TOPIC_NAME_INVALID,
    PACKET_IDENTIFIER_IN_USE, QUOTA_EXCEEDED, PAYLOAD_FORMAT_INVALID))
PUBREC_CODES = PUBACK_CODES

#: PUBREL and PUBCOMP share theirs (sections 3.6.2.1 and 3.7.2.1).
PUBREL_CODES: FrozenSet[int] = frozenset((SUCCESS,
                                          PACKET_IDENTIFIER_NOT_FOUND))
PUBCOMP_CODES = PUBREL_CODES

SUBACK_CODES: FrozenSet[int] = frozenset((
    GRANTED_QOS_0, GRANTED_QOS_1, GRANTED_QOS_2, UNSPECIFIED_ERROR,
    IMPLEMENTATION_SPECIFIC_ERROR, NOT_AUTHORIZED, TOPIC_FILTER_INVALID,
    PACKET_IDENTIFIER_IN_USE, QUOTA_EXCEEDED,
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED))

UNSUBACK_CODES: FrozenSet[int] = frozenset((
    SUCCESS, NO_SUBSCRIPTION_EXISTED, UNSPECIFIED_ERROR,
    IMPLEMENTATION_SPECIFIC_ERROR, NOT_AUTHORIZED, TOPIC_FILTER_INVALID,
    PACKET_IDENTIFIER_IN_USE))

DISCONNECT_CODES: FrozenSet[int] = frozenset((
    NORMAL_DISCONNECTION, DISCONNECT_WITH_WILL_MESSAGE, UNSPECIFIED_ERROR,
    MALFORMED_PACKET, PROTOCOL_ERROR, IMPLEMENTATION_SPECIFIC_ERROR,
    NOT_AUTHORIZED, SERVER_BUSY, SERVER_SHUTTING_DOWN,
    BAD_AUTHENTICATION_METHOD, KEEP_ALIVE_TIMEOUT, SESSION_TAKEN_OVER,
    TOPIC_FILTER_INVALID, TOPIC_NAME_INVALID, RECEIVE_MAXIMUM_EXCEEDED,
    TOPIC_ALIAS_INVALID, PACKET_TOO_LARGE, MESSAGE_RATE_TOO_HIGH,
    QUOTA_EXCEEDED, ADMINISTRATIVE_ACTION, PAYLOAD_FORMAT_INVALID,
    RETAIN_NOT_SUPPORTED, QOS_NOT_SUPPORTED, USE_ANOTHER_SERVER,
    SERVER_MOVED, SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
    CONNECTION_RATE_EXCEEDED, MAXIMUM_CONNECT_TIME,
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED))

AUTH_CODES: FrozenSet[int] = frozenset((SUCCESS, CONTINUE_AUTHENTICATION,
                                        RE_AUTHENTICATE))


def is_error(code: int) -> bool:
    """Codes of 0x80 and above report failure (section 2.4)."""
    return code >= 0x80


# --------------------------------------------------------------------------
# decoding errors: each carries the reason code the spec gives for it, so
# the session can answer a level-5 client with CONNACK or DISCONNECT and
# that code before closing (section 4.13), and a 3.1.1 client by closing.
# They live here, below both :mod:`vmqtw.mqtt.properties` and
# :mod:`vmqtw.mqtt.codec`, which raise them; the codec re-exports them.

class ProtocolError(Exception):
    """
    The peer sent a packet we must not accept; the connection must close.

    By default a *Malformed Packet* (0x81): one that cannot be parsed
    according to the spec.  ``reason`` is a short human sentence for the
    log (no traceback needed); ``reason_code`` is the MQTT 5.0 code to
    report.  ``packets`` holds the well-formed packets that preceded the
    bad one in the same :meth:`Decoder.feed` call, so a caller may still act
    on them (for instance publish a message that arrived just before the
    garbage).
    """

    def __init__(self, reason: str,
                 reason_code: int = MALFORMED_PACKET) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reason_code = reason_code
        self.packets: List["Packet"] = []


class ProtocolViolation(ProtocolError):
    """
    A packet that parses but holds data the protocol forbids (the spec's
    "Protocol Error", 0x82 by default): a property given twice, a receive
    maximum of 0, a reason code the packet may not carry...  A few rules
    name a more precise code (0x94 Topic Alias invalid, 0x90 Topic Name
    invalid), given as ``reason_code``.
    """

    def __init__(self, reason: str,
                 reason_code: int = PROTOCOL_ERROR) -> None:
        super().__init__(reason, reason_code)


class UnacceptableProtocolLevel(ProtocolError):
    """
    A CONNECT with a known protocol name but a level we do not speak.

    Unlike other malformed packets the broker answers CONNACK 0x01 before
    closing [MQTT-3.1.2-2], so the session needs to tell the two apart.
    """

    def __init__(self, protocol_name: str, protocol_level: int) -> None:
        super().__init__("unacceptable protocol level %d for %r"
                         % (protocol_level, protocol_name),
                         UNSUPPORTED_PROTOCOL_VERSION)
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
