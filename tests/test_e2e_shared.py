"""
Shared subscriptions end to end: real nodes, paho-mqtt clients at level
3.1.1 and 5.0 (and a raw client that never acknowledges, to hold messages
in flight).  One node, then a three-node cluster on loopback aliases
127.0.0.70-72 whose nodes run the three policies (the publishing node's
policy decides).
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, List, Sequence

from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.nodeharness import Node
from tests.test_e2e_cluster import FAST_METADATA, name
from tests.test_e2e_leave_join import join_to_first
from tests.test_e2e_mqtt5 import Paho5
from tests.test_e2e_operator import http_node, metrics
from tests.waiting import wait_until
from vmqtw.mqtt import packets as P
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.rawclient import ReadTimeout, RawClient

HOSTS = ("127.0.0.70", "127.0.0.71", "127.0.0.72")
POLICIES = ("prefer_local", "local_only", "random")


def payloads(client: Any) -> List[bytes]:
    """What a paho client (3.1.1 or 5.0) received, in order."""
    with client.lock:
        return [m.payload for m in client.messages]


def wait_total(members: Sequence[Any], count: int, what: str) -> None:
    wait_until(lambda: sum(len(payloads(m)) for m in members) >= count, 30, what=what)


def exactly_once(members: Sequence[Any], sent: List[bytes]) -> List[int]:
    """Every message in ``sent`` reached exactly one member; counts per member."""
    wait_total(members, len(sent), "%d messages across the group" % len(sent))
    # Nothing else to wait for: a duplicate would be on its way by now.
    time.sleep(0.3)
    got = Counter(p for m in members for p in payloads(m))
    assert set(got) == set(sent), (set(sent) - set(got), set(got) - set(sent))
    assert set(got.values()) == {1}, [p for p, n in got.items() if n > 1]
    return [len(payloads(m)) for m in members]


def publish(publisher: Any, topic: str, prefix: str, count: int) -> List[bytes]:
    sent = [b"%s-%d" % (prefix.encode(), n) for n in range(count)]
    for payload in sent:
        publisher.publish(topic, payload, 1)   # waits for the PUBACK
    return sent


def silent_member(node: Node, client_id: str, flt: str) -> RawClient:
    """A 3.1.1 member that never acknowledges what it gets."""
    client = RawClient.connect(node.host, node.port, client_id)
    client.send(B.subscribe(1, [(flt, 1)]))
    assert client.next() == P.SubAck(1, [1])
    return client


def held_by(client: RawClient) -> List[bytes]:
    """The PUBLISHes a silent member got (none acknowledged)."""
    got: List[bytes] = []
    while True:
        try:
            packet = client.next(timeout=1.0)
        except ReadTimeout:
            return got
        if isinstance(packet, P.Publish):
            got.append(packet.payload)


# -- one node -------------------------------------------------------------------------


def test_one_node_members_at_both_levels_share_the_stream(nodes: Any) -> None:
    """3.1.1 and 5.0 members of one group: each QoS 1 message once, to one of them."""
    node = nodes.node()
    v3 = [nodes.client(node, "v3-%d" % n) for n in range(2)]
    for member in v3:
        assert member.subscribe(("$share/workers/jobs/#", 1)) == [1]
    v5 = Paho5(nodes, node, "v5")
    assert v5.connacks[-1][2].SharedSubscriptionAvailable == 1
    assert v5.subscribe("$share/workers/jobs/#", SubscribeOptions(qos=1)) == [1]
    plain = nodes.client(node, "plain")
    assert plain.subscribe(("jobs/#", 1)) == [1]
    sent = publish(nodes.client(node, "pub"), "jobs/a", "m", 60)
    counts = exactly_once([*v3, v5], sent)
    assert all(counts), counts   # members take turns
    assert [p for _t, p, _q, _r in plain.wait_for(60)] == sent


def test_one_node_malformed_shared_filters_refused(nodes: Any) -> None:
    node = nodes.node()
    client = RawClient.connect(node.host, node.port, "bad")
    client.send(B.subscribe(1, [("$share/grp", 1), ("$share/+/t", 1), ("$share/g/t", 1)]))
    assert client.next() == P.SubAck(1, [0x80, 0x80, 1])
    client.close()


def test_one_node_member_dropping_mid_stream_loses_nothing(nodes: Any) -> None:
    """
    A member that never acknowledges holds messages in flight and queued;
    when its connection drops (clean session) they reach the other member.
    """
    node = http_node(nodes, "node")
    silent = silent_member(node, "silent", "$share/g/work/#")
    other = nodes.client(node, "other")
    assert other.subscribe(("$share/g/work/#", 1)) == [1]
    sent = publish(nodes.client(node, "pub"), "work/x", "w", 60)
    held = held_by(silent)
    assert held, "the silent member got nothing"
    silent.close()
    assert sorted(p for _t, p, _q, _r in other.wait_for(60, timeout=20)) == sorted(sent)
    time.sleep(0.3)
    assert Counter(p for _t, p, _q, _r in other.received()) == Counter(sent)
    seen = metrics(node)
    # Members took turns: the silent one was given every second message.
    assert seen["shared_subscription_messages_requeued_total"] == 30
    assert seen["shared_subscription_messages_delivered_total"] == 60 + 30
    assert seen["shared_subscription_messages_dropped_total"] == 0


# -- three nodes ----------------------------------------------------------------------


def three_policies(nodes: Any) -> List[Node]:
    """A on prefer_local, B on local_only, C on random; joined."""
    made = [nodes.node(label, start=False, host=host, nodename="vmqtw@" + host,
                       shared_subscription_policy=policy, **FAST_METADATA)
            for label, host, policy in zip("ABC", HOSTS, POLICIES)]
    for node in made:
        node.start(wait=False)
    for node in made:
        wait_until(node.accepting, 20, what="node %s to accept" % (name(node),))
    return join_to_first(made)


def test_three_nodes_each_policy_and_a_member_dropping_mid_stream(nodes: Any) -> None:
    a, b, c = three_policies(nodes)
    flt = "$share/grp/job/#"
    on_b = Paho5(nodes, b, "m-b")
    assert on_b.subscribe(flt, SubscribeOptions(qos=1)) == [1]
    on_c = nodes.client(c, "m-c")
    assert on_c.subscribe((flt, 1)) == [1]

    # Members on B and C, the publisher on A (prefer_local, no member on A):
    # exactly once each, spread over both nodes.
    pub_a = nodes.client(a, "pub-a")
    sent = publish(pub_a, "job/1", "a", 100)
    counts = exactly_once([on_b, on_c], sent)
    assert all(counts), counts

    # local_only on B: never crosses nodes.
    pub_b = nodes.client(b, "pub-b")
    before_c = len(payloads(on_c))
    sent = publish(pub_b, "job/2", "b", 20)
    wait_until(lambda: set(sent) <= set(payloads(on_b)), 20, what="B's member to get all")
    time.sleep(0.3)
    assert len(payloads(on_c)) == before_c

    # prefer_local on A stays local while A's member is online.
    on_a = nodes.client(a, "m-a")
    assert on_a.subscribe((flt, 1)) == [1]   # SUBACK: every node routes it
    before = (len(payloads(on_b)), len(payloads(on_c)))
    sent = publish(pub_a, "job/3", "l", 20)
    wait_until(lambda: set(sent) <= set(payloads(on_a)), 20, what="A's member to get all")
    time.sleep(0.3)
    assert (len(payloads(on_b)), len(payloads(on_c))) == before

    # random on C: any member on any node.
    pub_c = nodes.client(c, "pub-c")
    marks = [len(payloads(m)) for m in (on_a, on_b, on_c)]
    sent = publish(pub_c, "job/4", "r", 60)
    wait_total([on_a, on_b, on_c], sum(marks) + 60, "the random round")
    new = [payloads(m)[mark:] for m, mark in zip((on_a, on_b, on_c), marks)]
    assert sorted(p for got in new for p in got) == sorted(sent)
    assert all(new), [len(got) for got in new]

    # A member on B that never acknowledges, another on C, the publisher on
    # A: what B's member held in flight and queued reaches C's member once
    # its connection drops.  Nothing lost, nothing twice.
    work = "$share/w/work/#"
    silent = silent_member(b, "silent", work)
    taker = nodes.client(c, "taker")
    assert taker.subscribe((work, 1)) == [1]
    sent = publish(pub_a, "work/x", "w", 80)
    held = held_by(silent)
    assert held, "the silent member on B got nothing"
    silent.close()
    got = taker.wait_for(80, timeout=30)
    time.sleep(0.3)
    assert Counter(p for _t, p, _q, _r in taker.received()) == Counter(sent), (len(got), len(held))
