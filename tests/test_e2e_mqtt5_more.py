"""
End to end with MQTT 5.0, continued (issue 10, part 4): topic aliases from
the broker, quota exceeded, session expiry through a restart -- real nodes
and paho-mqtt's MQTTv5 client.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.test_e2e_mqtt5 import Paho5
from tests.waiting import wait_until


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


def test_v5_session_expiry_survives_a_restart(nodes):
    """
    kill -9 and a restart: a session of expiry 5 s ends 5 s later (the node
    keeps no sessions expiring on its own: persistent_client_expiration is
    never), one of 0xFFFFFFFF is still there.
    """
    node = nodes.node(log__console__level="info")
    for client_id, seconds in (("five", 5), ("forever", 0xFFFFFFFF)):
        client = Paho5(nodes, node, client_id, clean_start=False, session_expiry=seconds)
        assert client.subscribe("exp/#", SubscribeOptions(qos=1)) == [1]
        client.stop()
    wait_until(lambda: node.log().count("disconnected from") >= 2, 10, what="both offline")
    node.kill9()
    started = time.monotonic()
    node.start()
    wait_until(lambda: "session five expired" in node.log(), 20, what="five expired")
    assert time.monotonic() - started > 4
    assert "session forever expired" not in node.log()
    back = Paho5(nodes, node, "forever", clean_start=False, session_expiry=0xFFFFFFFF)
    assert back.connacks[-1][0] is True
    gone = Paho5(nodes, node, "five", clean_start=False, session_expiry=5)
    assert gone.connacks[-1][0] is False
