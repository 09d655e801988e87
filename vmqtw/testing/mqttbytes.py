"""
Hand-built MQTT 3.1.1 packets as raw bytes, written from the spec alone.

This builder deliberately shares no code with :mod:`vmqtw.mqtt.codec`: tests
that compare the codec's output with these bytes (or decode these bytes) check
the codec against the specification, not against itself.  Every builder takes
overrides (raw ``flags``, a raw ``length``, strings given as ``bytes``) so that
tests can produce exactly the malformed packet they need.

Section numbers refer to MQTT 3.1.1 (OASIS, 2014).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

StrOrRaw = Union[str, bytes]

# Control packet type numbers, section 2.2.1 (repeated here on purpose).
_TYPES = {
    "CONNECT": 1, "CONNACK": 2, "PUBLISH": 3, "PUBACK": 4, "PUBREC": 5,
    "PUBREL": 6, "PUBCOMP": 7, "SUBSCRIBE": 8, "SUBACK": 9,
    "UNSUBSCRIBE": 10, "UNSUBACK": 11, "PINGREQ": 12, "PINGRESP": 13,
    "DISCONNECT": 14,
}


def varint(value: int) -> bytes:
    """Remaining length encoding, section 2.2.3 (the spec's pseudo code)."""
    if not 0 <= value <= 268_435_455:
        raise ValueError("remaining length out of range")
    out = []
    while True:
        digit = value % 128
        value //= 128
        if value > 0:
            digit |= 0x80
        out.append(digit)
        if value == 0:
            return bytes(out)


def u16(value: int) -> bytes:
    """Two-byte big-endian integer, section 1.5.2."""
    return bytes(((value >> 8) & 0xFF, value & 0xFF))


def utf8(value: StrOrRaw) -> bytes:
    """Length-prefixed string, section 1.5.3; ``bytes`` are sent as given."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return u16(len(raw)) + raw


def binary(value: bytes) -> bytes:
    """Length-prefixed binary data (will message, password)."""
    return u16(len(value)) + value


def packet(kind: Union[str, int], flags: int, body: bytes = b"",
           length: Optional[bytes] = None) -> bytes:
    """
    Fixed header + body.  ``kind`` is a type name or number (0 and 15 are
    reserved); ``length`` replaces the computed remaining length bytes.
    """
    type_number = _TYPES[kind] if isinstance(kind, str) else kind
    first = bytes(((type_number << 4) | (flags & 0x0F),))
    return first + (varint(len(body)) if length is None else length) + body


def connect(client_id: StrOrRaw = "client", *,
            protocol_name: StrOrRaw = "MQTT",
            level: int = 4, clean_session: bool = True, keepalive: int = 60,
            will_topic: Optional[StrOrRaw] = None, will_message: bytes = b"",
            will_qos: int = 0, will_retain: bool = False,
            username: Optional[StrOrRaw] = None,
            password: Optional[bytes] = None,
            connect_flags: Optional[int] = None, reserved: bool = False,
            header_flags: int = 0, trailing: bytes = b"") -> bytes:
    """
    CONNECT, section 3.1.  Flags are derived from the fields present
    unless ``connect_flags`` gives the raw byte; ``trailing`` appends junk.
    """
    flags = 0
    if reserved:
        flags |= 0x01
    if clean_session:
        flags |= 0x02
    payload = utf8(client_id)
    if will_topic is not None:
        flags |= 0x04
        payload += utf8(will_topic) + binary(will_message)
    flags |= (will_qos & 3) << 3
    if will_retain:
        flags |= 0x20
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += binary(password)
    if connect_flags is not None:
        flags = connect_flags
    variable = utf8(protocol_name) + bytes((level, flags)) + u16(keepalive)
    return packet("CONNECT", header_flags, variable + payload + trailing)


def connack(return_code: int = 0, session_present: bool = False,
            ack_flags: Optional[int] = None) -> bytes:
    """CONNACK, section 3.2."""
    flags = (1 if session_present else 0) if ack_flags is None else ack_flags
    return packet("CONNACK", 0, bytes((flags, return_code)))


def publish(topic: StrOrRaw, payload: bytes = b"", *, qos: int = 0,
            retain: bool = False, dup: bool = False,
            packet_id: Optional[int] = None,
            flags: Optional[int] = None) -> bytes:
    """PUBLISH, section 3.3; ``packet_id`` is written only for QoS > 0."""
    if flags is None:
        flags = (0x08 if dup else 0) | ((qos & 3) << 1) | (1 if retain else 0)
    body = utf8(topic)
    if packet_id is not None:
        body += u16(packet_id)
    return packet("PUBLISH", flags, body + payload)


def _id_only(kind: str, default_flags: int):
    def build(packet_id: int, flags: int = default_flags) -> bytes:
        return packet(kind, flags, u16(packet_id))
    build.__name__ = kind.lower()
    build.__doc__ = "%s: a packet identifier and nothing else." % kind
    return build


puback = _id_only("PUBACK", 0)
pubrec = _id_only("PUBREC", 0)
pubrel = _id_only("PUBREL", 0b0010)   # [MQTT-3.6.1-1]
pubcomp = _id_only("PUBCOMP", 0)
unsuback = _id_only("UNSUBACK", 0)


def subscribe(packet_id: int, topics: Sequence[Tuple[StrOrRaw, int]], *,
              flags: int = 0b0010) -> bytes:
    """SUBSCRIBE, section 3.8: filter + requested QoS byte per entry."""
    body = u16(packet_id)
    for topic_filter, qos in topics:
        body += utf8(topic_filter) + bytes((qos,))
    return packet("SUBSCRIBE", flags, body)


def suback(packet_id: int, return_codes: Iterable[int]) -> bytes:
    """SUBACK, section 3.9."""
    return packet("SUBACK", 0, u16(packet_id) + bytes(return_codes))


def unsubscribe(packet_id: int, topics: Sequence[StrOrRaw], *,
                flags: int = 0b0010) -> bytes:
    """UNSUBSCRIBE, section 3.10."""
    return packet("UNSUBSCRIBE", flags,
                  u16(packet_id) + b"".join(utf8(t) for t in topics))


def pingreq(flags: int = 0) -> bytes:
    """PINGREQ, section 3.12."""
    return packet("PINGREQ", flags)


def pingresp(flags: int = 0) -> bytes:
    """PINGRESP, section 3.13."""
    return packet("PINGRESP", flags)


def disconnect(flags: int = 0) -> bytes:
    """DISCONNECT, section 3.14."""
    return packet("DISCONNECT", flags)
