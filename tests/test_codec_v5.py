"""
Tests for the MQTT 5.0 side of :mod:`vmqtw.mqtt.codec`, with
:mod:`vmqtw.mqtt.properties` and :mod:`vmqtw.mqtt.reasons`.

Expected bytes come from :mod:`vmqtw.testing.mqtt5bytes`, a builder written
from the spec independently of the codec.  Section numbers and statement ids
refer to OASIS MQTT Version 5.0.  The 3.1.1 behaviour stays covered by
``tests/test_codec.py``, which runs unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmqtw.mqtt import packets as P
from vmqtw.mqtt import reasons as R
from vmqtw.mqtt.codec import (MAX_CONNECT_REMAINING_LENGTH,
                              MAX_CONNECT_REMAINING_LENGTH_V5, Decoder,
                              ProtocolError, ProtocolViolation,
                              UnacceptableProtocolLevel, encode,
                              encode_publish, encode_publish5)
from vmqtw.mqtt.properties import BY_NAME, SPECS, WILL
from vmqtw.testing import mqtt5bytes as mb5
from vmqtw.testing import mqttbytes as mb


def v5_decoder(**kwargs: Any) -> Decoder:
    """A decoder that already speaks 5 (and accepts a level-5 CONNECT)."""
    return Decoder(accept_v5=True, protocol_level=5, **kwargs)


def one5(raw: bytes) -> P.Packet:
    packets = v5_decoder().feed(raw)
    assert len(packets) == 1, packets
    return packets[0]


def refused(raw: bytes, code: int, decoder: Optional[Decoder] = None
            ) -> ProtocolError:
    """``raw`` raises a ProtocolError carrying reason code ``code``."""
    with pytest.raises(ProtocolError) as info:
        (decoder or v5_decoder()).feed(raw)
    err = info.value
    assert err.reason_code == code, (err.reason, hex(err.reason_code))
    # 0x81 is a plain ProtocolError, the spec's "Protocol Error" a violation.
    assert isinstance(err, ProtocolViolation) == (code != R.MALFORMED_PACKET)
    assert isinstance(err.reason, str) and err.reason
    return err


# --------------------------------------------------------------------------
# every packet type: hand-built bytes <-> packet objects

PROPS_A = P.Properties(reason_string="why", user_properties=(("k", "v"),))
RAW_PROPS_A = mb5.props(mb5.p_str(0x1F, "why"), mb5.p_pair("k", "v"))

CASES = [
    ("connect-minimal", mb5.connect("c1", keepalive=30),
     P.Connect("c1", protocol_level=5, keepalive=30)),
    ("connect-full",
     mb5.connect("dev-\u00e9", keepalive=65535, clean_start=False,
                 properties=mb5.props(mb5.p_u32(0x11, 3600),
                                      mb5.p_u16(0x21, 20),
                                      mb5.p_pair("a", "1"),
                                      mb5.p_pair("a", "2")),
                 will_topic="w/\u00fc", will_message=b"\x00bye", will_qos=2,
                 will_retain=True,
                 will_properties=mb5.props(mb5.p_byte(0x01, 1),
                                           mb5.p_u32(0x18, 5)),
                 username="u", password=b"\xffpw"),
     P.Connect("dev-\u00e9", "MQTT", 5, False, 65535,
               P.Will("w/\u00fc", b"\x00bye", 2, True,
                      P.Properties(will_delay_interval=5,
                                   payload_format_indicator=1)),
               "u", b"\xffpw",
               P.Properties(session_expiry_interval=3600, receive_maximum=20,
                            user_properties=(("a", "1"), ("a", "2"))))),
    ("connect-password-without-username [3.1.2.9]",
     mb5.connect("c", password=b"secret"),
     P.Connect("c", protocol_level=5, keepalive=60, password=b"secret")),
    ("connack", mb5.connack(0, True), P.ConnAck(0, True)),
    ("connack-refused-with-properties",
     mb5.connack(0x9C, False, mb5.props(mb5.p_str(0x1C, "other:1883"))),
     P.ConnAck(0x9C, False, P.Properties(server_reference="other:1883"))),
    ("publish-qos0", mb5.publish("a/b", b"hello"),
     P.Publish("a/b", b"hello")),
    ("publish-qos1-properties",
     mb5.publish("a/b", b"x", qos=1, dup=True, retain=True, packet_id=7,
                 properties=mb5.props(mb5.p_u32(0x02, 60),
                                      mb5.p_str(0x03, "text/plain"),
                                      mb5.p_str(0x08, "reply/to"),
                                      mb5.p_bin(0x09, b"\x01\x02"),
                                      mb5.p_vbi(0x0B, 1),
                                      mb5.p_vbi(0x0B, 300))),
     P.Publish("a/b", b"x", 1, True, True, 7,
               P.Properties(message_expiry_interval=60,
                            content_type="text/plain",
                            response_topic="reply/to",
                            correlation_data=b"\x01\x02",
                            subscription_identifiers=(1, 300)))),
    ("publish-empty-topic-with-alias [3.3.2.3.4]",
     mb5.publish("", b"p", qos=2, packet_id=65535,
                 properties=mb5.props(mb5.p_u16(0x23, 3))),
     P.Publish("", b"p", 2, packet_id=65535,
               properties=P.Properties(topic_alias=3))),
    ("puback-short [3.4.2.1]", mb5.ack("PUBACK", 7), P.PubAck(7)),
    ("puback-reason", mb5.ack("PUBACK", 7, 0x10), P.PubAck(7, 0x10)),
    ("puback-properties", mb5.ack("PUBACK", 7, 0x87, RAW_PROPS_A),
     P.PubAck(7, 0x87, PROPS_A)),
    ("pubrec-reason", mb5.ack("PUBREC", 258, 0x97), P.PubRec(258, 0x97)),
    ("pubrel-reason", mb5.ack("PUBREL", 65535, 0x92), P.PubRel(65535, 0x92)),
    ("pubcomp-properties", mb5.ack("PUBCOMP", 1, 0, RAW_PROPS_A),
     P.PubComp(1, 0, PROPS_A)),
    ("subscribe-options [3.8.3.1]",
     mb5.subscribe(10, [("a/+", 0x00), ("#", 0x01 | 0x04), ("x/#", 0x2E)],
                   mb5.props(mb5.p_vbi(0x0B, 268_435_455))),
     P.Subscribe(10, [("a/+", 0), ("#", P.subscription_options(1, True)),
                      ("x/#", P.subscription_options(2, True, True, 2))],
                 P.Properties(subscription_identifiers=(268_435_455,)))),
    ("suback", mb5.suback(10, [0, 1, 2, 0x80, 0x8F, 0x9E, 0xA1, 0xA2]),
     P.SubAck(10, [0, 1, 2, 0x80, 0x8F, 0x9E, 0xA1, 0xA2])),
    ("suback-properties", mb5.suback(1, [0x87], RAW_PROPS_A),
     P.SubAck(1, [0x87], PROPS_A)),
    ("unsubscribe", mb5.unsubscribe(3, ["a/+", "b"]),
     P.Unsubscribe(3, ["a/+", "b"])),
    ("unsuback [3.11.3]", mb5.unsuback(3, [0, 0x11]),
     P.UnsubAck(3, [0, 0x11])),
    ("unsuback-properties", mb5.unsuback(3, [0x87], RAW_PROPS_A),
     P.UnsubAck(3, [0x87], PROPS_A)),
    ("pingreq", mb.pingreq(), P.PingReq()),
    ("pingresp", mb.pingresp(), P.PingResp()),
    ("disconnect-normal [3.14.2.1]", mb5.disconnect(), P.Disconnect()),
    ("disconnect-with-will", mb5.disconnect(0x04), P.Disconnect(0x04)),
    ("disconnect-properties",
     mb5.disconnect(0x8B, mb5.props(mb5.p_u32(0x11, 0),
                                    mb5.p_str(0x1C, "b"))),
     P.Disconnect(0x8B, P.Properties(session_expiry_interval=0,
                                     server_reference="b"))),
    ("auth-success [3.15.2.1]", mb5.auth(), P.Auth()),
    ("auth-continue",
     mb5.auth(0x18, mb5.props(mb5.p_str(0x15, "SCRAM-SHA-1"),
                              mb5.p_bin(0x16, b"\x00nonce"))),
     P.Auth(0x18, P.Properties(authentication_method="SCRAM-SHA-1",
                               authentication_data=b"\x00nonce"))),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decode_hand_built(raw, expected):
    """Hand-built level-5 bytes of every packet type decode as expected."""
    assert one5(raw) == expected


@pytest.mark.parametrize("raw,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_encode_matches_hand_built(raw, expected):
    """encode(level=5) writes exactly these bytes (short forms included)."""
    assert encode(expected, level=5) == raw


def test_stream_of_every_case():
    """One feed returns every case, in order, after a level-5 CONNECT."""
    stream = b"".join(c[1] for c in CASES)
    assert v5_decoder().feed(stream) == [c[2] for c in CASES]


def test_long_forms_decode_to_the_short_form_packet():
    """
    A sender may write 0x00 and an empty property block explicitly: the
    packet is the same as the short form's, with no Properties object.
    """
    assert one5(mb5.ack("PUBACK", 9, 0, mb5.NO_PROPS)) == P.PubAck(9)
    assert one5(mb5.ack("PUBREL", 9, 0x92, mb5.NO_PROPS)) == \
        P.PubRel(9, 0x92)
    assert one5(mb5.disconnect(0, mb5.NO_PROPS)) == P.Disconnect()
    assert one5(mb5.auth(0, mb5.NO_PROPS)) == P.Auth()
    assert one5(mb5.auth(0x19)) == P.Auth(0x19)


def test_auth_writes_its_property_length():
    """
    3.15.2.1: AUTH omits reason code and property length together (only
    for 0x00); DISCONNECT may stop after the reason code (3.14.2.2.1).
    """
    assert encode(P.Auth(0x18), level=5) == mb5.auth(0x18, mb5.NO_PROPS)
    assert encode(P.Disconnect(0x8E), level=5) == mb5.disconnect(0x8E)


def test_311_connack_readable_by_a_v5_client():
    """
    A broker without MQTT 5.0 refuses a level-5 CONNECT with a 3.1.1
    CONNACK (return code 1, remaining length 2, [MQTT-3.1.2-2]): a level-5
    decoder reads it, as mosquitto's client library does.
    """
    assert one5(mb.connack(1)) == P.ConnAck(1)
    assert one5(mb.connack(0, session_present=True)) == P.ConnAck(0, True)


def test_no_properties_means_none():
    """Packets without properties carry None, not an empty object."""
    for raw in (mb5.publish("a", b"x"), mb5.publish("a", b"", qos=1,
                                                    packet_id=1),
                mb5.ack("PUBACK", 1), mb5.connect("c"), mb5.connack(),
                mb5.subscribe(1, [("a", 0)]), mb5.disconnect()):
        assert one5(raw).properties is None


def test_subscription_options_helpers():
    """The options byte of section 3.8.3.1, bit by bit."""
    assert P.subscription_options(2) == 0x02
    assert P.subscription_options(0, no_local=True) == 0x04
    assert P.subscription_options(0, retain_as_published=True) == 0x08
    assert P.subscription_options(1, retain_handling=2) == 0x21
    opts = P.subscription_options(1, True, True, P.RETAIN_SEND_IF_NEW)
    assert opts & P.SUB_QOS_MASK == 1
    assert (opts & P.SUB_RETAIN_HANDLING_MASK) >> \
        P.SUB_RETAIN_HANDLING_SHIFT == 1


def test_reason_code_aliases():
    """ConnAck and SubAck name their v5 reason codes too."""
    assert P.ConnAck(0x87).reason_code == 0x87
    assert P.SubAck(1, [0, 0x80]).reason_codes == [0, 0x80]


# --------------------------------------------------------------------------
# level selection: the broker refuses 5 unless the session opts in

def test_level_5_refused_by_default():
    """
    [MQTT-3.1.2-2] without accept_v5 a level-5 CONNECT raises
    UnacceptableProtocolLevel exactly as before (the broker answers
    CONNACK 0x01); its reason code would be 0x84.
    """
    raw = mb5.connect("c", properties=mb5.props(mb5.p_u16(0x21, 5)))
    for dec in (Decoder(), Decoder(connect_first=True)):
        with pytest.raises(UnacceptableProtocolLevel) as info:
            dec.feed(raw)
        assert (info.value.protocol_name, info.value.protocol_level) == \
            ("MQTT", 5)
        assert info.value.reason_code == R.UNSUPPORTED_PROTOCOL_VERSION


def test_accept_v5_switches_the_connection():
    """
    With accept_v5 a level-5 CONNECT decodes and every later packet of the
    connection, in the same feed or later ones, is parsed as MQTT 5.0.
    """
    dec = Decoder(connect_first=True, accept_v5=True)
    assert dec.protocol_level == 4
    got = dec.feed(mb5.connect("c") + mb5.publish("t", b"p")
                   + mb5.ack("PUBACK", 1, 0x10)[:3])
    assert got == [P.Connect("c", protocol_level=5, keepalive=60),
                   P.Publish("t", b"p")]
    assert dec.protocol_level == 5
    assert dec.feed(mb5.ack("PUBACK", 1, 0x10)[3:] + mb5.disconnect(4)) == \
        [P.PubAck(1, 0x10), P.Disconnect(4)]


def test_accept_v5_keeps_311_connections_311():
    """A 3.1.1 CONNECT on an accept_v5 decoder keeps the 3.1.1 layouts."""
    dec = Decoder(accept_v5=True)
    dec.feed(mb.connect("c"))
    # At 3.1.1 the 0x00 after the topic is payload, not a property length.
    assert dec.feed(mb.publish("t", b"\x00x")) == [P.Publish("t", b"\x00x")]
    assert dec.protocol_level == 4
    with pytest.raises(ProtocolError):
        dec.feed(mb5.auth())  # type 15 stays reserved in 3.1.1


def test_accept_v5_still_refuses_other_levels():
    """Levels other than 3, 4, 5 stay unacceptable; the bridge bit works."""
    with pytest.raises(UnacceptableProtocolLevel):
        Decoder(accept_v5=True).feed(mb5.connect("c", level=6))
    pkt = Decoder(accept_v5=True).feed(mb5.connect("c", level=0x85))[0]
    assert pkt.protocol_level == 5


def test_auth_is_reserved_at_311():
    """Packet type 15 is reserved (malformed) in 3.1.1, AUTH in 5.0."""
    refused(mb5.auth(), R.MALFORMED_PACKET, Decoder())
    assert one5(mb5.auth()) == P.Auth()


def test_protocol_level_argument_checked():
    with pytest.raises(ValueError):
        Decoder(protocol_level=6)


def test_packet_too_large_carries_0x95():
    """
    [MQTT-3.1.2-24]-style limit: max_packet_size is kept as before, and
    the error names 0x95 Packet too large.
    """
    raw = mb5.publish("t", b"x" * 94)  # 2 + 3 + 1 + 94 = 100 bytes
    assert len(raw) == 100
    assert v5_decoder(max_packet_size=100).feed(raw)[0].payload == b"x" * 94
    refused(raw, R.PACKET_TOO_LARGE, v5_decoder(max_packet_size=99))
    refused(b"\x30" + mb5.vbi(1000), R.PACKET_TOO_LARGE,
            Decoder(max_packet_size=1000))


def test_connect_bound_with_v5():
    """
    With accept_v5 a CONNECT may exceed the 3.1.1 bound by two property
    blocks of 64 KiB; beyond that it is refused on its length bytes alone
    (0x95), so an unauthenticated peer still can not make us buffer more.
    """
    big = mb5.connect("c" * 0xFFFF,
                      properties=mb5.props(mb5.p_pair("u" * 30000,
                                                      "v" * 30000)),
                      will_topic="w", will_message=b"m" * 0xFFFF,
                      will_properties=mb5.props(mb5.p_bin(0x09,
                                                          b"d" * 60000)),
                      username="u" * 0xFFFF, password=b"p" * 0xFFFF)
    assert len(big) > MAX_CONNECT_REMAINING_LENGTH
    pkt = Decoder(accept_v5=True).feed(big)[0]
    assert pkt.properties.user_properties[0][0] == "u" * 30000
    too_long = b"\x10" + mb5.vbi(MAX_CONNECT_REMAINING_LENGTH_V5 + 1)
    refused(too_long, R.PACKET_TOO_LARGE, Decoder(accept_v5=True))
    assert Decoder(accept_v5=True).feed(
        b"\x10" + mb5.vbi(MAX_CONNECT_REMAINING_LENGTH + 1)) == []
    # Without accept_v5 the 3.1.1 bound is unchanged.
    refused(b"\x10" + mb5.vbi(MAX_CONNECT_REMAINING_LENGTH + 1),
            R.PACKET_TOO_LARGE, Decoder())


def test_non_minimal_remaining_length_malformed_in_v5():
    """
    [MQTT-1.5.5-1] level-5 variable byte integers use the fewest bytes;
    3.1.1 tolerates longer ones (test_codec), level 5 does not.
    """
    assert Decoder().feed(b"\xc0\x80\x00") == [P.PingReq()]
    refused(b"\xc0\x80\x00", R.MALFORMED_PACKET)
    refused(b"\x30\x85\x80\x00" + b"\x00" * 5, R.MALFORMED_PACKET)
    # A minimal two-byte length is fine.
    raw = mb5.publish("t", b"x" * 200)
    assert raw[1:3] == mb5.vbi(len(raw) - 3)
    assert one5(raw).payload == b"x" * 200


# --------------------------------------------------------------------------
# every property: its type, the packets that carry it, its rules

# (property name, a packet kind that allows it, raw property, decoded value)
SAMPLES: List[Tuple[str, int, bytes, Any]] = [
    ("payload_format_indicator", P.PUBLISH, mb5.p_byte(0x01, 1), 1),
    ("message_expiry_interval", P.PUBLISH, mb5.p_u32(0x02, 0xFFFFFFFF),
     0xFFFFFFFF),
    ("content_type", WILL, mb5.p_str(0x03, "text/plain; charset=\u00e9"),
     "text/plain; charset=\u00e9"),
    ("response_topic", P.PUBLISH, mb5.p_str(0x08, "resp/\u00fc"),
     "resp/\u00fc"),
    ("correlation_data", WILL, mb5.p_bin(0x09, b"\x00\xff"), b"\x00\xff"),
    ("subscription_identifiers", P.SUBSCRIBE, mb5.p_vbi(0x0B, 16384),
     (16384,)),
    ("session_expiry_interval", P.CONNECT, mb5.p_u32(0x11, 0xFFFFFFFF),
     0xFFFFFFFF),
    ("assigned_client_identifier", P.CONNACK, mb5.p_str(0x12, "auto-1"),
     "auto-1"),
    ("server_keep_alive", P.CONNACK, mb5.p_u16(0x13, 0), 0),
    ("authentication_method", P.CONNECT, mb5.p_str(0x15, "SCRAM"), "SCRAM"),
    ("authentication_data", P.AUTH, mb5.p_bin(0x16, b""), b""),
    ("request_problem_information", P.CONNECT, mb5.p_byte(0x17, 0), 0),
    ("will_delay_interval", WILL, mb5.p_u32(0x18, 30), 30),
    ("request_response_information", P.CONNECT, mb5.p_byte(0x19, 1), 1),
    ("response_information", P.CONNACK, mb5.p_str(0x1A, "r/"), "r/"),
    ("server_reference", P.DISCONNECT, mb5.p_str(0x1C, "host:1"), "host:1"),
    ("reason_string", P.PUBREC, mb5.p_str(0x1F, ""), ""),
    ("receive_maximum", P.CONNACK, mb5.p_u16(0x21, 65535), 65535),
    ("topic_alias_maximum", P.CONNECT, mb5.p_u16(0x22, 0), 0),
    ("topic_alias", P.PUBLISH, mb5.p_u16(0x23, 65535), 65535),
    ("maximum_qos", P.CONNACK, mb5.p_byte(0x24, 0), 0),
    ("retain_available", P.CONNACK, mb5.p_byte(0x25, 1), 1),
    ("user_properties", P.UNSUBSCRIBE, mb5.p_pair("", "\u00e9"),
     (("", "\u00e9"),)),
    ("maximum_packet_size", P.CONNECT, mb5.p_u32(0x27, 1), 1),
    ("wildcard_subscription_available", P.CONNACK, mb5.p_byte(0x28, 0), 0),
    ("subscription_identifier_available", P.CONNACK, mb5.p_byte(0x29, 1), 1),
    ("shared_subscription_available", P.CONNACK, mb5.p_byte(0x2A, 0), 0),
]

KINDS = [WILL, P.CONNECT, P.CONNACK, P.PUBLISH, P.PUBACK, P.PUBREC, P.PUBREL,
         P.PUBCOMP, P.SUBSCRIBE, P.SUBACK, P.UNSUBSCRIBE, P.UNSUBACK,
         P.DISCONNECT, P.AUTH]
KIND_NAMES = {WILL: "WILL", P.CONNECT: "CONNECT", P.CONNACK: "CONNACK",
              P.PUBLISH: "PUBLISH", P.PUBACK: "PUBACK", P.PUBREC: "PUBREC",
              P.PUBREL: "PUBREL", P.PUBCOMP: "PUBCOMP",
              P.SUBSCRIBE: "SUBSCRIBE", P.SUBACK: "SUBACK",
              P.UNSUBSCRIBE: "UNSUBSCRIBE", P.UNSUBACK: "UNSUBACK",
              P.DISCONNECT: "DISCONNECT", P.AUTH: "AUTH"}

#: Table of section 2.2.2.2 as the spec prints it: identifier -> packets.
SPEC_TABLE: Dict[int, str] = {
    0x01: "PUBLISH WILL", 0x02: "PUBLISH WILL", 0x03: "PUBLISH WILL",
    0x08: "PUBLISH WILL", 0x09: "PUBLISH WILL", 0x0B: "PUBLISH SUBSCRIBE",
    0x11: "CONNECT CONNACK DISCONNECT", 0x12: "CONNACK", 0x13: "CONNACK",
    0x15: "CONNECT CONNACK AUTH", 0x16: "CONNECT CONNACK AUTH",
    0x17: "CONNECT", 0x18: "WILL", 0x19: "CONNECT", 0x1A: "CONNACK",
    0x1C: "CONNACK DISCONNECT",
    0x1F: "CONNACK PUBACK PUBREC PUBREL PUBCOMP SUBACK UNSUBACK DISCONNECT "
          "AUTH",
    0x21: "CONNECT CONNACK", 0x22: "CONNECT CONNACK", 0x23: "PUBLISH",
    0x24: "CONNACK", 0x25: "CONNACK",
    0x26: "CONNECT CONNACK PUBLISH WILL PUBACK PUBREC PUBREL PUBCOMP "
          "SUBSCRIBE SUBACK UNSUBSCRIBE UNSUBACK DISCONNECT AUTH",
    0x27: "CONNECT CONNACK", 0x28: "CONNACK", 0x29: "CONNACK",
    0x2A: "CONNACK",
}


def carrier(kind: int, block: bytes
            ) -> Tuple[bytes, Callable[[Optional[P.Properties]], P.Packet]]:
    """
    A hand-built packet of type ``kind`` (or a CONNECT with a will) whose
    property block is ``block``, and the packet it should decode to given
    its decoded properties.
    """
    if kind == P.CONNECT:
        return (mb5.connect("c", properties=block),
                lambda pr: P.Connect("c", protocol_level=5, keepalive=60,
                                     properties=pr))
    if kind == WILL:
        return (mb5.connect("c", will_topic="w", will_properties=block),
                lambda pr: P.Connect("c", protocol_level=5, keepalive=60,
                                     will=P.Will("w", b"", properties=pr)))
    if kind == P.CONNACK:
        return mb5.connack(0, False, block), lambda pr: P.ConnAck(0, False, pr)
    if kind == P.PUBLISH:
        return (mb5.publish("t", b"pl", properties=block),
                lambda pr: P.Publish("t", b"pl", properties=pr))
    if kind in (P.PUBACK, P.PUBREC, P.PUBREL, P.PUBCOMP):
        cls = {P.PUBACK: P.PubAck, P.PUBREC: P.PubRec, P.PUBREL: P.PubRel,
               P.PUBCOMP: P.PubComp}[kind]
        return (mb5.ack(KIND_NAMES[kind], 1, 0, block),
                lambda pr: cls(1, 0, pr))
    if kind == P.SUBSCRIBE:
        return (mb5.subscribe(1, [("a", 1)], block),
                lambda pr: P.Subscribe(1, [("a", 1)], pr))
    if kind == P.SUBACK:
        return mb5.suback(1, [0], block), lambda pr: P.SubAck(1, [0], pr)
    if kind == P.UNSUBSCRIBE:
        return (mb5.unsubscribe(1, ["a"], block),
                lambda pr: P.Unsubscribe(1, ["a"], pr))
    if kind == P.UNSUBACK:
        return mb5.unsuback(1, [0], block), lambda pr: P.UnsubAck(1, [0], pr)
    if kind == P.DISCONNECT:
        return mb5.disconnect(0, block), lambda pr: P.Disconnect(0, pr)
    assert kind == P.AUTH
    return mb5.auth(0, block), lambda pr: P.Auth(0, pr)


def test_specs_match_the_spec_table():
    """The 27 identifiers and their packets are those of section 2.2.2.2."""
    assert len(SPECS) == 27
    assert {s.identifier for s in SPECS} == set(SPEC_TABLE)
    for spec in SPECS:
        assert {KIND_NAMES[k] for k in spec.kinds} == \
            set(SPEC_TABLE[spec.identifier].split()), spec.name
    assert {name for name, *_ in SAMPLES} == set(BY_NAME)
    assert set(BY_NAME) == set(attr.name for attr in
                               P.Properties.__attrs_attrs__ if attr.init)


@pytest.mark.parametrize("name,kind,raw,value", SAMPLES,
                         ids=[s[0] for s in SAMPLES])
def test_every_property_decodes_and_encodes(name, kind, raw, value):
    """
    Each property, alone in a packet that may carry it, decodes to its
    field and encodes back to the same bytes (its type's layout, 1.5).
    """
    packet_bytes, build = carrier(kind, mb5.props(raw))
    expected = build(P.Properties(**{name: value}))
    assert one5(packet_bytes) == expected
    assert encode(expected, level=5) == packet_bytes


NOT_ALLOWED = [(name, kind, raw) for name, _, raw, _ in SAMPLES
               for kind in KINDS if kind not in BY_NAME[name].kinds]


@pytest.mark.parametrize(
    "name,kind,raw", NOT_ALLOWED,
    ids=["%s-in-%s" % (n, KIND_NAMES[k]) for n, k, _ in NOT_ALLOWED])
def test_property_not_allowed_in_packet_is_malformed(name, kind, raw):
    """
    Section 2.2.2.2: "A Control Packet which contains an Identifier which is
    not valid for its packet type ... is a Malformed Packet" (0x81); the
    encoder refuses to write one.
    """
    packet_bytes, build = carrier(kind, mb5.props(raw))
    refused(packet_bytes, R.MALFORMED_PACKET)
    _, value_kind, _, value = next(s for s in SAMPLES if s[0] == name)
    with pytest.raises(ValueError):
        encode(build(P.Properties(**{name: value})), level=5)


SINGLE = [s for s in SAMPLES
          if s[0] not in ("user_properties", "subscription_identifiers")]


@pytest.mark.parametrize("name,kind,raw,value", SINGLE,
                         ids=[s[0] for s in SINGLE])
def test_duplicate_property_is_protocol_error(name, kind, raw, value):
    """
    "It is a Protocol Error to include the <property> more than once"
    (every single-valued property, sections 3.1.2.11 to 3.15.2.2): 0x82.
    """
    refused(carrier(kind, mb5.props(raw, raw))[0], R.PROTOCOL_ERROR)


def test_user_properties_keep_order_and_duplicates():
    """
    [MQTT-3.3.2-18] user properties may repeat, even with the same name;
    order and duplicates survive decode and encode.
    """
    pairs = (("b", "1"), ("a", "2"), ("b", "1"), ("b", "0"))
    raw = mb5.publish("t", b"", properties=mb5.props(
        mb5.p_pair("b", "1"), mb5.p_u32(0x02, 5), mb5.p_pair("a", "2"),
        mb5.p_pair("b", "1"), mb5.p_pair("b", "0")))
    pkt = one5(raw)
    assert pkt.properties == P.Properties(
        message_expiry_interval=5, user_properties=pairs)
    assert one5(encode(pkt, level=5)) == pkt


def test_subscription_identifiers():
    """
    Several identifiers in one PUBLISH (3.3.4: one per matching
    subscription) are kept in order; SUBSCRIBE may carry one
    (3.8.2.1.2: more is a Protocol Error).
    """
    raw = mb5.publish("t", b"", properties=mb5.props(
        mb5.p_vbi(0x0B, 5), mb5.p_vbi(0x0B, 1), mb5.p_vbi(0x0B, 5)))
    assert one5(raw).properties.subscription_identifiers == (5, 1, 5)
    refused(mb5.subscribe(1, [("a", 0)], mb5.props(mb5.p_vbi(0x0B, 1),
                                                   mb5.p_vbi(0x0B, 2))),
            R.PROTOCOL_ERROR)
    with pytest.raises(ValueError):
        encode(P.Subscribe(1, [("a", 0)], P.Properties(
            subscription_identifiers=(1, 2))), level=5)


BAD_VALUES = [
    ("payload-format-2", P.PUBLISH, mb5.p_byte(0x01, 2), R.PROTOCOL_ERROR),
    ("payload-format-255-will", WILL, mb5.p_byte(0x01, 255),
     R.PROTOCOL_ERROR),
    ("response-topic-wildcard [MQTT-3.3.2-14]", P.PUBLISH,
     mb5.p_str(0x08, "a/+"), R.PROTOCOL_ERROR),
    ("response-topic-hash-will [3.1.3.2.5]", WILL, mb5.p_str(0x08, "#"),
     R.PROTOCOL_ERROR),
    ("response-topic-empty", P.PUBLISH, mb5.p_str(0x08, ""),
     R.PROTOCOL_ERROR),
    ("subscription-id-0-subscribe [3.8.2.1.2]", P.SUBSCRIBE,
     mb5.p_vbi(0x0B, 0), R.PROTOCOL_ERROR),
    ("subscription-id-0-publish [3.3.2.3.8]", P.PUBLISH, mb5.p_vbi(0x0B, 0),
     R.PROTOCOL_ERROR),
    ("request-problem-2 [3.1.2.11.7]", P.CONNECT, mb5.p_byte(0x17, 2),
     R.PROTOCOL_ERROR),
    ("request-response-2 [3.1.2.11.6]", P.CONNECT, mb5.p_byte(0x19, 2),
     R.PROTOCOL_ERROR),
    ("receive-maximum-0-connect [3.1.2.11.3]", P.CONNECT,
     mb5.p_u16(0x21, 0), R.PROTOCOL_ERROR),
    ("receive-maximum-0-connack [3.2.2.3.3]", P.CONNACK,
     mb5.p_u16(0x21, 0), R.PROTOCOL_ERROR),
    ("maximum-packet-size-0-connect [3.1.2.11.4]", P.CONNECT,
     mb5.p_u32(0x27, 0), R.PROTOCOL_ERROR),
    ("maximum-packet-size-0-connack [3.2.2.3.6]", P.CONNACK,
     mb5.p_u32(0x27, 0), R.PROTOCOL_ERROR),
    ("topic-alias-0 [MQTT-3.3.2-8]", P.PUBLISH, mb5.p_u16(0x23, 0),
     R.TOPIC_ALIAS_INVALID),
    ("maximum-qos-2 [3.2.2.3.4]", P.CONNACK, mb5.p_byte(0x24, 2),
     R.PROTOCOL_ERROR),
    ("retain-available-2 [3.2.2.3.5]", P.CONNACK, mb5.p_byte(0x25, 2),
     R.PROTOCOL_ERROR),
    ("wildcard-available-2 [3.2.2.3.11]", P.CONNACK, mb5.p_byte(0x28, 2),
     R.PROTOCOL_ERROR),
    ("subscription-id-available-2 [3.2.2.3.12]", P.CONNACK,
     mb5.p_byte(0x29, 2), R.PROTOCOL_ERROR),
    ("shared-available-2 [3.2.2.3.13]", P.CONNACK, mb5.p_byte(0x2A, 2),
     R.PROTOCOL_ERROR),
]


@pytest.mark.parametrize("kind,raw,code", [b[1:] for b in BAD_VALUES],
                         ids=[b[0] for b in BAD_VALUES])
def test_bad_property_value(kind, raw, code):
    """Each value rule of the spec raises with the code it names."""
    refused(carrier(kind, mb5.props(raw))[0], code)


def test_authentication_data_without_method():
    """
    3.1.2.11.10: "It is a Protocol Error to include Authentication Data if
    there is no Authentication Method."
    """
    refused(mb5.connect("c", properties=mb5.props(mb5.p_bin(0x16, b"x"))),
            R.PROTOCOL_ERROR)
    ok = mb5.connect("c", properties=mb5.props(mb5.p_bin(0x16, b"x"),
                                               mb5.p_str(0x15, "m")))
    assert one5(ok).properties.authentication_data == b"x"


@pytest.mark.parametrize("name,value", [
    ("receive_maximum", 0), ("maximum_packet_size", 0), ("maximum_qos", 2),
    ("request_problem_information", 3), ("retain_available", 7)])
def test_encoder_refuses_bad_values(name, value):
    """What the decoder would refuse, the encoder does not write."""
    kind = next(s[1] for s in SAMPLES if s[0] == name)
    with pytest.raises(ValueError):
        encode(carrier(kind, b"")[1](P.Properties(**{name: value})), level=5)


@pytest.mark.parametrize("props", [
    P.Properties(topic_alias=70000), P.Properties(payload_format_indicator=256),
    P.Properties(message_expiry_interval=1 << 32),
    P.Properties(message_expiry_interval=-1),
    P.Properties(content_type="x" * 65536),
    P.Properties(correlation_data=b"x" * 65536),
    P.Properties(subscription_identifiers=(268_435_456,)),
    P.Properties(subscription_identifiers=(0,)),
    P.Properties(user_properties=(("k", "v" * 65536),)),
    P.Properties(content_type=b"bytes"),
])
def test_encoder_refuses_unframeable_values(props):
    """Out-of-range integers and over-long strings raise ValueError."""
    with pytest.raises(ValueError):
        encode(P.Publish("t", b"", properties=props), level=5)


# --------------------------------------------------------------------------
# malformed property blocks and packets

MALFORMED = [
    ("property-length-past-end", mb5.publish(
        "t", b"", properties=mb5.props(mb5.p_byte(0x01, 1),
                                       length=mb5.vbi(3)))),
    ("property-length-past-packet", mb5.ack("PUBACK", 1, 0, b"\x05\x1f")),
    ("property-length-5-bytes", mb5.publish(
        "t", b"", properties=b"\x80\x80\x80\x80\x01")),
    ("property-length-non-minimal [MQTT-1.5.5-1]", mb5.publish(
        "t", b"", properties=b"\x80\x00")),
    ("property-length-truncated", mb.packet("PUBLISH", 0, mb.utf8("t")
                                            + b"\x80")),
    ("no-property-length-qos1", mb.packet("PUBLISH", 2, mb.utf8("t")
                                          + b"\x00\x01")),
    ("no-property-length-qos0", mb.packet("PUBLISH", 0, mb.utf8("t"))),
    ("unknown-property-0x00", mb5.publish("t", properties=mb5.props(
        b"\x00\x01"))),
    ("unknown-property-0x04", mb5.publish("t", properties=mb5.props(
        b"\x04\x01"))),
    ("unknown-property-0x7f", mb5.connack(0, False, mb5.props(b"\x7f\x01"))),
    ("two-byte-identifier", mb5.publish("t", properties=mb5.props(
        b"\x81\x00\x01"))),
    ("truncated-four-byte", mb5.publish("t", properties=mb5.props(
        b"\x02\x00\x00"))),
    ("truncated-two-byte", mb5.publish("t", properties=mb5.props(b"\x23\x00"))),
    ("truncated-byte", mb5.publish("t", properties=mb5.props(b"\x01"))),
    ("truncated-string", mb5.publish("t", properties=mb5.props(
        b"\x03\x00\x05ab"))),
    ("truncated-string-length", mb5.publish("t", properties=mb5.props(
        b"\x03\x00"))),
    ("truncated-binary", mb5.publish("t", properties=mb5.props(
        b"\x09\x00\x02a"))),
    ("truncated-pair-value", mb5.publish("t", properties=mb5.props(
        b"\x26" + mb.utf8("k") + b"\x00"))),
    ("truncated-varint", mb5.publish("t", properties=mb5.props(b"\x0b\x80"))),
    ("varint-5-bytes", mb5.publish("t", properties=mb5.props(
        b"\x0b\xff\xff\xff\xff\x01"))),
    ("varint-non-minimal [MQTT-1.5.5-1]", mb5.publish(
        "t", properties=mb5.props(b"\x0b\x81\x00"))),
    ("string-bad-utf8 [MQTT-1.5.4-1]", mb5.publish(
        "t", properties=mb5.props(mb5.p_str(0x03, b"\xff")))),
    ("string-surrogate [MQTT-1.5.4-1]", mb5.connack(0, False, mb5.props(
        mb5.p_str(0x12, b"\xed\xa0\x80")))),
    ("string-nul [MQTT-1.5.4-2]", mb5.disconnect(0, mb5.props(
        mb5.p_str(0x1F, "a\x00")))),
    ("user-property-name-bad-utf8", mb5.ack("PUBACK", 1, 0, mb5.props(
        mb5.p_pair(b"\xc0\xaf", "v")))),
    ("user-property-value-nul", mb5.suback(1, [0], mb5.props(
        mb5.p_pair("k", "\x00")))),
    ("will-properties-truncated", mb5.connect(
        "c", will_topic="w", will_properties=b"\x05\x18\x00")),
    # PUBLISH
    ("publish-topic-nul", mb5.publish("a\x00")),
    ("publish-topic-bad-utf8", mb5.publish(b"\xff")),
    ("publish-qos3 [MQTT-3.3.1-4]", mb.packet("PUBLISH", 0b0110, mb.utf8("a")
                                              + b"\x00\x01\x00")),
    ("publish-qos0-dup [MQTT-3.3.1-2]", mb5.publish("a", dup=True)),
    ("publish-id-0", mb5.publish("a", qos=1, packet_id=0)),
    # CONNECT
    ("connect-reserved-flag [MQTT-3.1.2-3]", mb5.connect("c",
                                                         connect_flags=0x03)),
    ("connect-will-qos3", mb5.connect("c", will_topic="w", will_qos=3)),
    ("connect-will-qos-without-will", mb5.connect("c", connect_flags=0x0A)),
    ("connect-trailing", mb5.connect("c", trailing=b"\x00")),
    ("connect-no-properties", mb.packet("CONNECT", 0, mb.utf8("MQTT")
                                        + b"\x05\x02\x00\x3c")),
    # acks
    ("puback-1-byte", mb.packet("PUBACK", 0, b"\x01")),
    ("puback-id-0", mb5.ack("PUBACK", 0)),
    ("puback-trailing", mb5.ack("PUBACK", 1, 0, mb5.NO_PROPS + b"\x00")),
    ("pubrel-flags-0 [MQTT-3.6.1-1]", mb.packet("PUBREL", 0, b"\x00\x01")),
    ("connack-1-byte", mb.packet("CONNACK", 0, b"\x00")),
    ("connack-reserved-flags [MQTT-3.2.2-1]", mb.packet(
        "CONNACK", 0, b"\x02\x00\x00")),
    ("connack-trailing", mb.packet("CONNACK", 0, b"\x00\x00\x00\x00")),
    # SUBSCRIBE family
    ("subscribe-reserved-bit-6 [MQTT-3.8.3-5]",
     mb5.subscribe(1, [("a", 0x40)])),
    ("subscribe-reserved-bit-7 [MQTT-3.8.3-5]",
     mb5.subscribe(1, [("a", 0x81)])),
    ("subscribe-missing-options", mb.packet("SUBSCRIBE", 2, b"\x00\x01\x00"
                                            + mb.utf8("a"))),
    ("subscribe-flags", mb.packet("SUBSCRIBE", 0, b"\x00\x01\x00"
                                  + mb.utf8("a") + b"\x00")),
    ("subscribe-id-0", mb5.subscribe(0, [("a", 0)])),
    ("subscribe-no-properties", mb.packet("SUBSCRIBE", 2, b"\x00\x01")),
    ("suback-no-codes", mb5.suback(1, [])),
    ("unsuback-no-codes", mb5.unsuback(1, [])),
    ("unsubscribe-filter-nul", mb5.unsubscribe(1, ["a\x00"])),
    # DISCONNECT / AUTH
    ("disconnect-flags", mb.packet("DISCONNECT", 1, b"")),
    ("disconnect-trailing", mb5.disconnect(0, mb5.NO_PROPS + b"\x00")),
    ("auth-flags", mb.packet(15, 1, b"")),
    ("auth-trailing", mb5.auth(0x18, mb5.NO_PROPS + b"\x01")),
]


@pytest.mark.parametrize("raw", [m[1] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed(raw):
    """
    Packets that can not be parsed at level 5 raise with 0x81 Malformed
    Packet (section 1.2, 2.2.2.2, 1.5.4, 1.5.5, and each packet's layout).
    """
    refused(raw, R.MALFORMED_PACKET)


@pytest.mark.parametrize("raw", [m[1] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_then_valid_packets(raw):
    """A lying inner length can not borrow bytes from the next packet."""
    with pytest.raises(ProtocolError):
        v5_decoder().feed(raw + mb5.publish("a/b", b"payload") * 3)


VIOLATIONS = [
    ("publish-empty-topic-no-alias [MQTT-3.3.2-1]", mb5.publish("", b"x"),
     R.PROTOCOL_ERROR),
    ("publish-empty-topic-other-properties", mb5.publish(
        "", b"x", properties=mb5.props(mb5.p_u32(0x02, 1))),
     R.PROTOCOL_ERROR),
    ("publish-plus [MQTT-3.3.2-2]", mb5.publish("a/+"), R.TOPIC_NAME_INVALID),
    ("publish-hash [MQTT-3.3.2-2]", mb5.publish("#", qos=1, packet_id=1),
     R.TOPIC_NAME_INVALID),
    ("subscribe-qos3 [3.8.3.1]", mb5.subscribe(1, [("a", 0x03)]),
     R.PROTOCOL_ERROR),
    ("subscribe-retain-handling-3 [3.8.3.1]",
     mb5.subscribe(1, [("a", 0x31)]), R.PROTOCOL_ERROR),
    ("subscribe-no-filters [MQTT-3.8.3-2]", mb5.subscribe(1, []),
     R.PROTOCOL_ERROR),
    ("unsubscribe-no-filters [MQTT-3.10.3-2]", mb5.unsubscribe(1, []),
     R.PROTOCOL_ERROR),
    ("connack-code-0x04", mb5.connack(0x04), R.PROTOCOL_ERROR),
    ("connack-code-0x8e", mb5.connack(0x8E), R.PROTOCOL_ERROR),
    ("puback-code-0x92 [MQTT-3.4.2-1]", mb5.ack("PUBACK", 1, 0x92),
     R.PROTOCOL_ERROR),
    ("pubrec-code-0x01", mb5.ack("PUBREC", 1, 0x01), R.PROTOCOL_ERROR),
    ("pubrel-code-0x10 [MQTT-3.6.2-1]", mb5.ack("PUBREL", 1, 0x10),
     R.PROTOCOL_ERROR),
    ("pubcomp-code-0x80 [MQTT-3.7.2-1]", mb5.ack("PUBCOMP", 1, 0x80,
                                                 mb5.NO_PROPS),
     R.PROTOCOL_ERROR),
    ("suback-code-0x03 [MQTT-3.9.3-1]", mb5.suback(1, [0, 3]),
     R.PROTOCOL_ERROR),
    ("unsuback-code-0x01 [MQTT-3.11.3-1]", mb5.unsuback(1, [1]),
     R.PROTOCOL_ERROR),
    ("disconnect-code-0x05 [MQTT-3.14.2-1]", mb5.disconnect(0x05),
     R.PROTOCOL_ERROR),
    ("disconnect-code-0x84", mb5.disconnect(0x84), R.PROTOCOL_ERROR),
    ("auth-code-0x01 [MQTT-3.15.2-1]", mb5.auth(0x01), R.PROTOCOL_ERROR),
    ("auth-code-0x87", mb5.auth(0x87, mb5.NO_PROPS), R.PROTOCOL_ERROR),
]


@pytest.mark.parametrize("raw,code", [v[1:] for v in VIOLATIONS],
                         ids=[v[0] for v in VIOLATIONS])
def test_protocol_errors(raw, code):
    """Well-formed packets the protocol forbids raise with their code."""
    refused(raw, code)


def test_error_keeps_previous_packets_and_poisons():
    """As at 3.1.1: earlier packets ride on the error, then it repeats."""
    dec = v5_decoder()
    with pytest.raises(ProtocolError) as info:
        dec.feed(mb5.ack("PUBACK", 1, 0x10) + mb5.publish("", b""))
    assert info.value.packets == [P.PubAck(1, 0x10)]
    with pytest.raises(ProtocolError) as again:
        dec.feed(mb.pingreq())
    assert again.value is info.value


# --------------------------------------------------------------------------
# encoder: level selection and refusals

def test_311_bytes_unchanged_by_level_argument():
    """level=4 (the default) and level=3 write the 3.1.1 bytes."""
    for pkt in (P.PubAck(1), P.Disconnect(), P.UnsubAck(3), P.ConnAck(0),
                P.SubAck(1, [0]), P.Publish("a", b"b")):
        assert encode(pkt) == encode(pkt, level=4) == encode(pkt, level=3)
    assert encode(P.Disconnect()) == mb.disconnect()
    assert encode(P.UnsubAck(3)) == mb.unsuback(3)


@pytest.mark.parametrize("pkt", [
    P.Publish("a", b"", properties=P.Properties(content_type="x")),
    P.PubAck(1, 0x10), P.PubRec(1, 0, P.Properties()),
    P.PubRel(1, 0x92), P.PubComp(1, 0, P.Properties(reason_string="x")),
    P.UnsubAck(1, [0]), P.Disconnect(0x04),
    P.Disconnect(0, P.Properties(session_expiry_interval=1)),
    P.ConnAck(0, False, P.Properties(maximum_qos=1)),
    P.SubAck(1, [0], P.Properties(reason_string="x")),
    P.Subscribe(1, [("a", 0)], P.Properties(subscription_identifiers=(1,))),
    P.Unsubscribe(1, ["a"], P.Properties(user_properties=(("a", "b"),))),
    P.Connect("c", properties=P.Properties(receive_maximum=1)),
    P.Connect("c", will=P.Will("w", b"", properties=P.Properties(
        will_delay_interval=1))),
    P.Auth(),
])
def test_encode_refuses_v5_fields_at_311(pkt):
    """Nothing of MQTT 5.0 is silently dropped when writing 3.1.1."""
    with pytest.raises(ValueError):
        encode(pkt)


@pytest.mark.parametrize("pkt", [
    P.Publish("", b""), P.Publish("", b"", properties=P.Properties(
        content_type="x")),
    P.Publish("a", b"", 1), P.Publish("a", b"", 3, packet_id=1),
    P.PubAck(1, 0x92), P.PubRel(1, 0x10), P.PubAck(70000),
    P.ConnAck(0x8E), P.SubAck(1, [3]), P.SubAck(1, []),
    P.UnsubAck(1, []), P.UnsubAck(1, [0x01]),
    P.Subscribe(1, []), P.Subscribe(1, [("a", 3)]),
    P.Subscribe(1, [("a", 0x30)]), P.Subscribe(1, [("a", 0x40)]),
    P.Unsubscribe(1, []),
    P.Disconnect(0x84), P.Auth(0x01),
    P.Connect("c", protocol_level=5, will=P.Will("w", b"", 3)),
])
def test_encode_refuses_unframeable_v5(pkt):
    """Level-5 fields that would corrupt the stream raise ValueError."""
    with pytest.raises(ValueError):
        encode(pkt, level=5)


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("size", [6, 127, 128, 16383, 16384, 2097152])
def test_encode_publish5_remaining_length_boundaries(size, qos):
    """encode_publish5 frames every varint width as section 2.2.3 says."""
    packet_id = 1 if qos else None
    header = 3 + (2 if qos else 0) + 1  # topic (+ packet id) + no properties
    payload = b"\xab" * (size - header)
    raw = mb5.publish("t", payload, qos=qos, packet_id=packet_id)
    assert raw[1:].startswith(mb5.vbi(size))
    assert encode_publish5("t", payload, qos, False, False, packet_id) == raw
    assert one5(raw) == P.Publish("t", payload, qos, packet_id=packet_id)


def test_encode_publish5_with_properties_matches_builder():
    props = P.Properties(topic_alias=2, user_properties=(("k", "v"),))
    assert encode_publish5("", b"p", 2, True, True, 9, props) == \
        mb5.publish("", b"p", qos=2, retain=True, dup=True, packet_id=9,
                    properties=mb5.props(mb5.p_u16(0x23, 2),
                                         mb5.p_pair("k", "v")))
    # The 3.1.1 fast path is untouched.
    assert encode_publish("t", b"p", 1, False, False, 3) == \
        mb.publish("t", b"p", qos=1, packet_id=3)


# --------------------------------------------------------------------------
# reason codes (section 2.4, table 2-6)

#: Table 2-6 as printed: code -> the packets that may carry it.
REASON_TABLE: Dict[int, str] = {
    0x00: "CONNACK PUBACK PUBREC PUBREL PUBCOMP UNSUBACK AUTH DISCONNECT "
          "SUBACK",
    0x01: "SUBACK", 0x02: "SUBACK", 0x04: "DISCONNECT",
    0x10: "PUBACK PUBREC", 0x11: "UNSUBACK", 0x18: "AUTH", 0x19: "AUTH",
    0x80: "CONNACK PUBACK PUBREC SUBACK UNSUBACK DISCONNECT",
    0x81: "CONNACK DISCONNECT", 0x82: "CONNACK DISCONNECT",
    0x83: "CONNACK PUBACK PUBREC SUBACK UNSUBACK DISCONNECT",
    0x84: "CONNACK", 0x85: "CONNACK", 0x86: "CONNACK",
    0x87: "CONNACK PUBACK PUBREC SUBACK UNSUBACK DISCONNECT",
    0x88: "CONNACK", 0x89: "CONNACK DISCONNECT", 0x8A: "CONNACK",
    0x8B: "DISCONNECT", 0x8C: "CONNACK DISCONNECT", 0x8D: "DISCONNECT",
    0x8E: "DISCONNECT", 0x8F: "SUBACK UNSUBACK DISCONNECT",
    0x90: "CONNACK PUBACK PUBREC DISCONNECT",
    0x91: "PUBACK PUBREC SUBACK UNSUBACK", 0x92: "PUBREL PUBCOMP",
    0x93: "DISCONNECT", 0x94: "DISCONNECT", 0x95: "CONNACK DISCONNECT",
    0x96: "DISCONNECT", 0x97: "CONNACK PUBACK PUBREC SUBACK DISCONNECT",
    0x98: "DISCONNECT", 0x99: "CONNACK PUBACK PUBREC DISCONNECT",
    0x9A: "CONNACK DISCONNECT", 0x9B: "CONNACK DISCONNECT",
    0x9C: "CONNACK DISCONNECT", 0x9D: "CONNACK DISCONNECT",
    0x9E: "SUBACK DISCONNECT", 0x9F: "CONNACK DISCONNECT",
    0xA0: "DISCONNECT", 0xA1: "SUBACK DISCONNECT", 0xA2: "SUBACK DISCONNECT",
}


def test_reason_code_sets_match_table_2_6():
    """Each packet's set of reason codes is exactly table 2-6's column."""
    sets = {"CONNACK": R.CONNACK_CODES, "PUBACK": R.PUBACK_CODES,
            "PUBREC": R.PUBREC_CODES, "PUBREL": R.PUBREL_CODES,
            "PUBCOMP": R.PUBCOMP_CODES, "SUBACK": R.SUBACK_CODES,
            "UNSUBACK": R.UNSUBACK_CODES, "DISCONNECT": R.DISCONNECT_CODES,
            "AUTH": R.AUTH_CODES}
    assert set(R.NAMES) == set(REASON_TABLE)
    for packet_name, codes in sets.items():
        expected = {code for code, where in REASON_TABLE.items()
                    if packet_name in where.split()}
        assert codes == expected, packet_name
    assert R.name(0x97) == "Quota exceeded"
    assert R.name(0x03) == "reason code 0x03"
    assert R.is_error(0x80) and not R.is_error(0x19)


@pytest.mark.parametrize("code", sorted(R.PUBACK_CODES))
def test_every_puback_code_round_trips(code):
    assert one5(encode(P.PubAck(5, code), level=5)) == P.PubAck(5, code)


@pytest.mark.parametrize("code", sorted(R.DISCONNECT_CODES))
def test_every_disconnect_code_round_trips(code):
    assert one5(encode(P.Disconnect(code), level=5)) == P.Disconnect(code)


@pytest.mark.parametrize("code", sorted(R.CONNACK_CODES))
def test_every_connack_code_round_trips(code):
    assert one5(encode(P.ConnAck(code), level=5)) == P.ConnAck(code)


# --------------------------------------------------------------------------
# streaming

STREAM_PACKETS: List[P.Packet] = [
    P.Connect("c", protocol_level=5, keepalive=10,
              will=P.Will("w", b"x" * 300, 1, False,
                          P.Properties(will_delay_interval=10,
                                       user_properties=(("a", "b"),))),
              password=b"p",
              properties=P.Properties(session_expiry_interval=60,
                                      maximum_packet_size=1 << 20)),
    P.Publish("a/b", b"x" * 200, 1, packet_id=9,
              properties=P.Properties(message_expiry_interval=5,
                                      subscription_identifiers=(200000,))),
    P.Publish("a", b""),
    P.Subscribe(2, [("a/#", P.subscription_options(1, True))]),
    P.PingReq(),
    P.PubRel(9),
    P.PubRec(10, 0x10, P.Properties(reason_string="none")),
    P.Unsubscribe(3, ["a/#"]),
    P.Auth(0x19, P.Properties(authentication_method="m")),
    P.Disconnect(0x04, P.Properties(session_expiry_interval=0)),
]
STREAM = b"".join(encode(p, level=5) for p in STREAM_PACKETS)


def test_split_in_two_at_every_boundary():
    """A level-5 stream cut anywhere into two feeds gives the same packets."""
    for cut in range(len(STREAM) + 1):
        dec = Decoder(connect_first=True, accept_v5=True)
        got = dec.feed(STREAM[:cut]) + dec.feed(STREAM[cut:])
        assert got == STREAM_PACKETS, cut
        assert dec.buffered == 0


def test_byte_by_byte():
    dec = Decoder(accept_v5=True)
    got: List[P.Packet] = []
    for i in range(len(STREAM)):
        got.extend(dec.feed(STREAM[i:i + 1]))
    assert got == STREAM_PACKETS


# --------------------------------------------------------------------------
# hypothesis: valid v5 packets round trip; garbage only raises ProtocolError

_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
_text = st.text(_chars, max_size=20)
_topic = st.text(st.characters(exclude_categories=("Cs",),
                               exclude_characters="\x00+#"),
                 min_size=1, max_size=20)
_pid = st.integers(min_value=1, max_value=65535)
_blob = st.binary(max_size=100)
_qos = st.integers(min_value=0, max_value=2)
_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_sub_id = st.integers(1, 268_435_455)

#: A valid value strategy per property (section 2.2.2.2 and the rules).
_VALUES: Dict[str, st.SearchStrategy[Any]] = {
    "payload_format_indicator": st.sampled_from([0, 1]),
    "message_expiry_interval": _u32,
    "content_type": _text,
    "response_topic": _topic,
    "correlation_data": _blob,
    "session_expiry_interval": _u32,
    "assigned_client_identifier": _text,
    "server_keep_alive": _u16,
    "authentication_method": _text,
    "authentication_data": _blob,
    "request_problem_information": st.sampled_from([0, 1]),
    "will_delay_interval": _u32,
    "request_response_information": st.sampled_from([0, 1]),
    "response_information": _text,
    "server_reference": _text,
    "reason_string": _text,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": _u16,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": st.sampled_from([0, 1]),
    "retain_available": st.sampled_from([0, 1]),
    "maximum_packet_size": st.integers(1, 0xFFFFFFFF),
    "wildcard_subscription_available": st.sampled_from([0, 1]),
    "subscription_identifier_available": st.sampled_from([0, 1]),
    "shared_subscription_available": st.sampled_from([0, 1]),
}


@st.composite
def properties_for(draw: Any, kind: int) -> Optional[P.Properties]:
    """None, or valid properties for packet ``kind``."""
    if not draw(st.booleans()):
        return None
    fields: Dict[str, Any] = {}
    for spec in SPECS:
        if kind not in spec.kinds or not draw(st.booleans()):
            continue
        if spec.name == "user_properties":
            fields[spec.name] = tuple(draw(st.lists(
                st.tuples(_text, _text), min_size=1, max_size=3)))
        elif spec.name == "subscription_identifiers":
            fields[spec.name] = tuple(draw(st.lists(
                _sub_id, min_size=1, max_size=3 if kind == P.PUBLISH else 1)))
        else:
            fields[spec.name] = draw(_VALUES[spec.name])
    if "authentication_data" in fields and kind == P.CONNECT:
        fields.setdefault("authentication_method", "m")
    return P.Properties(**fields) if fields else None


@st.composite
def _publish5(draw: Any) -> P.Publish:
    qos = draw(_qos)
    props = draw(properties_for(P.PUBLISH))
    topic = draw(_topic)
    if props is not None and props.topic_alias is not None \
            and draw(st.booleans()):
        topic = ""
    return P.Publish(topic, draw(_blob), qos, draw(st.booleans()),
                     draw(st.booleans()) if qos else False,
                     draw(_pid) if qos else None, props)


@st.composite
def _connect5(draw: Any) -> P.Connect:
    will = None
    if draw(st.booleans()):
        will = P.Will(draw(_topic), draw(_blob), draw(_qos),
                      draw(st.booleans()), draw(properties_for(WILL)))
    return P.Connect(draw(_text), "MQTT", 5, draw(st.booleans()),
                     draw(_u16), will, draw(st.none() | _text),
                     draw(st.none() | _blob), draw(properties_for(P.CONNECT)))


_options = st.builds(P.subscription_options, _qos, st.booleans(),
                     st.booleans(), st.sampled_from([0, 1, 2]))


def _ack5(cls: type, kind: int, codes: Any) -> st.SearchStrategy[Any]:
    return st.builds(cls, _pid, st.sampled_from(sorted(codes)),
                     properties_for(kind))


def _codes(codes: Any) -> st.SearchStrategy[List[int]]:
    return st.lists(st.sampled_from(sorted(codes)), min_size=1, max_size=5)


PACKETS5 = st.one_of(
    _publish5(),
    st.builds(P.ConnAck, st.sampled_from(sorted(R.CONNACK_CODES)),
              st.booleans(), properties_for(P.CONNACK)),
    _ack5(P.PubAck, P.PUBACK, R.PUBACK_CODES),
    _ack5(P.PubRec, P.PUBREC, R.PUBREC_CODES),
    _ack5(P.PubRel, P.PUBREL, R.PUBREL_CODES),
    _ack5(P.PubComp, P.PUBCOMP, R.PUBCOMP_CODES),
    st.builds(P.Subscribe, _pid,
              st.lists(st.tuples(_text, _options), min_size=1, max_size=4),
              properties_for(P.SUBSCRIBE)),
    st.builds(P.SubAck, _pid, _codes(R.SUBACK_CODES),
              properties_for(P.SUBACK)),
    st.builds(P.Unsubscribe, _pid, st.lists(_text, min_size=1, max_size=4),
              properties_for(P.UNSUBSCRIBE)),
    st.builds(P.UnsubAck, _pid, _codes(R.UNSUBACK_CODES),
              properties_for(P.UNSUBACK)),
    st.builds(P.PingReq), st.builds(P.PingResp),
    st.builds(P.Disconnect, st.sampled_from(sorted(R.DISCONNECT_CODES)),
              properties_for(P.DISCONNECT)),
    st.builds(P.Auth, st.sampled_from(sorted(R.AUTH_CODES)),
              properties_for(P.AUTH)),
)


@settings(max_examples=300, deadline=None)
@given(PACKETS5)
def test_hypothesis_round_trip(pkt):
    """Any valid level-5 packet survives encode -> decode."""
    assert one5(encode(pkt, level=5)) == pkt


@settings(max_examples=150, deadline=None)
@given(_connect5())
def test_hypothesis_connect_round_trip(pkt):
    """Any valid level-5 CONNECT decodes on an accept_v5 server decoder."""
    dec = Decoder(connect_first=True, accept_v5=True)
    assert dec.feed(encode(pkt)) == [pkt]
    assert dec.protocol_level == 5


@settings(max_examples=100, deadline=None)
@given(_connect5(), st.lists(PACKETS5, min_size=1, max_size=8), st.data())
def test_hypothesis_stream_any_chunking(connect, pkts, data):
    """A CONNECT and what follows, chunked anywhere, decodes the same."""
    stream = encode(connect) + b"".join(encode(p, level=5) for p in pkts)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)),
                                         max_size=10)))) + [len(stream)]
    dec = Decoder(accept_v5=True)
    got: List[P.Packet] = []
    prev = 0
    for cut in cuts:
        got.extend(dec.feed(stream[prev:cut]))
        prev = cut
    assert got == [connect] + pkts


def _only_protocol_errors(dec: Decoder, chunks: List[bytes]) -> None:
    """Feed; anything decoded must encode again at the decoder's level."""
    try:
        for chunk in chunks:
            for pkt in dec.feed(chunk):
                if isinstance(pkt, P.ConnAck) and \
                        pkt.return_code not in R.CONNACK_CODES:
                    continue  # a 3.1.1 refusal: readable, not written at 5
                encode(pkt, level=dec.protocol_level)
    except ProtocolError as err:
        assert 0x80 <= err.reason_code <= 0xA2


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8),
       st.sampled_from([0, 64, 1000]))
def test_fuzz_random_bytes(chunks, limit):
    """Random input to a level-5 decoder raises nothing but ProtocolError."""
    _only_protocol_errors(v5_decoder(max_packet_size=limit), chunks)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_fuzz_after_v5_connect(chunks):
    """Random bytes after a valid level-5 CONNECT on a server decoder."""
    dec = Decoder(connect_first=True, accept_v5=True)
    dec.feed(mb5.connect("c"))
    _only_protocol_errors(dec, chunks)


@settings(max_examples=500, deadline=None)
@given(st.lists(PACKETS5, min_size=1, max_size=4), st.data())
def test_fuzz_bit_flips(pkts, data):
    """
    Valid level-5 streams with flipped bits or truncated bodies raise
    nothing but ProtocolError, and what decodes is a valid packet again.
    """
    stream = bytearray(b"".join(encode(p, level=5) for p in pkts))
    for _ in range(data.draw(st.integers(1, 4))):
        bit = data.draw(st.integers(0, len(stream) * 8 - 1))
        stream[bit // 8] ^= 1 << (bit % 8)
    cut = data.draw(st.integers(1, len(stream)))
    _only_protocol_errors(v5_decoder(),
                          [bytes(stream[:cut]), bytes(stream[cut:])])


@settings(max_examples=300, deadline=None)
@given(_connect5(), st.data())
def test_fuzz_connect_bit_flips(connect, data):
    """Bit flips in a level-5 CONNECT (properties, will properties)."""
    stream = bytearray(encode(connect))
    for _ in range(data.draw(st.integers(1, 3))):
        bit = data.draw(st.integers(0, len(stream) * 8 - 1))
        stream[bit // 8] ^= 1 << (bit % 8)
    _only_protocol_errors(Decoder(connect_first=True, accept_v5=True),
                          [bytes(stream)])


def _decode_chunked(data: bytes, cuts: List[int]) -> Tuple[List[Any], Any]:
    """Packets and the error's reason code (or None) feeding in chunks."""
    dec = Decoder(connect_first=True, accept_v5=True)
    got: List[Any] = []
    start = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        try:
            got += dec.feed(data[start:cut])
        except ProtocolError as err:
            return got + err.packets, err.reason_code
        start = cut
    return got, None


@settings(max_examples=300, deadline=None)
@given(_connect5(), st.lists(PACKETS5, max_size=4), st.binary(max_size=24),
       st.lists(st.integers(0, 400), max_size=6), st.data())
def test_fuzz_same_result_whatever_the_split(connect, pkts, junk, cuts, data):
    """
    A level-5 stream with junk spliced in gives the same packets and the
    same reason code however it is chunked: the decision never depends on
    where a read ended.
    """
    parts = [encode(connect)] + [encode(p, level=5) for p in pkts]
    parts.insert(data.draw(st.integers(1, len(parts))), junk)
    stream = b"".join(parts)
    assert _decode_chunked(stream, cuts) == _decode_chunked(stream, [])


def test_publish_properties_are_sent_on_as_they_came():
    """
    A decoded PUBLISH's property block is re-sent byte for byte (the
    client's order, user properties interleaved), unless changed: a copy
    made with attrs.evolve is encoded afresh, and equality ignores it.
    """
    from vmqtw.mqtt.properties import decode_properties, encode_properties

    block = mb5.props(mb5.p_pair("a", "1"), mb5.p_str(0x03, "text/plain"),
                      mb5.p_pair("b", "2"), mb5.p_u32(0x02, 60))
    props, _ = decode_properties(bytearray(block), 0, len(block), P.PUBLISH)
    assert props is not None and props.wire == block
    assert encode_properties(props, P.PUBLISH) == block
    changed = attrs.evolve(props, message_expiry_interval=30)
    assert changed.wire is None
    again, _ = decode_properties(bytearray(encode_properties(changed, P.PUBLISH)), 0,
                                 len(block), P.PUBLISH)
    assert again == changed and again.user_properties == (("a", "1"), ("b", "2"))
    assert props == attrs.evolve(props)
