"""
``$SYS`` topics (systree): the node's metrics published every interval,
in process on a Clock, and on a real node with paho.
"""
from __future__ import annotations

from typing import Any, Iterator, Tuple

from vmqtw.broker.systree import SysTree, topic_of
from vmqtw.testing.inprocess_broker import Broker


def test_topics_follow_the_metric_names() -> None:
    assert topic_of("n@h", "mqtt_publish_received_total") == "$SYS/n@h/mqtt/publish/received"
    assert topic_of("n@h", "router_subscriptions") == "$SYS/n@h/router/subscriptions"


def test_each_metric_is_published_every_interval_to_sys_subscribers_only() -> None:
    broker = Broker(node="n@h")
    values = {"mqtt_publish_received_total": 3.0, "router_subscriptions": 0.5}

    def samples() -> Iterator[Tuple[str, float]]:
        return iter(values.items())

    tree = SysTree("n@h", samples, broker.registry.publish, broker.clock, interval=5.0)
    tree.start()
    watcher = broker.subscriber("watch", ("$SYS/#", 0))
    everything = broker.subscriber("all", ("#", 0))
    broker.clock.advance(4.9)
    assert watcher.publishes() == []
    broker.clock.advance(0.1)
    got = {(p.topic, p.payload, p.qos, p.retain) for p in watcher.publishes()}
    assert got == {("$SYS/n@h/mqtt/publish/received", b"3", 0, False),
                   ("$SYS/n@h/router/subscriptions", b"0.5", 0, False)}
    assert everything.publishes() == [], "# does not match $ topics [MQTT-4.7.2-1]"
    values["mqtt_publish_received_total"] = 4.0
    broker.clock.advance(5.0)
    assert ("$SYS/n@h/mqtt/publish/received", b"4") in {
        (p.topic, p.payload) for p in watcher.publishes()}
    tree.stop()
    broker.clock.advance(10.0)
    assert watcher.publishes() == []


def test_a_real_node_publishes_its_metrics_under_sys(nodes: Any) -> None:
    node = nodes.node("sys", systree_enabled="on", systree_interval="200ms",
                      nodename="vmqtw@127.0.0.1", distributed_cookie="systree")
    watcher = nodes.client(node, "watch")
    topic = "$SYS/vmqtw@127.0.0.1/mqtt/connect/received"
    assert watcher.subscribe((topic, 0)) == [0]
    got = watcher.wait_for(1)
    assert got[0][0] == topic and int(got[0][1]) >= 1
