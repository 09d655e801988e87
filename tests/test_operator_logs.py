"""
Logs an operator can use: one info line per client connect and per
disconnect (with its reason), nothing per message; refused CONNECTs and
ACL denials warned about at most once per kind and interval, with the
count of those left out.  In process on a Clock; the real node's log is
checked in tests/test_e2e_operator.py.
"""
from __future__ import annotations

from typing import Any, Iterator, List

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from vmqtw.broker.auth import WARNING_INTERVAL, BrokerAuthenticator
from vmqtw.mqtt.session import ConnectInfo
from vmqtw.ratelimit import LogRateLimiter
from vmqtw.service import ListenerService
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker


def test_rate_limiter_admits_one_line_per_kind_and_interval_and_counts_the_rest() -> None:
    limiter = LogRateLimiter(10.0)
    assert limiter.admit("auth", 100.0) == 0
    assert limiter.admit("auth", 101.0) is None
    assert limiter.admit("auth", 109.9) is None
    assert limiter.admit("publish", 109.9) == 0          # kinds are independent
    assert limiter.admit("auth", 110.0) == 2             # the two left out
    assert limiter.admit("auth", 125.0) == 0


@pytest.fixture
def lines() -> Iterator[List[dict]]:
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def said(events: List[dict], word: str) -> List[str]:
    return [formatEvent(e) for e in events if word in formatEvent(e)]


def test_one_line_per_connect_naming_client_peer_level_and_session(lines: List[dict]) -> None:
    broker = Broker()
    broker.connect("alice", clean_session=False)
    client = broker.connect("alice", clean_session=False)        # its session is present now
    connects = said(lines, "connected from")
    assert len(connects) == 2
    assert connects[1].startswith("client alice connected from 127.0.0.1:")
    assert "(MQTT level 4, persistent session, session present: True)" in connects[1]
    assert "session present: False" in connects[0]
    del lines[:]
    for packet_id in range(1, 50):
        client.send(B.publish("t", b"x", qos=1, packet_id=packet_id))
    client.send(B.subscribe(50, [("t", 1)]))
    client.send(B.pingreq())
    assert lines == []                                             # nothing per message


@pytest.mark.parametrize("how,reason", [
    ("disconnect", "client DISCONNECT"),
    ("drop", "connection lost"),
    ("keepalive", "keepalive timeout"),
    ("takeover", "taken over by a new connection"),
    ("violation", "protocol error: unexpected ConnAck"),
    ("malformed", "protocol error: malformed packet"),
    ("listener", "listener closed (server shutdown or leave)"),
])
def test_one_line_per_disconnect_with_its_reason(lines: List[dict], how: str,
                                                 reason: str) -> None:
    broker = Broker()
    client = broker.connect("bob", keepalive=10)
    if how == "disconnect":
        client.send(B.disconnect())
    elif how == "keepalive":
        broker.clock.advance(16)
    elif how == "takeover":
        broker.connect("bob")
    elif how == "violation":
        client.send(B.connack())
    elif how == "malformed":
        client.send(b"\xf0\x00")
    elif how == "listener":
        listener = ListenerService("listener.tcp.default", None, broker.factory)
        listener.running = True
        listener.stopService()
    client.finish_close() if how != "drop" else client.drop()
    disconnects = said(lines, "disconnected from")
    assert len(disconnects) == 1, disconnects
    assert disconnects[0].startswith("client bob disconnected from 127.0.0.1:")
    assert disconnects[0].split(": ", 1)[1].startswith(reason), disconnects


def test_the_counters_count_packets_both_ways() -> None:
    broker = Broker()
    subscriber = broker.subscriber("s", ("t", 1))
    publisher = broker.connect("p")
    publisher.send(B.publish("t", b"x", qos=1, packet_id=7))
    [delivered] = subscriber.publishes()
    subscriber.send(B.puback(delivered.packet_id))
    publisher.send(B.disconnect())
    counters = broker.factory.counters
    assert counters.connect_received == 2
    assert counters.connack_sent[0] == 2
    assert (counters.publish_received, counters.puback_sent) == (1, 1)
    assert (counters.publish_sent, counters.puback_received) == (1, 1)
    assert (counters.subscribe_received, counters.suback_sent) == (1, 1)
    assert counters.disconnect_received == 1
    assert counters.socket_open == 2
    publisher.finish_close()
    assert counters.socket_close == 1


def _authenticator(clock: Clock, acl: Any) -> BrokerAuthenticator:
    return BrokerAuthenticator(object(), allow_anonymous=False, acl_file=str(acl), clock=clock)


def test_refused_connects_are_warned_about_once_per_interval_with_a_count(
        lines: List[dict], tmp_path: Any) -> None:
    (tmp_path / "acl").write_text("user alice\ntopic read alice/#\n")
    clock = Clock()
    auth = _authenticator(clock, tmp_path / "acl")
    auth.load()
    for n in range(5):
        auth.authenticate(ConnectInfo("c%d" % n, None, None, ("1.2.3.4", 5), True))
    warnings = [e for e in lines if e["log_level"].name == "warn"]
    assert [formatEvent(e) for e in warnings] == [
        "refusing c0 (user None) from ('1.2.3.4', 5): anonymous "
        "(0 more refused since the last such line; 1 so far)"]
    clock.advance(WARNING_INTERVAL)
    auth.authenticate(ConnectInfo("c9", None, None, ("1.2.3.4", 5), True))
    warnings = [formatEvent(e) for e in lines if e["log_level"].name == "warn"]
    assert warnings[1].endswith("(4 more refused since the last such line; 6 so far)")
    assert auth.counters.not_authorized == 6


def test_acl_denials_are_warned_about_once_per_interval_and_kind(
        lines: List[dict], tmp_path: Any) -> None:
    (tmp_path / "acl").write_text("user alice\ntopic read alice/#\n")
    clock = Clock()
    auth = _authenticator(clock, tmp_path / "acl")
    auth.load()
    for _ in range(3):
        assert not auth.can_publish("c", "alice", "alice/x")
        assert not auth.can_subscribe("c", "alice", "bob/#")
    warnings = [formatEvent(e) for e in lines if e["log_level"].name == "warn"]
    assert warnings == [
        "the ACL denies c to publish alice/x (0 more publish denials since the last such "
        "line; 1 so far)",
        "the ACL denies c to subscribe bob/# (0 more subscribe denials since the last such "
        "line; 1 so far)"]
    assert (auth.counters.publish_denied, auth.counters.subscribe_denied) == (3, 3)
