"""
PUBACK / PUBREC 0x97 Quota exceeded for an MQTT 5.0 publisher whose message
the cluster refused whole (another node's backlog full), beside the 3.1.1
answer (none: the client resends); and ``max_message_rate``.
"""
from __future__ import annotations

from vmqtw.mqtt import packets as P
from vmqtw.mqtt import reasons as R
from vmqtw.mqtt.session import SessionSettings
from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker, Cluster

from tests.test_session_v5 import connect5


def _full_backlog() -> Cluster:
    """A on one side of a cut, its backlog towards B holding one entry."""
    cluster = Cluster(["A", "B"], settings=SessionSettings(allow_publish_during_netsplit=True))
    cluster["B"].subscriber("s", ("t", 2), clean_session=False)
    cluster.settle()
    cluster.network.partition([["A"], ["B"]])
    cluster["A"].registry.dataplane.limit = 1
    return cluster


def test_v5_publisher_told_quota_exceeded():
    """3.4.2.1 / 3.5.2.1: PUBACK and PUBREC 0x97, in order with the others; no PUBREL follows."""
    cluster = _full_backlog()
    pub, _ = connect5(cluster["A"], "p")
    pub.send(B5.publish("t", b"first", qos=1, packet_id=1))
    pub.send(B5.publish("t", b"second", qos=1, packet_id=2))
    pub.send(B5.publish("t", b"third", qos=2, packet_id=3))
    cluster.settle(0.1)
    assert pub.received() == [P.PubAck(1), P.PubAck(2, R.QUOTA_EXCEEDED),
                              P.PubRec(3, R.QUOTA_EXCEEDED)]
    assert cluster["A"].registry.dataplane.counters.refused_backlog_full == 2
    # The refused QoS 2 id is not "awaiting PUBREL": sent again later, it is routed.
    assert 3 not in pub.protocol.session.queue.awaiting_rel
    counters = pub.protocol.session.counters
    assert (counters.puback_sent, counters.pubrec_sent) == (2, 1)


def test_3_1_1_publisher_still_gets_no_acknowledgement():
    """Unchanged at 3.1.1 (no reason codes): no PUBACK, the client resends."""
    cluster = _full_backlog()
    pub = cluster["A"].connect("p")
    pub.send(B.publish("t", b"first", qos=1, packet_id=1))
    pub.send(B.publish("t", b"second", qos=1, packet_id=2))
    cluster.settle(0.1)
    assert pub.received() == [P.PubAck(1)]


def test_max_message_rate_pauses_reading_for_the_rest_of_the_second():
    """max_message_rate = 2: the third PUBLISH of a second pauses reading, nothing is dropped."""
    broker = Broker(settings=SessionSettings(max_message_rate=2))
    broker.clock.advance(0.5 - broker.clock.seconds() % 1)   # mid-second
    sub = broker.subscriber("s", ("t", 0))
    pub = broker.connect("p")
    for payload in (b"1", b"2"):
        pub.send(B.publish("t", payload))
    assert pub.transport.producerState == "producing"
    pub.send(B.publish("t", b"3"))
    assert pub.transport.producerState == "paused"
    assert [p.payload for p in sub.publishes()] == [b"1", b"2", b"3"]
    broker.clock.advance(0.49)
    assert pub.transport.producerState == "paused"
    broker.clock.advance(0.01)
    assert pub.transport.producerState == "producing"
    # A new second, a new count.
    pub.send(B.publish("t", b"4"))
    pub.send(B.publish("t", b"5"))
    assert pub.transport.producerState == "producing"


def test_rate_limit_at_v5_ends_with_the_connection_and_is_off_by_default():
    broker = Broker(settings=SessionSettings(max_message_rate=1))
    pub, _ = connect5(broker, "p5")
    pub.send(B5.publish("t", b"1"))
    pub.send(B5.publish("t", b"2"))
    assert pub.transport.producerState == "paused"
    pub.drop()
    assert not broker.clock.getDelayedCalls() or all(
        call.func != pub.protocol.session._end_throttle for call in broker.clock.getDelayedCalls())
    broker = Broker()
    pub = broker.connect("p")
    for i in range(100):
        pub.send(B.publish("t", b"%d" % i))
    assert pub.transport.producerState == "producing"
