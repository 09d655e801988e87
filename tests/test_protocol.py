"""
The session state machine and the Twisted protocol, end to end in process:
raw bytes in through ``dataReceived`` over ``StringTransport``, time from a
``task.Clock``, packets out decoded from what the broker wrote.
"""
from __future__ import annotations

from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker
from vmqtw.broker.queue import QueueLimits
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.session import AnonymousGate, SessionSettings


# -- CONNECT -------------------------------------------------------------------


def test_connect_accepted():
    """[MQTT-3.2.0-1]: the first packet from the server is CONNACK."""
    broker = Broker()
    client = broker.client()
    client.send(B.connect("c1"))
    assert client.received() == [P.ConnAck(0, False)]
    assert not client.closed


def test_anonymous_refused_when_not_allowed():
    """allow_anonymous off and no auth plugin: CONNACK 5, socket closed [MQTT-3.2.2-5]."""
    broker = Broker(authenticator=AnonymousGate(False))
    client = broker.client()
    client.send(B.connect("c1"))
    assert client.received() == [P.ConnAck(P.CONNACK_NOT_AUTHORIZED, False)]
    assert client.closed


def test_empty_client_id_with_clean_session_gets_an_id():
    """[MQTT-3.1.3-6]: zero-length client id with CleanSession=1 is assigned one."""
    broker = Broker()
    client = broker.client()
    client.send(B.connect(""))
    assert client.received() == [P.ConnAck(0, False)]
    session = client.protocol.session
    assert session.client_id.startswith("vmqtw-") and len(session.client_id) > 10


def test_empty_client_id_without_clean_session_refused_and_closed():
    """[MQTT-3.1.3-8]: CONNACK 2 and the network connection really closes."""
    broker = Broker()
    client = broker.client()
    client.send(B.connect("", clean_session=False))
    assert client.received() == [P.ConnAck(P.CONNACK_IDENTIFIER_REJECTED, False)]
    assert client.closed


def test_client_id_over_limit_refused():
    """[MQTT-3.1.3-9]: an identifier the server does not accept gets CONNACK 2."""
    broker = Broker(settings=SessionSettings(max_client_id_size=5))
    client = broker.client()
    client.send(B.connect("abcdef"))
    assert client.received() == [P.ConnAck(P.CONNACK_IDENTIFIER_REJECTED, False)]
    assert client.closed


def test_unacceptable_protocol_level():
    """[MQTT-3.1.2-2]: unsupported level → CONNACK 1, then close."""
    broker = Broker()
    client = broker.client()
    client.send(B.connect("c1", level=6))
    assert client.received() == [P.ConnAck(P.CONNACK_UNACCEPTABLE_PROTOCOL_VERSION, False)]
    assert client.closed


def test_mqtt31_client_accepted():
    """MQTT 3.1 (protocol name MQIsdp, level 3) is served as well."""
    broker = Broker()
    client = broker.client()
    client.send(B.connect("c1", protocol_name="MQIsdp", level=3))
    assert client.received() == [P.ConnAck(0, False)]


def test_first_packet_not_connect_closes():
    """[MQTT-3.1.0-1]: anything before CONNECT closes without an answer."""
    broker = Broker()
    client = broker.client()
    client.send(B.pingreq())
    assert client.received() == []
    assert client.closed


def test_second_connect_closes():
    """[MQTT-3.1.0-2]: a second CONNECT is a protocol violation."""
    broker = Broker()
    client = broker.connect("c1")
    client.send(B.connect("c1"))
    assert client.received() == []
    assert client.closed


def test_server_only_packets_from_client_close():
    """A client sending CONNACK, SUBACK, UNSUBACK or PINGRESP is closed."""
    for data in (B.connack(), B.suback(1, [0]), B.unsuback(1), B.pingresp()):
        broker = Broker()
        client = broker.connect("c1")
        client.send(data)
        assert client.closed, data


def test_connect_timeout_closes_silent_socket():
    """A socket that sends no CONNECT within connect_timeout is closed."""
    broker = Broker(connect_timeout=10)
    client = broker.client()
    broker.clock.advance(9.9)
    assert not client.closed
    broker.clock.advance(0.2)
    assert client.closed


def test_connect_timeout_cancelled_after_connect():
    broker = Broker(connect_timeout=10)
    client = broker.connect("c1")
    broker.clock.advance(60)
    assert not client.closed


def test_packets_pipelined_with_connect_in_one_read():
    """Many frames in one dataReceived are all handled, in order."""
    broker = Broker()
    subscriber = broker.subscriber("s", ("t", 0))
    client = broker.client()
    client.send(B.connect("p") + b"".join(B.publish("t", b"%d" % i) for i in range(50))
                + B.pingreq())
    packets = client.received()
    assert isinstance(packets[0], P.ConnAck)
    assert isinstance(packets[-1], P.PingResp)
    assert [p.payload for p in subscriber.publishes()] == [b"%d" % i for i in range(50)]


def test_malformed_packet_after_valid_ones_closes_after_handling_them():
    """Packets before a malformed one are acted on; then the connection closes."""
    broker = Broker()
    subscriber = broker.subscriber("s", ("t", 0))
    client = broker.connect("p")
    client.send(B.publish("t", b"kept") + B.publish("a/+", b"bad"))
    assert client.closed
    assert [p.payload for p in subscriber.publishes()] == [b"kept"]


# -- PUBLISH / SUBSCRIBE --------------------------------------------------------


def test_qos0_delivery():
    broker = Broker()
    subscriber = broker.subscriber("s", ("a/b", 0))
    assert subscriber.suback == P.SubAck(1, [0])
    publisher = broker.connect("p")
    publisher.send(B.publish("a/b", b"hello"))
    assert subscriber.publishes() == [P.Publish("a/b", b"hello", 0, False, False, None)]


def test_qos1_puback_and_delivery_with_packet_id():
    """[MQTT-4.3.2-1]/[MQTT-4.3.2-2]: QoS 1 is acknowledged with PUBACK."""
    broker = Broker()
    subscriber = broker.subscriber("s", ("a/b", 1))
    publisher = broker.connect("p")
    publisher.send(B.publish("a/b", b"x", qos=1, packet_id=7))
    assert publisher.received() == [P.PubAck(7)]
    [delivered] = subscriber.publishes()
    assert delivered.qos == 1 and delivered.packet_id is not None
    subscriber.send(B.puback(delivered.packet_id))
    assert broker.registry.queues[subscriber.protocol.session.subscriber_id].inflight == {}


def test_qos2_full_handshake_both_directions_exactly_once():
    """
    [MQTT-4.3.3-1]/[MQTT-4.3.3-2]: PUBREC, PUBREL, PUBCOMP; a resent QoS 2
    PUBLISH (DUP) before PUBREL is not delivered again.
    """
    broker = Broker()
    subscriber = broker.subscriber("s", ("q2", 2))
    publisher = broker.connect("p")
    publisher.send(B.publish("q2", b"once", qos=2, packet_id=9))
    assert publisher.received() == [P.PubRec(9)]
    publisher.send(B.publish("q2", b"once", qos=2, packet_id=9, dup=True))
    assert publisher.received() == [P.PubRec(9)]
    publisher.send(B.pubrel(9))
    assert publisher.received() == [P.PubComp(9)]
    [delivered] = subscriber.publishes()
    assert delivered.qos == 2
    subscriber.send(B.pubrec(delivered.packet_id))
    assert subscriber.received() == [P.PubRel(delivered.packet_id)]
    subscriber.send(B.pubcomp(delivered.packet_id))
    assert subscriber.received() == []
    queue = broker.registry.queues[subscriber.protocol.session.subscriber_id]
    assert queue.inflight == {}


def test_delivered_at_minimum_of_published_and_granted():
    """[MQTT-3.8.4-6]: QoS of delivery is min(published, granted)."""
    broker = Broker()
    low = broker.subscriber("low", ("t", 0))
    high = broker.subscriber("high", ("t", 2))
    publisher = broker.connect("p")
    publisher.send(B.publish("t", b"x", qos=1, packet_id=1))
    assert [p.qos for p in low.publishes()] == [0]
    assert [p.qos for p in high.publishes()] == [1]


def test_overlapping_subscriptions_one_copy_at_highest_qos():
    """[MQTT-3.3.5-1]: overlapping filters deliver one copy, at the highest granted QoS."""
    broker = Broker()
    subscriber = broker.subscriber("s", ("a/+", 0), ("a/#", 2), ("a/b", 1))
    publisher = broker.connect("p")
    publisher.send(B.publish("a/b", b"x", qos=2, packet_id=3))
    delivered = subscriber.publishes()
    assert len(delivered) == 1 and delivered[0].qos == 2


def test_wildcards():
    broker = Broker()
    plus = broker.subscriber("plus", ("sport/+/player", 0))
    hash_ = broker.subscriber("hash", ("sport/#", 0))
    publisher = broker.connect("p")
    for topic in ("sport", "sport/tennis/player", "sport/tennis/player/x", "other"):
        publisher.send(B.publish(topic, b""))
    assert [p.topic for p in plus.publishes()] == ["sport/tennis/player"]
    assert [p.topic for p in hash_.publishes()] == ["sport", "sport/tennis/player",
                                                    "sport/tennis/player/x"]


def test_dollar_topics_not_matched_by_leading_wildcards():
    """[MQTT-4.7.2-1]: '#' and '+/...' do not match topics starting with '$'."""
    broker = Broker()
    hash_ = broker.subscriber("hash", ("#", 0))
    plus = broker.subscriber("plus", ("+/x", 0))
    explicit = broker.subscriber("explicit", ("$SYS/#", 0))
    broker.registry.publish(__import__("vmqtw.types", fromlist=["Message"]).Message(
        b"r" * 16, "$SYS/x", b"stats", 0))
    assert hash_.publishes() == [] and plus.publishes() == []
    assert [p.topic for p in explicit.publishes()] == ["$SYS/x"]


def test_clients_cannot_publish_dollar_topics():
    """Clients may not publish into $SYS (bad-input case 18); QoS 1 is still acked."""
    broker = Broker()
    explicit = broker.subscriber("explicit", ("$SYS/#", 0))
    publisher = broker.connect("p")
    publisher.send(B.publish("$SYS/fake", b"x", qos=1, packet_id=1))
    assert publisher.received() == [P.PubAck(1)]
    assert explicit.publishes() == []
    assert not publisher.closed


def test_invalid_filters_get_0x80_and_are_not_stored():
    """[MQTT-4.7.1-2/3], [MQTT-3.9.3-2]: invalid filters → 0x80, valid ones granted."""
    broker = Broker()
    client = broker.connect("s")
    client.send(B.subscribe(5, [("a/#/b", 1), ("ok/+", 1), ("a+/b", 0), ("$share//t", 0)]))
    assert client.received() == [P.SubAck(5, [0x80, 1, 0x80, 0x80])]
    assert broker.registry.subscriptions(client.protocol.session.subscriber_id) == {"ok/+": 1}


def test_subscription_limit_per_client():
    broker = Broker(settings=SessionSettings(max_subscriptions_per_client=2))
    client = broker.connect("s")
    client.send(B.subscribe(1, [("a", 0), ("b", 0), ("c", 0)]))
    assert client.received() == [P.SubAck(1, [0, 0, 0x80])]
    client.send(B.subscribe(2, [("a", 1)]))
    assert client.received() == [P.SubAck(2, [1])]


def test_resubscribe_replaces_qos():
    """[MQTT-3.8.4-3]: a repeated filter replaces the existing subscription."""
    broker = Broker()
    subscriber = broker.subscriber("s", ("t", 0))
    subscriber.send(B.subscribe(2, [("t", 2)]))
    subscriber.received()
    publisher = broker.connect("p")
    publisher.send(B.publish("t", b"x", qos=2, packet_id=1))
    assert [p.qos for p in subscriber.publishes()] == [2]


def test_unsubscribe_stops_delivery():
    """[MQTT-3.10.4-1]/[MQTT-3.10.4-4]: UNSUBACK and no further messages."""
    broker = Broker()
    subscriber = broker.subscriber("s", ("t", 0))
    subscriber.send(B.unsubscribe(3, ["t"]))
    assert subscriber.received() == [P.UnsubAck(3)]
    publisher = broker.connect("p")
    publisher.send(B.publish("t", b"x"))
    assert subscriber.publishes() == []
    assert len(broker.registry.trie) == 0


def test_pingreq():
    """[MQTT-3.12.4-1]: PINGREQ is answered with PINGRESP."""
    broker = Broker()
    client = broker.connect("c")
    client.send(B.pingreq())
    assert client.received() == [P.PingResp()]


# -- retained -----------------------------------------------------------------------


def test_retained_set_replace_clear_and_flags():
    """
    [MQTT-3.3.1-5]/[MQTT-3.3.1-6]/[MQTT-3.3.1-8]/[MQTT-3.3.1-9]/[MQTT-3.3.1-10]:
    a retained message replaces the previous one and is sent to new
    subscribers with RETAIN=1; established subscribers get RETAIN=0; an empty
    retained payload clears it.
    """
    broker = Broker()
    established = broker.subscriber("e", ("r/#", 1))
    publisher = broker.connect("p")
    publisher.send(B.publish("r/1", b"v1", retain=True))
    publisher.send(B.publish("r/1", b"v2", qos=1, packet_id=1, retain=True))
    assert [(p.payload, p.retain) for p in established.publishes()] == [(b"v1", False),
                                                                        (b"v2", False)]
    late = broker.subscriber("late", ("r/+", 2))
    assert [(p.topic, p.payload, p.retain, p.qos) for p in late.retained] == [
        ("r/1", b"v2", True, 1)]
    publisher.send(B.publish("r/1", b"", retain=True))
    later = broker.subscriber("later", ("r/#", 0))
    assert later.retained == []
    assert len(broker.registry.retained) == 0


# -- will, keepalive, takeover --------------------------------------------------------


def _will_watcher(broker):
    return broker.subscriber("watcher", ("will/#", 1))


def test_will_published_on_network_loss():
    """[MQTT-3.1.2-8]: the will is published when the connection closes abnormally."""
    broker = Broker()
    watcher = _will_watcher(broker)
    client = broker.connect("c", will_topic="will/c", will_message=b"gone", will_qos=1)
    client.drop()
    [will] = watcher.publishes()
    assert (will.topic, will.payload, will.qos) == ("will/c", b"gone", 1)


def test_will_not_published_after_disconnect():
    """[MQTT-3.14.4-3]: DISCONNECT discards the will."""
    broker = Broker()
    watcher = _will_watcher(broker)
    client = broker.connect("c", will_topic="will/c", will_message=b"gone")
    client.send(B.disconnect())
    assert client.closed
    client.finish_close()
    assert watcher.publishes() == []


def test_will_published_on_protocol_error():
    broker = Broker()
    watcher = _will_watcher(broker)
    client = broker.connect("c", will_topic="will/c", will_message=b"gone")
    client.send(B.connect("c"))
    assert client.closed
    client.finish_close()
    assert [p.payload for p in watcher.publishes()] == [b"gone"]


def test_keepalive_expiry_closes_and_fires_will():
    """[MQTT-3.1.2-24]: 1.5 × keepalive of silence closes the connection; will fires."""
    broker = Broker()
    watcher = _will_watcher(broker)
    client = broker.connect("c", keepalive=10, will_topic="will/c", will_message=b"ka")
    broker.clock.advance(14)
    client.send(B.pingreq())
    broker.clock.advance(14)
    assert not client.closed  # activity at t=14 moved the deadline to t=29
    broker.clock.advance(1.1)
    assert client.closed
    client.finish_close()
    assert [p.payload for p in watcher.publishes()] == [b"ka"]


def test_max_keepalive_caps_client_keepalive():
    broker = Broker(settings=SessionSettings(max_keepalive=5))
    client = broker.connect("c", keepalive=65535)
    broker.clock.advance(7.6)
    assert client.closed


def test_takeover_closes_old_fires_will_new_proceeds():
    """[MQTT-3.1.4-2]: a second connection with the same client id takes over."""
    broker = Broker()
    watcher = _will_watcher(broker)
    old = broker.connect("dup", will_topic="will/dup", will_message=b"old")
    new = broker.connect("dup")
    assert old.closed and not new.closed
    old.finish_close()
    assert [p.payload for p in watcher.publishes()] == [b"old"]
    assert broker.registry.sessions[new.protocol.session.subscriber_id] is new.protocol.session
    new.send(B.subscribe(1, [("t", 0)]))
    assert new.received() == [P.SubAck(1, [0])]


# -- in-flight window, retries, persistent sessions ---------------------------------


def test_inflight_window_and_release_on_ack():
    broker = Broker(limits=QueueLimits(max_inflight_messages=2))
    subscriber = broker.subscriber("s", ("t", 1))
    publisher = broker.connect("p")
    for i in range(1, 5):
        publisher.send(B.publish("t", b"%d" % i, qos=1, packet_id=i))
    first = subscriber.publishes()
    assert [p.payload for p in first] == [b"1", b"2"]
    subscriber.send(B.puback(first[0].packet_id))
    assert [p.payload for p in subscriber.publishes()] == [b"3"]


def test_retry_with_dup_after_retry_interval():
    broker = Broker(limits=QueueLimits(retry_interval=20))
    subscriber = broker.subscriber("s", ("t", 1))
    publisher = broker.connect("p")
    publisher.send(B.publish("t", b"x", qos=1, packet_id=1))
    [first] = subscriber.publishes()
    assert not first.dup
    broker.clock.advance(19)
    assert subscriber.publishes() == []
    broker.clock.advance(1)
    [again] = subscriber.publishes()
    assert again.dup and again.packet_id == first.packet_id and again.payload == b"x"


def test_persistent_session_queues_and_resends_on_reconnect():
    """
    [MQTT-3.1.2-4]/[MQTT-4.4.0-1]/[MQTT-3.2.2-2]: a persistent session keeps
    its subscriptions and QoS 1 messages while offline; session present is
    set; unacknowledged messages are resent with DUP on reconnect.
    """
    broker = Broker()
    subscriber = broker.subscriber("s", ("t", 1), clean_session=False)
    publisher = broker.connect("p")
    publisher.send(B.publish("t", b"inflight", qos=1, packet_id=1))
    [sent] = subscriber.publishes()
    subscriber.drop()
    publisher.send(B.publish("t", b"offline", qos=1, packet_id=2))
    publisher.send(B.publish("t", b"qos0 dropped offline"))
    back = broker.connect("s", clean_session=False)
    assert back.connack.session_present
    delivered = back.publishes()
    assert [(p.payload, p.dup) for p in delivered] == [(b"inflight", True), (b"offline", False)]
    assert delivered[0].packet_id == sent.packet_id


def test_clean_session_discards_previous_state():
    """[MQTT-3.1.2-6]: CleanSession=1 discards the previous session."""
    broker = Broker()
    subscriber = broker.subscriber("s", ("t", 1), clean_session=False)
    subscriber.drop()
    clean = broker.connect("s", clean_session=True)
    assert not clean.connack.session_present
    assert broker.registry.subscriptions(clean.protocol.session.subscriber_id) == {}
    clean.drop()
    assert len(broker.registry.trie) == 0 and broker.registry.queues == {}


def test_offline_queue_limit_fifo_drops_newest():
    broker = Broker(limits=QueueLimits(max_offline_messages=2))
    subscriber = broker.subscriber("s", ("t", 1), clean_session=False)
    subscriber.drop()
    publisher = broker.connect("p")
    for i in range(1, 5):
        publisher.send(B.publish("t", b"%d" % i, qos=1, packet_id=i))
    back = broker.connect("s", clean_session=False)
    assert [p.payload for p in back.publishes()] == [b"1", b"2"]
    assert broker.registry.counters.dropped_offline == 2


def test_offline_queue_limit_lifo_drops_oldest():
    broker = Broker(limits=QueueLimits(max_offline_messages=2, queue_type="lifo"))
    subscriber = broker.subscriber("s", ("t", 1), clean_session=False)
    subscriber.drop()
    publisher = broker.connect("p")
    for i in range(1, 5):
        publisher.send(B.publish("t", b"%d" % i, qos=1, packet_id=i))
    back = broker.connect("s", clean_session=False)
    assert [p.payload for p in back.publishes()] == [b"3", b"4"]
    assert broker.registry.counters.dropped_offline == 2


def test_oversized_packet_closes():
    broker = Broker(max_packet_size=100)
    subscriber = broker.subscriber("s", ("t", 0))
    client = broker.connect("p")
    client.send(B.publish("t", b"x" * 200))
    assert client.closed
    assert subscriber.publishes() == []


def test_other_clients_unaffected_by_a_protocol_error():
    broker = Broker()
    subscriber = broker.subscriber("s", ("t", 0))
    bad = broker.connect("bad")
    bad.send(b"\xf0\x00")
    assert bad.closed
    bad.finish_close()
    good = broker.connect("good")
    good.send(B.publish("t", b"still"))
    assert [p.payload for p in subscriber.publishes()] == [b"still"]


def test_unlimited_online_queue():
    """max_online_messages = -1: nothing is dropped behind a full in-flight window."""
    broker = Broker(limits=QueueLimits(max_inflight_messages=1, max_online_messages=-1))
    subscriber = broker.subscriber("s", ("t", 1))
    publisher = broker.connect("p")
    for i in range(1, 2001):
        publisher.send(B.publish("t", b"%d" % i, qos=1, packet_id=i))
    received = []
    while True:
        publishes = subscriber.publishes()
        if not publishes:
            break
        for publish in publishes:
            received.append(publish.payload)
            subscriber.send(B.puback(publish.packet_id))
    assert received == [b"%d" % i for i in range(1, 2001)]
    assert broker.registry.counters.dropped_online == 0


def test_reading_pauses_while_connect_is_being_authenticated():
    """Packets pipelined behind a pending CONNECT are kept, and reading stops until it is decided."""
    from twisted.internet.defer import Deferred

    class SlowGate(AnonymousGate):
        def __init__(self):
            super().__init__(True)
            self.pending = Deferred()

        def authenticate(self, info):
            return self.pending if info.client_id == "p" else 0

    gate = SlowGate()
    broker = Broker(authenticator=gate)
    subscriber = broker.subscriber("s", ("t", 0))
    client = broker.client()
    client.send(B.connect("p") + B.publish("t", b"early"))
    assert client.transport.producerState == "paused"
    assert subscriber.publishes() == []
    gate.pending.callback(0)
    assert client.transport.producerState == "producing"
    assert [p.payload for p in subscriber.publishes()] == [b"early"]
