"""
Minimal client-side MQTT 3.1.1 and 5.0 framing for the load generator.

Why a separate, hand-written framing instead of the broker's codec: a
benchmark that shares the broker's codec cannot catch a codec bug that makes
both sides agree on the wrong bytes, and the generator must stay usable
against any broker (mosquitto is the reference).  It is also built for a
different job: the hot path in :mod:`loadgen` never builds an object per
frame.  :func:`split_frames` returns ``(first_byte, body_start, body_end)``
offsets into the caller's buffer so that thousands of frames from one
``recv`` are handled with ``struct.unpack_from`` and no copies.

MQTT 5.0 (``protocol=5``) differs for the generator only in a few places:
CONNECT, CONNACK, SUBSCRIBE, SUBACK and PUBLISH carry a property block
(section 2.2.2), and an acknowledgement may carry a reason code.

Pure: no sockets, no clocks.  Builders return ``bytes``; parsers take a
buffer plus offsets and raise :class:`WireError` on malformed input.
"""
from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Tuple, Union

import attrs

Buffer = Union[bytes, bytearray, memoryview]

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

#: Largest value the 4-byte Remaining Length can carry (section 2.2.3).
MAX_REMAINING_LENGTH = 268_435_455

#: SUBACK return code for a refused filter (section 3.9.3).
SUBACK_FAILURE = 0x80

_H = struct.Struct(">H")


class WireError(Exception):
    """The bytes are not a well-formed MQTT 3.1.1 frame."""


# ---------------------------------------------------------------- encoding


def encode_remaining_length(n: int) -> bytes:
    """Variable-length integer of section 2.2.3 (7 bits per byte, LSB first)."""
    if n < 0 or n > MAX_REMAINING_LENGTH:
        raise WireError(f"remaining length {n} out of range")
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_remaining_length(buf: Buffer, offset: int = 0) -> Optional[Tuple[int, int]]:
    """Return ``(value, offset_after)`` or ``None`` when more bytes are needed.

    Raises :class:`WireError` for a fifth continuation byte, which no valid
    frame has.
    """
    value = 0
    shift = 0
    end = len(buf)
    for i in range(4):
        pos = offset + i
        if pos >= end:
            return None
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + 1
        shift += 7
    raise WireError("remaining length longer than 4 bytes")


def encode_string(s: Union[str, bytes]) -> bytes:
    """Length-prefixed UTF-8 string of section 1.5.3."""
    data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if len(data) > 0xFFFF:
        raise WireError("string longer than 65535 bytes")
    return _H.pack(len(data)) + data


def _frame(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_remaining_length(len(body)) + body


def _check_packet_id(packet_id: int) -> None:
    # [MQTT-2.3.1-1]: packets that carry an identifier need a non-zero one.
    if not 0 < packet_id <= 0xFFFF:
        raise WireError(f"packet id {packet_id} not in 1..65535")


#: MQTT protocol levels the generator speaks.
PROTOCOLS = (4, 5)

#: An empty MQTT 5.0 property block (section 2.2.2.1).
NO_PROPERTIES = b"\x00"


def connect(client_id: str, *, clean_session: bool = True, keepalive: int = 60,
            username: Optional[str] = None, password: Optional[bytes] = None,
            protocol: int = 4) -> bytes:
    """
    CONNECT for protocol level 4 or 5 ("MQTT", section 3.1), no will; at
    level 5 with no properties (clean start, session expiry 0).
    """
    if protocol not in PROTOCOLS:
        raise WireError(f"protocol level {protocol} not in {PROTOCOLS}")
    if not 0 <= keepalive <= 0xFFFF:
        raise WireError("keepalive out of range")
    if password is not None and username is None:
        # [MQTT-3.1.2-22]: no password without a user name.
        raise WireError("password needs a username")
    flags = 0x02 if clean_session else 0  # reserved bit 0 stays 0 [MQTT-3.1.2-3]
    payload = encode_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
    if password is not None:
        flags |= 0x40
        payload += encode_string(password)
    variable = encode_string("MQTT") + bytes((protocol, flags)) + _H.pack(keepalive)
    if protocol == 5:
        variable += NO_PROPERTIES
    return _frame(CONNECT << 4, variable + payload)


def subscribe(packet_id: int, filters: Sequence[Tuple[str, int]], protocol: int = 4) -> bytes:
    """
    SUBSCRIBE; fixed-header flags are 0b0010 [MQTT-3.8.1-1].  At level 5
    an empty property block follows the packet id, and the QoS byte is the
    options byte with no other option set.
    """
    _check_packet_id(packet_id)
    if not filters:
        raise WireError("SUBSCRIBE needs at least one filter")  # [MQTT-3.8.3-3]
    body = bytearray(_H.pack(packet_id))
    if protocol == 5:
        body += NO_PROPERTIES
    for topic_filter, qos in filters:
        if qos not in (0, 1, 2):
            raise WireError(f"bad requested qos {qos}")
        body += encode_string(topic_filter)
        body.append(qos)
    return _frame((SUBSCRIBE << 4) | 0x02, bytes(body))


def unsubscribe(packet_id: int, filters: Sequence[str]) -> bytes:
    """UNSUBSCRIBE; fixed-header flags are 0b0010 [MQTT-3.10.1-1]."""
    _check_packet_id(packet_id)
    if not filters:
        raise WireError("UNSUBSCRIBE needs at least one filter")
    body = _H.pack(packet_id) + b"".join(encode_string(f) for f in filters)
    return _frame((UNSUBSCRIBE << 4) | 0x02, body)


def publish_header(topic: Union[str, bytes], payload_len: int, *, qos: int = 0,
                   retain: bool = False, dup: bool = False) -> bytes:
    """Everything of a PUBLISH before its packet id / payload.

    The load generator pre-builds this once per topic and stamps only the
    packet id and the payload's sequence fields per message; the two-byte
    packet id (QoS > 0) must follow it directly.  At level 5 the property
    block comes between the packet id and the payload: count it in
    ``payload_len``.
    """
    if qos not in (0, 1, 2):
        raise WireError(f"bad qos {qos}")  # [MQTT-3.3.1-4]
    if dup and qos == 0:
        raise WireError("DUP must be 0 for QoS 0")  # [MQTT-3.3.1-2]
    name = encode_string(topic)
    remaining = len(name) + (2 if qos else 0) + payload_len
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return bytes((first,)) + encode_remaining_length(remaining) + name


def publish(topic: Union[str, bytes], payload: bytes, *, qos: int = 0,
            packet_id: Optional[int] = None, retain: bool = False,
            dup: bool = False, properties: Optional[bytes] = None) -> bytes:
    """
    One complete PUBLISH frame (section 3.3); ``properties``, an encoded
    property block (see :func:`publish_properties`), makes it level 5.
    """
    props = b"" if properties is None else properties
    head = publish_header(topic, len(props) + len(payload), qos=qos, retain=retain, dup=dup)
    if qos:
        if packet_id is None:
            raise WireError("QoS > 0 needs a packet id")
        _check_packet_id(packet_id)
        return head + _H.pack(packet_id) + props + payload
    if packet_id is not None:
        raise WireError("QoS 0 carries no packet id")  # [MQTT-2.3.1-5]
    return head + props + payload


def publish_properties(content_type: Optional[str] = None,
                       message_expiry: Optional[int] = None,
                       user_properties: Sequence[Tuple[str, str]] = ()) -> bytes:
    """
    A level-5 PUBLISH property block (section 3.3.2.3): message expiry
    interval (0x02), content type (0x03), user properties (0x26) in order.
    """
    body = bytearray()
    if message_expiry is not None:
        body += b"\x02" + struct.pack(">I", message_expiry)
    if content_type is not None:
        body += b"\x03" + encode_string(content_type)
    for name, value in user_properties:
        body += b"\x26" + encode_string(name) + encode_string(value)
    return encode_remaining_length(len(body)) + bytes(body)


def _ack(first_byte: int, packet_id: int) -> bytes:
    _check_packet_id(packet_id)
    return bytes((first_byte, 2)) + _H.pack(packet_id)


def puback(packet_id: int) -> bytes:
    return _ack(PUBACK << 4, packet_id)


def pubrec(packet_id: int) -> bytes:
    return _ack(PUBREC << 4, packet_id)


def pubrel(packet_id: int) -> bytes:
    """PUBREL; fixed-header flags are 0b0010 [MQTT-3.6.1-1]."""
    return _ack((PUBREL << 4) | 0x02, packet_id)


def pubcomp(packet_id: int) -> bytes:
    return _ack(PUBCOMP << 4, packet_id)


def pingreq() -> bytes:
    return bytes((PINGREQ << 4, 0))


def disconnect() -> bytes:
    return bytes((DISCONNECT << 4, 0))


# ---------------------------------------------------------------- decoding


Frame = Tuple[int, int, int]


def split_frames(buf: Buffer, offset: int = 0,
                 max_remaining: int = MAX_REMAINING_LENGTH) -> Tuple[List[Frame], int]:
    """Cut every complete frame out of ``buf[offset:]``.

    Returns ``([(first_byte, body_start, body_end), ...], next_offset)``;
    ``buf[next_offset:]`` is the start of an incomplete frame (keep it and
    append the next ``recv``).  No bytes are copied: bodies stay in ``buf``.
    Raises :class:`WireError` for a malformed length or a frame larger than
    ``max_remaining``.
    """
    frames: List[Frame] = []
    append = frames.append
    end = len(buf)
    pos = offset
    while pos + 2 <= end:
        first = buf[pos]
        b = buf[pos + 1]
        if b < 128:  # the usual case: a one-byte length
            start = pos + 2
            stop = start + b
        else:
            decoded = decode_remaining_length(buf, pos + 1)
            if decoded is None:
                break
            length, start = decoded
            if length > max_remaining:
                raise WireError(f"frame of {length} bytes exceeds {max_remaining}")
            stop = start + length
        if stop > end:
            break
        append((first, start, stop))
        pos = stop
    return frames, pos


def skip_properties(buf: Buffer, pos: int, end: int) -> int:
    """The offset past a level-5 property block starting at ``pos``."""
    decoded = decode_remaining_length(buf, pos)
    if decoded is None or decoded[0] + decoded[1] > end:
        raise WireError("property block overruns the frame")
    return decoded[0] + decoded[1]


def parse_connack(buf: Buffer, start: int, end: int, protocol: int = 4) -> Tuple[bool, int]:
    """
    ``(session_present, return_code)`` of a CONNACK body (section 3.2); at
    level 5 the reason code, then properties (not read).
    """
    if protocol == 5:
        if end - start < 3:
            raise WireError("level-5 CONNACK body too short")
        skip_properties(buf, start + 2, end)
        end = start + 2
    if end - start != 2:
        raise WireError("CONNACK body must be 2 bytes")
    flags = buf[start]
    if flags & 0xFE:
        raise WireError("CONNACK reserved flag bits set")
    return bool(flags & 1), buf[start + 1]


def parse_suback(buf: Buffer, start: int, end: int,
                 protocol: int = 4) -> Tuple[int, List[int]]:
    """
    ``(packet_id, [granted qos or 0x80, ...])`` of a SUBACK body (section
    3.9); at level 5 properties precede the reason codes, and any code
    0x80 or above is reported as 0x80.
    """
    if end - start < 3:
        raise WireError("SUBACK body too short")
    first = start + 2
    if protocol == 5:
        first = skip_properties(buf, first, end)
    codes = list(bytes(buf[first:end]))
    if protocol == 5:
        codes = [min(code, SUBACK_FAILURE) for code in codes]
    for code in codes:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise WireError(f"bad SUBACK return code {code:#x}")
    return _H.unpack_from(buf, start)[0], codes


def parse_ack(buf: Buffer, start: int, end: int) -> int:
    """Packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK body."""
    if end - start != 2:
        raise WireError("acknowledgement body must be 2 bytes")
    return _H.unpack_from(buf, start)[0]


@attrs.frozen(slots=True)
class PublishView:
    """A decoded PUBLISH whose payload still lives in the receive buffer."""

    topic: bytes
    qos: int
    dup: bool
    retain: bool
    packet_id: Optional[int]
    payload_start: int
    payload_end: int


def parse_publish(buf: Buffer, first_byte: int, start: int, end: int,
                  protocol: int = 4) -> PublishView:
    """Decode a PUBLISH body (section 3.3) without copying the payload."""
    qos = (first_byte >> 1) & 3
    if qos == 3:
        raise WireError("PUBLISH with QoS 3")  # [MQTT-3.3.1-4]
    if end - start < 2:
        raise WireError("PUBLISH body too short")
    tlen = _H.unpack_from(buf, start)[0]
    pos = start + 2 + tlen
    packet_id: Optional[int] = None
    if qos:
        if pos + 2 > end:
            raise WireError("PUBLISH truncated before packet id")
        packet_id = _H.unpack_from(buf, pos)[0]
        pos += 2
    elif pos > end:
        raise WireError("PUBLISH topic overruns the frame")
    if protocol == 5:
        pos = skip_properties(buf, pos, end)
    return PublishView(topic=bytes(buf[start + 2:start + 2 + tlen]), qos=qos,
                       dup=bool(first_byte & 0x08), retain=bool(first_byte & 1),
                       packet_id=packet_id, payload_start=pos, payload_end=end)
