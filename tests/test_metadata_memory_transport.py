"""The in-memory IClusterTransport: delivery, faults, calls, counters."""
from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from vmqtw.interfaces import IClusterTransport
from vmqtw.testing.memory_transport import (InMemoryNetwork,
                                             PeerUnreachable,
                                             RemoteCallError)


def pair(serialize=True):
    clock = Clock()
    net = InMemoryNetwork(clock, serialize=serialize)
    a, b = net.transport("a"), net.transport("b")
    got = {"a": [], "b": []}
    a.register_cast_handler("ch", lambda peer, m: got["a"].append((peer, m)))
    b.register_cast_handler("ch", lambda peer, m: got["b"].append((peer, m)))
    a.start()
    b.start()
    a.set_peer_address("b", ("127.0.0.1", 1))
    return clock, net, a, b, got


def test_provides_interface():
    clock, net, a, b, got = pair()
    assert verifyObject(IClusterTransport, a)


def test_cast_is_fifo_and_needs_the_clock():
    clock, net, a, b, got = pair()
    assert a.connected("b") and b.connected("a")
    assert b.connected_peers() == ["a"]
    for i in range(5):
        assert a.cast("b", "ch", ("m", i, [1, 2]))
    assert got["b"] == []
    clock.advance(0)
    assert got["b"] == [("a", ("m", i, (1, 2))) for i in range(5)]
    assert net.count("ch", "m") == 5 and net.bytes_sent > 0


def test_delay_keeps_fifo():
    clock, net, a, b, got = pair()
    net.set_delay("a", "b", 2.0)
    a.cast("b", "ch", ("x",))
    net.set_delay("a", "b", 0.0)
    a.cast("b", "ch", ("y",))
    clock.advance(1.0)
    assert got["b"] == []
    clock.advance(1.0)
    assert [m for _, m in got["b"]] == [("x",), ("y",)]


def test_partition_up_down_events_and_in_flight_loss():
    clock, net, a, b, got = pair()
    events = []
    a.add_peer_listener(lambda p: events.append(("up", p)),
                        lambda p: events.append(("down", p)))
    a.cast("b", "ch", ("lost",))
    net.partition([{"a"}, {"b"}])
    assert events == [("down", "b")] and not a.connected("b")
    assert a.cast("b", "ch", ("refused",)) is False
    clock.advance(0)
    assert got["b"] == []
    assert net.dropped[("ch", "lost")] == 1
    net.heal()
    assert events[-1] == ("up", "b")
    a.cast("b", "ch", ("ok",))
    clock.advance(0)
    assert [m for _, m in got["b"]] == [("ok",)]


def test_drop_predicate_and_undo():
    clock, net, a, b, got = pair()
    undo = net.drop(lambda s, d, ch, m: m[0] == "bad")
    a.cast("b", "ch", ("bad",))
    a.cast("b", "ch", ("good",))
    undo()
    a.cast("b", "ch", ("bad",))
    clock.advance(0)
    assert [m for _, m in got["b"]] == [("good",), ("bad",)]


def test_call_result_error_timeout_and_unreachable():
    clock, net, a, b, got = pair()
    b.register_call_handler("add", lambda peer, x, y: (peer, x + y))
    b.register_call_handler("boom", lambda peer: 1 / 0)
    slow = defer.Deferred()
    b.register_call_handler("slow", lambda peer: slow)
    results = []
    a.call("b", "add", (1, 2), 5).addCallback(results.append)
    clock.advance(0)
    assert results == [("a", 3)]
    failures = []
    a.call("b", "boom", (), 5).addErrback(failures.append)
    clock.advance(0)
    assert failures[0].check(RemoteCallError)
    a.call("b", "slow", (), 5).addErrback(failures.append)
    clock.advance(5)
    assert failures[1].check(defer.TimeoutError)
    net.partition([{"a"}, {"b"}])
    a.call("b", "add", (1, 2), 5).addErrback(failures.append)
    assert failures[2].check(PeerUnreachable)
    assert net.count("call") == 4


def test_stopped_transport_is_replaced_on_restart():
    clock, net, a, b, got = pair()
    b.stop()
    assert not a.connected("b")
    b2 = net.transport("b")
    assert b2 is not b
    seen = []
    b2.register_cast_handler("ch", lambda p, m: seen.append(m))
    b2.start()
    assert a.connected("b")
    a.cast("b", "ch", ("hi",))
    clock.advance(0)
    assert seen == [("hi",)]


def test_unserialisable_message_fails_at_cast():
    clock, net, a, b, got = pair()
    with pytest.raises(TypeError):
        a.cast("b", "ch", ("x", object()))


def test_extension_types_are_refused_like_on_tcp():
    """The TCP wire refuses msgpack extension types; so does this one, so
    a simulation catches payloads a real cluster would drop."""
    import msgpack
    clock, net, a, b, got = pair()
    a.cast("b", "ch", ("x", msgpack.ExtType(1, b"")))
    a.cast("b", "ch", ("fine",))
    clock.advance(0)
    assert [m for _, m in got["b"]] == [("fine",)]
