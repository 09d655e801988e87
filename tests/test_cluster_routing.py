"""
The broker across nodes, in process and deterministic: brokers joined by
the in-memory transport on one Clock, with the real replicated metadata.
"""
from __future__ import annotations

from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker, Cluster
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.session import SessionSettings



def forwarded(cluster) -> int:
    """Messages sent on the data plane, QoS 0 (unnumbered) and QoS 1/2."""
    return cluster.network.count("mqtt", "m") + cluster.network.count("mqtt", "m0")

def test_publish_reaches_subscribers_on_other_nodes_one_copy_per_node():
    cluster = Cluster()
    first = cluster["A"].subscriber("s1", ("t/#", 1))
    second = cluster["A"].subscriber("s2", ("t/+", 0))
    cluster.settle()
    publisher = cluster["C"].connect("p")
    before = forwarded(cluster)
    publisher.send(B.publish("t/x", b"hello", qos=1, packet_id=1))
    assert publisher.received() == [P.PubAck(1)]
    cluster.settle(0.2)
    assert [(p.payload, p.qos) for p in first.publishes()] == [(b"hello", 1)]
    assert [(p.payload, p.qos) for p in second.publishes()] == [(b"hello", 0)]
    # One copy to node A, none to B (no subscriber there), never re-forwarded.
    assert forwarded(cluster) - before == 1
    assert cluster["B"].registry.received_remote == 0


def test_unsubscribe_on_one_node_stops_forwarding():
    cluster = Cluster()
    subscriber = cluster["A"].subscriber("s", ("t", 0))
    cluster.settle()
    subscriber.send(B.unsubscribe(2, ["t"]))
    assert subscriber.received() == [P.UnsubAck(2)]
    cluster.settle()
    before = forwarded(cluster)
    cluster["B"].connect("p").send(B.publish("t", b"x"))
    cluster.settle(0.2)
    assert forwarded(cluster) == before
    assert len(cluster["B"].registry.trie) == 0


def test_retained_message_replicates():
    cluster = Cluster()
    cluster["A"].connect("p").send(B.publish("r/1", b"kept", qos=1, packet_id=1, retain=True))
    cluster.settle()
    late = cluster["B"].subscriber("late", ("r/#", 1))
    assert [(p.payload, p.retain) for p in late.retained] == [(b"kept", True)]


def test_same_client_id_on_another_node_takes_over():
    cluster = Cluster()
    old = cluster["A"].connect("dup", clean_session=False, will_topic="w", will_message=b"old")
    cluster.settle()
    new = cluster["B"].connect("dup", clean_session=False)
    cluster.settle()
    assert old.closed and not new.closed
    old.finish_close()
    assert cluster["A"].registry.sessions == {}


def test_persistent_queue_follows_the_session_to_another_node():
    cluster = Cluster()
    subscriber = cluster["A"].subscriber("p", ("q/#", 1), clean_session=False)
    subscriber.drop()
    cluster.settle()
    publisher = cluster["C"].connect("pub")
    for i in range(1, 6):
        publisher.send(B.publish("q/x", b"%d" % i, qos=1, packet_id=i))
    cluster.settle()
    back = cluster["B"].connect("p", clean_session=False)
    assert back.connack.session_present
    cluster.settle()
    assert [p.payload for p in back.publishes()] == [b"%d" % i for i in range(1, 6)]
    assert cluster["A"].registry.queues == {}
    # Subscriptions moved with it: new messages go to B.
    publisher.send(B.publish("q/y", b"after", qos=1, packet_id=9))
    cluster.settle()
    assert [p.payload for p in back.publishes()] == [b"after"]


def test_partitioned_node_refuses_connect_publish_subscribe_unsubscribe():
    """Case 35: during a netsplit CONNACK 3, no PUBACK, SUBACK 0x80, no UNSUBACK."""
    split = {"ready": True}
    broker = Broker(ready=lambda: split["ready"])
    client = broker.connect("c")
    split["ready"] = False
    client.send(B.publish("t", b"x", qos=1, packet_id=1))
    client.send(B.subscribe(2, [("a", 0), ("b", 1)]))
    client.send(B.unsubscribe(3, ["a"]))
    assert client.received() == [P.SubAck(2, [0x80, 0x80])]
    newcomer = broker.client()
    newcomer.send(B.connect("n"))
    assert newcomer.received() == [P.ConnAck(P.CONNACK_SERVER_UNAVAILABLE, False)]
    assert newcomer.closed


def test_netsplit_flags_allow_operations():
    settings = SessionSettings(allow_register_during_netsplit=True,
                               allow_publish_during_netsplit=True,
                               allow_subscribe_during_netsplit=True,
                               allow_unsubscribe_during_netsplit=True)
    broker = Broker(settings=settings, ready=lambda: False)
    client = broker.connect("c")
    client.send(B.subscribe(1, [("t", 1)]))
    client.send(B.publish("t", b"x", qos=1, packet_id=2))
    client.send(B.unsubscribe(3, ["t"]))
    packets = client.received()
    assert P.SubAck(1, [1]) in packets and P.PubAck(2) in packets and P.UnsubAck(3) in packets


def test_duplicate_client_from_a_netsplit_is_resolved_after_heal():
    """
    With registration allowed during a netsplit, the same client id can
    connect on both sides (VerneMQ's documented duplicate clients).  Once
    the split heals, the replicated session record converges to one owner
    (last writer wins) and the other node closes its connection: the
    duplicate is resolved automatically.
    """
    settings = SessionSettings(allow_register_during_netsplit=True)
    cluster = Cluster(("A", "B"), settings=settings)
    cluster.network.partition([{"A"}, {"B"}])
    cluster.settle(0.5)
    on_a = cluster["A"].connect("dup")
    cluster.clock.advance(1)  # B's registration is the later one
    on_b = cluster["B"].connect("dup")
    cluster.settle(0.5)
    assert not on_a.closed and not on_b.closed
    cluster.network.heal()
    cluster.settle(3.0)
    assert on_a.closed and not on_b.closed
    on_a.finish_close()
    assert cluster["A"].registry.sessions == {}
    assert list(cluster["B"].registry.sessions) == [on_b.protocol.session.subscriber_id]


def test_suback_waits_until_every_reachable_node_routes_the_filter():
    """A publish on another node right after the SUBACK reaches the new
    subscriber, even with plumtree's own messages lost."""
    cluster = Cluster()
    cluster.network.drop(lambda src, dst, channel, m: channel == "plumtree")
    client = cluster["A"].connect("s")
    client.send(B.subscribe(1, [("t", 1)]))
    assert client.received() == [], "no SUBACK before B and C route the filter"
    cluster.clock.advance(0)
    cluster.clock.advance(0)
    assert client.received() == [P.SubAck(1, [1])]
    assert len(cluster["B"].registry.trie) == 1 and len(cluster["C"].registry.trie) == 1
    cluster["C"].connect("p").send(B.publish("t", b"at once", qos=1, packet_id=5))
    cluster.settle(0.2)
    assert [p.payload for p in client.publishes()] == [b"at once"]


def test_suback_is_not_held_by_a_node_that_does_not_answer():
    cluster = Cluster()
    cluster.network.drop(lambda src, dst, channel, m: dst == "C")
    client = cluster["A"].connect("s")
    client.send(B.subscribe(1, [("t", 1)]))
    cluster.clock.advance(0)
    cluster.clock.advance(0)
    assert client.received() == []
    cluster.settle(2.1)
    assert client.received() == [P.SubAck(1, [1])]


def test_a_qos2_publish_refused_for_a_full_backlog_is_routed_when_resent():
    """No PUBREC for a publish the cluster could not take; the client's
    resend must then be routed, not answered as a known QoS 2 id."""
    cluster = Cluster(["A", "B"], settings=SessionSettings(allow_publish_during_netsplit=True))
    subscriber = cluster["B"].subscriber("s", ("t", 2), clean_session=False)
    cluster.settle()
    cluster.network.partition([["A"], ["B"]])
    cluster["A"].registry.dataplane.limit = 1      # the first entry only
    publisher = cluster["A"].connect("p")
    publisher.send(B.publish("t", b"first", qos=2, packet_id=1))
    publisher.send(B.publish("t", b"second", qos=2, packet_id=2))
    cluster.settle(0.1)
    assert publisher.received() == [P.PubRec(1)], "the second one is not acknowledged"
    assert cluster["A"].registry.dataplane.counters.refused_backlog_full == 1
    cluster["A"].registry.dataplane.limit = 1 << 20
    cluster.network.heal()
    cluster.settle(2)
    publisher.send(B.publish("t", b"second", qos=2, packet_id=2, dup=True))
    cluster.settle(1)
    assert publisher.received() == [P.PubRec(2)]
    assert sorted(p.payload for p in subscriber.publishes()) == [b"first", b"second"]
