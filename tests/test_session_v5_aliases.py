"""
Topic aliases from the broker towards an MQTT 5.0 client (3.3.2.3.4,
``topic_alias_max_broker``), checked on the bytes written: the expected
PUBLISHes are built with :mod:`vmqtw.testing.mqtt5bytes` (from the spec,
not from the codec).
"""
from __future__ import annotations

from typing import Any, List

from vmqtw.mqtt.session import SessionSettings
from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing.inprocess_broker import Broker, Client

from tests.test_session_v5 import PUBLISH_PROPS, connect5, subscribe5


def alias_max(value: int) -> bytes:
    """A CONNECT property block with a topic alias maximum (0x22)."""
    return B5.props(B5.p_u16(0x22, value))


def aliased(topic: str, payload: bytes, alias: int, *others: Any, **kwargs: Any) -> bytes:
    """A PUBLISH as the broker sends it: the alias first, then the message's properties."""
    return B5.publish(topic, payload, properties=B5.props(B5.p_u16(0x23, alias), *others),
                      **kwargs)


def written(client: Client) -> bytes:
    data = client.transport.value()
    client.transport.clear()
    return data


def publish_all(broker: Broker, topics: List[str]) -> None:
    pub, _ = connect5(broker, "pub")
    for i, topic in enumerate(topics):
        pub.send(B5.publish(topic, b"%d" % i))


def test_topic_sent_once_then_alias_alone():
    """[MQTT-3.3.2-12]: the first PUBLISH sets the alias, later ones carry it with an empty topic."""
    broker = Broker(settings=SessionSettings(topic_alias_max_broker=10))
    sub, _ = connect5(broker, "sub", properties=alias_max(5))
    subscribe5(broker, sub, ("t/#", 0))
    written(sub)
    publish_all(broker, ["t/long/topic", "t/long/topic", "t/other", "t/long/topic"])
    assert written(sub) == b"".join((
        aliased("t/long/topic", b"0", 1), aliased("", b"1", 1),
        aliased("t/other", b"2", 2), aliased("", b"3", 1)))


def test_least_recently_used_alias_is_reused():
    """
    min(client's maximum 2, topic_alias_max_broker 3) aliases; when all are
    taken the least recently used one is given to the new topic [MQTT-3.3.2-11].
    """
    broker = Broker(settings=SessionSettings(topic_alias_max_broker=3))
    sub, _ = connect5(broker, "sub", properties=alias_max(2))
    subscribe5(broker, sub, ("#", 0))
    written(sub)
    publish_all(broker, ["a", "b", "a", "c", "a", "b"])
    assert written(sub) == b"".join((
        aliased("a", b"0", 1), aliased("b", b"1", 2), aliased("", b"2", 1),
        # b was used least recently: its alias now stands for c.
        aliased("c", b"3", 2), aliased("", b"4", 1),
        aliased("b", b"5", 2)))


def test_no_aliases_unless_both_sides_allow_them():
    """[MQTT-3.3.2-11]: none for a client that allows none, none with topic_alias_max_broker 0."""
    broker = Broker(settings=SessionSettings(topic_alias_max_broker=10))
    sub, _ = connect5(broker, "sub")
    subscribe5(broker, sub, ("t", 0))
    written(sub)
    publish_all(broker, ["t", "t"])
    assert written(sub) == B5.publish("t", b"0") + B5.publish("t", b"1")
    broker = Broker()
    sub, _ = connect5(broker, "sub", properties=alias_max(10))
    subscribe5(broker, sub, ("t", 0))
    written(sub)
    publish_all(broker, ["t", "t"])
    assert written(sub) == B5.publish("t", b"0") + B5.publish("t", b"1")


def test_alias_beside_the_publishers_properties_and_qos1():
    """The publisher's properties follow the alias unchanged and in order; QoS 1 ids kept."""
    broker = Broker(settings=SessionSettings(topic_alias_max_broker=4))
    subs = [connect5(broker, name, properties=alias_max(4))[0] for name in ("s1", "s2")]
    for sub in subs:
        subscribe5(broker, sub, ("t", 1))
        written(sub)
    pub, _ = connect5(broker, "pub")
    pub.send(B5.publish("t", b"a", qos=1, packet_id=1, properties=PUBLISH_PROPS))
    pub.send(B5.publish("t", b"b", qos=1, packet_id=2, properties=PUBLISH_PROPS))
    others = (B5.p_byte(0x01, 1), B5.p_str(0x03, "application/json"),
              B5.p_str(0x08, "reply/here"), B5.p_bin(0x09, b"\x00corr"),
              B5.p_pair("b", "2"), B5.p_pair("a", "1"), B5.p_pair("b", "2"))
    for sub in subs:
        assert written(sub) == (aliased("t", b"a", 1, *others, qos=1, packet_id=1)
                                + aliased("", b"b", 1, *others, qos=1, packet_id=2))


def test_dropped_message_takes_no_alias():
    """A message too large for the client is not sent, so its alias is not set either."""
    broker = Broker(settings=SessionSettings(topic_alias_max_broker=4))
    sub, _ = connect5(broker, "sub", properties=B5.props(B5.p_u16(0x22, 4), B5.p_u32(0x27, 40)))
    subscribe5(broker, sub, ("#", 0))
    written(sub)
    publish_all(broker, ["big", "big"])   # payloads "0", "1": small
    pub, _ = connect5(broker, "pub2")
    pub.send(B5.publish("huge", b"x" * 60))
    pub.send(B5.publish("huge", b"y"))
    assert written(sub) == b"".join((aliased("big", b"0", 1), aliased("", b"1", 1),
                                     aliased("huge", b"y", 2)))


def test_aliases_are_per_connection():
    """A reconnecting client starts with no aliases: the topic is sent again."""
    broker = Broker(settings=SessionSettings(topic_alias_max_broker=4))
    kept = B5.props(B5.p_u16(0x22, 4), B5.p_u32(0x11, 100))
    sub, _ = connect5(broker, "sub", clean_start=False, properties=kept)
    subscribe5(broker, sub, ("t", 0))
    written(sub)
    publish_all(broker, ["t"])
    assert written(sub) == aliased("t", b"0", 1)
    sub.drop()
    sub, _ = connect5(broker, "sub", clean_start=False, properties=kept)
    written(sub)
    pub, _ = connect5(broker, "pub2")
    pub.send(B5.publish("t", b"again"))
    assert written(sub) == aliased("t", b"again", 1)
