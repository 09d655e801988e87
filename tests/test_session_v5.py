"""
MQTT 5.0 in the session state machine, end to end in process: raw level-5
bytes from :mod:`vmqtw.testing.mqtt5bytes` (written from the spec, not from
the codec) through the real protocol, registry and queues over
``StringTransport``, time from a ``task.Clock``.  Section numbers and
statement ids refer to OASIS MQTT Version 5.0.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest

from vmqtw.broker.queue import QueueLimits
from vmqtw.broker.registry import SESSION_EXPIRY_PREFIX
from vmqtw.mqtt import packets as P
from vmqtw.mqtt import reasons as R
from vmqtw.mqtt.codec import Decoder
from vmqtw.mqtt.session import AnonymousGate, SessionSettings
from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker, Client, only

V5 = SessionSettings(topic_alias_max_client=10)


def client5(broker: Broker) -> Client:
    """A raw client reading the broker's answers as MQTT 5.0."""
    client = broker.client()
    client.decoder = Decoder(protocol_level=5)
    return client


def connect5(broker: Broker, client_id: str = "c1", **kwargs: Any) -> Tuple[Client, P.ConnAck]:
    """A level-5 client that got CONNACK 0x00 (checked), and the CONNACK."""
    client = client5(broker)
    client.send(B5.connect(client_id, **kwargs))
    packets = broker.answer(client)
    assert packets and isinstance(packets[0], P.ConnAck), packets
    assert packets[0].reason_code == R.SUCCESS, packets
    client.backlog = packets[1:]
    return client, packets[0]


def subscribe5(broker: Broker, client: Client, *topics: Tuple[str, int],
               properties: bytes = B5.NO_PROPS) -> List[Any]:
    """SUBSCRIBE; what the broker answered (SUBACK first)."""
    client.send(B5.subscribe(1, list(topics), properties))
    packets = broker.answer(client)
    assert packets and isinstance(packets[0], P.SubAck), packets
    return packets


def expiry(seconds: int) -> bytes:
    """A CONNECT / DISCONNECT property block with a session expiry interval."""
    return B5.props(B5.p_u32(0x11, seconds))


def closed_with(client: Client, code: int) -> None:
    """The broker wrote DISCONNECT ``code`` and closed."""
    packets = client.received()
    assert isinstance(packets[-1], P.Disconnect), packets
    assert packets[-1].reason_code == code
    assert client.closed


# -- CONNECT and CONNACK ---------------------------------------------------------


def test_v5_connack_says_what_is_not_offered():
    """3.2.2.3: a level-5 CONNECT is accepted; CONNACK names what we lack."""
    broker = Broker()
    client, connack = connect5(broker, "c1")
    assert client.protocol.session.level == 5
    props = connack.properties
    assert props is not None
    assert props.subscription_identifier_available is None   # available
    assert props.shared_subscription_available == 1   # offered, and said so
    assert props.assigned_client_identifier is None   # the client named itself
    assert props.maximum_qos is None and props.retain_available is None
    assert props.topic_alias_maximum is None   # topic_alias_max_client = 0


def test_v5_connack_announces_limits():
    """max_message_size, topic_alias_max_client, receive_max_broker go to the client."""
    broker = Broker(settings=SessionSettings(max_message_size=4096, topic_alias_max_client=7,
                                             receive_max_broker=10))
    _client, connack = connect5(broker)
    props = connack.properties
    assert props is not None
    assert (props.maximum_packet_size, props.topic_alias_maximum,
            props.receive_maximum) == (4096, 7, 10)


@pytest.mark.parametrize("clean_start", [True, False])
def test_v5_empty_client_id_assigned(clean_start):
    """[MQTT-3.1.3-6], [MQTT-3.2.2-16]: an assigned id, told in CONNACK (any clean start)."""
    broker = Broker()
    client, connack = connect5(broker, "", clean_start=clean_start)
    assert connack.properties is not None
    assigned = connack.properties.assigned_client_identifier
    assert assigned and assigned == client.protocol.session.client_id


def test_v5_server_keep_alive_when_capped():
    """[MQTT-3.2.2-21]: a keep alive cut down by max_keepalive is told to the client."""
    broker = Broker(settings=SessionSettings(max_keepalive=30))
    client, connack = connect5(broker, keepalive=60)
    assert connack.properties is not None and connack.properties.server_keep_alive == 30
    _client, connack = connect5(broker, "c2", keepalive=20)
    assert connack.properties is not None and connack.properties.server_keep_alive is None


def test_protocol_versions_setting():
    """listener.allowed_protocol_versions: a level not listed gets CONNACK 1."""
    broker = Broker(settings=SessionSettings(protocol_versions=(3, 4)))
    client = broker.client()
    client.send(B5.connect("c1"))
    assert client.received() == [P.ConnAck(P.CONNACK_UNACCEPTABLE_PROTOCOL_VERSION, False)]
    assert client.closed
    broker = Broker(settings=SessionSettings(protocol_versions=(4, 5)))
    client = broker.client()
    client.send(B.connect("c1", protocol_name="MQIsdp", level=3))
    assert client.received() == [P.ConnAck(P.CONNACK_UNACCEPTABLE_PROTOCOL_VERSION, False)]
    connect5(broker, "c2")


def test_v5_refusals_carry_reason_codes():
    """[MQTT-3.2.2-7]: refusals are CONNACK reason codes >= 0x80, then close."""
    broker = Broker(authenticator=AnonymousGate(False))
    client = client5(broker)
    client.send(B5.connect("c1"))
    [connack] = client.received()
    assert connack.reason_code == R.NOT_AUTHORIZED and client.closed
    broker = Broker(settings=SessionSettings(max_client_id_size=5))
    client = client5(broker)
    client.send(B5.connect("abcdefgh"))
    [connack] = client.received()
    assert connack.reason_code == R.CLIENT_IDENTIFIER_NOT_VALID and client.closed
    broker = Broker(ready=lambda: False)
    client = client5(broker)
    client.send(B5.connect("c1"))
    [connack] = client.received()
    assert connack.reason_code == R.SERVER_UNAVAILABLE and client.closed


def test_v5_malformed_connect_gets_connack_reason_code():
    """4.13.1: a level-5 CONNECT breaking a property rule gets CONNACK 0x82."""
    broker = Broker()
    client = client5(broker)
    client.send(B5.connect("c1", properties=B5.props(B5.p_u32(0x11, 1), B5.p_u32(0x11, 2))))
    [connack] = client.received()
    assert connack.reason_code == R.PROTOCOL_ERROR and client.closed


def test_authentication_method_refused():
    """4.12: no enhanced authentication method is offered: CONNACK 0x8C."""
    broker = Broker()
    client = client5(broker)
    client.send(B5.connect("c1", properties=B5.props(B5.p_str(0x15, "SCRAM-SHA-1"))))
    [connack] = client.received()
    assert connack.reason_code == R.BAD_AUTHENTICATION_METHOD and client.closed


def test_auth_packet_without_method_is_a_protocol_error():
    """[MQTT-4.12.0-1]: AUTH with no method agreed: DISCONNECT 0x82."""
    broker = Broker()
    client, _ = connect5(broker)
    client.send(B5.auth(0x18, B5.props(B5.p_str(0x15, "x"))))
    closed_with(client, R.PROTOCOL_ERROR)


# -- DISCONNECT from the server ---------------------------------------------------


def test_keep_alive_timeout_disconnect():
    """[MQTT-3.1.2-22]: 1.5 x keep alive of silence: DISCONNECT 0x8D."""
    broker = Broker()
    client, _ = connect5(broker, keepalive=10)
    broker.clock.advance(15.1)
    closed_with(client, R.KEEP_ALIVE_TIMEOUT)
    # A peer that is gone never reads it: aborted after a grace period.
    assert not getattr(client.transport, "disconnected", False)
    broker.clock.advance(5)
    assert client.transport.disconnected


def test_takeover_disconnect():
    """[MQTT-3.1.4-3]: the old connection gets DISCONNECT 0x8E."""
    broker = Broker()
    old, _ = connect5(broker, "same")
    connect5(broker, "same")
    closed_with(old, R.SESSION_TAKEN_OVER)


def test_malformed_packet_disconnect_carries_codec_reason():
    """4.13.2: a malformed packet after CONNECT: DISCONNECT with the codec's code."""
    broker = Broker()
    client, _ = connect5(broker)
    client.send(B5.publish("a", b"x", properties=B5.props(B5.p_byte(0x01, 1),
                                                           B5.p_byte(0x01, 1))))
    closed_with(client, R.PROTOCOL_ERROR)


def test_subscription_identifier_from_client_is_a_protocol_error():
    """[MQTT-3.3.4-6]: a client may not send a subscription identifier."""
    broker = Broker()
    client, _ = connect5(broker)
    client.send(B5.publish("a", b"x", properties=B5.props(B5.p_vbi(0x0B, 3))))
    closed_with(client, R.PROTOCOL_ERROR)


def test_3_1_1_violation_still_silent():
    """A 3.1.1 client breaking the protocol is closed without a word [MQTT-4.8.0-1]."""
    broker = Broker()
    client = broker.connect("c311")
    client.send(B.connect("again"))
    assert client.received() == [] and client.closed


# -- DISCONNECT from the client, wills --------------------------------------------


def test_disconnect_with_will_message_publishes_the_will():
    """[MQTT-3.1.2-8]: only DISCONNECT 0x00 deletes the will; 0x04 or an error keeps it."""
    broker = Broker()
    watcher = broker.subscriber("watcher", ("wills/#", 0))
    for code, expected in ((R.DISCONNECT_WITH_WILL_MESSAGE, [b"bye"]), (0x00, []),
                           (R.UNSPECIFIED_ERROR, [b"bye"])):
        client, _ = connect5(broker, "w", will_topic="wills/w", will_message=b"bye")
        client.send(B5.disconnect(code))
        client.finish_close()
        assert [p.payload for p in watcher.publishes()] == expected


def test_will_properties_pass_on_without_the_delay():
    """3.1.3.2: will properties go with the will message (delay excepted)."""
    broker = Broker()
    watcher, _ = connect5(broker, "watcher")
    subscribe5(broker, watcher, ("wills/#", 0))
    client, _ = connect5(broker, "w", will_topic="wills/w", will_message=b"bye",
                         will_properties=B5.props(B5.p_str(0x03, "text/plain"),
                                                  B5.p_u32(0x18, 0)))
    client.drop()
    [will] = watcher.publishes()
    assert will.properties is not None
    assert will.properties.content_type == "text/plain"
    assert will.properties.will_delay_interval is None


# -- session expiry ----------------------------------------------------------------


def _present_after(broker: Broker, client_id: str, seconds: float) -> bool:
    broker.clock.advance(seconds)
    _client, connack = connect5(broker, client_id, clean_start=False, properties=expiry(60))
    return connack.session_present


def test_session_expiry_zero_ends_with_the_connection():
    """3.1.2.11.2: no session expiry interval (0): the session ends at close."""
    broker = Broker()
    client, _ = connect5(broker, "s", clean_start=False)
    subscribe5(broker, client, ("t", 1))
    client.drop()
    assert not _present_after(broker, "s", 0)


def test_session_expiry_interval_kept_then_expired():
    """[MQTT-3.1.2-23]: kept for the interval after the connection closes, then gone."""
    broker = Broker()
    client, _ = connect5(broker, "s", clean_start=False, properties=expiry(10))
    subscribe5(broker, client, ("t", 1))
    client.drop()
    broker.clock.advance(9)
    client, connack = connect5(broker, "s", clean_start=False, properties=expiry(10))
    assert connack.session_present
    client.drop()
    broker.clock.advance(10.5)
    assert broker.registry.counters.expired_sessions == 1
    assert not _present_after(broker, "s", 0)


def test_session_expiry_never():
    """0xFFFFFFFF: the session does not expire, whatever persistent_client_expiration."""
    broker = Broker(session_expiration=5)
    client, _ = connect5(broker, "s", clean_start=False, properties=expiry(0xFFFFFFFF))
    subscribe5(broker, client, ("t", 1))
    client.drop()
    assert _present_after(broker, "s", 86400 * 30)


def test_session_expiry_replaces_the_global_setting():
    """The session's interval wins over persistent_client_expiration."""
    broker = Broker(session_expiration=1000)
    client, _ = connect5(broker, "s", clean_start=False, properties=expiry(5))
    client.drop()
    broker.clock.advance(6)
    assert broker.registry.counters.expired_sessions == 1


def test_disconnect_changes_session_expiry():
    """3.14.2.2.2: DISCONNECT may set a new interval; 0 ends the session now."""
    broker = Broker()
    client, _ = connect5(broker, "s", clean_start=False, properties=expiry(100))
    subscribe5(broker, client, ("t", 1))
    client.send(B5.disconnect(0, expiry(0)))
    client.finish_close()
    assert not _present_after(broker, "s", 0)


def test_disconnect_expiry_after_zero_is_a_protocol_error():
    """[MQTT-3.14.2-2]: a non-zero interval at DISCONNECT after 0 at CONNECT."""
    broker = Broker()
    client, _ = connect5(broker, "s")
    client.send(B5.disconnect(0, expiry(100)))
    closed_with(client, R.PROTOCOL_ERROR)


def test_clean_start_with_expiry_discards_the_old_session():
    """[MQTT-3.1.2-4]: clean start 1 discards the session even when it will persist."""
    broker = Broker()
    client, _ = connect5(broker, "s", clean_start=False, properties=expiry(100))
    subscribe5(broker, client, ("t", 1))
    client.drop()
    client, connack = connect5(broker, "s", clean_start=True, properties=expiry(100))
    assert not connack.session_present
    publisher = broker.connect("pub")
    publisher.send(B.publish("t", b"x", qos=1, packet_id=1))
    assert client.publishes() == []
    client.drop()
    assert _present_after(broker, "s", 1)    # persists now, without the old filter


def test_expiry_zero_without_clean_start_resumes_then_ends():
    """Clean start 0, expiry 0: the old session is resumed, and ends at close."""
    broker = Broker()
    client, _ = connect5(broker, "s", clean_start=False, properties=expiry(100))
    subscribe5(broker, client, ("t", 1))
    client.drop()
    client, connack = connect5(broker, "s", clean_start=False)
    assert connack.session_present
    client.drop()
    assert not _present_after(broker, "s", 0)


# -- PUBLISH -----------------------------------------------------------------------


PUBLISH_PROPS = B5.props(
    B5.p_byte(0x01, 1), B5.p_str(0x03, "application/json"), B5.p_str(0x08, "reply/here"),
    B5.p_bin(0x09, b"\x00corr"), B5.p_pair("b", "2"), B5.p_pair("a", "1"),
    B5.p_pair("b", "2"))


def test_publish_properties_pass_through_in_order():
    """[MQTT-3.3.2-17/18/20], [MQTT-3.3.2-15]: properties unchanged, user properties in order."""
    broker = Broker()
    sub, _ = connect5(broker, "sub")
    subscribe5(broker, sub, ("t/#", 1))
    old = broker.subscriber("old", ("t/#", 1))
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("t/1", b"{}", qos=1, packet_id=7, properties=PUBLISH_PROPS))
    assert only(pub.received(), P.PubAck) == P.PubAck(7)
    [got] = sub.publishes()
    props = got.properties
    assert props is not None
    assert (props.payload_format_indicator, props.content_type, props.response_topic,
            props.correlation_data) == (1, "application/json", "reply/here", b"\x00corr")
    assert props.user_properties == (("b", "2"), ("a", "1"), ("b", "2"))
    # A 3.1.1 subscriber gets the same message without properties.
    [plain] = old.publishes()
    assert (plain.topic, plain.payload, plain.properties) == ("t/1", b"{}", None)


def test_publish_from_3_1_1_to_v5_has_no_properties():
    broker = Broker()
    sub, _ = connect5(broker, "sub")
    subscribe5(broker, sub, ("t", 0))
    broker.connect("old").send(B.publish("t", b"x"))
    [got] = sub.publishes()
    assert got.properties is None


def test_message_expiry_counted_down_while_queued():
    """[MQTT-3.3.2-6]: the interval sent is what is left; expired ones are dropped."""
    broker = Broker()
    sub, _ = connect5(broker, "sub", clean_start=False, properties=expiry(1000))
    subscribe5(broker, sub, ("t", 1))
    sub.drop()
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("t", b"short", qos=1, packet_id=1,
                        properties=B5.props(B5.p_u32(0x02, 3))))
    pub.send(B5.publish("t", b"long", qos=1, packet_id=2,
                        properties=B5.props(B5.p_u32(0x02, 10))))
    broker.clock.advance(4)
    sub, _ = connect5(broker, "sub", clean_start=False, properties=expiry(1000))
    [got] = sub.publishes()
    assert got.payload == b"long"
    assert got.properties is not None and got.properties.message_expiry_interval == 6
    assert broker.registry.counters.expired_messages == 1


def test_topic_alias_set_then_used():
    """3.3.2.3.4: an alias set with a topic stands for it in later PUBLISHes."""
    broker = Broker(settings=V5)
    sub, _ = connect5(broker, "sub")
    subscribe5(broker, sub, ("long/topic/name", 0))
    pub, _ = connect5(broker, "pub")
    alias = B5.props(B5.p_u16(0x23, 3))
    pub.send(B5.publish("long/topic/name", b"1", properties=alias))
    pub.send(B5.publish("", b"2", properties=alias))
    got = sub.publishes()
    assert [(p.topic, p.payload) for p in got] == [("long/topic/name", b"1"),
                                                  ("long/topic/name", b"2")]
    # The publisher's alias is its own: it does not reach subscribers.
    assert all(p.properties is None for p in got)


def test_topic_alias_above_maximum():
    """[MQTT-3.3.2-9]: an alias above topic_alias_max_client: DISCONNECT 0x94."""
    broker = Broker(settings=V5)
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("t", b"1", properties=B5.props(B5.p_u16(0x23, 11))))
    closed_with(pub, R.TOPIC_ALIAS_INVALID)


def test_unknown_topic_alias_is_a_protocol_error():
    broker = Broker(settings=V5)
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("", b"1", properties=B5.props(B5.p_u16(0x23, 2))))
    closed_with(pub, R.PROTOCOL_ERROR)


def test_client_receive_maximum_limits_in_flight():
    """[MQTT-3.3.4-9]: no more unacknowledged QoS 1/2 than the client's receive maximum."""
    broker = Broker(limits=QueueLimits(max_inflight_messages=20))
    sub, _ = connect5(broker, "sub", properties=B5.props(B5.p_u16(0x21, 1)))
    subscribe5(broker, sub, ("t", 1))
    pub, _ = connect5(broker, "pub")
    for i in (1, 2, 3):
        pub.send(B5.publish("t", b"%d" % i, qos=1, packet_id=i))
    [first] = sub.publishes()
    sub.send(B5.ack("PUBACK", first.packet_id))
    [second] = sub.publishes()
    assert (first.payload, second.payload) == (b"1", b"2")


def test_client_maximum_packet_size_drops_large_messages():
    """[MQTT-3.1.2-25]: too large for the subscriber: dropped for it, counted."""
    broker = Broker()
    sub, _ = connect5(broker, "sub", properties=B5.props(B5.p_u32(0x27, 64)))
    subscribe5(broker, sub, ("t", 1))
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("t", b"x" * 100, qos=1, packet_id=1))
    pub.send(B5.publish("t", b"small", qos=1, packet_id=2))
    assert [p.payload for p in sub.publishes()] == [b"small"]
    assert broker.registry.counters.dropped_too_large == 1
    # The dropped one does not hold an in-flight slot.
    assert len(sub.protocol.session.queue.inflight) == 1


class _NoPublish(AnonymousGate):
    def can_publish(self, client_id: str, username: Optional[str], topic: str) -> bool:
        return not topic.startswith("forbidden")


def test_puback_and_pubrec_not_authorized():
    """3.4.2.1: a refused PUBLISH gets PUBACK / PUBREC 0x87 at level 5."""
    broker = Broker(authenticator=_NoPublish(True))
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("forbidden/t", b"x", qos=1, packet_id=1))
    pub.send(B5.publish("forbidden/t", b"x", qos=2, packet_id=2))
    pub.send(B5.publish("ok", b"x", qos=1, packet_id=3))
    assert pub.received() == [P.PubAck(1, R.NOT_AUTHORIZED), P.PubRec(2, R.NOT_AUTHORIZED),
                              P.PubAck(3, R.NO_MATCHING_SUBSCRIBERS)]


def test_no_matching_subscribers():
    """3.4.2.1: PUBACK / PUBREC 0x10 when nobody subscribes; 0x00 when someone does."""
    broker = Broker()
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("nobody", b"x", qos=1, packet_id=1))
    pub.send(B5.publish("nobody", b"x", qos=2, packet_id=2))
    assert pub.received() == [P.PubAck(1, R.NO_MATCHING_SUBSCRIBERS),
                              P.PubRec(2, R.NO_MATCHING_SUBSCRIBERS)]
    pub.send(B5.ack("PUBREL", 2))   # 0x10 is a success code: the exchange goes on
    assert pub.received() == [P.PubComp(2)]
    broker.subscriber("someone", ("nobody", 1))
    pub.send(B5.publish("nobody", b"x", qos=1, packet_id=3))
    assert pub.received() == [P.PubAck(3)]


def test_pubrel_unknown_id():
    """3.7.2.1: PUBREL for an id not awaiting release: PUBCOMP 0x92."""
    broker = Broker()
    pub, _ = connect5(broker, "pub")
    pub.send(B5.ack("PUBREL", 9))
    assert pub.received() == [P.PubComp(9, R.PACKET_IDENTIFIER_NOT_FOUND)]
    pub.send(B5.publish("t", b"x", qos=2, packet_id=4))
    assert pub.received() == [P.PubRec(4, R.NO_MATCHING_SUBSCRIBERS)]
    pub.send(B5.ack("PUBREL", 4))
    assert pub.received() == [P.PubComp(4)]


# -- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------


def test_suback_reason_codes():
    """3.9.3: a reason code per filter."""
    broker = Broker(settings=SessionSettings(max_subscriptions_per_client=2))
    client, _ = connect5(broker)
    [suback] = subscribe5(broker, client, ("a/#", 1), ("a/#/b", 0), ("$share//x", 0),
                          ("b", 2), ("c", 0))
    assert suback.reason_codes == [1, R.TOPIC_FILTER_INVALID,
                                   R.TOPIC_FILTER_INVALID, 2, R.QUOTA_EXCEEDED]


def test_subscription_identifiers_on_delivery():
    """[MQTT-3.3.4-3/4]: a delivery carries every matching subscription's identifier."""
    broker = Broker()
    client, _ = connect5(broker)
    subscribe5(broker, client, ("a/#", 1), properties=B5.props(B5.p_vbi(0x0B, 7)))
    subscribe5(broker, client, ("a/+", 0), properties=B5.props(B5.p_vbi(0x0B, 300)))
    subscribe5(broker, client, ("+/b", 2))
    broker.connect("pub").send(B.publish("a/b", b"x", qos=2, packet_id=1))
    [got] = client.publishes()
    assert got.qos == 2   # the highest granted QoS of the matching filters
    assert got.properties is not None
    assert got.properties.subscription_identifiers == (7, 300)
    broker.connect("pub2").send(B.publish("a/c/d", b"y"))
    [got] = client.publishes()
    assert got.properties is not None and got.properties.subscription_identifiers == (7,)


def test_subscription_identifiers_survive_a_reconnect():
    """A resumed session still sends the identifiers its subscriptions carry."""
    broker = Broker()
    client, _ = connect5(broker, "s", clean_start=False, properties=expiry(100))
    subscribe5(broker, client, ("t", 1), properties=B5.props(B5.p_vbi(0x0B, 42)))
    client.drop()
    client, connack = connect5(broker, "s", clean_start=False, properties=expiry(100))
    assert connack.session_present
    broker.connect("pub").send(B.publish("t", b"x", qos=1, packet_id=1))
    [got] = client.publishes()
    assert got.properties is not None and got.properties.subscription_identifiers == (42,)


def test_no_local():
    """[MQTT-3.8.3-3]: no local: a client's own messages are not sent back to it."""
    broker = Broker()
    client, _ = connect5(broker, "me")
    subscribe5(broker, client, ("chat", P.subscription_options(1, no_local=True)))
    other, _ = connect5(broker, "other")
    subscribe5(broker, other, ("chat", P.subscription_options(1, no_local=True)))
    client.send(B5.publish("chat", b"mine", qos=1, packet_id=1))
    assert client.received() == [P.PubAck(1)]   # and no PUBLISH of its own
    assert [p.payload for p in other.publishes()] == [b"mine"]
    other.send(B5.publish("chat", b"theirs"))
    assert [p.payload for p in client.publishes()] == [b"theirs"]


def test_retain_as_published():
    """[MQTT-3.3.1-12]: RETAIN kept as published with the option, cleared without."""
    broker = Broker()
    keeps, _ = connect5(broker, "keeps")
    subscribe5(broker, keeps, ("r", P.subscription_options(0, retain_as_published=True)))
    plain, _ = connect5(broker, "plain")
    subscribe5(broker, plain, ("r", 0))
    broker.connect("pub").send(B.publish("r", b"x", retain=True))
    assert [p.retain for p in keeps.publishes()] == [True]
    assert [p.retain for p in plain.publishes()] == [False]


def test_unsuback_reason_codes():
    """[MQTT-3.11.3-1]: 0x00 for a removed filter, 0x11 when there was none, 0x8F invalid."""
    broker = Broker()
    client, _ = connect5(broker)
    subscribe5(broker, client, ("a", 1))
    client.send(B5.unsubscribe(5, ["a", "b", "c/#/d"]))
    assert client.received() == [P.UnsubAck(5, [R.SUCCESS, R.NO_SUBSCRIPTION_EXISTED,
                                                R.TOPIC_FILTER_INVALID])]


@pytest.mark.parametrize("handling, first, again", [(0, 1, 1), (1, 1, 0), (2, 0, 0)])
def test_retain_handling(handling, first, again):
    """[MQTT-3.3.1-9..11]: 0 always, 1 only for a new subscription, 2 never."""
    broker = Broker()
    broker.connect("pub").send(B.publish("r", b"kept", retain=True))
    client, _ = connect5(broker)
    options = P.subscription_options(1, retain_handling=handling)
    assert len(subscribe5(broker, client, ("r", options))) - 1 == first
    assert len(subscribe5(broker, client, ("r", options))) - 1 == again


# -- across an in-memory cluster ---------------------------------------------------


def test_properties_and_identifiers_across_nodes():
    """
    PUBLISH properties cross the data plane with the message; subscription
    identifiers are the receiving node's (its subscriber's records).
    """
    from vmqtw.testing.inprocess_broker import Cluster
    cluster = Cluster(("A", "B"))
    try:
        sub, _ = connect5(cluster["B"], "sub")
        subscribe5(cluster["B"], sub, ("x/#", 1), properties=B5.props(B5.p_vbi(0x0B, 9)))
        cluster.settle()
        pub, _ = connect5(cluster["A"], "pub")
        pub.send(B5.publish("x/1", b"far", qos=1, packet_id=1, properties=PUBLISH_PROPS))
        cluster.settle()
        [got] = sub.publishes()
        props = got.properties
        assert props is not None
        assert props.user_properties == (("b", "2"), ("a", "1"), ("b", "2"))
        assert (props.content_type, props.correlation_data) == ("application/json", b"\x00corr")
        assert props.subscription_identifiers == (9,)
    finally:
        cluster.stop()


# -- will delay, receive maximum towards us ---------------------------------------------


def _will_client(broker: Broker, delay: int, session_expiry: int) -> Client:
    client, _ = connect5(broker, "w", clean_start=False, properties=expiry(session_expiry),
                         will_topic="wills/w", will_message=b"late",
                         will_properties=B5.props(B5.p_u32(0x18, delay)))
    return client


def test_will_delay_interval():
    """[MQTT-3.1.3-9]: the will waits for its delay."""
    broker = Broker()
    watcher = broker.subscriber("watcher", ("wills/#", 0))
    _will_client(broker, 10, 100).drop()
    broker.clock.advance(9)
    assert watcher.publishes() == []
    broker.clock.advance(1.5)
    assert [p.payload for p in watcher.publishes()] == [b"late"]


def test_will_delay_cancelled_by_a_reconnect():
    """[MQTT-3.1.3-9]: a client back before the delay passes: no will."""
    broker = Broker()
    watcher = broker.subscriber("watcher", ("wills/#", 0))
    _will_client(broker, 10, 100).drop()
    broker.clock.advance(5)
    connect5(broker, "w", clean_start=False, properties=expiry(100))
    broker.clock.advance(20)
    assert watcher.publishes() == []


def test_will_delay_cut_short_by_session_expiry():
    """3.1.3.2.2: the will goes when the session ends, if that is earlier."""
    broker = Broker()
    watcher = broker.subscriber("watcher", ("wills/#", 0))
    _will_client(broker, 60, 3).drop()
    broker.clock.advance(3.5)
    assert [p.payload for p in watcher.publishes()] == [b"late"]


def test_receive_maximum_exceeded():
    """[MQTT-3.3.4-8]: more unacknowledged QoS 2 than receive_max_broker: DISCONNECT 0x93."""
    broker = Broker(settings=SessionSettings(receive_max_broker=2))
    pub, connack = connect5(broker)
    assert connack.properties is not None and connack.properties.receive_maximum == 2
    for packet_id in (1, 2):
        pub.send(B5.publish("t", b"x", qos=2, packet_id=packet_id))
    nobody = R.NO_MATCHING_SUBSCRIBERS
    assert pub.received() == [P.PubRec(1, nobody), P.PubRec(2, nobody)]
    pub.send(B5.ack("PUBREL", 1))
    pub.send(B5.publish("t", b"x", qos=2, packet_id=3))
    assert pub.received() == [P.PubComp(1), P.PubRec(3, nobody)]
    pub.send(B5.publish("t", b"x", qos=2, packet_id=4))
    closed_with(pub, R.RECEIVE_MAXIMUM_EXCEEDED)


def test_retained_message_keeps_its_properties():
    """3.3.1.3: a retained message is served with the properties it was published with."""
    broker = Broker()
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("r/1", b"kept", retain=True, properties=PUBLISH_PROPS))
    client, _ = connect5(broker, "late")
    [_suback, got] = subscribe5(broker, client, ("r/#", 0))
    assert got.retain and got.payload == b"kept"
    assert got.properties is not None
    assert got.properties.user_properties == (("b", "2"), ("a", "1"), ("b", "2"))
    assert got.properties.content_type == "application/json"


def test_invalid_topics_get_topic_name_invalid():
    """A will topic with a wildcard: CONNACK 0x90; a too deep topic: DISCONNECT 0x90."""
    broker = Broker(settings=SessionSettings(topic_max_depth=3))
    client = client5(broker)
    client.send(B5.connect("c1", will_topic="a/+", will_message=b"x"))
    [connack] = client.received()
    assert connack.reason_code == R.TOPIC_NAME_INVALID and client.closed
    client, _ = connect5(broker, "c2")
    client.send(B5.publish("a/b/c/d", b"x"))
    closed_with(client, R.TOPIC_NAME_INVALID)


def test_fan_out_shares_one_encoding_but_not_identifiers():
    """Each subscriber gets the publisher's properties, plus only its own identifiers."""
    broker = Broker()
    plain = [connect5(broker, "p%d" % i)[0] for i in range(2)]
    for client in plain:
        subscribe5(broker, client, ("f", 0))
    tagged, _ = connect5(broker, "tagged")
    subscribe5(broker, tagged, ("f", 0), properties=B5.props(B5.p_vbi(0x0B, 4)))
    pub, _ = connect5(broker, "pub")
    for payload in (b"1", b"2"):
        pub.send(B5.publish("f", payload, properties=PUBLISH_PROPS))
    for client in plain:
        got = client.publishes()
        assert [p.payload for p in got] == [b"1", b"2"]
        assert all(p.properties.user_properties == (("b", "2"), ("a", "1"), ("b", "2"))
                   and p.properties.subscription_identifiers == () for p in got)
    got = tagged.publishes()
    assert [p.properties.subscription_identifiers for p in got] == [(4,), (4,)]
    assert got[0].properties.content_type == "application/json"


@pytest.mark.parametrize("v5, properties", [(False, False), (True, False), (True, True)])
def test_inprocess_bench_runs(v5, properties):
    """benchmarks/inprocess_bench.py at both levels (a smoke test, nothing timed)."""
    from benchmarks.inprocess_bench import run
    assert run(200, 1, 2, v5, properties) > 0


def test_session_expiry_records_do_not_pile_up():
    """Sessions ending with their connection leave no expiry entry behind."""
    broker = Broker()
    for i in range(5):
        connect5(broker, "gone%d" % i)[0].drop()
    connect5(broker, "kept", clean_start=False, properties=expiry(30))[0].drop()
    expiries = lambda: list(broker.registry.metadata.items(SESSION_EXPIRY_PREFIX))  # noqa: E731
    assert expiries() == [(("", "kept"), 30)]
    broker.clock.advance(31)
    assert expiries() == []


class _Refusing(AnonymousGate):
    def authenticate(self, info: Any) -> int:
        return P.CONNACK_BAD_USERNAME_OR_PASSWORD


def test_bad_user_name_or_password():
    """3.2.2.2: an authenticator's 3.1.1 code 4 is CONNACK 0x86 at level 5."""
    broker = Broker(authenticator=_Refusing(True))
    client = client5(broker)
    client.send(B5.connect("c1", username="u", password=b"wrong"))
    [connack] = client.received()
    assert connack.reason_code == R.BAD_USER_NAME_OR_PASSWORD and client.closed
