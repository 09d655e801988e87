"""
Wills after the window of uncertainty, in process on the in-memory
cluster: a will that fires during a netsplit, for subscribers on the other
side, reaches them after the heal.  VerneMQ documents such wills as lost;
here the data plane keeps the will like any acknowledged publish.
"""
from __future__ import annotations

from typing import Any, List

import pytest

from vmqtw.mqtt import packets as P
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Cluster


def split_cluster(**kwargs: Any) -> Cluster:
    """A, B with the readiness a node has: not ready while a link is cut."""
    holder: List[Cluster] = []
    cluster = Cluster(["A", "B"], ready=lambda: holder[0].network.linked("A", "B")
                      if holder else True, **kwargs)
    holder.append(cluster)
    return cluster


@pytest.mark.parametrize("will_qos", [1, 2])
def test_a_will_fired_during_a_split_reaches_the_other_side_after_the_heal(will_qos):
    cluster = split_cluster()
    online = cluster["B"].subscriber("online", ("will/#", 2))
    offline = cluster["B"].subscriber("offline", ("will/#", 2), clean_session=False)
    offline.drop()
    dying = cluster["A"].connect("dying", will_topic="will/dying", will_message=b"gone",
                                 will_qos=will_qos)
    cluster.settle()
    cluster.network.partition([["A"], ["B"]])
    cluster.settle(0.5)
    assert not cluster["A"].registry.ready()
    dying.drop()                      # the will fires on A, B unreachable
    cluster.settle(2.0)
    assert online.publishes() == []
    cluster.network.heal()
    cluster.settle(5.0)
    assert [(p.topic, p.payload, p.qos) for p in online.publishes()] == [
        ("will/dying", b"gone", will_qos)]
    back = cluster["B"].connect("offline", clean_session=False)
    cluster.settle()
    packets = back.received()
    assert [(p.topic, p.payload) for p in packets if isinstance(p, P.Publish)] == [
        ("will/dying", b"gone")]


def test_a_will_fired_during_a_split_is_delivered_once_after_repeated_cuts():
    cluster = split_cluster()
    online = cluster["B"].subscriber("online", ("will/#", 1))
    dying = cluster["A"].connect("dying", will_topic="will/dying", will_message=b"gone",
                                 will_qos=1)
    cluster.settle()
    cluster.network.partition([["A"], ["B"]])
    cluster.settle(0.5)
    dying.drop()
    for _ in range(3):                # heal and cut again before anything settles
        cluster.network.heal()
        cluster.clock.advance(0.01)
        cluster.network.partition([["A"], ["B"]])
        cluster.settle(1.0)
    cluster.network.heal()
    cluster.settle(5.0)
    assert [p.payload for p in online.publishes()] == [b"gone"]


def test_a_will_the_cluster_cannot_take_is_logged_as_lost_not_an_unhandled_error():
    """A full backlog refuses a QoS 1 will; no client is left to resend it."""
    from twisted.logger import globalLogPublisher

    from vmqtw.mqtt.session import SessionSettings

    cluster = split_cluster(settings=SessionSettings(allow_publish_during_netsplit=True))
    cluster["B"].subscriber("online", ("will/#", 1))
    filler = cluster["A"].connect("filler")
    dying = cluster["A"].connect("dying", will_topic="will/dying", will_message=b"gone",
                                 will_qos=1)
    cluster.settle()
    cluster.network.partition([["A"], ["B"]])
    cluster.settle(0.5)
    cluster["A"].registry.dataplane.limit = 1      # the first entry only
    filler.send(B.publish("will/fill", b"x", qos=1, packet_id=1))
    cluster.settle(0.1)
    assert filler.received() == [P.PubAck(1)]
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        dying.drop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lost = [e for e in events if e.get("log_format", "").startswith("the will of {client_id}")]
    assert [(e["client_id"], e["topic"]) for e in lost] == [("dying", "will/dying")]
    assert cluster["A"].registry.dataplane.counters.refused_backlog_full == 1
