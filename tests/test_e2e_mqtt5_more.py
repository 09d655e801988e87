"""
End to end with MQTT 5.0, continued (issue 10, part 4): topic aliases from
the broker, quota exceeded, session expiry through a restart -- real nodes
and paho-mqtt's MQTTv5 client.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.test_e2e_mqtt5 import Paho5


def resolved(messages: List[Any]) -> List[Tuple[str, str, bytes]]:
    """
    ``(topic as received, topic after resolving aliases, payload)``: paho
    hands on a PUBLISH as it came, with an empty topic when only an alias
    stands for it (3.3.2.3.4), so the test keeps the client's alias table.
    """
    table: Dict[int, str] = {}
    out = []
    for message in messages:
        topic = message.topic
        alias = getattr(message.properties, "TopicAlias", None)
        if alias is not None:
            if topic:
                table[alias] = topic
            else:
                assert alias in table, "alias %d used before it was set" % alias
        out.append((topic, table[alias] if alias is not None else topic,
                    message.payload))
    return out


def test_paho_v5_receives_topic_aliases(nodes):
    """
    topic_alias_max_broker = 2, a client allowing 5: each topic goes once,
    then as an alias alone; a third topic reuses the least recently used alias.
    """
    node = nodes.node(topic_alias_max_broker="2")
    sub = Paho5(nodes, node, "sub", topic_alias_maximum=5)
    assert sub.subscribe("al/#", SubscribeOptions(qos=1)) == [1]
    pub = Paho5(nodes, node, "pub")
    sent = ["al/one", "al/one", "al/two", "al/one", "al/three", "al/two", "al/one"]
    for i, topic in enumerate(sent):
        pub.publish(topic, b"%d" % i, qos=i % 2)
    got = resolved(sub.wait_for(len(sent)))
    assert [t for _raw, t, _p in got] == sent
    assert [p for _raw, _t, p in got] == [b"%d" % i for i in range(len(sent))]
    assert [raw for raw, _t, _p in got] == [
        "al/one", "", "al/two", "", "al/three", "al/two", "al/one"]
    plain = Paho5(nodes, node, "plain")
    assert plain.subscribe("al/#", SubscribeOptions(qos=0)) == [0]
    pub.publish("al/one", b"x")
    pub.publish("al/one", b"y")
    assert [m.topic for m in plain.wait_for(2)] == ["al/one", "al/one"]
