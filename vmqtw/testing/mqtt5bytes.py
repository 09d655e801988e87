"""
Hand-built MQTT 5.0 packets as raw bytes, written from the spec alone.

The level-5 companion of :mod:`vmqtw.testing.mqttbytes`, and like it shares
no code with :mod:`vmqtw.mqtt.codec` or :mod:`vmqtw.mqtt.properties`, so
tests comparing the codec with these bytes check it against the
specification rather than against itself.  Properties are given as raw
``(identifier, value bytes)`` items built with the ``p_*`` helpers, so a
test can write any property into any packet, twice, truncated, or with an
unknown identifier.

Section numbers refer to OASIS MQTT Version 5.0 (2019).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

from vmqtw.testing.mqttbytes import StrOrRaw, binary, packet, u16, utf8

__all__ = ["vbi", "u32", "props", "p_byte", "p_u16", "p_u32", "p_vbi",
           "p_str", "p_bin", "p_pair", "connect", "connack", "publish",
           "ack", "subscribe", "suback", "unsubscribe", "unsuback",
           "disconnect", "auth", "NO_PROPS"]

#: A property as it appears in a property block: identifier then value.
Prop = bytes


def vbi(value: int) -> bytes:
    """Variable Byte Integer, section 1.5.5 (the spec's pseudo code)."""
    if not 0 <= value <= 268_435_455:
        raise ValueError("variable byte integer out of range")
    out = []
    while True:
        digit = value % 128
        value //= 128
        if value > 0:
            digit |= 0x80
        out.append(digit)
        if value == 0:
            return bytes(out)


def u32(value: int) -> bytes:
    """Four Byte Integer, section 1.5.3."""
    return bytes(((value >> 24) & 0xFF, (value >> 16) & 0xFF,
                  (value >> 8) & 0xFF, value & 0xFF))


def p_byte(ident: int, value: int) -> Prop:
    return bytes((ident, value))


def p_u16(ident: int, value: int) -> Prop:
    return bytes((ident,)) + u16(value)


def p_u32(ident: int, value: int) -> Prop:
    return bytes((ident,)) + u32(value)


def p_vbi(ident: int, value: int) -> Prop:
    return bytes((ident,)) + vbi(value)


def p_str(ident: int, value: StrOrRaw) -> Prop:
    return bytes((ident,)) + utf8(value)


def p_bin(ident: int, value: bytes) -> Prop:
    return bytes((ident,)) + binary(value)


def p_pair(name: StrOrRaw, value: StrOrRaw) -> Prop:
    """User property (0x26): a UTF-8 string pair."""
    return b"\x26" + utf8(name) + utf8(value)


def props(*items: Prop, length: Optional[bytes] = None) -> bytes:
    """A property block: its length (section 2.2.2.1), then the items."""
    body = b"".join(items)
    return (vbi(len(body)) if length is None else length) + body


#: The empty property block.
NO_PROPS = b"\x00"


def connect(client_id: StrOrRaw = "client", *, keepalive: int = 60,
            clean_start: bool = True, properties: bytes = NO_PROPS,
            will_topic: Optional[StrOrRaw] = None, will_message: bytes = b"",
            will_qos: int = 0, will_retain: bool = False,
            will_properties: bytes = NO_PROPS,
            username: Optional[StrOrRaw] = None,
            password: Optional[bytes] = None,
            connect_flags: Optional[int] = None, level: int = 5,
            trailing: bytes = b"") -> bytes:
    """CONNECT, section 3.1: will properties come before the will topic."""
    flags = 0x02 if clean_start else 0
    payload = utf8(client_id)
    if will_topic is not None:
        flags |= 0x04 | ((will_qos & 3) << 3) | (0x20 if will_retain else 0)
        payload += will_properties + utf8(will_topic) + binary(will_message)
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += binary(password)
    if connect_flags is not None:
        flags = connect_flags
    variable = utf8("MQTT") + bytes((level, flags)) + u16(keepalive) \
        + properties
    return packet("CONNECT", 0, variable + payload + trailing)


def connack(reason_code: int = 0, session_present: bool = False,
            properties: bytes = NO_PROPS) -> bytes:
    """CONNACK, section 3.2: flags, reason code, properties."""
    return packet("CONNACK", 0, bytes((1 if session_present else 0,
                                       reason_code)) + properties)


def publish(topic: StrOrRaw, payload: bytes = b"", *, qos: int = 0,
            retain: bool = False, dup: bool = False,
            packet_id: Optional[int] = None,
            properties: bytes = NO_PROPS) -> bytes:
    """PUBLISH, section 3.3: topic, packet id (QoS > 0), properties."""
    flags = (0x08 if dup else 0) | ((qos & 3) << 1) | (1 if retain else 0)
    body = utf8(topic)
    if packet_id is not None:
        body += u16(packet_id)
    return packet("PUBLISH", flags, body + properties + payload)


def ack(kind: str, packet_id: int, reason_code: Optional[int] = None,
        properties: Optional[bytes] = None) -> bytes:
    """
    PUBACK / PUBREC / PUBREL / PUBCOMP, sections 3.4 to 3.7: the reason
    code and properties are written only when given (section 3.4.2.1).
    """
    body = u16(packet_id)
    if reason_code is not None:
        body += bytes((reason_code,))
    if properties is not None:
        body += properties
    return packet(kind, 0b0010 if kind == "PUBREL" else 0, body)


def subscribe(packet_id: int, topics: Sequence[Tuple[StrOrRaw, int]],
              properties: bytes = NO_PROPS) -> bytes:
    """SUBSCRIBE, section 3.8: filter + subscription options byte."""
    body = u16(packet_id) + properties
    for topic_filter, options in topics:
        body += utf8(topic_filter) + bytes((options,))
    return packet("SUBSCRIBE", 0b0010, body)


def suback(packet_id: int, codes: Iterable[int],
           properties: bytes = NO_PROPS) -> bytes:
    """SUBACK, section 3.9."""
    return packet("SUBACK", 0, u16(packet_id) + properties + bytes(codes))


def unsubscribe(packet_id: int, topics: Sequence[StrOrRaw],
                properties: bytes = NO_PROPS) -> bytes:
    """UNSUBSCRIBE, section 3.10."""
    return packet("UNSUBSCRIBE", 0b0010, u16(packet_id) + properties
                  + b"".join(utf8(t) for t in topics))


def unsuback(packet_id: int, codes: Iterable[int],
             properties: bytes = NO_PROPS) -> bytes:
    """UNSUBACK, section 3.11: one reason code per filter."""
    return packet("UNSUBACK", 0, u16(packet_id) + properties + bytes(codes))


def _reason_packet(kind: Union[str, int], reason_code: Optional[int],
                   properties: Optional[bytes]) -> bytes:
    body = b""
    if reason_code is not None:
        body += bytes((reason_code,))
    if properties is not None:
        body += properties
    return packet(kind, 0, body)


def disconnect(reason_code: Optional[int] = None,
               properties: Optional[bytes] = None) -> bytes:
    """DISCONNECT, section 3.14: both fields optional (length 0, 1, more)."""
    return _reason_packet("DISCONNECT", reason_code, properties)


def auth(reason_code: Optional[int] = None,
         properties: Optional[bytes] = None) -> bytes:
    """AUTH, section 3.15 (packet type 15)."""
    return _reason_packet(15, reason_code, properties)
