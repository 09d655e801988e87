"""
Shared subscriptions ``$share/<group>/<filter>`` on the in-process broker
(one node, and several over the in-memory transport): one member of each
group gets each message [MQTT-4.8.2], by ``shared_subscription_policy``.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List

from vmqtw.mqtt import packets as P
from vmqtw.mqtt import reasons as R
from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker, Client, Cluster

from tests.test_session_v5 import closed_with, connect5, expiry, subscribe5

SHARE = "$share/g/t/#"


def payloads(client: Client) -> List[bytes]:
    return [p.payload for p in client.publishes()]


def ack_all(client: Client, packets: List[Any]) -> List[bytes]:
    """PUBACK every QoS 1 PUBLISH in ``packets``; their payloads."""
    got = []
    for packet in packets:
        if isinstance(packet, P.Publish):
            got.append(packet.payload)
            if packet.qos == 1:
                client.send(B.puback(packet.packet_id))
    return got


def drain(client: Client, advance: Any = None) -> List[bytes]:
    """Read and acknowledge until nothing more comes (the in-flight window
    lets the rest out as acknowledgements arrive)."""
    got: List[bytes] = []
    while True:
        if advance is not None:
            advance()
        more = ack_all(client, client.received())
        if not more:
            return got
        got += more


def publish_many(publisher: Client, count: int, qos: int = 1, topic: str = "t/x",
                 first_id: int = 1) -> None:
    for i in range(count):
        publisher.send(B.publish(topic, b"%d" % (first_id + i), qos=qos,
                                 packet_id=first_id + i if qos else None))


# -- one node -----------------------------------------------------------------------


def test_each_message_reaches_exactly_one_member_of_the_group() -> None:
    """[MQTT-4.8.2]: members take turns; together they get every message once."""
    broker = Broker()
    members = [broker.subscriber("m%d" % i, (SHARE, 1)) for i in range(3)]
    assert all(m.suback == P.SubAck(1, [1]) for m in members)
    publisher = broker.connect("pub")
    publish_many(publisher, 30)
    assert [p for p in publisher.received() if isinstance(p, P.PubAck)] == \
        [P.PubAck(i) for i in range(1, 31)]
    got = [ack_all(m, m.received()) for m in members]
    assert sorted(int(x) for g in got for x in g) == list(range(1, 31))
    assert [len(g) for g in got] == [10, 10, 10]
    assert broker.registry.router.shared_counters.delivered == 30


def test_plain_subscribers_and_every_group_get_their_own_copy() -> None:
    broker = Broker()
    plain = broker.subscriber("plain", ("t/#", 1))
    g1 = [broker.subscriber("a%d" % i, ("$share/one/t/#", 1)) for i in range(2)]
    g2 = [broker.subscriber("b%d" % i, ("$share/two/t/+", 0)) for i in range(2)]
    publisher = broker.connect("pub")
    publish_many(publisher, 4)
    assert payloads(plain) == [b"1", b"2", b"3", b"4"]
    assert sorted(x for m in g1 for x in payloads(m)) == [b"1", b"2", b"3", b"4"]
    two = [p for m in g2 for p in m.publishes()]
    assert sorted(p.payload for p in two) == [b"1", b"2", b"3", b"4"]
    assert {p.qos for p in two} == {0}   # min(published, granted)


def test_a_client_with_a_plain_and_a_shared_subscription_may_get_two_copies() -> None:
    """4.8.2: the non-shared subscription's copy, and the group's."""
    broker = Broker()
    both = broker.subscriber("both", ("t/x", 1), (SHARE, 1))
    broker.connect("pub").send(B.publish("t/x", b"m", qos=1, packet_id=1))
    assert payloads(both) == [b"m", b"m"]


def test_shared_filter_is_not_a_literal_topic_and_groups_are_kept_out_of_the_trie() -> None:
    broker = Broker()
    member = broker.subscriber("m", (SHARE, 0))
    assert len(broker.registry.subscription_table.trie) == 0
    publisher = broker.connect("pub")
    publisher.send(B.publish("$share/g/t/x", b"literal"))
    publisher.send(B.publish("t/x", b"routed"))
    assert payloads(member) == [b"routed"]


def test_unsubscribe_leaves_the_group() -> None:
    broker = Broker()
    stays = broker.subscriber("stays", (SHARE, 1))
    leaves = broker.subscriber("leaves", (SHARE, 1))
    leaves.send(B.unsubscribe(2, [SHARE]))
    assert leaves.received() == [P.UnsubAck(2)]
    publish_many(broker.connect("pub"), 4)
    assert len(payloads(stays)) == 4 and payloads(leaves) == []


def test_malformed_shared_filters_still_refused() -> None:
    broker = Broker()
    client = broker.connect("c")
    client.send(B.subscribe(1, [("$share/g", 1), ("$share/+/t", 1), ("$share/g#/t", 0),
                                ("$share//t", 1), ("$share/g/", 1), ("$share/g/t", 1)]))
    assert client.received() == [P.SubAck(1, [0x80, 0x80, 0x80, 0x80, 0x80, 1])]


def test_no_retained_message_on_a_new_shared_subscription() -> None:
    """
    Retained messages go to new non-shared subscriptions only (MQTT 5.0
    3.3.1.3 and 4.8.2; VerneMQ does the same for 3.1.1 clients).
    """
    broker = Broker()
    broker.connect("pub").send(B.publish("t/r", b"kept", qos=1, packet_id=1, retain=True))
    shared = broker.subscriber("s", (SHARE, 1))
    assert shared.retained == []
    plain = broker.subscriber("p", ("t/#", 1))
    assert [p.payload for p in plain.retained] == [b"kept"]
    v5, _ = connect5(broker, "v5")
    assert subscribe5(broker, v5, (SHARE, 1))[1:] == []


def test_an_offline_persistent_member_stops_receiving_while_another_is_online() -> None:
    broker = Broker()
    away = broker.subscriber("away", (SHARE, 1), clean_session=False)
    online = broker.subscriber("online", (SHARE, 1))
    away.drop()
    publish_many(broker.connect("pub"), 6)
    assert len(payloads(online)) == 6
    assert broker.registry.queues[away.protocol.session.subscriber_id].size() == 0


def test_with_every_member_offline_a_persistent_one_keeps_the_message() -> None:
    broker = Broker()
    away = broker.subscriber("away", (SHARE, 1), clean_session=False)
    away.drop()
    publish_many(broker.connect("pub"), 2)
    back = broker.connect("away", clean_session=False)
    assert payloads(back) == [b"1", b"2"]


def test_messages_in_flight_to_a_member_that_disconnects_go_to_another() -> None:
    """
    QoS 1 messages sent to a member that never acknowledged them, and those
    queued behind its full in-flight window, reach another member when the
    member's clean session ends: none lost.
    """
    broker = Broker()
    slow = broker.subscriber("slow", (SHARE, 1))
    publisher = broker.connect("pub")
    publish_many(publisher, 40)   # 20 each way... all to 'slow' for now
    assert len(payloads(slow)) == 20   # max_inflight_messages; 20 wait behind
    other = broker.subscriber("other", (SHARE, 1))
    publish_many(publisher, 2, first_id=41)
    got_other = ack_all(other, other.received())
    slow.drop()
    got_other += drain(other)
    assert sorted(int(x) for x in got_other) == list(range(1, 43))
    assert broker.registry.router.shared_counters.requeued == 41
    assert broker.registry.router.shared_counters.dropped == 0


def test_an_acknowledged_message_is_not_sent_again() -> None:
    broker = Broker()
    member = broker.subscriber("m", (SHARE, 1))
    other = broker.subscriber("o", (SHARE, 1))
    publisher = broker.connect("pub")
    publish_many(publisher, 4)
    assert len(ack_all(member, member.received())) == 2
    assert len(ack_all(other, other.received())) == 2
    member.drop()
    assert other.received() == []


def test_expired_session_of_a_member_passes_its_messages_on() -> None:
    """A session with an expiry interval keeps them while it may return;
    once it expires they go to another member, not to the grave."""
    broker = Broker()
    member, _ = connect5(broker, "exp", clean_start=False, properties=expiry(10))
    subscribe5(broker, member, (SHARE, 1))
    member.drop()
    publish_many(broker.connect("pub"), 3)
    other = broker.subscriber("other", (SHARE, 1))
    assert payloads(other) == []
    broker.clock.advance(11)
    assert sorted(payloads(other)) == [b"1", b"2", b"3"]


def test_v5_connack_and_subscribe() -> None:
    """MQTT 5.0: Shared Subscription Available = 1; SUBACK grants; a member
    with a subscription identifier gets the message."""
    broker = Broker()
    client, connack = connect5(broker, "v5")
    assert connack.properties is not None
    assert connack.properties.shared_subscription_available == 1
    [suback] = subscribe5(broker, client, (SHARE, 1), ("$share/g", 1))
    assert suback.reason_codes == [1, R.TOPIC_FILTER_INVALID]
    broker.connect("pub").send(B.publish("t/x", b"v5", qos=1, packet_id=1))
    assert [p.payload for p in client.publishes()] == [b"v5"]


def test_v5_no_local_on_a_shared_subscription_is_a_protocol_error() -> None:
    """[MQTT-3.8.3-4]: DISCONNECT 0x82, nothing subscribed."""
    broker = Broker()
    client, _ = connect5(broker, "nl")
    client.send(B5.subscribe(1, [("a", 1), (SHARE, 1 | P.SUB_NO_LOCAL)]))
    closed_with(client, R.PROTOCOL_ERROR)
    assert len(broker.registry.subscription_table.shared) == 0


def test_v5_no_local_on_a_plain_subscription_is_still_fine() -> None:
    broker = Broker()
    client, _ = connect5(broker, "nl")
    [suback] = subscribe5(broker, client, ("a", 1 | P.SUB_NO_LOCAL))
    assert suback.reason_codes == [1]


# -- across nodes --------------------------------------------------------------------


def spread(members: Dict[str, Client], cluster: Cluster) -> Dict[str, List[int]]:
    """What each member got (acknowledging all of it), once the cluster settled."""
    cluster.settle(0.5)
    return {name: sorted(int(x) for x in drain(c, lambda: cluster.settle(0.2)))
            for name, c in members.items()}


def test_across_nodes_prefer_local_stays_local_while_a_local_member_is_online() -> None:
    cluster = Cluster()
    members = {name: cluster[name].subscriber("m" + name, (SHARE, 1)) for name in "ABC"}
    cluster.settle()
    publisher = cluster["C"].connect("pub")
    publish_many(publisher, 10)
    got = spread(members, cluster)
    assert got == {"A": [], "B": [], "C": list(range(1, 11))}
    assert cluster["C"].registry.dataplane.counters.forwarded == 0
    members["C"].drop()
    publish_many(publisher, 4, first_id=11)
    got = spread(members, cluster)
    assert sorted(got["A"] + got["B"]) == [11, 12, 13, 14] and got["A"] and got["B"]


def test_across_nodes_prefer_local_goes_remote_without_a_local_member() -> None:
    cluster = Cluster()
    members = {name: cluster[name].subscriber("m" + name, (SHARE, 1)) for name in "AB"}
    cluster.settle()
    publisher = cluster["C"].connect("pub")
    publish_many(publisher, 10)
    assert [p for p in publisher.received() if isinstance(p, P.PubAck)] == \
        [P.PubAck(i) for i in range(1, 11)]
    got = spread(members, cluster)
    assert sorted(got["A"] + got["B"]) == list(range(1, 11))
    assert len(got["A"]) == len(got["B"]) == 5


def test_across_nodes_local_only_never_crosses_nodes() -> None:
    cluster = Cluster()
    for name in "ABC":
        cluster[name].registry.subscription_table.shared.policy = "local_only"
    remote = cluster["A"].subscriber("mA", (SHARE, 1))
    cluster.settle()
    publisher = cluster["C"].connect("pub")
    publish_many(publisher, 3)
    cluster.settle(0.5)
    assert payloads(remote) == []
    assert cluster["C"].registry.router.shared_counters.dropped == 3
    local = cluster["C"].subscriber("mC", (SHARE, 1))
    publish_many(publisher, 3, first_id=4)
    cluster.settle(0.5)
    assert payloads(local) == [b"4", b"5", b"6"] and payloads(remote) == []


def test_across_nodes_random_spreads_over_every_node() -> None:
    cluster = Cluster()
    for name in "ABC":
        cluster[name].registry.subscription_table.shared.policy = "random"
    members = {name: cluster[name].subscriber("m" + name, (SHARE, 1)) for name in "ABC"}
    cluster.settle()
    publish_many(cluster["C"].connect("pub"), 30)
    got = spread(members, cluster)
    assert sorted(got["A"] + got["B"] + got["C"]) == list(range(1, 31))
    assert all(got[name] for name in "ABC")


def test_a_plain_copy_is_not_routed_to_groups_by_the_receiving_node() -> None:
    """
    C forwards one copy to B for B's plain subscriber; B must not serve its
    own group members with it (C chose a member already): no duplicates.
    """
    cluster = Cluster()
    plain = cluster["B"].subscriber("plain", ("t/#", 1))
    members = {name: cluster[name].subscriber("m" + name, (SHARE, 1)) for name in "AB"}
    cluster.settle()
    publish_many(cluster["C"].connect("pub"), 8)
    got = spread(members, cluster)
    assert sorted(got["A"] + got["B"]) == list(range(1, 9))
    assert sorted(int(x) for x in drain(plain)) == list(range(1, 9))


def test_the_receiving_node_checks_the_named_member() -> None:
    """
    Another node named a member recorded here: delivered to it if online;
    else to another online member here; else (QoS 1/2) to its persistent
    queue; else dropped and counted.
    """
    from vmqtw.types import Message

    cluster = Cluster()
    broker = cluster["A"]
    router = broker.registry.router
    first = broker.subscriber("a1", (SHARE, 1))
    second = broker.subscriber("a2", (SHARE, 1))
    keeper = broker.subscriber("keeper", (SHARE, 1), clean_session=False)
    cluster.settle()
    ids = {c.protocol.session.subscriber_id.client_id: c.protocol.session.subscriber_id
           for c in (first, second, keeper)}

    def arrives(name: str, payload: bytes) -> None:
        assert router.route_shared_remote(
            Message(payload * 8, "t/x", payload, 1), ids[name], SHARE) is None

    arrives("a1", b"1")
    assert drain(first) == [b"1"] and payloads(second) == []
    first.drop()
    arrives("a1", b"2")
    assert drain(second) == [b"2"]
    second.drop()
    keeper.drop()
    arrives("keeper", b"3")
    assert broker.registry.queues[ids["keeper"]].size() == 1
    dropped = router.shared_counters.dropped
    arrives("a1", b"4")
    assert router.shared_counters.dropped == dropped + 1


def test_member_on_another_node_disconnecting_mid_stream_loses_nothing() -> None:
    """Messages in flight to a member on node A that drops reach the other
    member (on node B) -- re-routed by A to the group, across the cluster."""
    cluster = Cluster()
    slow = cluster["A"].subscriber("slow", (SHARE, 1))
    cluster.settle()
    publisher = cluster["C"].connect("pub")
    publish_many(publisher, 25)
    cluster.settle(0.5)
    assert len(payloads(slow)) == 20
    other = cluster["B"].subscriber("other", (SHARE, 1))
    cluster.settle()
    slow.drop()
    got = spread({"other": other}, cluster)
    counts = Counter(got["other"])
    assert sorted(counts) == list(range(1, 26)) and set(counts.values()) == {1}


def test_local_only_requeue_crosses_nodes_rather_than_drop() -> None:
    """Under local_only, new messages stay on the node; the acknowledged
    ones of a member whose session ended go to a member elsewhere when
    none is left here, rather than being lost."""
    cluster = Cluster()
    cluster["A"].registry.subscription_table.shared.policy = "local_only"
    slow = cluster["A"].subscriber("slow", (SHARE, 1))
    elsewhere = cluster["B"].subscriber("elsewhere", (SHARE, 1))
    cluster.settle()
    publish_many(cluster["A"].connect("pub"), 5)
    cluster.settle(0.5)
    assert len(payloads(slow)) == 5 and payloads(elsewhere) == []
    slow.drop()
    got = spread({"elsewhere": elsewhere}, cluster)
    assert got["elsewhere"] == [1, 2, 3, 4, 5]
    assert cluster["A"].registry.router.shared_counters.requeued == 5


def test_copies_for_a_node_that_left_go_to_a_member_elsewhere() -> None:
    from vmqtw.types import Message

    cluster = Cluster()
    on_b = cluster["B"].subscriber("on-b", (SHARE, 1))
    on_c = cluster["C"].subscriber("on-c", (SHARE, 1))
    cluster.settle()
    router = cluster["A"].registry.router
    gone = on_b.protocol.session.subscriber_id
    router._shared_orphaned("B", [(gone, Message(b"o" * 16, "t/x", b"orphan", 1), SHARE)])
    cluster.settle(0.5)
    assert payloads(on_c) == [b"orphan"] and payloads(on_b) == []


def test_v5_publisher_told_no_matching_subscribers_only_when_no_member_may_get_it() -> None:
    """PUBACK 0x10 when a group matched but local_only found no member here;
    0x00 when a member got it."""
    cluster = Cluster()
    cluster["A"].registry.subscription_table.shared.policy = "local_only"
    cluster["B"].subscriber("far", (SHARE, 1))
    cluster.settle()
    publisher, _ = connect5(cluster["A"], "pub5")
    publisher.send(B5.publish("t/x", b"1", qos=1, packet_id=1))
    assert publisher.received() == [P.PubAck(1, R.NO_MATCHING_SUBSCRIBERS)]
    cluster["A"].subscriber("near", (SHARE, 1))
    publisher.send(B5.publish("t/x", b"2", qos=1, packet_id=2))
    assert publisher.received() == [P.PubAck(2)]


def test_a_copy_for_a_group_gone_from_the_receiving_node_is_counted_dropped() -> None:
    from vmqtw.types import Message

    broker = Broker()
    router = broker.registry.router
    client = broker.connect("was-member")
    sid = client.protocol.session.subscriber_id
    assert router.route_shared_remote(Message(b"g" * 16, "t/x", b"x", 1), sid, SHARE) is None
    assert router.shared_counters.dropped == 1 and client.received() == []


def test_qos2_in_flight_goes_on_unless_the_member_already_owns_it() -> None:
    """A QoS 2 message the member answered with PUBREC is its own [MQTT-4.3.3];
    one it never acknowledged goes to another member."""
    broker = Broker()
    member = broker.subscriber("m", (SHARE, 2))
    publisher = broker.connect("pub")
    publish_many(publisher, 2, qos=2)
    first, second = member.publishes()
    member.send(B.pubrec(first.packet_id))
    other = broker.subscriber("o", (SHARE, 2))
    member.drop()
    assert payloads(other) == [second.payload]


def test_a_persistent_member_keeps_what_it_held_for_its_return() -> None:
    """
    As VerneMQ's offline queue does: a persistent session that goes offline
    keeps the messages queued and in flight to it (they are its own, and
    stored); only the end of the session hands them to the group.
    """
    broker = Broker()
    member = broker.subscriber("keeper", (SHARE, 1), clean_session=False)
    publish_many(broker.connect("pub"), 3)
    assert len(payloads(member)) == 3
    other = broker.subscriber("other", (SHARE, 1))
    member.drop()
    assert payloads(other) == []
    back = broker.connect("keeper", clean_session=False)
    assert sorted(payloads(back)) == [b"1", b"2", b"3"]


def test_groups_come_back_with_a_restart_and_its_stored_messages() -> None:
    """The group structure is rebuilt from the records at start, like the
    trie: a persistent member restored offline takes what comes while it is
    the only member, and gets what it held before the restart."""
    from vmqtw.store.memory import MemoryMessageStore

    store = MemoryMessageStore()
    store.open()
    broker = Broker(store=store)
    member = broker.subscriber("keeper", (SHARE, 1), clean_session=False)
    member.drop()
    publish_many(broker.connect("pub"), 2)
    broker.registry.stop()
    after = Broker(store=store, metadata=broker.metadata)
    [group] = after.registry.subscription_table.shared.groups.values()
    assert group.name == SHARE and [sid.client_id for sid in group.local] == ["keeper"]
    publish_many(after.connect("pub"), 1, first_id=3)
    back = after.connect("keeper", clean_session=False)
    assert sorted(drain(back)) == [b"1", b"2", b"3"]


def test_a_member_moving_to_another_node_is_followed() -> None:
    """The record moves, the groups follow on every node: what is chosen for
    the member after the move goes to its new node."""
    cluster = Cluster()
    first = cluster["A"].subscriber("mover", (SHARE, 1), clean_session=False)
    cluster.settle()
    publisher = cluster["C"].connect("pub")
    publish_many(publisher, 2)
    assert spread({"mover": first}, cluster)["mover"] == [1, 2]
    moved = cluster["B"].connect("mover", clean_session=False)
    assert moved.connack.session_present
    cluster.settle()
    group = cluster["C"].registry.subscription_table.shared.groups[SHARE]
    assert list(group.remote.values()) == ["B"]
    publish_many(publisher, 2, first_id=3)
    assert spread({"moved": moved}, cluster)["moved"] == [3, 4]


def test_v5_member_gets_its_subscription_identifier() -> None:
    """[MQTT-3.3.4-3]: a delivery through a shared subscription carries the
    identifier given with it."""
    broker = Broker()
    client, _ = connect5(broker, "ids")
    subscribe5(broker, client, (SHARE, 1), properties=B5.props(B5.p_vbi(0x0B, 9)))
    broker.connect("pub").send(B.publish("t/x", b"m", qos=1, packet_id=1))
    [got] = client.publishes()
    assert got.properties is not None and got.properties.subscription_identifiers == (9,)
