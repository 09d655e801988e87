"""
MQTT 3.1 / 3.1.1 wire codec: bytes to :mod:`vmqtw.mqtt.packets` and back.

Pure and sans-IO: the protocol adapter hands received bytes to
:meth:`Decoder.feed` and writes what :func:`encode` returns.  Every rule of
the spec that makes a packet *malformed* is enforced here, so the session
only ever sees well-formed packets; semantic judgements that the spec answers
with a return code (client id length, wildcard placement in filters, ACLs)
are left to the session.

This is the hot path of the broker, so the decoder parses one ``bytearray``
with integer offsets, inlines PUBLISH, dispatches other types through a table
and deletes the consumed prefix once per :meth:`Decoder.feed` call.
"""
from __future__ import annotations

from struct import Struct
from struct import error as struct_error
from typing import Any, Callable, Dict, List, Optional, Tuple

from vmqtw.mqtt.packets import (
    CONNECT, PROTOCOL_LEVEL_31, PROTOCOL_LEVEL_311, SUBACK_FAILURE,
    ConnAck, Connect, Disconnect, Packet, PingReq, PingResp, PubAck, PubComp,
    PubRec, PubRel, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe, Will)

__all__ = ["ProtocolError", "UnacceptableProtocolLevel", "Decoder", "encode",
           "encode_publish", "MAX_REMAINING_LENGTH", "MAX_CONNECT_REMAINING_LENGTH"]

#: The largest remaining length four varint bytes can carry (section 2.2.3).
MAX_REMAINING_LENGTH = 268_435_455

#: The longest CONNECT remaining length that can be well-formed: "MQIsdp"
#: (8 bytes) + level, flags, keepalive (4) + five length-prefixed fields
#: (client id, will topic, will message, user name, password) of at most
#: 2 + 65,535 bytes each.  A longer CONNECT is refused as soon as its length
#: is read, so an unauthenticated peer can never make us buffer more than
#: this, whatever ``max_message_size`` says (CVE-2017-7651).
MAX_CONNECT_REMAINING_LENGTH = 12 + 5 * (2 + 0xFFFF)

_H = Struct("!H")
_BBH = Struct("!BBH")
_BB = Struct("!BB")


class ProtocolError(Exception):
    """
    The peer sent a malformed packet; the connection must be closed.

    ``reason`` is a short human sentence for the log (no traceback needed).
    ``packets`` holds the well-formed packets that preceded the bad one in
    the same :meth:`Decoder.feed` call, so a caller may still act on them
    (for instance publish a message that arrived just before the garbage).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.packets: List[Packet] = []


class UnacceptableProtocolLevel(ProtocolError):
    """
    A CONNECT with a known protocol name but a level we do not speak.

    Unlike other malformed packets the broker answers CONNACK 0x01 before
    closing [MQTT-3.1.2-2], so the session needs to tell the two apart.
    """

    def __init__(self, protocol_name: str, protocol_level: int) -> None:
        super().__init__("unacceptable protocol level %d for %r"
                         % (protocol_level, protocol_name))
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level


#: Accepted (protocol name, level) pairs; anything else with a known name is
#: an unacceptable level, an unknown name is malformed [MQTT-3.1.2-1].
_ACCEPTED = {("MQIsdp", PROTOCOL_LEVEL_31), ("MQTT", PROTOCOL_LEVEL_311)}
_KNOWN_NAMES = frozenset(name for name, _ in _ACCEPTED)


_PublishFlags = Optional[Tuple[int, bool, bool]]


def _publish_flag_table(strict_dup: bool) -> Tuple[_PublishFlags, ...]:
    """
    Map the 4 PUBLISH flag bits to ``(qos, retain, dup)`` or ``None``.

    A table lookup replaces three shifts and two checks per frame; QoS 3 is
    malformed [MQTT-3.3.1-4] and so, in 3.1.1, is DUP on QoS 0
    [MQTT-3.3.1-2].
    """
    table: List[_PublishFlags] = []
    for flags in range(16):
        qos = (flags >> 1) & 3
        dup = bool(flags & 8)
        if qos == 3 or (strict_dup and dup and qos == 0):
            table.append(None)
        else:
            table.append((qos, bool(flags & 1), dup))
    return tuple(table)


_PUB_FLAGS_311 = _publish_flag_table(True)
_PUB_FLAGS_31 = _publish_flag_table(False)


# --------------------------------------------------------------------------
# field readers: (buf, pos, end) -> (value, new_pos); bounds are checked
# against ``end`` (the packet's end), never the buffer's, so a lying length
# field can not read into the next packet.

def _read_str(buf: bytearray, pos: int, end: int,
              what: str) -> Tuple[str, int]:
    """
    A UTF-8 string: strict decoding rejects ill-formed sequences and
    surrogates [MQTT-1.5.3-1]; U+0000 is refused [MQTT-1.5.3-2].
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


def _read_bin(buf: bytearray, pos: int, end: int,
              what: str) -> Tuple[bytes, int]:
    """Two-byte length prefixed binary data (will message, password)."""
    start = pos + 2
    if start > end:
        raise ProtocolError("truncated %s length" % what)
    stop = start + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise ProtocolError("truncated %s" % what)
    return bytes(buf[start:stop]), stop


def _read_id(buf: bytearray, pos: int, end: int) -> int:
    """A non-zero packet identifier [MQTT-2.3.1-1]."""
    if pos + 2 > end:
        raise ProtocolError("truncated packet identifier")
    packet_id = (buf[pos] << 8) | buf[pos + 1]
    if not packet_id:
        raise ProtocolError("packet identifier 0")
    return packet_id


# --------------------------------------------------------------------------
# per-type parsers: (decoder, flags, buf, start, end) -> packet, where flags
# are the low 4 bits of the fixed header.  PUBLISH is inlined in
# Decoder.feed.

_Parser = Callable[["Decoder", int, bytearray, int, int], Packet]


def _parse_connect(dec: "Decoder", flags: int, buf: bytearray, pos: int,
                   end: int) -> Connect:
    if flags:
        raise ProtocolError("CONNECT fixed header flags must be 0")
    name, pos = _read_str(buf, pos, end, "protocol name")
    if name not in _KNOWN_NAMES:
        raise ProtocolError("unknown protocol name %r" % (name,))
    if pos >= end:
        raise ProtocolError("truncated CONNECT")
    level = buf[pos]
    if level & 0x80 and (name, level & 0x7F) in _ACCEPTED:
        # Bridge flag (VerneMQ 131/132): same wire format as the plain level.
        level &= 0x7F
    if (name, level) not in _ACCEPTED:
        # Raised before reading further: a newer level's body has another
        # layout, and the broker must answer CONNACK 1 anyway.
        raise UnacceptableProtocolLevel(name, level)
    if pos + 4 > end:
        raise ProtocolError("truncated CONNECT")
    cflags = buf[pos + 1]
    keepalive = (buf[pos + 2] << 8) | buf[pos + 3]
    pos += 4
    if cflags & 0x01:
        raise ProtocolError("CONNECT reserved flag set")
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 3
    will_retain = bool(cflags & 0x20)
    has_password = cflags & 0x40
    has_username = cflags & 0x80
    if not will_flag and (will_qos or will_retain):
        raise ProtocolError("will QoS or retain without will flag")
    if will_qos == 3:
        raise ProtocolError("will QoS 3")
    if has_password and not has_username and level == PROTOCOL_LEVEL_311:
        raise ProtocolError("password flag without username flag")
    client_id, pos = _read_str(buf, pos, end, "client identifier")
    will = None
    if will_flag:
        will_topic, pos = _read_str(buf, pos, end, "will topic")
        will_payload, pos = _read_bin(buf, pos, end, "will message")
        will = Will(will_topic, will_payload, will_qos, will_retain)
    username = password = None
    if has_username:
        username, pos = _read_str(buf, pos, end, "username")
    # MQTT 3.1 clients in the wild set the password flag but omit the field.
    if has_password and not (pos == end and level == PROTOCOL_LEVEL_31):
        password, pos = _read_bin(buf, pos, end, "password")
    if pos != end:
        raise ProtocolError("trailing bytes after CONNECT payload")
    # PUBLISH DUP on QoS 0 is only malformed from 3.1.1 on.
    dec._pub_flags = _PUB_FLAGS_31 if level == PROTOCOL_LEVEL_31 \
        else _PUB_FLAGS_311
    return Connect(client_id, name, level, bool(cflags & 0x02), keepalive,
                   will, username, password)


def _parse_connack(dec: "Decoder", flags: int, buf: bytearray, pos: int,
                   end: int) -> ConnAck:
    if flags:
        raise ProtocolError("CONNACK fixed header flags must be 0")
    if end - pos != 2:
        raise ProtocolError("CONNACK remaining length must be 2")
    ack_flags = buf[pos]
    if ack_flags & 0xFE:
        raise ProtocolError("CONNACK reserved flags set")  # [MQTT-3.2.2-1]
    return ConnAck(buf[pos + 1], bool(ack_flags))


def _ack_parser(cls: type, name: str, required_flags: int) -> _Parser:
    """Build the parser of a two-byte packet-id-only acknowledgement."""
    def parse(dec: "Decoder", flags: int, buf: bytearray, pos: int,
              end: int) -> Packet:
        if flags != required_flags:
            raise ProtocolError("bad %s fixed header flags" % name)
        if end - pos != 2:
            raise ProtocolError("%s remaining length must be 2" % name)
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        if not packet_id:
            raise ProtocolError("packet identifier 0")
        return cls(packet_id)
    parse.__name__ = "_parse_" + name.lower()
    return parse


def _parse_subscribe(dec: "Decoder", flags: int, buf: bytearray, pos: int,
                     end: int) -> Subscribe:
    if flags != 0b0010:
        raise ProtocolError("SUBSCRIBE fixed header flags must be 0010")
    packet_id = _read_id(buf, pos, end)
    pos += 2
    topics = []
    while pos < end:
        topic_filter, pos = _read_str(buf, pos, end, "topic filter")
        if pos >= end:
            raise ProtocolError("truncated SUBSCRIBE requested QoS")
        qos = buf[pos]
        if qos > 2:  # covers reserved upper bits too [MQTT-3-8.3-4]
            raise ProtocolError("bad requested QoS byte")
        pos += 1
        topics.append((topic_filter, qos))
    if not topics:
        raise ProtocolError("SUBSCRIBE without filters")
    return Subscribe(packet_id, topics)


_SUBACK_CODES = frozenset((0, 1, 2, SUBACK_FAILURE))


def _parse_suback(dec: "Decoder", flags: int, buf: bytearray, pos: int,
                  end: int) -> SubAck:
    if flags:
        raise ProtocolError("SUBACK fixed header flags must be 0")
    packet_id = _read_id(buf, pos, end)
    codes = list(buf[pos + 2:end])
    if not codes:
        raise ProtocolError("SUBACK without return codes")
    if not _SUBACK_CODES.issuperset(codes):
        raise ProtocolError("reserved SUBACK return code")  # [MQTT-3.9.3-2]
    return SubAck(packet_id, codes)


def _parse_unsubscribe(dec: "Decoder", flags: int, buf: bytearray, pos: int,
                       end: int) -> Unsubscribe:
    if flags != 0b0010:
        raise ProtocolError("UNSUBSCRIBE fixed header flags must be 0010")
    packet_id = _read_id(buf, pos, end)
    pos += 2
    topics = []
    while pos < end:
        topic_filter, pos = _read_str(buf, pos, end, "topic filter")
        topics.append(topic_filter)
    if not topics:
        raise ProtocolError("UNSUBSCRIBE without filters")
    return Unsubscribe(packet_id, topics)


def _empty_parser(cls: type, name: str) -> _Parser:
    """Build the parser of a packet with no variable header or payload."""
    def parse(dec: "Decoder", flags: int, buf: bytearray, pos: int,
              end: int) -> Packet:
        if flags:
            raise ProtocolError("%s fixed header flags must be 0" % name)
        if end != pos:
            raise ProtocolError("%s remaining length must be 0" % name)
        return cls()
    parse.__name__ = "_parse_" + name.lower()
    return parse


def _parse_reserved(dec: "Decoder", flags: int, buf: bytearray, pos: int,
                    end: int) -> Packet:
    raise ProtocolError("reserved packet type")


def _parse_publish_inline(dec: "Decoder", flags: int, buf: bytearray,
                          pos: int, end: int) -> Packet:
    # Holds PUBLISH's slot so the table is uniformly callable.
    raise AssertionError("PUBLISH is decoded inline in Decoder.feed")


_PARSERS: Tuple[_Parser, ...] = (
    _parse_reserved,
    _parse_connect,
    _parse_connack,
    _parse_publish_inline,
    _ack_parser(PubAck, "PUBACK", 0),
    _ack_parser(PubRec, "PUBREC", 0),
    _ack_parser(PubRel, "PUBREL", 0b0010),
    _ack_parser(PubComp, "PUBCOMP", 0),
    _parse_subscribe,
    _parse_suback,
    _parse_unsubscribe,
    _ack_parser(UnsubAck, "UNSUBACK", 0),
    _empty_parser(PingReq, "PINGREQ"),
    _empty_parser(PingResp, "PINGRESP"),
    _empty_parser(Disconnect, "DISCONNECT"),
    _parse_reserved,
)


class Decoder:
    """
    Incremental decoder for one connection's byte stream.

    ``max_packet_size`` bounds a whole packet (fixed header included, like
    mosquitto's ``max_packet_size`` and VerneMQ's ``max_message_size``); 0
    leaves only the 268,435,455-byte cap of the length encoding.  The bound
    is checked as soon as the remaining length is known, so a client can
    never make us hold more than the bound plus one read's worth of bytes.

    ``connect_first`` (for the server side) rejects a stream whose first
    byte is not a CONNECT header [MQTT-3.1.0-1] before any body arrives.

    After a :class:`ProtocolError` the decoder is poisoned: every later
    :meth:`feed` raises the same error, because the stream position is lost.
    """

    __slots__ = ("_buf", "_limit", "_pub_flags", "_connect_first", "_error")

    def __init__(self, max_packet_size: int = 0, *,
                 connect_first: bool = False) -> None:
        if max_packet_size < 0:
            raise ValueError("max_packet_size must be >= 0")
        self._buf = bytearray()
        # Compared with the total size: header (<= 5) + remaining length.
        self._limit = max_packet_size or (MAX_REMAINING_LENGTH + 5)
        self._pub_flags = _PUB_FLAGS_311
        self._connect_first = connect_first
        self._error: Optional[ProtocolError] = None

    @property
    def buffered(self) -> int:
        """Bytes held for a packet that is not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> List[Packet]:
        """
        Add ``data`` and return every packet it completes, in order.

        Raises :class:`ProtocolError` (its ``packets`` attribute holds the
        packets decoded before the bad one) on the first malformed packet.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        n = len(buf)
        if self._connect_first and n:
            if buf[0] >> 4 != CONNECT:
                self._error = ProtocolError("first packet is not CONNECT")
                raise self._error
            self._connect_first = False
        out: List[Packet] = []
        append = out.append
        limit = self._limit
        parsers = _PARSERS
        pos = 0
        mv = memoryview(buf)
        try:
            while n - pos >= 2:
                b0 = buf[pos]
                rl = buf[pos + 1]
                if rl < 0x80:
                    start = pos + 2
                else:
                    # Long remaining length: at most 4 bytes (section 2.2.3).
                    rl &= 0x7F
                    i = pos + 2
                    shift = 7
                    while i < n:
                        byte = buf[i]
                        i += 1
                        rl |= (byte & 0x7F) << shift
                        if byte < 0x80:
                            break
                        if shift == 21:
                            raise ProtocolError(
                                "remaining length longer than 4 bytes")
                        shift += 7
                    else:
                        break  # length bytes still incomplete
                    start = i
                end = start + rl
                if end - pos > limit:
                    raise ProtocolError("packet too large")
                if rl > MAX_CONNECT_REMAINING_LENGTH and b0 >> 4 == CONNECT:
                    raise ProtocolError("CONNECT longer than any valid CONNECT")
                if end > n:
                    break
                if b0 & 0xF0 == 0x30:
                    # PUBLISH, inlined: it is most of the traffic.
                    fl = self._pub_flags[b0 & 0x0F]
                    if fl is None:
                        raise ProtocolError("bad PUBLISH flags")
                    p = start + 2
                    if p > end:
                        raise ProtocolError("truncated topic length")
                    tstop = p + ((buf[start] << 8) | buf[start + 1])
                    if tstop > end:
                        raise ProtocolError("truncated topic")
                    try:
                        topic = buf[p:tstop].decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError(
                            "topic is not valid UTF-8") from None
                    if (not topic or "+" in topic or "#" in topic
                            or "\x00" in topic):
                        raise ProtocolError("bad PUBLISH topic")
                    qos = fl[0]
                    if qos:
                        if tstop + 2 > end:
                            raise ProtocolError("truncated packet identifier")
                        packet_id = (buf[tstop] << 8) | buf[tstop + 1]
                        if not packet_id:
                            raise ProtocolError("packet identifier 0")
                        append(Publish(topic, bytes(mv[tstop + 2:end]), qos,
                                       fl[1], fl[2], packet_id))
                    else:
                        append(Publish(topic, bytes(mv[tstop:end]), 0,
                                       fl[1], fl[2], None))
                else:
                    append(parsers[b0 >> 4](self, b0 & 0x0F, buf, start, end))
                pos = end
        except ProtocolError as err:
            err.packets = out
            self._error = err
            raise
        finally:
            mv.release()
            if pos:
                del buf[:pos]
        return out


# --------------------------------------------------------------------------
# encoding

def _remaining_length(n: int) -> bytes:
    """The variable length encoding of section 2.2.3."""
    if n < 0x80:
        return bytes((n,))
    if n > MAX_REMAINING_LENGTH:
        raise ValueError("packet too large to encode")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _frame(b0: int, body: bytes) -> bytes:
    """Prefix ``body`` with the fixed header."""
    return b"".join((bytes((b0,)), _remaining_length(len(body)), body))


def _enc_str(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 UTF-8 bytes")
    return _H.pack(len(raw)) + raw


def _enc_bin(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("binary field longer than 65535 bytes")
    return _H.pack(len(value)) + value


def encode_publish(topic: str, payload: bytes, qos: int, retain: bool,
                   dup: bool, packet_id: Optional[int]) -> bytes:
    """
    Encode one PUBLISH: the per-message fast path of every delivery.

    No packet object is built; the fixed and variable headers are packed
    with one struct call for small packets and joined once with the payload.
    """
    t = topic.encode("utf-8")
    tl = len(t)
    if tl > 0xFFFF:
        raise ValueError("topic longer than 65535 UTF-8 bytes")
    b0 = 0x30 | (qos << 1)
    if retain:
        b0 |= 1
    if dup:
        b0 |= 8
    if qos:
        if qos > 2 or not packet_id or packet_id > 0xFFFF:
            raise ValueError("QoS 1/2 PUBLISH needs QoS <= 2 and a packet "
                             "id in 1..65535")
        rl = tl + 4 + len(payload)
        if rl < 0x80:
            return b"".join((_BBH.pack(b0, rl, tl), t, _H.pack(packet_id),
                             payload))
        return b"".join((bytes((b0,)), _remaining_length(rl), _H.pack(tl), t,
                         _H.pack(packet_id), payload))
    rl = tl + 2 + len(payload)
    if rl < 0x80:
        return b"".join((_BBH.pack(b0, rl, tl), t, payload))
    return b"".join((bytes((b0,)), _remaining_length(rl), _H.pack(tl), t,
                     payload))


def _enc_connect(p: Connect) -> bytes:
    flags = 0
    parts = [_enc_str(p.protocol_name), b"", b"", _enc_str(p.client_id)]
    if p.clean_session:
        flags |= 0x02
    will = p.will
    if will is not None:
        if not 0 <= will.qos <= 2:
            raise ValueError("will QoS must be 0..2")
        flags |= 0x04 | (will.qos << 3)
        if will.retain:
            flags |= 0x20
        parts.append(_enc_str(will.topic))
        parts.append(_enc_bin(will.payload))
    if p.username is not None:
        flags |= 0x80
        parts.append(_enc_str(p.username))
    if p.password is not None:
        flags |= 0x40
        parts.append(_enc_bin(p.password))
    parts[1] = _BB.pack(p.protocol_level, flags)
    parts[2] = _H.pack(p.keepalive)
    return _frame(0x10, b"".join(parts))


def _enc_connack(p: ConnAck) -> bytes:
    return bytes((0x20, 2, 1 if p.session_present else 0, p.return_code))


def _enc_publish(p: Publish) -> bytes:
    return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup,
                          p.packet_id)


_AckPacket = PubAck | PubRec | PubRel | PubComp | UnsubAck


def _ack_encoder(b0: int) -> Callable[[_AckPacket], bytes]:
    def enc(p: _AckPacket) -> bytes:
        return _BBH.pack(b0, 2, p.packet_id)
    return enc


def _enc_subscribe(p: Subscribe) -> bytes:
    if not p.topics:
        raise ValueError("SUBSCRIBE needs at least one filter")
    body = [_H.pack(p.packet_id)]
    for topic_filter, qos in p.topics:
        if not 0 <= qos <= 2:
            raise ValueError("requested QoS must be 0..2")
        body.append(_enc_str(topic_filter))
        body.append(bytes((qos,)))
    return _frame(0x82, b"".join(body))


def _enc_suback(p: SubAck) -> bytes:
    if not p.return_codes:
        raise ValueError("SUBACK needs at least one return code")
    return _frame(0x90, _H.pack(p.packet_id) + bytes(p.return_codes))


def _enc_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.topics:
        raise ValueError("UNSUBSCRIBE needs at least one filter")
    body = [_H.pack(p.packet_id)]
    body.extend(_enc_str(topic_filter) for topic_filter in p.topics)
    return _frame(0xA2, b"".join(body))


# Keyed by the packet's class, so each encoder only ever sees its own type;
# the mapping cannot say that to mypy, hence ``Any`` for the argument.
_ENCODERS: Dict[type, Callable[[Any], bytes]] = {
    Connect: _enc_connect,
    ConnAck: _enc_connack,
    Publish: _enc_publish,
    PubAck: _ack_encoder(0x40),
    PubRec: _ack_encoder(0x50),
    PubRel: _ack_encoder(0x62),
    PubComp: _ack_encoder(0x70),
    Subscribe: _enc_subscribe,
    SubAck: _enc_suback,
    Unsubscribe: _enc_unsubscribe,
    UnsubAck: _ack_encoder(0xB0),
    PingReq: lambda p: b"\xc0\x00",
    PingResp: lambda p: b"\xd0\x00",
    Disconnect: lambda p: b"\xe0\x00",
}


def encode(packet: Packet) -> bytes:
    """
    Encode any packet object to its wire form.

    Fields are trusted (our own code builds packets), but whatever would
    silently corrupt the stream raises ``ValueError``: over-long strings or
    packets and out-of-range integers.
    """
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError("not an MQTT packet: %r" % (packet,)) from None
    try:
        return encoder(packet)
    except struct_error as err:
        raise ValueError("cannot encode %r: %s" % (packet, err)) from None
