"""
MQTT 5.0 across a real three-node cluster (issue 10): ``twistd -n vmqtw``
processes on 127.0.0.81-83, joined with ``vmqtw-admin``, and paho-mqtt's
MQTTv5 clients.  What a v5 publisher on one node says reaches a v5
subscriber on another unchanged: properties (user properties in order),
message expiry less the time already spent, subscription identifiers
(resolved on the subscriber's node), retain as published and retain
handling with a retained message set on another node, and no local.

One test (one cluster start) with a helper per property checked.
"""
from __future__ import annotations

import time
from typing import Any, List

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.nodeharness import Node
from tests.test_e2e_cluster import admin, cluster_address, name, show_or_none, start_cluster
from tests.test_e2e_mqtt5 import Paho5
from tests.waiting import wait_until

HOSTS = ("127.0.0.81", "127.0.0.82", "127.0.0.83")


def join(a: Node, b: Node, c: Node) -> None:
    for node in (b, c):
        done = admin(node, "cluster", "join", "discovery-node=" + cluster_address(a))
        assert done.returncode == 0, done.stderr
    everyone = sorted((name(n), True) for n in (a, b, c))
    for node in (a, b, c):
        wait_until(lambda: show_or_none(node) == everyone, 20,
                   what="%s to show 3 running" % (name(node),))


def routed(pub: Paho5, sub: Paho5, probe: str) -> None:
    """Publish QoS 0 probes on ``probe`` until ``sub`` got one: its filter reached pub's node."""
    def arrived() -> bool:
        pub.publish(probe, b"probe", 0)
        with sub.lock:
            return any(m.topic == probe for m in sub.messages)
    wait_until(arrived, 15, interval=0.1, what="%s routed" % probe)


def without_probes(client: Paho5, count: int, timeout: float = 10.0) -> List[Any]:
    def real() -> List[Any]:
        with client.lock:
            return [m for m in client.messages if not m.topic.endswith("/probe")]
    wait_until(lambda: len(real()) >= count, timeout,
               what="%d messages (have %d)" % (count, len(real())))
    return real()


def properties_survive_forwarding(nodes: Any, a: Node, c: Node) -> None:
    sub = Paho5(nodes, a, "props-sub")
    assert sub.subscribe("props/#", SubscribeOptions(qos=1)) == [1]
    pub = Paho5(nodes, c, "props-pub")
    routed(pub, sub, "props/probe")
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.ResponseTopic = "props/reply"
    props.CorrelationData = b"\x00\xffcorr"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 120
    props.UserProperty = [("z", "1"), ("a", "2"), ("z", "3")]
    pub.publish("props/x", b"{}", 1, properties=props)
    [got] = without_probes(sub, 1)
    p = got.properties
    assert (got.topic, got.payload, got.qos) == ("props/x", b"{}", 1)
    assert (p.ContentType, p.ResponseTopic, p.CorrelationData, p.PayloadFormatIndicator) == (
        "application/json", "props/reply", b"\x00\xffcorr", 1)
    assert p.UserProperty == [("z", "1"), ("a", "2"), ("z", "3")]
    assert 118 <= p.MessageExpiryInterval <= 120


def expiry_counts_the_time_already_spent(nodes: Any, a: Node, b: Node) -> None:
    """
    Published on B for a v5 session offline on A: what waited past its
    expiry is dropped, the rest arrives with the time left since B took it.
    """
    sub = Paho5(nodes, a, "exp-sub", clean_start=False, session_expiry=600)
    assert sub.subscribe("exp/#", SubscribeOptions(qos=1)) == [1]
    pub = Paho5(nodes, b, "exp-pub")
    routed(pub, sub, "exp/probe")
    sub.stop()
    for seconds in (2, 30):
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = seconds
        pub.publish("exp/%d" % seconds, b"%d" % seconds, 1, properties=props)
    published = time.monotonic()
    wait_until(lambda: time.monotonic() - published > 3, 5, interval=0.2,
               what="the short expiry to pass")
    back = Paho5(nodes, a, "exp-sub", clean_start=False, session_expiry=600)
    assert back.connacks[-1][0] is True
    # Delivered in order: had the 2 s one not expired on the way, it came first.
    got = without_probes(back, 1)[0]
    assert got.payload == b"30"
    assert 25 <= got.properties.MessageExpiryInterval <= 27


def identifiers_resolved_on_the_subscribers_node(nodes: Any, a: Node, b: Node) -> None:
    sub = Paho5(nodes, a, "ids-sub")
    assert sub.subscribe("ids/#", SubscribeOptions(qos=1), identifier=7) == [1]
    assert sub.subscribe("ids/+/x", SubscribeOptions(qos=0), identifier=300) == [0]
    plain = Paho5(nodes, b, "ids-plain")
    assert plain.subscribe("ids/#", SubscribeOptions(qos=0)) == [0]
    pub = Paho5(nodes, b, "ids-pub")
    routed(pub, sub, "ids/probe")
    pub.publish("ids/a/x", b"both", 1)
    pub.publish("ids/a/y", b"one", 1)
    got = without_probes(sub, 2)
    assert {m.payload: sorted(m.properties.SubscriptionIdentifier) for m in got} == {
        b"both": [7, 300], b"one": [7]}
    # The other node's subscriber without identifiers gets none.
    others = without_probes(plain, 2)
    assert all(not hasattr(m.properties, "SubscriptionIdentifier") for m in others)


def retain_options_with_a_message_retained_elsewhere(nodes: Any, a: Node, b: Node,
                                                     c: Node) -> None:
    """
    [MQTT-3.3.1-9..13]: a message retained on B; on A retain handling 0
    sends it, 1 only for a new subscription, 2 never; retain as published
    keeps RETAIN=1 on a retained publish from C, a plain subscription gets 0.
    """
    Paho5(nodes, b, "ret-pub").publish("ret/kept", b"kept", 1, retain=True)

    def fresh(n: List[int] = [0]) -> Any:
        n[0] += 1
        return Paho5(nodes, a, "ret-probe-%d" % n[0])

    def retained_seen() -> bool:
        probe = fresh()
        probe.subscribe("ret/kept", SubscribeOptions(qos=1))
        try:
            probe.wait_for(1, timeout=1.0)
            return True
        except AssertionError:
            return False
        finally:
            probe.stop()
    wait_until(retained_seen, 15, interval=0.1, what="retained message replicated to A")
    handling = Paho5(nodes, a, "ret-handling")
    assert handling.subscribe("ret/kept", SubscribeOptions(qos=1, retainHandling=0)) == [1]
    [first] = handling.wait_for(1)
    assert (first.payload, first.retain) == (b"kept", 1)
    assert handling.subscribe("ret/kept", SubscribeOptions(qos=1, retainHandling=1)) == [1]
    assert handling.subscribe("ret/kept", SubscribeOptions(qos=1, retainHandling=0)) == [1]
    assert len(handling.wait_for(2)) == 2     # sent again for handling 0 only
    never = Paho5(nodes, a, "ret-never")
    assert never.subscribe("ret/#", SubscribeOptions(qos=1, retainHandling=2)) == [1]
    assert never.subscribe("ret/kept", SubscribeOptions(qos=1, retainHandling=1)) == [1]
    as_published = Paho5(nodes, a, "ret-rap")
    assert as_published.subscribe("ret/#", SubscribeOptions(qos=1, retainAsPublished=True)) \
        == [1]
    pub = Paho5(nodes, c, "ret-pub-c")
    routed(pub, as_published, "ret/probe")
    routed(pub, never, "ret/probe")
    pub.publish("ret/live", b"live", 1, retain=True)
    got = [m for m in without_probes(as_published, 2) if m.topic == "ret/live"]
    assert [(m.payload, bool(m.retain)) for m in got] == [(b"live", True)]
    got = [m for m in without_probes(never, 2) if m.topic.startswith("ret/")]
    # Handling 2 on ret/# sent nothing; handling 1 on the new filter
    # ret/kept sent the retained message once; the live one has RETAIN=0.
    assert sorted((m.topic, bool(m.retain)) for m in got) == [("ret/kept", True),
                                                               ("ret/live", False)]


def no_local_holds_across_nodes(nodes: Any, a: Node, b: Node, c: Node) -> None:
    """
    [MQTT-3.8.3-3]: a v5 session subscribed with no local on A, resumed on
    C, does not get what it publishes there; others' messages it does get,
    and a subscriber on B gets its own.
    """
    me = Paho5(nodes, a, "nl-me", clean_start=False, session_expiry=600)
    assert me.subscribe("nl/#", SubscribeOptions(qos=1, noLocal=True)) == [1]
    me.stop()
    me = Paho5(nodes, c, "nl-me", clean_start=False, session_expiry=600)
    assert me.connacks[-1][0] is True
    other = Paho5(nodes, b, "nl-other")
    assert other.subscribe("nl/#", SubscribeOptions(qos=1)) == [1]
    pub = Paho5(nodes, a, "nl-pub")
    routed(pub, me, "nl/probe")
    routed(pub, other, "nl/probe")
    me.publish("nl/mine", b"mine", 1)
    pub.publish("nl/theirs", b"theirs", 1)
    assert sorted(m.payload for m in without_probes(other, 2)) == [b"mine", b"theirs"]
    assert [m.payload for m in without_probes(me, 1)] == [b"theirs"]


def test_mqtt5_across_three_nodes(nodes):
    a, b, c = start_cluster(nodes, HOSTS)
    join(a, b, c)
    properties_survive_forwarding(nodes, a, c)
    expiry_counts_the_time_already_spent(nodes, a, b)
    identifiers_resolved_on_the_subscribers_node(nodes, a, b)
    retain_options_with_a_message_retained_elsewhere(nodes, a, b, c)
    no_local_holds_across_nodes(nodes, a, b, c)
