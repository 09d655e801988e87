"""
MQTT 5.0 properties (OASIS MQTT 5.0, section 2.2.2): the 27 identifiers,
their types, which packets may carry each, and their decoding with the
spec's validation.

Pure and sans-IO, used by :mod:`vmqtw.mqtt.codec`.  The rules enforced here
are the ones that need nothing but the packet itself:

* an identifier unknown, or not allowed in that packet, or a value not of
  its type (truncated, over-long varint, ill-formed UTF-8, U+0000) makes a
  *Malformed Packet* (0x81, section 2.2.2.2);
* a property given twice when it may appear once, and the value rules the
  spec states (receive maximum, maximum packet size, subscription identifier
  not 0; payload format indicator, request problem/response information,
  maximum QoS and the four "available" flags 0 or 1; a response topic without
  wildcards) make a *Protocol Error* (0x82); topic alias 0 makes 0x94 Topic
  Alias invalid [MQTT-3.3.2-8].

Rules that need the connection's state are the session's: a topic alias
above the maximum we announced, a subscription identifier in a PUBLISH sent
by a client [MQTT-3.3.4-6], a payload that does not match its payload
format indicator (0x99, optional), a session expiry set at DISCONNECT after
a CONNECT with 0, an AUTH without (or with another) authentication method.

The encoder applies the same rules and raises ``ValueError``, so what we
send always decodes on the other side.
"""
from __future__ import annotations

from operator import attrgetter
from struct import Struct
from struct import error as struct_error
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import attrs

from vmqtw.mqtt.packets import (
    AUTH, CONNACK, CONNECT, DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, Properties)
from vmqtw.mqtt.reasons import (
    TOPIC_ALIAS_INVALID, ProtocolError, ProtocolViolation)

__all__ = ["WILL", "PropertySpec", "SPECS", "BY_NAME", "decode_properties",
           "encode_properties", "read_str", "read_bin", "read_varint",
           "encode_varint", "MAX_VARINT"]

#: The "packet kind" of will properties (section 3.1.3.2): packet type 0 is
#: reserved, so its bit is free in the per-property masks.
WILL = 0

#: The largest value of a Variable Byte Integer (section 1.5.5).
MAX_VARINT = 268_435_455

_H = Struct("!H")
_L = Struct("!L")

# Property data types (section 2.2.2.2).
BYTE = "byte"
TWO_BYTE = "two-byte integer"
FOUR_BYTE = "four-byte integer"
VARINT = "variable byte integer"
UTF8 = "UTF-8 string"
BINARY = "binary data"
PAIR = "UTF-8 string pair"

# Value rules: what the value must satisfy beyond its type.
ANY = "any"
BOOLEAN = "0 or 1"
NON_ZERO = "not 0"
TOPIC = "a topic name without wildcards"

_KIND_NAMES = {
    WILL: "will properties", CONNECT: "CONNECT", CONNACK: "CONNACK",
    PUBLISH: "PUBLISH", PUBACK: "PUBACK", PUBREC: "PUBREC",
    PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK",
    DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}


@attrs.define(frozen=True, slots=True)
class PropertySpec:
    """One row of the property table of section 2.2.2.2."""

    identifier: int
    #: The :class:`~vmqtw.mqtt.packets.Properties` field holding it.
    name: str
    type: str
    #: Packet types (and :data:`WILL`) that may carry it.
    kinds: Tuple[int, ...]
    rule: str = ANY
    #: Reason code of a value breaking ``rule``.
    code: int = 0x82
    #: May appear more than once (user property; subscription identifier
    #: in PUBLISH only, see :func:`decode_properties`).
    repeats: bool = False

    @property
    def mask(self) -> int:
        bits = 0
        for kind in self.kinds:
            bits |= 1 << kind
        return bits


_ALL = (CONNECT, CONNACK, PUBLISH, WILL, PUBACK, PUBREC, PUBREL, PUBCOMP,
        SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH)

#: The 27 properties, in identifier order.
SPECS: Tuple[PropertySpec, ...] = (
    PropertySpec(0x01, "payload_format_indicator", BYTE, (PUBLISH, WILL),
                 BOOLEAN),
    PropertySpec(0x02, "message_expiry_interval", FOUR_BYTE, (PUBLISH, WILL)),
    PropertySpec(0x03, "content_type", UTF8, (PUBLISH, WILL)),
    PropertySpec(0x08, "response_topic", UTF8, (PUBLISH, WILL), TOPIC),
    PropertySpec(0x09, "correlation_data", BINARY, (PUBLISH, WILL)),
    PropertySpec(0x0B, "subscription_identifiers", VARINT,
                 (PUBLISH, SUBSCRIBE), NON_ZERO, repeats=True),
    PropertySpec(0x11, "session_expiry_interval", FOUR_BYTE,
                 (CONNECT, CONNACK, DISCONNECT)),
    PropertySpec(0x12, "assigned_client_identifier", UTF8, (CONNACK,)),
    PropertySpec(0x13, "server_keep_alive", TWO_BYTE, (CONNACK,)),
    PropertySpec(0x15, "authentication_method", UTF8,
                 (CONNECT, CONNACK, AUTH)),
    PropertySpec(0x16, "authentication_data", BINARY,
                 (CONNECT, CONNACK, AUTH)),
    PropertySpec(0x17, "request_problem_information", BYTE, (CONNECT,),
                 BOOLEAN),
    PropertySpec(0x18, "will_delay_interval", FOUR_BYTE, (WILL,)),
    PropertySpec(0x19, "request_response_information", BYTE, (CONNECT,),
                 BOOLEAN),
    PropertySpec(0x1A, "response_information", UTF8, (CONNACK,)),
    PropertySpec(0x1C, "server_reference", UTF8, (CONNACK, DISCONNECT)),
    PropertySpec(0x1F, "reason_string", UTF8,
                 (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK,
                  DISCONNECT, AUTH)),
    PropertySpec(0x21, "receive_maximum", TWO_BYTE, (CONNECT, CONNACK),
                 NON_ZERO),
    PropertySpec(0x22, "topic_alias_maximum", TWO_BYTE, (CONNECT, CONNACK)),
    PropertySpec(0x23, "topic_alias", TWO_BYTE, (PUBLISH,), NON_ZERO,
                 TOPIC_ALIAS_INVALID),
    PropertySpec(0x24, "maximum_qos", BYTE, (CONNACK,), BOOLEAN),
    PropertySpec(0x25, "retain_available", BYTE, (CONNACK,), BOOLEAN),
    PropertySpec(0x26, "user_properties", PAIR, _ALL, repeats=True),
    PropertySpec(0x27, "maximum_packet_size", FOUR_BYTE, (CONNECT, CONNACK),
                 NON_ZERO),
    PropertySpec(0x28, "wildcard_subscription_available", BYTE, (CONNACK,),
                 BOOLEAN),
    PropertySpec(0x29, "subscription_identifier_available", BYTE,
                 (CONNACK,), BOOLEAN),
    PropertySpec(0x2A, "shared_subscription_available", BYTE, (CONNACK,),
                 BOOLEAN),
)

BY_NAME: Dict[str, PropertySpec] = {spec.name: spec for spec in SPECS}

# Decoding table indexed by the identifier's first byte: (spec, mask, type,
# rule, bit) tuples, so the loop does one list index and no attribute
# lookups.  Every defined identifier is below 0x80, so a first byte with
# the continuation bit (a multi-byte identifier) is unknown, hence malformed.
_Row = Tuple[PropertySpec, int, str, str, int]
_TABLE: List[Optional[_Row]] = [None] * 256
for _spec in SPECS:
    _TABLE[_spec.identifier] = (_spec, _spec.mask, _spec.type, _spec.rule,
                                1 << _spec.identifier)
del _spec

_SUBSCRIPTION_ID = BY_NAME["subscription_identifiers"]


def _getter(names: Sequence[str]) -> Callable[[Properties], Tuple[Any, ...]]:
    """``attrgetter`` that always returns a tuple (it does not for 0 or 1)."""
    if len(names) >= 2:
        return attrgetter(*names)
    if names:
        name = names[0]
        return lambda props: (getattr(props, name),)
    return lambda props: ()


# Per packet kind, for the encoder: the single-valued properties it may
# carry (in identifier order) with one getter for their values, and one
# getter for all the others, which must be None.  A PUBLISH looks at six
# fields one by one, not twenty-five.
_EncodeRow = Tuple[Tuple[PropertySpec, ...],
                   Callable[[Properties], Tuple[Any, ...]],
                   Tuple[PropertySpec, ...],
                   Callable[[Properties], Tuple[Any, ...]]]
_ENCODE_ROWS: Dict[int, _EncodeRow] = {}
for _kind in _KIND_NAMES:
    _allowed = tuple(spec for spec in SPECS
                     if not spec.repeats and _kind in spec.kinds)
    _others = tuple(spec for spec in SPECS
                    if not spec.repeats and _kind not in spec.kinds)
    _ENCODE_ROWS[_kind] = (_allowed, _getter([s.name for s in _allowed]),
                           _others, _getter([s.name for s in _others]))
del _kind, _allowed, _others


#: What the readers parse: a read as the reactor gave it (bytes), or the
#: decoder's buffer when a packet spans reads (bytearray).
ReadBuffer = Union[bytes, bytearray]


# --------------------------------------------------------------------------
# field readers: (buf, pos, end) -> (value, new_pos), bounded by ``end``
# (the end of the packet or property block, never of the buffer) so a lying
# length can not read into the next packet.  The codec uses them too.

def read_str(buf: ReadBuffer, pos: int, end: int, what: str) -> Tuple[str, int]:
    """
    A UTF-8 string: strict decoding rejects ill-formed sequences and
    surrogates [MQTT-1.5.3-1] [MQTT-1.5.4-1]; U+0000 is refused
    [MQTT-1.5.3-2] [MQTT-1.5.4-2].
    """
    start = pos + 2
    if start > end:
        raise ProtocolError("truncated %s length" % what)
    stop = start + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise ProtocolError("truncated %s" % what)
    try:
        value = buf[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("%s is not valid UTF-8" % what) from None
    if "\x00" in value:
        raise ProtocolError("%s contains U+0000" % what)
    return value, stop


def read_bin(buf: ReadBuffer, pos: int, end: int,
             what: str) -> Tuple[bytes, int]:
    """Two-byte length prefixed binary data (will message, password...)."""
    start = pos + 2
    if start > end:
        raise ProtocolError("truncated %s length" % what)
    stop = start + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise ProtocolError("truncated %s" % what)
    return bytes(buf[start:stop]), stop


def read_varint(buf: ReadBuffer, pos: int, end: int,
                what: str) -> Tuple[int, int]:
    """
    A Variable Byte Integer of at most four bytes, encoded with the fewest
    bytes [MQTT-1.5.5-1] (a 3.1.1 remaining length need not be minimal;
    the codec reads that one itself).
    """
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError("truncated %s" % what)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if not byte and shift:
                raise ProtocolError("%s is not minimally encoded" % what)
            return value, pos
        shift += 7
        if shift == 28:
            raise ProtocolError("%s longer than 4 bytes" % what)


def decode_properties(buf: ReadBuffer, pos: int, end: int,
                      kind: int) -> Tuple[Optional[Properties], int]:
    """
    Read a property block (its length, then the properties) at ``pos`` for
    packet type ``kind`` (or :data:`WILL`).

    Returns ``(None, new_pos)`` for an empty block, so packets without
    properties allocate nothing.  Raises :class:`ProtocolError` (0x81) or
    :class:`ProtocolViolation` (0x82 or the rule's code) as the module
    docstring lists.
    """
    if pos >= end:
        raise ProtocolError("truncated property length")
    length = buf[pos]
    if length < 0x80:
        pos += 1
    else:
        length, pos = read_varint(buf, pos, end, "property length")
    if not length:
        return None, pos
    stop = pos + length
    if stop > end:
        raise ProtocolError("property length past the end of the packet")
    props = Properties()
    kind_bit = 1 << kind
    seen = 0
    users: Optional[List[Tuple[str, str]]] = None
    sub_ids: Optional[List[int]] = None
    table = _TABLE
    while pos < stop:
        ident = buf[pos]
        row = table[ident]
        if row is None or not row[1] & kind_bit:
            raise ProtocolError("property 0x%02X not allowed in %s"
                                % (ident, _KIND_NAMES.get(kind, kind)))
        spec, _, ptype, rule, bit = row
        pos += 1
        # Most frequent types first; ``is``: the table holds the module's
        # own type constants.
        if ptype is PAIR:
            name, pos = read_str(buf, pos, stop, "user property name")
            text, pos = read_str(buf, pos, stop, "user property value")
            if users is None:
                users = [(name, text)]
            else:
                users.append((name, text))
            continue
        if ptype is VARINT:  # the subscription identifier
            if pos < stop and buf[pos] < 0x80:
                sub_id = buf[pos]
                pos += 1
            else:
                sub_id, pos = read_varint(buf, pos, stop, spec.name)
            if not sub_id:
                raise ProtocolViolation("subscription identifier 0")
            if sub_ids is None:
                sub_ids = [sub_id]
            elif kind != PUBLISH:
                raise ProtocolViolation(
                    "subscription identifier more than once")
            else:
                sub_ids.append(sub_id)
            continue
        if seen & bit:
            raise ProtocolViolation("%s more than once" % spec.name)
        seen |= bit
        value: object
        if ptype is FOUR_BYTE:
            if pos + 4 > stop:
                raise ProtocolError("truncated %s" % spec.name)
            value = (buf[pos] << 24) | (buf[pos + 1] << 16) \
                | (buf[pos + 2] << 8) | buf[pos + 3]
            pos += 4
        elif ptype is UTF8:
            value, pos = read_str(buf, pos, stop, spec.name)
        elif ptype is TWO_BYTE:
            if pos + 2 > stop:
                raise ProtocolError("truncated %s" % spec.name)
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        elif ptype is BYTE:
            if pos >= stop:
                raise ProtocolError("truncated %s" % spec.name)
            value = buf[pos]
            pos += 1
        else:  # BINARY
            value, pos = read_bin(buf, pos, stop, spec.name)
        if rule is not ANY:
            _check(spec, value)
        setattr(props, spec.name, value)
    if users is not None:
        props.user_properties = tuple(users)
    if sub_ids is not None:
        props.subscription_identifiers = tuple(sub_ids)
    if kind == CONNECT and props.authentication_data is not None \
            and props.authentication_method is None:
        # 3.1.2.11.10
        raise ProtocolViolation("authentication data without a method")
    if kind == PUBLISH:
        # Kept to be sent on unchanged (see Properties.wire); the length
        # prefix re-encoded, so it is the shortest form [MQTT-1.5.5-1].
        props.wire = encode_varint(length) + bytes(buf[stop - length:stop])
    return props, stop


def _check(spec: PropertySpec, value: object) -> None:
    """Raise if ``value`` breaks ``spec.rule`` (decoded values only)."""
    rule = spec.rule
    if rule == BOOLEAN:
        ok = value in (0, 1)
    elif rule == NON_ZERO:
        ok = value != 0
    else:  # TOPIC
        ok = isinstance(value, str) and bool(value) \
            and "+" not in value and "#" not in value
    if not ok:
        raise ProtocolViolation("%s must be %s, not %r"
                                % (spec.name, rule, value), spec.code)


# --------------------------------------------------------------------------
# encoding

def encode_varint(value: int) -> bytes:
    """A minimal Variable Byte Integer (section 1.5.5)."""
    if value < 0x80:
        if value < 0:
            raise ValueError("negative variable byte integer")
        return bytes((value,))
    if value > MAX_VARINT:
        raise ValueError("variable byte integer too large")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_str(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 UTF-8 bytes")
    return _H.pack(len(raw)) + raw


def encode_bin(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("binary field longer than 65535 bytes")
    return _H.pack(len(value)) + value


def _encode_value(ptype: str, value: object) -> bytes:
    """One single-valued property's value in its wire type."""
    if ptype == UTF8 and isinstance(value, str):
        return encode_str(value)
    if ptype == BINARY and isinstance(value, bytes):
        return encode_bin(value)
    if isinstance(value, int):
        if ptype == BYTE:
            return bytes((value,))
        if ptype == TWO_BYTE:
            return _H.pack(value)
        if ptype == FOUR_BYTE:
            return _L.pack(value)
    raise ValueError("%r is not a %s" % (value, ptype))


def encode_properties(props: Optional[Properties], kind: int) -> bytes:
    """
    The property block (length included) of ``props`` for packet type
    ``kind``; ``b"\\x00"`` for ``None`` or an empty instance.

    Raises ``ValueError`` for a property the packet may not carry or a
    value the decoder would refuse.
    """
    if props is None:
        return b"\x00"
    if kind == PUBLISH and props.wire is not None:
        return props.wire
    kind_bit = 1 << kind
    parts: List[bytes] = []
    allowed, get_allowed, others, get_others = _ENCODE_ROWS[kind]
    values = get_others(props)
    if values.count(None) != len(values):
        names = [spec.name for spec, value in zip(others, values)
                 if value is not None]
        raise ValueError("%s not allowed in %s"
                         % (", ".join(names), _KIND_NAMES[kind]))
    try:
        for spec, value in zip(allowed, get_allowed(props)):
            if value is None:
                continue
            if spec.rule != ANY:
                try:
                    _check(spec, value)
                except ProtocolError as err:
                    raise ValueError(err.reason) from None
            parts.append(bytes((spec.identifier,)))
            parts.append(_encode_value(spec.type, value))
    except struct_error as err:
        raise ValueError("cannot encode properties: %s" % err) from None
    sub_ids = props.subscription_identifiers
    if sub_ids:
        if not _SUBSCRIPTION_ID.mask & kind_bit or \
                (len(sub_ids) > 1 and kind != PUBLISH):
            raise ValueError("subscription identifiers not allowed here")
        for sub_id in sub_ids:
            if not sub_id:
                raise ValueError("subscription identifier 0")
            parts.append(b"\x0b" + encode_varint(sub_id))
    for name, text in props.user_properties:
        parts.append(b"\x26" + encode_str(name) + encode_str(text))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def pack_message_properties(props: Optional[Properties]) -> Optional[bytes]:
    """
    The stored and forwarded form of a message's PUBLISH properties: their
    own MQTT 5.0 property block, so the message store and the inter-node
    wire keep them in wire order (user properties with their duplicates)
    without a format of their own; None when there are none.
    """
    if props is None:
        return None
    return encode_properties(props, PUBLISH)


def unpack_message_properties(data: Optional[bytes]) -> Optional[Properties]:
    """Inverse of :func:`pack_message_properties`."""
    if not data:
        return None
    buf = bytearray(data)
    props, _end = decode_properties(buf, 0, len(buf), PUBLISH)
    return props
