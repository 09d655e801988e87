"""
Tests for :mod:`vmqtw.mqtt.codec`, the MQTT 3.1/3.1.1 wire codec.

Expected bytes come from :mod:`vmqtw.testing.mqttbytes`, a builder written from the
spec independently of the codec.  Speed is measured, not asserted, by
``.venv/bin/python -m benchmarks.codec_bench`` (about 1M PUBLISH frames/s
decoded on the 2-core CI box).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmqtw.testing import mqttbytes as mb
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import (MAX_REMAINING_LENGTH, Decoder, ProtocolError,
                              UnacceptableProtocolLevel, encode,
                              encode_publish)


def decode_all(data: bytes, **kwargs) -> list:
    return Decoder(**kwargs).feed(data)


def one(data: bytes, **kwargs):
    packets = decode_all(data, **kwargs)
    assert len(packets) == 1, packets
    return packets[0]


def malformed(data: bytes, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        Decoder(**kwargs).feed(data)
    assert isinstance(info.value.reason, str) and info.value.reason
    return info.value


# --------------------------------------------------------------------------
# every packet type: hand-built bytes <-> packet objects

CASES = [
    ("connect-minimal", mb.connect("c1", keepalive=30),
     P.Connect("c1", keepalive=30)),
    ("connect-empty-id-persistent", mb.connect("", clean_session=False,
                                               keepalive=0),
     P.Connect("", clean_session=False, keepalive=0)),
    ("connect-full", mb.connect("dev-\u00e9", keepalive=65535,
                                will_topic="w/\u00fc", will_message=b"\x00bye",
                                will_qos=2, will_retain=True, username="u",
                                password=b"\xffpw"),
     P.Connect("dev-\u00e9", keepalive=65535,
               will=P.Will("w/\u00fc", b"\x00bye", 2, True), username="u",
               password=b"\xffpw")),
    ("connect-31", mb.connect("old", protocol_name="MQIsdp", level=3),
     P.Connect("old", protocol_name="MQIsdp", protocol_level=3, keepalive=60)),
    ("connect-username-only", mb.connect("c", username=""),
     P.Connect("c", keepalive=60, username="")),
    ("connack", mb.connack(0, session_present=True),
     P.ConnAck(0, session_present=True)),
    ("connack-refused", mb.connack(5), P.ConnAck(5)),
    ("publish-qos0", mb.publish("a/b", b"hello"), P.Publish("a/b", b"hello")),
    ("publish-qos0-empty-retain", mb.publish("a", b"", retain=True),
     P.Publish("a", b"", retain=True)),
    ("publish-qos1-dup", mb.publish("a/b", b"x", qos=1, dup=True, packet_id=1),
     P.Publish("a/b", b"x", 1, dup=True, packet_id=1)),
    ("publish-qos2", mb.publish("$SYS/x", b"\x00\xff", qos=2,
                                packet_id=65535),
     P.Publish("$SYS/x", b"\x00\xff", 2, packet_id=65535)),
    ("publish-slashes", mb.publish("/", b""), P.Publish("/", b"")),
    ("puback", mb.puback(7), P.PubAck(7)),
    ("pubrec", mb.pubrec(258), P.PubRec(258)),
    ("pubrel", mb.pubrel(65535), P.PubRel(65535)),
    ("pubcomp", mb.pubcomp(1), P.PubComp(1)),
    ("subscribe", mb.subscribe(10, [("a/+", 0), ("#", 1), ("x/#", 2)]),
     P.Subscribe(10, [("a/+", 0), ("#", 1), ("x/#", 2)])),
    ("subscribe-bad-wildcards-pass", mb.subscribe(1, [("a/#/b", 1), ("", 0)]),
     P.Subscribe(1, [("a/#/b", 1), ("", 0)])),
    ("suback", mb.suback(10, [0, 1, 2, 0x80]),
     P.SubAck(10, [0, 1, 2, 0x80])),
    ("unsubscribe", mb.unsubscribe(3, ["a/+", "b"]),
     P.Unsubscribe(3, ["a/+", "b"])),
    ("unsuback", mb.unsuback(3), P.UnsubAck(3)),
    ("pingreq", mb.pingreq(), P.PingReq()),
    ("pingresp", mb.pingresp(), P.PingResp()),
    ("disconnect", mb.disconnect(), P.Disconnect()),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decode_hand_built(raw, expected):
    """
    Hand-built spec bytes of every packet type decode to the expected
    object (sections 3.1 to 3.14).
    """
    assert one(raw) == expected


@pytest.mark.parametrize("raw,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_encode_matches_hand_built(raw, expected):
    """encode() produces exactly the bytes the spec prescribes."""
    assert encode(expected) == raw


@pytest.mark.parametrize("raw,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_round_trip(raw, expected):
    """encode -> decode gives back an equal packet."""
    assert one(encode(expected)) == expected


def test_many_packets_per_feed():
    """One feed call returns every complete packet, in order."""
    stream = b"".join(c[1] for c in CASES)
    assert Decoder().feed(stream) == [c[2] for c in CASES]


def test_encode_publish_fast_path_matches_builder():
    """encode_publish writes the PUBLISH layout of section 3.3."""
    assert encode_publish("t/1", b"p", 1, True, True, 513) == \
        mb.publish("t/1", b"p", qos=1, retain=True, dup=True, packet_id=513)
    assert encode_publish("t", b"", 0, False, False, None) == \
        mb.publish("t", b"")


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("size", [5, 127, 128, 16383, 16384, 2097151,
                                  2097152])
def test_remaining_length_boundaries(size, qos):
    """
    Remaining lengths at every varint width boundary encode as section
    2.2.3 says and decode back.
    """
    topic = "t"
    packet_id = 1 if qos else None
    header = 3 + (2 if qos else 0)  # topic length + topic (+ packet id)
    payload = b"\xab" * (size - header)
    raw = mb.publish(topic, payload, qos=qos, packet_id=packet_id)
    assert raw[1:].startswith(mb.varint(size))
    assert encode_publish(topic, payload, qos, False, False, packet_id) == raw
    assert one(raw) == P.Publish(topic, payload, qos, packet_id=packet_id)


def test_varint_builder_reference_values():
    """The builder itself follows the table of section 2.2.3."""
    assert mb.varint(127) == b"\x7f"
    assert mb.varint(128) == b"\x80\x01"
    assert mb.varint(16383) == b"\xff\x7f"
    assert mb.varint(16384) == b"\x80\x80\x01"
    assert mb.varint(MAX_REMAINING_LENGTH) == b"\xff\xff\xff\x7f"


def test_non_minimal_length_accepted():
    """3.1.1 does not forbid non-minimal varints (only MQTT 5 does)."""
    assert one(b"\xc0\x80\x00") == P.PingReq()


# --------------------------------------------------------------------------
# streaming: arbitrary splits

STREAM_PACKETS = [
    P.Connect("c", keepalive=10, will=P.Will("w", b"x" * 300, 1, False),
              username="u", password=b"p"),
    P.Publish("a/b", b"x" * 200, 1, packet_id=9),
    P.Publish("a", b""),
    P.Subscribe(2, [("a/#", 1)]),
    P.PingReq(),
    P.PubRel(9),
    P.Unsubscribe(3, ["a/#"]),
    P.Disconnect(),
]
STREAM = b"".join(encode(p) for p in STREAM_PACKETS)


def test_split_in_two_at_every_boundary():
    """A stream cut anywhere into two feeds parses to the same packets."""
    for cut in range(len(STREAM) + 1):
        dec = Decoder()
        got = dec.feed(STREAM[:cut]) + dec.feed(STREAM[cut:])
        assert got == STREAM_PACKETS, cut
        assert dec.buffered == 0


def test_byte_by_byte():
    """Feeding one byte at a time yields each packet once complete."""
    dec = Decoder()
    got = []
    for i in range(len(STREAM)):
        got.extend(dec.feed(STREAM[i:i + 1]))
    assert got == STREAM_PACKETS


def test_incomplete_tail_is_kept():
    """Bytes of an incomplete packet are held, nothing is returned early."""
    raw = mb.publish("a", b"12345")
    dec = Decoder()
    assert dec.feed(mb.pingreq() + raw[:-1]) == [P.PingReq()]
    assert dec.buffered == len(raw) - 1
    assert dec.feed(raw[-1:]) == [P.Publish("a", b"12345")]
    assert dec.buffered == 0


def test_a_read_is_parsed_where_it_lies_and_only_a_tail_is_copied():
    """The decoder reads the caller's buffer without keeping it: what the
    caller does with it afterwards changes neither the packets returned nor
    the incomplete packet held for the next read."""
    raw = mb.publish("a/b", b"payload")
    read = bytearray(mb.publish("x", b"first") + raw[:5])
    dec = Decoder()
    got = dec.feed(read)
    assert got == [P.Publish("x", b"first")]
    read[:] = b"\xff" * len(read)   # the caller reuses its buffer
    assert got == [P.Publish("x", b"first")]
    assert dec.feed(raw[5:]) == [P.Publish("a/b", b"payload")]
    assert dec.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)),
                max_size=20))
def test_random_chunking(cuts):
    """Any chunking of the stream gives the same packets."""
    points = sorted(set(cuts)) + [len(STREAM)]
    dec = Decoder()
    got, prev = [], 0
    for p in points:
        got.extend(dec.feed(STREAM[prev:p]))
        prev = p
    assert got == STREAM_PACKETS


def test_large_payload_in_64k_chunks():
    """A 1 MB PUBLISH arriving in 64 KiB reads decodes intact."""
    payload = bytes(range(256)) * 4096
    raw = encode_publish("big", payload, 1, False, False, 5) + mb.pingreq()
    dec = Decoder()
    got = []
    for i in range(0, len(raw), 65536):
        got.extend(dec.feed(raw[i:i + 65536]))
    assert got == [P.Publish("big", payload, 1, packet_id=5), P.PingReq()]


# --------------------------------------------------------------------------
# remaining length and size limits

def test_five_byte_remaining_length():
    """FF FF FF FF 7F is malformed: at most 4 length bytes (2.2.3)."""
    malformed(b"\x30\xff\xff\xff\xff\x7f")


def test_five_byte_remaining_length_detected_before_fifth_byte():
    """A continuation bit on the 4th length byte is already malformed."""
    malformed(b"\x30\xff\xff\xff\xff")


def test_oversized_rejected_on_length_bytes_alone():
    """
    A declared size above max_packet_size raises as soon as the length
    bytes are in, with no body sent (CVE-2017-7651 class).
    """
    err = malformed(b"\x30" + mb.varint(1000), max_packet_size=1000)
    assert err.reason == "packet too large"


def test_connect_longer_than_any_valid_connect_rejected_early():
    """
    Without max_packet_size, a CONNECT declaring more than the largest
    well-formed CONNECT (5 fields of 2 + 65,535 bytes after a 12-byte
    header) raises on its length bytes alone: an unauthenticated peer can
    not make the broker buffer up to 256 MB (CVE-2017-7651, bad-input case 3).
    """
    largest = mb.connect("c" * 0xFFFF, protocol_name="MQIsdp", level=3,
                         will_topic="w" * 0xFFFF, will_message=b"m" * 0xFFFF,
                         username="u" * 0xFFFF, password=b"p" * 0xFFFF)
    assert largest[1:4] == mb.varint(12 + 5 * (2 + 0xFFFF))
    assert one(largest).client_id == "c" * 0xFFFF
    err = malformed(b"\x10" + mb.varint(12 + 5 * (2 + 0xFFFF) + 1))
    assert "CONNECT" in err.reason
    malformed(b"\x10" + mb.varint(MAX_REMAINING_LENGTH), connect_first=True)
    # Other packet types keep the full range without a configured limit.
    assert Decoder().feed(b"\x30" + mb.varint(MAX_REMAINING_LENGTH)) == []


def test_max_packet_size_counts_fixed_header():
    """The limit bounds the whole packet, fixed header included."""
    raw = mb.publish("t", b"x" * 95)  # 2 + 3 + 95 = 100 bytes
    assert len(raw) == 100
    assert one(raw, max_packet_size=100) == P.Publish("t", b"x" * 95)
    malformed(raw, max_packet_size=99)


def test_maximum_declared_length_is_not_allocated():
    """
    Without a configured limit a 268,435,455-byte declaration is waited for,
    but only the bytes actually received are held.
    """
    dec = Decoder()
    assert dec.feed(b"\x30\xff\xff\xff\x7f\x00\x01a") == []
    assert dec.buffered == 8


def test_connect_first():
    """
    [MQTT-3.1.0-1] with connect_first=True a non-CONNECT first byte is
    refused at once, before its (huge) body arrives.
    """
    with pytest.raises(ProtocolError):
        Decoder(connect_first=True).feed(b"\x30")
    dec = Decoder(connect_first=True)
    assert dec.feed(mb.connect("c")) == [P.Connect("c", keepalive=60)]
    assert dec.feed(mb.publish("a", b"")) == [P.Publish("a", b"")]


def test_error_keeps_previous_packets_and_poisons():
    """
    Packets before the bad one are handed over on the error; the decoder
    then refuses further input (the connection is being closed).
    """
    dec = Decoder()
    with pytest.raises(ProtocolError) as info:
        dec.feed(mb.pingreq() + mb.puback(1) + b"\x00\x00")
    assert info.value.packets == [P.PingReq(), P.PubAck(1)]
    with pytest.raises(ProtocolError) as again:
        dec.feed(mb.pingreq())
    assert again.value is info.value


# --------------------------------------------------------------------------
# malformed packets

BAD = [
    # fixed header
    ("type-0", mb.packet(0, 0)),
    ("type-15", mb.packet(15, 0)),
    ("pubrel-flags-0 [MQTT-3.6.1-1]", mb.pubrel(1, flags=0)),
    ("subscribe-flags-0 [MQTT-3.8.1-1]",
     mb.subscribe(1, [("a", 0)], flags=0)),
    ("unsubscribe-flags-3 [MQTT-3.10.1-1]",
     mb.unsubscribe(1, ["a"], flags=3)),
    ("puback-flags [MQTT-2.2.2-2]", mb.puback(1, flags=2)),
    ("pubrec-flags [MQTT-2.2.2-2]", mb.pubrec(1, flags=1)),
    ("pubcomp-flags [MQTT-2.2.2-2]", mb.pubcomp(1, flags=8)),
    ("unsuback-flags [MQTT-2.2.2-2]", mb.unsuback(1, flags=2)),
    ("pingreq-flags [MQTT-2.2.2-2]", mb.pingreq(flags=1)),
    ("pingresp-flags [MQTT-2.2.2-2]", mb.pingresp(flags=4)),
    ("disconnect-flags [MQTT-2.2.2-2]", mb.disconnect(flags=2)),
    ("connect-flags [MQTT-2.2.2-2]", mb.connect("c", header_flags=2)),
    ("connack-flags [MQTT-2.2.2-2]", mb.packet("CONNACK", 1, b"\x00\x00")),
    ("suback-flags [MQTT-2.2.2-2]", mb.packet("SUBACK", 2, b"\x00\x01\x00")),
    # PUBLISH
    ("publish-qos3 [MQTT-3.3.1-4]", mb.publish("a", b"", flags=0b0110)),
    ("publish-qos3-with-id [MQTT-3.3.1-4]",
     mb.publish("a", b"", flags=0b0110, packet_id=1)),
    ("publish-qos0-dup [MQTT-3.3.1-2]", mb.publish("a", b"", dup=True)),
    ("publish-empty-topic [MQTT-4.7.3-1]", mb.publish("", b"x")),
    ("publish-plus [MQTT-3.3.2-2]", mb.publish("a/+", b"")),
    ("publish-hash [MQTT-3.3.2-2]", mb.publish("a/#", b"")),
    ("publish-nul [MQTT-1.5.3-2]", mb.publish("a\x00b", b"")),
    ("publish-surrogate [MQTT-1.5.3-1]", mb.publish(b"a\xed\xa0\x80", b"")),
    ("publish-bad-utf8 [MQTT-1.5.3-1]", mb.publish(b"\xff", b"")),
    ("publish-overlong-utf8 [MQTT-1.5.3-1]", mb.publish(b"\xc0\xaf", b"")),
    ("publish-id-0 [MQTT-2.3.1-1]", mb.publish("a", b"", qos=1,
                                               packet_id=0)),
    ("publish-qos2-id-0 [MQTT-2.3.1-1]", mb.publish("a", b"", qos=2,
                                                    packet_id=0)),
    ("publish-truncated-after-topic", mb.publish("a", b"", qos=1)),
    ("publish-half-id", mb.packet("PUBLISH", 2, mb.utf8("a") + b"\x01")),
    ("publish-topic-past-end", mb.packet("PUBLISH", 0, b"\x00\x05ab")),
    ("publish-no-topic-length", mb.packet("PUBLISH", 0, b"\x00")),
    ("publish-empty-body", mb.packet("PUBLISH", 0, b"")),
    # CONNECT
    ("connect-bad-name [MQTT-3.1.2-1]", mb.connect("c", protocol_name="MQTX")),
    ("connect-name-case [MQTT-3.1.2-1]",
     mb.connect("c", protocol_name="mqtt")),
    ("connect-name-bad-utf8 [MQTT-1.5.3-1]",
     mb.connect("c", protocol_name=b"\xed\xa0\x80")),
    ("connect-reserved [MQTT-3.1.2-3]", mb.connect("c", reserved=True)),
    ("connect-will-qos-no-flag [MQTT-3.1.2-13]",
     mb.connect("c", will_qos=1)),
    ("connect-will-retain-no-flag [MQTT-3.1.2-15]",
     mb.connect("c", will_retain=True)),
    ("connect-will-qos3 [MQTT-3.1.2-14]",
     mb.connect("c", will_topic="w", will_qos=3)),
    ("connect-password-no-username [MQTT-3.1.2-22]",
     mb.connect("c", password=b"p")),
    ("connect-clientid-surrogate [MQTT-1.5.3-1]",
     mb.connect(b"\xed\xa0\x80")),
    ("connect-clientid-nul [MQTT-1.5.3-2]", mb.connect("a\x00")),
    ("connect-username-bad-utf8 [MQTT-1.5.3-1]",
     mb.connect("c", username=b"\xed\xa0\x80")),
    ("connect-will-topic-nul [MQTT-1.5.3-2]",
     mb.connect("c", will_topic="\x00")),
    ("connect-trailing", mb.connect("c", trailing=b"\x00")),
    ("connect-missing-username",
     mb.connect("c", connect_flags=0x82)),
    ("connect-missing-will",
     mb.connect("c", connect_flags=0x06)),
    ("connect-missing-password",
     mb.connect("c", username="u", connect_flags=0xC2)),
    ("connect-truncated-flags", mb.packet("CONNECT", 0, mb.utf8("MQTT")
                                          + b"\x04\x02")),
    ("connect-no-level", mb.packet("CONNECT", 0, mb.utf8("MQTT"))),
    ("connect-empty", mb.packet("CONNECT", 0, b"")),
    # acks and empty packets
    ("puback-3-bytes", mb.packet("PUBACK", 0, b"\x00\x01\x00")),
    ("puback-1-byte", mb.packet("PUBACK", 0, b"\x01")),
    ("puback-id-0", mb.puback(0)),
    ("pubrel-id-0", mb.pubrel(0)),
    ("unsuback-empty", mb.packet("UNSUBACK", 0, b"")),
    ("pingreq-body", mb.packet("PINGREQ", 0, b"\x00")),
    ("pingresp-body", mb.packet("PINGRESP", 0, b"\x00")),
    ("disconnect-body", mb.packet("DISCONNECT", 0, b"\x00")),
    ("connack-short", mb.packet("CONNACK", 0, b"\x00")),
    ("connack-long", mb.packet("CONNACK", 0, b"\x00\x00\x00")),
    ("connack-reserved-bits [MQTT-3.2.2-1]", mb.connack(0, ack_flags=2)),
    # SUBSCRIBE / SUBACK / UNSUBSCRIBE
    ("subscribe-no-filters [MQTT-3.8.3-3]", mb.subscribe(1, [])),
    ("subscribe-qos3 [MQTT-3-8.3-4]", mb.subscribe(1, [("a", 3)])),
    ("subscribe-reserved-bits [MQTT-3-8.3-4]",
     mb.subscribe(1, [("a", 0x40)])),
    ("subscribe-reserved-bits-qos1 [MQTT-3-8.3-4]",
     mb.subscribe(1, [("a", 0x05)])),
    ("subscribe-id-0 [MQTT-2.3.1-1]", mb.subscribe(0, [("a", 0)])),
    ("subscribe-missing-qos", mb.packet("SUBSCRIBE", 2, b"\x00\x01"
                                        + mb.utf8("a"))),
    ("subscribe-filter-nul [MQTT-4.7.3-2]", mb.subscribe(1, [("a\x00", 0)])),
    ("subscribe-filter-bad-utf8 [MQTT-1.5.3-1]",
     mb.subscribe(1, [(b"\xed\xa0\x80", 0)])),
    ("subscribe-no-id", mb.packet("SUBSCRIBE", 2, b"\x00")),
    ("suback-no-codes", mb.suback(1, [])),
    ("suback-reserved-code [MQTT-3.9.3-2]", mb.suback(1, [3])),
    ("suback-id-0", mb.suback(0, [0])),
    ("unsubscribe-no-filters [MQTT-3.10.3-2]", mb.unsubscribe(1, [])),
    ("unsubscribe-id-0 [MQTT-2.3.1-1]", mb.unsubscribe(0, ["a"])),
    ("unsubscribe-filter-nul [MQTT-1.5.3-2]", mb.unsubscribe(1, ["\x00"])),
    ("unsubscribe-truncated-filter", mb.packet("UNSUBSCRIBE", 2,
                                               b"\x00\x01\x00\x05ab")),
]


@pytest.mark.parametrize("raw", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed(raw):
    """
    Every listed violation raises a plain ProtocolError (close): fixed
    header flags [MQTT-2.2.2-2] [MQTT-3.6.1-1] [MQTT-3.8.1-1]
    [MQTT-3.10.1-1], PUBLISH [MQTT-3.3.1-4] [MQTT-3.3.1-2] [MQTT-3.3.2-2]
    [MQTT-4.7.3-1] [MQTT-2.3.1-1], strings [MQTT-1.5.3-1] [MQTT-1.5.3-2],
    CONNECT [MQTT-3.1.2-1] [MQTT-3.1.2-3] [MQTT-3.1.2-13/14/15]
    [MQTT-3.1.2-22], SUBSCRIBE/UNSUBSCRIBE [MQTT-3.8.3-3] [MQTT-3-8.3-4]
    [MQTT-3.10.3-2], SUBACK [MQTT-3.9.3-2], and wrong lengths (section 3).
    """
    err = malformed(raw)
    assert not isinstance(err, UnacceptableProtocolLevel)


@pytest.mark.parametrize("raw", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_after_valid_packet_in_same_buffer(raw):
    """
    A lying inner length can not borrow bytes from the next packet: each
    malformed packet still fails when valid packets follow it.
    """
    with pytest.raises(ProtocolError):
        Decoder().feed(raw + mb.publish("a/b", b"payload") * 3)


@pytest.mark.parametrize("name,level", [("MQTT", 3), ("MQTT", 5),
                                        ("MQIsdp", 4), ("MQTT", 0),
                                        ("MQTT", 0x85)])
def test_unacceptable_protocol_level(name, level):
    """
    [MQTT-3.1.2-2] a known protocol name with an unsupported level raises
    UnacceptableProtocolLevel (the broker answers CONNACK 1), even if the
    rest of the packet has another (e.g. MQTT 5) layout.
    """
    raw = mb.connect("c", protocol_name=name, level=level, trailing=b"\x00")
    err = malformed(raw)
    assert isinstance(err, UnacceptableProtocolLevel)
    assert (err.protocol_name, err.protocol_level) == (name, level)


@pytest.mark.parametrize("name,wire_level,level", [("MQTT", 0x84, 4),
                                                   ("MQIsdp", 0x83, 3)])
def test_bridge_flag(name, wire_level, level):
    """VerneMQ bridges set bit 7 of the level (131/132): accepted as 3/4."""
    pkt = one(mb.connect("c", protocol_name=name, level=wire_level))
    assert pkt.protocol_level == level


def test_mqtt31_leniencies():
    """
    MQTT 3.1 (MQIsdp) predates [MQTT-3.1.2-22] and [MQTT-3.3.1-2]: password
    without username, a password flag with the field omitted, and DUP on
    QoS 0 are accepted after a 3.1 CONNECT.
    """
    dec = Decoder()
    raw = mb.connect("c", protocol_name="MQIsdp", level=3, password=b"p")
    assert dec.feed(raw)[0].password == b"p"
    assert dec.feed(mb.publish("a", b"", dup=True)) == \
        [P.Publish("a", b"", dup=True)]
    omitted = mb.connect("c", protocol_name="MQIsdp", level=3, username="u",
                         connect_flags=0xC2)
    assert one(omitted).password is None


def test_dup_qos0_rejected_after_311_connect():
    """[MQTT-3.3.1-2] DUP=1 with QoS 0 is malformed in 3.1.1."""
    dec = Decoder()
    dec.feed(mb.connect("c"))
    with pytest.raises(ProtocolError):
        dec.feed(mb.publish("a", b"", dup=True))


def test_client_id_not_judged():
    """
    Client id length and emptiness are left to the session (CONNACK 2,
    [MQTT-3.1.3-8]); the codec decodes them.
    """
    long_id = "x" * 5000
    assert one(mb.connect(long_id)).client_id == long_id
    assert one(mb.connect("", clean_session=False)).client_id == ""


# --------------------------------------------------------------------------
# encoder errors

def test_encode_topic_too_long():
    """A topic over 65535 UTF-8 bytes can not be framed (1.5.3)."""
    topic = "\u00e9" * 32768  # 65536 UTF-8 bytes
    with pytest.raises(ValueError):
        encode_publish(topic, b"", 0, False, False, None)
    with pytest.raises(ValueError):
        encode(P.Publish(topic, b""))
    ok = "a" * 65535
    assert one(encode_publish(ok, b"", 0, False, False, None)).topic == ok


@pytest.mark.parametrize("pkt", [
    P.Publish("a", b"", 1),
    P.Publish("a", b"", 3, packet_id=1),
    P.PubAck(70000),
    P.Subscribe(1, []),
    P.Subscribe(1, [("a", 3)]),
    P.Unsubscribe(1, []),
    P.SubAck(1, []),
    P.Connect("c", will=P.Will("w", b"", 3)),
    P.Connect("c", password=b"x" * 65536, username="u"),
])
def test_encode_refuses_unframeable(pkt):
    """Fields that would corrupt the stream raise ValueError."""
    with pytest.raises(ValueError):
        encode(pkt)


def test_encode_rejects_non_packets():
    """encode() only takes packet objects."""
    with pytest.raises(TypeError):
        encode(b"\xc0\x00")


# --------------------------------------------------------------------------
# hypothesis: round trips and fuzzing

_chars = st.characters(exclude_categories=("Cs",),
                       exclude_characters="\x00")
_text = st.text(_chars, max_size=30)
_topic = st.text(st.characters(exclude_categories=("Cs",),
                               exclude_characters="\x00+#"),
                 min_size=1, max_size=30)
_pid = st.integers(min_value=1, max_value=65535)
_blob = st.binary(max_size=300)
_qos = st.integers(min_value=0, max_value=2)


@st.composite
def _publish(draw):
    qos = draw(_qos)
    return P.Publish(draw(_topic), draw(_blob), qos, draw(st.booleans()),
                     draw(st.booleans()) if qos else False,
                     draw(_pid) if qos else None)


@st.composite
def _connect(draw):
    username = draw(st.none() | _text)
    password = draw(st.none() | _blob) if username is not None else None
    name, level = draw(st.sampled_from([("MQTT", 4), ("MQIsdp", 3)]))
    return P.Connect(draw(_text), name, level, draw(st.booleans()),
                     draw(st.integers(0, 65535)),
                     draw(st.none() | st.builds(P.Will, _topic, _blob, _qos,
                                                st.booleans())),
                     username, password)


PACKETS = st.one_of(
    _connect(),
    st.builds(P.ConnAck, st.integers(0, 5), st.booleans()),
    _publish(),
    st.builds(P.PubAck, _pid), st.builds(P.PubRec, _pid),
    st.builds(P.PubRel, _pid), st.builds(P.PubComp, _pid),
    st.builds(P.Subscribe, _pid,
              st.lists(st.tuples(_text, _qos), min_size=1, max_size=5)),
    st.builds(P.SubAck, _pid, st.lists(st.sampled_from([0, 1, 2, 0x80]),
                                       min_size=1, max_size=5)),
    st.builds(P.Unsubscribe, _pid, st.lists(_text, min_size=1, max_size=5)),
    st.builds(P.UnsubAck, _pid),
    st.builds(P.PingReq), st.builds(P.PingResp), st.builds(P.Disconnect),
)


@settings(max_examples=300, deadline=None)
@given(PACKETS)
def test_hypothesis_round_trip(pkt):
    """Any valid packet of any type survives encode -> decode."""
    assert one(encode(pkt)) == pkt


@settings(max_examples=100, deadline=None)
@given(st.lists(_publish(), min_size=1, max_size=20), st.data())
def test_hypothesis_publish_stream(pubs, data):
    """A stream of publishes, chunked anywhere, decodes to the same list."""
    stream = b"".join(encode_publish(p.topic, p.payload, p.qos, p.retain,
                                     p.dup, p.packet_id) for p in pubs)
    size = data.draw(st.integers(1, max(1, len(stream))))
    dec = Decoder()
    got = []
    for i in range(0, len(stream), size):
        got.extend(dec.feed(stream[i:i + size]))
    assert got == pubs


def _feed_expect_only_protocol_errors(dec: Decoder, chunks) -> None:
    try:
        for chunk in chunks:
            for pkt in dec.feed(chunk):
                # Whatever decodes must be a well-formed object again.
                encode(pkt)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8),
       st.sampled_from([0, 64, 1000]))
def test_fuzz_random_bytes(chunks, limit):
    """Random input never raises anything but ProtocolError."""
    _feed_expect_only_protocol_errors(Decoder(limit), chunks)


@settings(max_examples=400, deadline=None)
@given(st.lists(PACKETS, min_size=1, max_size=4), st.data())
def test_fuzz_bit_flips(pkts, data):
    """
    Valid streams with flipped bits or truncated bodies never raise
    anything but ProtocolError.
    """
    stream = bytearray(b"".join(encode(p) for p in pkts))
    for _ in range(data.draw(st.integers(1, 4))):
        bit = data.draw(st.integers(0, len(stream) * 8 - 1))
        stream[bit // 8] ^= 1 << (bit % 8)
    cut = data.draw(st.integers(1, len(stream)))
    _feed_expect_only_protocol_errors(
        Decoder(), [bytes(stream[:cut]), bytes(stream[cut:])])
