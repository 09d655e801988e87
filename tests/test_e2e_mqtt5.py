"""
End to end with MQTT 5.0: a real node and paho-mqtt's MQTTv5 client, as a
user would run them (one node; the cluster comes with issue 10's next part).
"""
from __future__ import annotations

import threading
from typing import Any, List, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.waiting import wait_until


class Paho5:
    """A paho MQTTv5 client on its own network thread, recording what arrives."""

    def __init__(self, nodes: Any, node: Any, client_id: str, clean_start: bool = True,
                 session_expiry: Optional[int] = None, connect: bool = True,
                 receive_maximum: Optional[int] = None,
                 topic_alias_maximum: Optional[int] = None) -> None:
        self.node = node
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        nodes.clients.append(self.client)
        self.messages: List[mqtt.MQTTMessage] = []
        self.connacks: List[Any] = []
        self.disconnects: List[Any] = []
        self.lock = threading.Lock()
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        if connect:
            self.connect()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        with self.lock:
            self.connacks.append((flags.session_present, reason, properties))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        with self.lock:
            self.disconnects.append(reason)

    def connect(self) -> "Paho5":
        props = Properties(PacketTypes.CONNECT)
        if self.session_expiry is not None:
            props.SessionExpiryInterval = self.session_expiry
        if self.receive_maximum is not None:
            props.ReceiveMaximum = self.receive_maximum
        if self.topic_alias_maximum is not None:
            props.TopicAliasMaximum = self.topic_alias_maximum
        count = len(self.connacks)
        self.client.connect(self.node.host, self.node.port, 60, clean_start=self.clean_start,
                            properties=props)
        self.client.loop_start()
        wait_until(lambda: len(self.connacks) > count, 10, what="CONNACK")
        assert not self.connacks[-1][1].is_failure, self.connacks[-1]
        return self

    def subscribe(self, topic: str, options: SubscribeOptions,
                  identifier: Optional[int] = None) -> List[int]:
        """SUBSCRIBE with options and an optional subscription identifier;
        the reason codes of the SUBACK."""
        codes: List[int] = []
        done = threading.Event()

        def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any,
                         properties: Any = None) -> None:
            codes.extend(code.value for code in reasons)
            done.set()

        props = None
        if identifier is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = identifier
        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, options=options, properties=props)
        assert done.wait(10), "no SUBACK"
        return codes

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: Optional[Properties] = None) -> None:
        info = self.client.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(10)
        assert info.is_published()

    def wait_for(self, count: int, timeout: float = 10.0) -> List[mqtt.MQTTMessage]:
        wait_until(lambda: len(self.messages) >= count, timeout,
                   what="%d messages (have %d)" % (count, len(self.messages)))
        with self.lock:
            return list(self.messages)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_paho_v5_properties_reach_a_v5_subscriber(nodes):
    """
    Content type, response topic, correlation data, payload format and user
    properties in order, and the message expiry interval, from a paho v5
    publisher to a paho v5 subscriber.
    """
    node = nodes.node()
    sub = Paho5(nodes, node, "sub")
    assert sub.subscribe("req/#", SubscribeOptions(qos=1)) == [1]
    pub = Paho5(nodes, node, "pub")
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.ResponseTopic = "resp/1"
    props.CorrelationData = b"\x01corr"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 120
    props.UserProperty = [("b", "2"), ("a", "1"), ("b", "2")]
    pub.publish("req/x", b"{}", 1, properties=props)
    [got] = sub.wait_for(1)
    assert (got.topic, got.payload, got.qos) == ("req/x", b"{}", 1)
    p = got.properties
    assert (p.ContentType, p.ResponseTopic, p.CorrelationData, p.PayloadFormatIndicator) == (
        "application/json", "resp/1", b"\x01corr", 1)
    assert p.UserProperty == [("b", "2"), ("a", "1"), ("b", "2")]
    assert 118 <= p.MessageExpiryInterval <= 120


def test_paho_v5_session_expiry(nodes):
    """
    A v5 session with an expiry keeps its QoS 1 messages while away (session
    present on return); with expiry 0 nothing is kept.
    """
    node = nodes.node()
    sub = Paho5(nodes, node, "keeper", clean_start=False, session_expiry=300)
    assert sub.subscribe("keep/#", SubscribeOptions(qos=1)) == [1]
    sub.stop()
    pub = Paho5(nodes, node, "pub")
    pub.publish("keep/1", b"while away", 1)
    back = Paho5(nodes, node, "keeper", clean_start=False, session_expiry=300)
    assert back.connacks[-1][0] is True   # session present
    assert [m.payload for m in back.wait_for(1)] == [b"while away"]

    brief = Paho5(nodes, node, "brief", clean_start=False, session_expiry=0)
    assert brief.subscribe("brief/#", SubscribeOptions(qos=1)) == [1]
    brief.stop()
    again = Paho5(nodes, node, "brief", clean_start=False, session_expiry=0)
    assert again.connacks[-1][0] is False


def test_paho_v5_and_v311_side_by_side(nodes):
    """One node serves both levels: a 3.1.1 subscriber gets a v5 publish plainly."""
    node = nodes.node()
    old = nodes.client(node, "old")
    assert old.subscribe(("mix/#", 1)) == [1]
    pub = Paho5(nodes, node, "pub5")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v")]
    pub.publish("mix/a", b"hello", 1, properties=props)
    assert old.wait_for(1) == [("mix/a", b"hello", 1, False)]


def test_paho_v5_connack_properties(nodes):
    """An empty client id is assigned (and told); unoffered features are announced."""
    node = nodes.node(topic_alias_max_client="8")
    client = Paho5(nodes, node, "")
    _present, reason, props = client.connacks[-1]
    assert reason.value == 0
    assert props.AssignedClientIdentifier.startswith("vmqtw-")
    assert props.TopicAliasMaximum == 8
    assert not hasattr(props, "SubscriptionIdentifierAvailable")   # available
    assert props.SharedSubscriptionAvailable == 1


def test_paho_v5_subscription_options(nodes):
    """No local, retain as published and subscription identifiers, as paho sends them."""
    node = nodes.node()
    client = Paho5(nodes, node, "opts")
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 17
    client.client.on_subscribe = lambda *args: None
    done = threading.Event()
    client.client.on_subscribe = lambda *args: done.set()
    client.client.subscribe("room/#", options=SubscribeOptions(qos=1, noLocal=True,
                                                                  retainAsPublished=True),
                            properties=props)
    assert done.wait(10)
    client.publish("room/mine", b"echo?", 1)
    other = Paho5(nodes, node, "other")
    other.publish("room/kept", b"r", 1, retain=True)
    [got] = client.wait_for(1)
    assert (got.topic, got.payload, bool(got.retain)) == ("room/kept", b"r", True)
    assert got.properties.SubscriptionIdentifier == [17]


def test_node_shutdown_tells_v5_clients(nodes):
    """A node stopping sends DISCONNECT 0x8B Server shutting down to v5 clients."""
    node = nodes.node()
    client = Paho5(nodes, node, "stay")
    client.client.reconnect_delay_set(60, 120)
    assert node.stop() in (0, -15)
    wait_until(lambda: client.disconnects, 10, what="DISCONNECT")
    assert client.disconnects[0].value == 0x8B


def test_paho_v5_properties_survive_a_restart(nodes):
    """
    A v5 persistent session's stored messages keep their properties through
    kill -9 and a restart (message store format 2), its subscription
    identifier too (the subscriber record), and the expiry is counted down.
    """
    node = nodes.node()
    sub = Paho5(nodes, node, "durable", clean_start=False, session_expiry=3600)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 5
    done = threading.Event()
    sub.client.on_subscribe = lambda *args: done.set()
    sub.client.subscribe("durable/#", options=SubscribeOptions(qos=1), properties=props)
    assert done.wait(10)
    sub.stop()
    pub = Paho5(nodes, node, "pub")
    message_props = Properties(PacketTypes.PUBLISH)
    message_props.ContentType = "text/plain"
    message_props.UserProperty = [("z", "1"), ("a", "2")]
    message_props.MessageExpiryInterval = 3600
    pub.publish("durable/1", b"stored", 1, properties=message_props)
    pub.stop()
    node.kill9()
    node.start()
    back = Paho5(nodes, node, "durable", clean_start=False, session_expiry=3600)
    [got] = back.wait_for(1)
    assert got.payload == b"stored"
    p = got.properties
    assert p.ContentType == "text/plain"
    assert p.UserProperty == [("z", "1"), ("a", "2")]
    assert p.SubscriptionIdentifier == [5]
    assert 3500 < p.MessageExpiryInterval <= 3600


def test_allowed_protocol_versions_without_5(nodes):
    """listener.allowed_protocol_versions = 3,4: a paho v5 client is refused (CONNACK 1)."""
    node = nodes.node(listener__allowed_protocol_versions="3,4")
    client = Paho5(nodes, node, "v5", connect=False)
    client.client.connect(node.host, node.port, 60)
    client.client.loop_start()
    wait_until(lambda: client.connacks or client.disconnects, 10, what="CONNACK")
    assert client.connacks and client.connacks[0][1].is_failure
    nodes.client(node, "v311")   # 3.1.1 still served
