"""
MQTT 3.1 / 3.1.1 / 5.0 wire codec: bytes to :mod:`vmqtw.mqtt.packets` and back.

Pure and sans-IO: the protocol adapter hands received bytes to
:meth:`Decoder.feed` and writes what :func:`encode` returns.  Every rule of
the spec that makes a packet *malformed* is enforced here, so the session
only ever sees well-formed packets; semantic judgements that the spec answers
with a return code (client id length, wildcard placement in filters, ACLs)
are left to the session.

This is the hot path of the broker, so the decoder parses a read where it
lies (or, when a packet spans reads, one ``bytearray`` holding the rest)
with integer offsets, inlines PUBLISH, dispatches other types through a table
and keeps only an incomplete packet's bytes, once per :meth:`Decoder.feed`
call.

MQTT 5.0 (OASIS, 2019) is spoken only when asked: a server-side decoder
accepts a level-5 CONNECT with ``accept_v5=True`` (otherwise it raises
:class:`UnacceptableProtocolLevel` exactly as for any unknown level), and a
client-side one starts at ``protocol_level=5``.  From then on every packet of
the connection is parsed with the level-5 layouts (a second parser table;
PUBLISH through :func:`_parse_publish5`), properties through
:mod:`vmqtw.mqtt.properties`.  Errors carry the reason code the spec gives
(:attr:`ProtocolError.reason_code`: 0x81 Malformed Packet, 0x82 Protocol
Error, ...) for the session's CONNACK or DISCONNECT.  :func:`encode` takes the
level to write; 3.1.1 bytes are unchanged.
"""
from __future__ import annotations

from struct import Struct
from struct import error as struct_error
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from vmqtw.mqtt import reasons as R
from vmqtw.mqtt.packets import (
    AUTH, CONNACK, CONNECT, DISCONNECT, PROTOCOL_LEVEL_5, PROTOCOL_LEVEL_31,
    PROTOCOL_LEVEL_311, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK,
    SUBACK_FAILURE, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, Auth, ConnAck, Connect,
    Disconnect, Packet, PingReq, PingResp, Properties, PubAck, PubComp, PubRec,
    PubRel, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe, Will)
from vmqtw.mqtt.properties import (
    WILL, ReadBuffer, decode_properties, encode_bin as _enc_bin, encode_properties,
    encode_str as _enc_str, encode_varint, read_bin, read_str)
from vmqtw.mqtt.reasons import (
    ProtocolError, ProtocolViolation, UnacceptableProtocolLevel)

__all__ = ["ProtocolError", "ProtocolViolation", "UnacceptableProtocolLevel",
           "Decoder", "encode", "encode_publish", "encode_publish5",
           "MAX_REMAINING_LENGTH", "MAX_CONNECT_REMAINING_LENGTH",
           "MAX_CONNECT_REMAINING_LENGTH_V5"]

#: The largest remaining length four varint bytes can carry (section 2.2.3).
MAX_REMAINING_LENGTH = 268_435_455

#: The longest CONNECT remaining length that can be well-formed: "MQIsdp"
#: (8 bytes) + level, flags, keepalive (4) + five length-prefixed fields
#: (client id, will topic, will message, user name, password) of at most
#: 2 + 65,535 bytes each.  A longer CONNECT is refused as soon as its length
#: is read, so an unauthenticated peer can never make us buffer more than
#: this, whatever ``max_message_size`` says (CVE-2017-7651).
MAX_CONNECT_REMAINING_LENGTH = 12 + 5 * (2 + 0xFFFF)

#: The same bound once level 5 is accepted: a v5 CONNECT adds two property
#: blocks (CONNECT and will), whose size the spec does not bound.  We allow
#: 64 KiB each (plus their 4-byte lengths); a longer CONNECT is refused with
#: 0x95 Packet too large before its body is buffered.
MAX_CONNECT_REMAINING_LENGTH_V5 = MAX_CONNECT_REMAINING_LENGTH + 2 * (4 + 0xFFFF)

_H = Struct("!H")
_BBH = Struct("!BBH")
_BB = Struct("!BB")


#: Accepted (protocol name, level) pairs; anything else with a known name is
#: an unacceptable level, an unknown name is malformed [MQTT-3.1.2-1].
_ACCEPTED = frozenset((("MQIsdp", PROTOCOL_LEVEL_31),
                       ("MQTT", PROTOCOL_LEVEL_311)))
#: The same once the session opts in to MQTT 5.0.
_ACCEPTED_V5 = _ACCEPTED | {("MQTT", PROTOCOL_LEVEL_5)}
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

# The string readers live in vmqtw.mqtt.properties (properties use them too).
_read_str = read_str
_read_bin = read_bin


def _read_id(buf: ReadBuffer, pos: int, end: int) -> int:
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

_Parser = Callable[["Decoder", int, ReadBuffer, int, int], Packet]


def _parse_connect(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
                   end: int) -> Connect:
    if flags:
        raise ProtocolError("CONNECT fixed header flags must be 0")
    name, pos = _read_str(buf, pos, end, "protocol name")
    if name not in _KNOWN_NAMES:
        raise ProtocolError("unknown protocol name %r" % (name,))
    if pos >= end:
        raise ProtocolError("truncated CONNECT")
    level = buf[pos]
    accepted = dec._accepted
    if level & 0x80 and (name, level & 0x7F) in accepted:
        # Bridge flag (VerneMQ 131/132): same wire format as the plain level.
        level &= 0x7F
    if (name, level) not in accepted:
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
    if level == PROTOCOL_LEVEL_5:
        return _parse_connect5_payload(dec, name, cflags, keepalive, buf, pos,
                                       end)
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


def _parse_connect5_payload(dec: "Decoder", name: str, cflags: int,
                            keepalive: int, buf: ReadBuffer, pos: int,
                            end: int) -> Connect:
    """
    The rest of a level-5 CONNECT (sections 3.1.2.11 and 3.1.3): properties,
    client id, will properties + topic + payload, user name, password (which
    no longer needs a user name).  Switches the decoder to level 5 first,
    so that an error in the rest is known to be a level-5 client's (the
    server answers it with a CONNACK reason code).
    """
    dec._switch_to_v5()
    properties, pos = decode_properties(buf, pos, end, CONNECT)
    client_id, pos = _read_str(buf, pos, end, "client identifier")
    will = None
    if cflags & 0x04:
        will_props, pos = decode_properties(buf, pos, end, WILL)
        will_topic, pos = _read_str(buf, pos, end, "will topic")
        will_payload, pos = _read_bin(buf, pos, end, "will message")
        will = Will(will_topic, will_payload, (cflags >> 3) & 3,
                    bool(cflags & 0x20), will_props)
    username = password = None
    if cflags & 0x80:
        username, pos = _read_str(buf, pos, end, "username")
    if cflags & 0x40:
        password, pos = _read_bin(buf, pos, end, "password")
    if pos != end:
        raise ProtocolError("trailing bytes after CONNECT payload")
    return Connect(client_id, name, PROTOCOL_LEVEL_5, bool(cflags & 0x02),
                   keepalive, will, username, password, properties)


def _parse_connack(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
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
    def parse(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
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


def _parse_subscribe(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
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


def _parse_suback(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
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


def _parse_unsubscribe(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
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
    def parse(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
              end: int) -> Packet:
        if flags:
            raise ProtocolError("%s fixed header flags must be 0" % name)
        if end != pos:
            raise ProtocolError("%s remaining length must be 0" % name)
        return cls()
    parse.__name__ = "_parse_" + name.lower()
    return parse


def _parse_reserved(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
                    end: int) -> Packet:
    raise ProtocolError("reserved packet type")


def _parse_publish_inline(dec: "Decoder", flags: int, buf: ReadBuffer,
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


# --------------------------------------------------------------------------
# MQTT 5.0 parsers (same signature; PUBLISH has its own, called from feed)

def _parse_publish5(fl: Tuple[int, bool, bool], buf: ReadBuffer,
                    mv: memoryview, start: int, end: int) -> Publish:
    """
    A level-5 PUBLISH (section 3.3): topic, packet id, properties, payload.

    An empty property block (the common case) costs one byte test and no
    allocation.  The topic may be empty only with a topic alias
    [MQTT-3.3.2-1]; whether the alias is known is the session's business.
    """
    p = start + 2
    if p > end:
        raise ProtocolError("truncated topic length")
    tstop = p + ((buf[start] << 8) | buf[start + 1])
    if tstop > end:
        raise ProtocolError("truncated topic")
    try:
        topic = buf[p:tstop].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("topic is not valid UTF-8") from None
    if "\x00" in topic:
        raise ProtocolError("topic contains U+0000")
    if "+" in topic or "#" in topic:
        raise ProtocolViolation("wildcard in PUBLISH topic",
                                R.TOPIC_NAME_INVALID)  # [MQTT-3.3.2-2]
    qos = fl[0]
    packet_id = None
    if qos:
        if tstop + 2 > end:
            raise ProtocolError("truncated packet identifier")
        packet_id = (buf[tstop] << 8) | buf[tstop + 1]
        if not packet_id:
            raise ProtocolError("packet identifier 0")
        tstop += 2
    if tstop < end and not buf[tstop]:
        properties = None
        tstop += 1
    else:
        properties, tstop = decode_properties(buf, tstop, end, PUBLISH)
    if not topic and (properties is None or properties.topic_alias is None):
        raise ProtocolViolation("empty topic without a topic alias")
    return Publish(topic, bytes(mv[tstop:end]), qos, fl[1], fl[2], packet_id,
                   properties)


def _parse_connack5(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
                    end: int) -> ConnAck:
    if flags:
        raise ProtocolError("CONNACK fixed header flags must be 0")
    size = end - pos
    if size < 2:
        raise ProtocolError("CONNACK remaining length below 2")
    ack_flags = buf[pos]
    if ack_flags & 0xFE:
        raise ProtocolError("CONNACK reserved flags set")  # [MQTT-3.2.2-1]
    code = buf[pos + 1]
    if size == 2:
        # A server that does not speak 5 refusing us with a 3.1.1 CONNACK
        # (return code 1): kept readable, as mosquitto's client does.
        return ConnAck(code, bool(ack_flags))
    if code not in R.CONNACK_CODES:
        raise ProtocolViolation("CONNACK reason code 0x%02X" % code)
    properties, pos = decode_properties(buf, pos + 2, end, CONNACK)
    if pos != end:
        raise ProtocolError("trailing bytes after CONNACK properties")
    return ConnAck(code, bool(ack_flags), properties)


def _ack5_parser(cls: type, kind: int, name: str, required_flags: int,
                 codes: FrozenSet[int]) -> _Parser:
    """
    Build the parser of a level-5 PUBACK/PUBREC/PUBREL/PUBCOMP: remaining
    length 2 means 0x00 Success without properties, 3 a reason code without
    properties (sections 3.4.2.1 and 3.4.2.2.1).
    """
    def parse(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
              end: int) -> Packet:
        if flags != required_flags:
            raise ProtocolError("bad %s fixed header flags" % name)
        size = end - pos
        if size < 2:
            raise ProtocolError("%s remaining length below 2" % name)
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        if not packet_id:
            raise ProtocolError("packet identifier 0")
        if size == 2:
            return cls(packet_id)
        code = buf[pos + 2]
        if code not in codes:
            raise ProtocolViolation("%s reason code 0x%02X" % (name, code))
        if size == 3:
            return cls(packet_id, code)
        properties, pos = decode_properties(buf, pos + 3, end, kind)
        if pos != end:
            raise ProtocolError("trailing bytes after %s properties" % name)
        return cls(packet_id, code, properties)
    parse.__name__ = "_parse_" + name.lower() + "5"
    return parse


def _parse_subscribe5(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
                      end: int) -> Subscribe:
    if flags != 0b0010:
        raise ProtocolError("SUBSCRIBE fixed header flags must be 0010")
    packet_id = _read_id(buf, pos, end)
    properties, pos = decode_properties(buf, pos + 2, end, SUBSCRIBE)
    topics = []
    while pos < end:
        topic_filter, pos = _read_str(buf, pos, end, "topic filter")
        if pos >= end:
            raise ProtocolError("truncated subscription options")
        options = buf[pos]
        pos += 1
        if options & 0xC0:
            raise ProtocolError("subscription options reserved bits set")
        if options & 0x03 == 3:
            raise ProtocolViolation("subscription QoS 3")
        if options & 0x30 == 0x30:
            raise ProtocolViolation("retain handling 3")
        topics.append((topic_filter, options))
    if not topics:
        raise ProtocolViolation("SUBSCRIBE without filters")  # [MQTT-3.8.3-2]
    return Subscribe(packet_id, topics, properties)


def _parse_codes5(name: str, buf: ReadBuffer, pos: int, end: int,
                  codes: FrozenSet[int]) -> List[int]:
    found = list(buf[pos:end])
    if not found:
        raise ProtocolError("%s without reason codes" % name)
    if not codes.issuperset(found):
        raise ProtocolViolation("reserved %s reason code" % name)
    return found


def _parse_suback5(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
                   end: int) -> SubAck:
    if flags:
        raise ProtocolError("SUBACK fixed header flags must be 0")
    packet_id = _read_id(buf, pos, end)
    properties, pos = decode_properties(buf, pos + 2, end, SUBACK)
    return SubAck(packet_id, _parse_codes5("SUBACK", buf, pos, end,
                                           R.SUBACK_CODES), properties)


def _parse_unsubscribe5(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
                        end: int) -> Unsubscribe:
    if flags != 0b0010:
        raise ProtocolError("UNSUBSCRIBE fixed header flags must be 0010")
    packet_id = _read_id(buf, pos, end)
    properties, pos = decode_properties(buf, pos + 2, end, UNSUBSCRIBE)
    topics = []
    while pos < end:
        topic_filter, pos = _read_str(buf, pos, end, "topic filter")
        topics.append(topic_filter)
    if not topics:
        raise ProtocolViolation("UNSUBSCRIBE without filters")  # [MQTT-3.10.3-2]
    return Unsubscribe(packet_id, topics, properties)


def _parse_unsuback5(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
                     end: int) -> UnsubAck:
    if flags:
        raise ProtocolError("UNSUBACK fixed header flags must be 0")
    packet_id = _read_id(buf, pos, end)
    properties, pos = decode_properties(buf, pos + 2, end, UNSUBACK)
    return UnsubAck(packet_id, _parse_codes5("UNSUBACK", buf, pos, end,
                                             R.UNSUBACK_CODES), properties)


def _reason_parser(cls: type, kind: int, name: str,
                   codes: FrozenSet[int]) -> _Parser:
    """
    Build the parser of DISCONNECT or AUTH: remaining length 0 means 0x00
    and no properties, 1 a reason code alone (sections 3.14.2.1, 3.15.2.1;
    for AUTH the spec only names 0 and 2+, we read 1 as mosquitto does).
    """
    def parse(dec: "Decoder", flags: int, buf: ReadBuffer, pos: int,
              end: int) -> Packet:
        if flags:
            raise ProtocolError("%s fixed header flags must be 0" % name)
        if pos == end:
            return cls()
        code = buf[pos]
        if code not in codes:
            raise ProtocolViolation("%s reason code 0x%02X" % (name, code))
        if pos + 1 == end:
            return cls(code)
        properties, pos = decode_properties(buf, pos + 1, end, kind)
        if pos != end:
            raise ProtocolError("trailing bytes after %s properties" % name)
        return cls(code, properties)
    parse.__name__ = "_parse_" + name.lower() + "5"
    return parse


_PARSERS5: Tuple[_Parser, ...] = (
    _parse_reserved,
    _parse_connect,
    _parse_connack5,
    _parse_publish_inline,
    _ack5_parser(PubAck, PUBACK, "PUBACK", 0, R.PUBACK_CODES),
    _ack5_parser(PubRec, PUBREC, "PUBREC", 0, R.PUBREC_CODES),
    _ack5_parser(PubRel, PUBREL, "PUBREL", 0b0010, R.PUBREL_CODES),
    _ack5_parser(PubComp, PUBCOMP, "PUBCOMP", 0, R.PUBCOMP_CODES),
    _parse_subscribe5,
    _parse_suback5,
    _parse_unsubscribe5,
    _parse_unsuback5,
    _empty_parser(PingReq, "PINGREQ"),
    _empty_parser(PingResp, "PINGRESP"),
    _reason_parser(Disconnect, DISCONNECT, "DISCONNECT", R.DISCONNECT_CODES),
    _reason_parser(Auth, AUTH, "AUTH", R.AUTH_CODES),
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

    ``accept_v5`` lets a level-5 CONNECT through (off: it raises
    :class:`UnacceptableProtocolLevel` like any level we do not speak, so
    the broker answers CONNACK 0x01 as before); the packets after it are
    then parsed as MQTT 5.0.  ``protocol_level=5`` starts in MQTT 5.0 (a
    client that sent a level-5 CONNECT).

    After a :class:`ProtocolError` the decoder is poisoned: every later
    :meth:`feed` raises the same error, because the stream position is lost.
    """

    __slots__ = ("_buf", "_limit", "_pub_flags", "_connect_first", "_error",
                 "_accepted", "_connect_limit", "_parsers", "_v5")

    def __init__(self, max_packet_size: int = 0, *,
                 connect_first: bool = False, accept_v5: bool = False,
                 protocol_level: int = PROTOCOL_LEVEL_311) -> None:
        if max_packet_size < 0:
            raise ValueError("max_packet_size must be >= 0")
        if protocol_level not in (PROTOCOL_LEVEL_31, PROTOCOL_LEVEL_311,
                                  PROTOCOL_LEVEL_5):
            raise ValueError("protocol_level must be 3, 4 or 5")
        #: The start of a packet that is not complete yet, from earlier
        #: reads; None when there is none (most of the time: an idle
        #: connection holds no buffer, and a read that ends on a packet
        #: boundary is parsed where it lies).
        self._buf: Optional[bytearray] = None
        # Compared with the total size: header (<= 5) + remaining length.
        self._limit = max_packet_size or (MAX_REMAINING_LENGTH + 5)
        self._pub_flags = _PUB_FLAGS_31 if protocol_level == PROTOCOL_LEVEL_31 \
            else _PUB_FLAGS_311
        self._connect_first = connect_first
        self._error: Optional[ProtocolError] = None
        self._accepted = _ACCEPTED_V5 if accept_v5 else _ACCEPTED
        self._connect_limit = MAX_CONNECT_REMAINING_LENGTH_V5 if accept_v5 \
            else MAX_CONNECT_REMAINING_LENGTH
        self._parsers = _PARSERS
        self._v5 = False
        if protocol_level == PROTOCOL_LEVEL_5:
            self._switch_to_v5()

    def _switch_to_v5(self) -> None:
        """Parse every later packet with the MQTT 5.0 layouts."""
        self._parsers = _PARSERS5
        self._pub_flags = _PUB_FLAGS_311
        self._v5 = True

    @property
    def buffered(self) -> int:
        """Bytes held for a packet that is not complete yet."""
        return len(self._buf) if self._buf is not None else 0

    @property
    def protocol_level(self) -> int:
        """5 once MQTT 5.0 is spoken, else 4 (3.1 and 3.1.1 share layouts)."""
        return PROTOCOL_LEVEL_5 if self._v5 else PROTOCOL_LEVEL_311

    def feed(self, data: bytes) -> List[Packet]:
        """
        Add ``data`` and return every packet it completes, in order.

        Raises :class:`ProtocolError` (its ``packets`` attribute holds the
        packets decoded before the bad one) on the first malformed packet.
        """
        if self._error is not None:
            raise self._error
        held = self._buf
        buf: ReadBuffer
        if held is None:
            buf = data
        else:
            held += data
            buf = held
        n = len(buf)
        if self._connect_first and n:
            if buf[0] >> 4 != CONNECT:
                self._error = ProtocolError("first packet is not CONNECT")
                raise self._error
            self._connect_first = False
        out: List[Packet] = []
        append = out.append
        limit = self._limit
        parsers = self._parsers
        v5 = self._v5
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
                    if not byte and v5:
                        raise ProtocolError(  # [MQTT-1.5.5-1]
                            "remaining length not minimally encoded")
                    start = i
                end = start + rl
                if end - pos > limit:
                    # Over the maximum packet size we announce: a Protocol
                    # Error with its own code (3.2.2.3.6).
                    raise ProtocolViolation("packet too large",
                                            R.PACKET_TOO_LARGE)
                if rl > MAX_CONNECT_REMAINING_LENGTH and b0 >> 4 == CONNECT \
                        and rl > self._connect_limit:
                    raise ProtocolViolation(
                        "CONNECT longer than any valid CONNECT",
                        R.PACKET_TOO_LARGE)
                if end > n:
                    break
                if b0 & 0xF0 == 0x30:
                    # PUBLISH, inlined: it is most of the traffic.
                    fl = self._pub_flags[b0 & 0x0F]
                    if fl is None:
                        raise ProtocolError("bad PUBLISH flags")
                    if v5:
                        append(_parse_publish5(fl, buf, mv, start, end))
                        pos = end
                        continue
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
                    if b0 < 0x20:
                        # A CONNECT may have switched the level.
                        parsers = self._parsers
                        v5 = self._v5
                pos = end
        except ProtocolError as err:
            err.packets = out
            self._error = err
            raise
        finally:
            mv.release()
            if held is not None:
                if pos == n:
                    self._buf = None
                elif pos:
                    del held[:pos]
            elif pos < n:
                self._buf = bytearray(memoryview(data)[pos:])
        return out


# --------------------------------------------------------------------------
# encoding

def _remaining_length(n: int) -> bytes:
    """The variable length encoding of section 2.2.3."""
    if n < 0x80:
        return bytes((n,))
    if n > MAX_REMAINING_LENGTH:
        raise ValueError("packet too large to encode")
    return encode_varint(n)


def _frame(b0: int, body: bytes) -> bytes:
    """Prefix ``body`` with the fixed header."""
    return b"".join((bytes((b0,)), _remaining_length(len(body)), body))


# _enc_str / _enc_bin: the length-prefixed fields, shared with the properties.


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
    """CONNECT at the level it names (so at any level passed to encode)."""
    level5 = p.protocol_level == PROTOCOL_LEVEL_5
    if not level5 and (p.properties is not None or (
            p.will is not None and p.will.properties is not None)):
        raise ValueError("properties need protocol level 5")
    flags = 0
    parts = [_enc_str(p.protocol_name), b"", b""]
    if level5:
        parts.append(encode_properties(p.properties, CONNECT))
    parts.append(_enc_str(p.client_id))
    if p.clean_session:
        flags |= 0x02
    will = p.will
    if will is not None:
        if not 0 <= will.qos <= 2:
            raise ValueError("will QoS must be 0..2")
        flags |= 0x04 | (will.qos << 3)
        if will.retain:
            flags |= 0x20
        if level5:
            parts.append(encode_properties(will.properties, WILL))
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


def _no_properties(p: Any) -> None:
    """3.1.1 has no properties: refuse to drop them silently."""
    if p.properties is not None:
        raise ValueError("properties need protocol level 5")


def _enc_connack(p: ConnAck) -> bytes:
    _no_properties(p)
    return bytes((0x20, 2, 1 if p.session_present else 0, p.return_code))


def _enc_publish(p: Publish) -> bytes:
    _no_properties(p)
    return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup,
                          p.packet_id)


_AckPacket = PubAck | PubRec | PubRel | PubComp


def _ack_encoder(b0: int) -> Callable[[_AckPacket], bytes]:
    def enc(p: _AckPacket) -> bytes:
        if p.reason_code or p.properties is not None:
            raise ValueError("reason codes and properties need level 5")
        return _BBH.pack(b0, 2, p.packet_id)
    return enc


def _enc_unsuback(p: UnsubAck) -> bytes:
    if p.reason_codes or p.properties is not None:
        raise ValueError("UNSUBACK reason codes and properties need level 5")
    return _BBH.pack(0xB0, 2, p.packet_id)


def _enc_disconnect(p: Disconnect) -> bytes:
    if p.reason_code or p.properties is not None:
        raise ValueError("DISCONNECT reason codes and properties need level 5")
    return b"\xe0\x00"


def _enc_subscribe(p: Subscribe) -> bytes:
    _no_properties(p)
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
    _no_properties(p)
    if not p.return_codes:
        raise ValueError("SUBACK needs at least one return code")
    return _frame(0x90, _H.pack(p.packet_id) + bytes(p.return_codes))


def _enc_unsubscribe(p: Unsubscribe) -> bytes:
    _no_properties(p)
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
    UnsubAck: _enc_unsuback,
    PingReq: lambda p: b"\xc0\x00",
    PingResp: lambda p: b"\xd0\x00",
    Disconnect: _enc_disconnect,
}


# -- MQTT 5.0 --------------------------------------------------------------

def encode_publish5(topic: str, payload: bytes, qos: int, retain: bool,
                    dup: bool, packet_id: Optional[int],
                    properties: Optional[Properties] = None,
                    block: Optional[bytes] = None) -> bytes:
    """
    Encode one level-5 PUBLISH (section 3.3): :func:`encode_publish` plus
    the property block, a single zero byte when ``properties`` is None.
    ``block``, when given, is ``properties`` already encoded (one message
    going to many subscribers is encoded once).

    The topic may be empty only with a topic alias [MQTT-3.3.2-1].
    """
    t = topic.encode("utf-8")
    tl = len(t)
    if tl > 0xFFFF:
        raise ValueError("topic longer than 65535 UTF-8 bytes")
    if block is not None:
        # (The caller's: with an empty topic it holds a topic alias.)
        props = block
    elif properties is None:
        if not tl:
            raise ValueError("empty topic without a topic alias")
        props = b"\x00"
    else:
        if not tl and properties.topic_alias is None:
            raise ValueError("empty topic without a topic alias")
        props = encode_properties(properties, PUBLISH)
    b0 = 0x30 | (qos << 1)
    if retain:
        b0 |= 1
    if dup:
        b0 |= 8
    if qos:
        if qos > 2 or not packet_id or packet_id > 0xFFFF:
            raise ValueError("QoS 1/2 PUBLISH needs QoS <= 2 and a packet "
                             "id in 1..65535")
        rl = tl + 4 + len(props) + len(payload)
        if rl < 0x80:
            return b"".join((_BBH.pack(b0, rl, tl), t, _H.pack(packet_id),
                             props, payload))
        return b"".join((bytes((b0,)), _remaining_length(rl), _H.pack(tl), t,
                         _H.pack(packet_id), props, payload))
    rl = tl + 2 + len(props) + len(payload)
    if rl < 0x80:
        return b"".join((_BBH.pack(b0, rl, tl), t, props, payload))
    return b"".join((bytes((b0,)), _remaining_length(rl), _H.pack(tl), t,
                     props, payload))


def _enc_publish5(p: Publish) -> bytes:
    return encode_publish5(p.topic, p.payload, p.qos, p.retain, p.dup,
                           p.packet_id, p.properties)


def _check_code(name: str, code: int, codes: FrozenSet[int]) -> None:
    if code not in codes:
        raise ValueError("%s may not carry reason code 0x%02X" % (name, code))


def _enc_connack5(p: ConnAck) -> bytes:
    _check_code("CONNACK", p.return_code, R.CONNACK_CODES)
    return _frame(0x20, bytes((1 if p.session_present else 0, p.return_code))
                  + encode_properties(p.properties, CONNACK))


def _ack5_encoder(b0: int, kind: int, name: str,
                  codes: FrozenSet[int]) -> Callable[[_AckPacket], bytes]:
    """The short forms when possible: 0x00 and no properties is 2 bytes."""
    def enc(p: _AckPacket) -> bytes:
        code = p.reason_code
        _check_code(name, code, codes)
        if p.properties is None:
            if not code:
                return _BBH.pack(b0, 2, p.packet_id)
            return _BBH.pack(b0, 3, p.packet_id) + bytes((code,))
        return _frame(b0, _H.pack(p.packet_id) + bytes((code,))
                      + encode_properties(p.properties, kind))
    return enc


def _enc_subscribe5(p: Subscribe) -> bytes:
    if not p.topics:
        raise ValueError("SUBSCRIBE needs at least one filter")
    body = [_H.pack(p.packet_id), encode_properties(p.properties, SUBSCRIBE)]
    for topic_filter, options in p.topics:
        if options & 0xC0 or options & 0x03 == 3 or options & 0x30 == 0x30:
            raise ValueError("bad subscription options 0x%02X" % options)
        body.append(_enc_str(topic_filter))
        body.append(bytes((options,)))
    return _frame(0x82, b"".join(body))


def _enc_code_list5(name: str, b0: int, packet_type: int, packet_id: int, codes: Any,
                    allowed: Any, properties: Any) -> bytes:
    """SUBACK and UNSUBACK at level 5: id, properties, one reason code per filter."""
    if not codes:
        raise ValueError("a level-5 %s needs at least one reason code" % (name,))
    for code in codes:
        _check_code(name, code, allowed)
    return _frame(b0, _H.pack(packet_id) + encode_properties(properties, packet_type)
                  + bytes(codes))


def _enc_suback5(p: SubAck) -> bytes:
    return _enc_code_list5("SUBACK", 0x90, SUBACK, p.packet_id, p.return_codes,
                           R.SUBACK_CODES, p.properties)


def _enc_unsubscribe5(p: Unsubscribe) -> bytes:
    if not p.topics:
        raise ValueError("UNSUBSCRIBE needs at least one filter")
    body = [_H.pack(p.packet_id), encode_properties(p.properties, UNSUBSCRIBE)]
    body.extend(_enc_str(topic_filter) for topic_filter in p.topics)
    return _frame(0xA2, b"".join(body))


def _enc_unsuback5(p: UnsubAck) -> bytes:
    return _enc_code_list5("UNSUBACK", 0xB0, UNSUBACK, p.packet_id, p.reason_codes,
                           R.UNSUBACK_CODES, p.properties)


_ReasonPacket = Disconnect | Auth


def _reason_encoder(b0: int, kind: int, name: str,
                    codes: FrozenSet[int]) -> Callable[[_ReasonPacket], bytes]:
    """
    DISCONNECT and AUTH: remaining length 0 for 0x00 without properties.
    Only DISCONNECT may then stop after the reason code (3.14.2.2.1); AUTH
    writes its empty property length (3.15.2.1 omits both or neither).
    """
    short = kind == DISCONNECT

    def enc(p: _ReasonPacket) -> bytes:
        code = p.reason_code
        _check_code(name, code, codes)
        if p.properties is None:
            if not code:
                return bytes((b0, 0))
            if short:
                return bytes((b0, 1, code))
            return bytes((b0, 2, code, 0))
        return _frame(b0, bytes((code,)) + encode_properties(p.properties,
                                                             kind))
    return enc


_ENCODERS5: Dict[type, Callable[[Any], bytes]] = {
    Connect: _enc_connect,
    ConnAck: _enc_connack5,
    Publish: _enc_publish5,
    PubAck: _ack5_encoder(0x40, PUBACK, "PUBACK", R.PUBACK_CODES),
    PubRec: _ack5_encoder(0x50, PUBREC, "PUBREC", R.PUBREC_CODES),
    PubRel: _ack5_encoder(0x62, PUBREL, "PUBREL", R.PUBREL_CODES),
    PubComp: _ack5_encoder(0x70, PUBCOMP, "PUBCOMP", R.PUBCOMP_CODES),
    Subscribe: _enc_subscribe5,
    SubAck: _enc_suback5,
    Unsubscribe: _enc_unsubscribe5,
    UnsubAck: _enc_unsuback5,
    PingReq: lambda p: b"\xc0\x00",
    PingResp: lambda p: b"\xd0\x00",
    Disconnect: _reason_encoder(0xE0, DISCONNECT, "DISCONNECT",
                                R.DISCONNECT_CODES),
    Auth: _reason_encoder(0xF0, AUTH, "AUTH", R.AUTH_CODES),
}


def encode(packet: Packet, level: int = PROTOCOL_LEVEL_311) -> bytes:
    """
    Encode any packet object to its wire form at protocol ``level`` (3 and
    4 write the same bytes; 5 the MQTT 5.0 layouts).  A CONNECT is always
    written at the level it names.

    Fields are trusted (our own code builds packets), but whatever would
    silently corrupt the stream raises ``ValueError``: over-long strings or
    packets, out-of-range integers, a reason code or property the packet
    may not carry (or any at level 3/4), a property value the peer must
    refuse.
    """
    encoders = _ENCODERS5 if level == PROTOCOL_LEVEL_5 else _ENCODERS
    try:
        encoder = encoders[type(packet)]
    except KeyError:
        if type(packet) is Auth:
            raise ValueError("AUTH needs protocol level 5") from None
        raise TypeError("not an MQTT packet: %r" % (packet,)) from None
    try:
        return encoder(packet)
    except struct_error as err:
        raise ValueError("cannot encode %r: %s" % (packet, err)) from None
