"""
Tests of :class:`vmqtw.cluster.link.TcpTransport`.

The first half runs on ``MemoryReactorClock`` with in-memory pipes between
``StringTransport``s: deterministic timing (backoff, heartbeat, handshake
timeout, batching, rate limit, crossing handshakes).  The second half uses
the real reactor on loopback aliases 127.0.0.2/.3 with bounded polls, and
one test cuts the link with a real partition (nft, or the proxy back end).
"""
from __future__ import annotations

import random
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import (CannotListenError, ConnectionDone,
                                    ConnectionRefusedError)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from tests.clusterharness import FaultyProxy, free_port
from tests.waiting import wait_until_deferred
from vmqtw.cluster import auth, wire
from vmqtw.cluster.link import (CallTimeout, PeerUnreachable,
                                RemoteCallError, TcpTransport)
from vmqtw.interfaces import IClusterTransport

COOKIE = b"the-shared-cookie-7f3a"


# -- in-memory network -------------------------------------------------------

class RecordingTransport(StringTransport):
    """A StringTransport that remembers each write call and all bytes."""

    def __init__(self, host: str, peer: str) -> None:
        super().__init__(hostAddress=IPv4Address("TCP", host, 40000),
                         peerAddress=IPv4Address("TCP", peer, 40001))
        self.writes: List[bytes] = []
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.sent += data
        super().write(data)


class Pipe:
    """One TCP connection between a dialing protocol and an accepted one."""

    def __init__(self, client, server, client_ip, server_ip, factory,
                 connector) -> None:
        self.client, self.server = client, server
        self.factory, self.connector = factory, connector
        self.ct = RecordingTransport(client_ip, server_ip)
        self.st = RecordingTransport(server_ip, client_ip)
        self.closed = False
        client.makeConnection(self.ct)
        server.makeConnection(self.st)
        self._check_closed()

    def step(self, direction: int) -> bool:
        """Move pending bytes one way (0: client->server); True if any."""
        src, dst = ((self.ct, self.server), (self.st, self.client))[direction]
        data = src.value()
        if not data or self.closed:
            return False
        src.clear()
        dst.dataReceived(data)
        return True

    def pump(self) -> None:
        for _ in range(1000):
            moved = self.step(0) | self.step(1)
            if not moved:
                break
        self._check_closed()

    def _check_closed(self) -> None:
        if self.closed or not (self.ct.disconnecting
                               or self.st.disconnecting):
            return
        # deliver what was written before the close, then the close
        self.step(0) if self.ct.disconnecting else None
        self.step(1) if self.st.disconnecting else None
        self.closed = True
        reason = Failure(ConnectionDone())
        self.server.connectionLost(reason)
        self.client.connectionLost(reason)
        self.factory.clientConnectionLost(self.connector, reason)


class MemNet:
    """Several transports on one MemoryReactorClock."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pipes: List[Pipe] = []
        self._dialed = 0

    def node(self, name: str, ip: str, cookie: bytes = COOKIE,
             **kw: Any) -> TcpTransport:
        kw.setdefault("rng", random.Random(7))
        t = TcpTransport(name, cookie, (ip, 4000), self.reactor, **kw)
        t.start()
        return t

    def new_dials(self) -> List[Any]:
        dials = list(zip(self.reactor.tcpClients[self._dialed:],
                         self.reactor.connectors[self._dialed:]))
        self._dialed = len(self.reactor.tcpClients)
        return dials

    def connect(self, dial: Any) -> Pipe:
        (host, port, factory, _timeout, bind), connector = dial
        listen = [f for (p, f, _b, iface) in self.reactor.tcpServers
                  if (iface, p) == (host, port)][-1]
        pipe = Pipe(factory.buildProtocol(None), listen.buildProtocol(None),
                    bind[0], host, factory, connector)
        self.pipes.append(pipe)
        return pipe

    def refuse(self, dial: Any) -> None:
        (_h, _p, factory, _t, _b), connector = dial
        factory.clientConnectionFailed(connector,
                                       Failure(ConnectionRefusedError()))

    def pump(self) -> None:
        for pipe in self.pipes:
            pipe.pump()


def events(t: TcpTransport) -> List[str]:
    seen: List[str] = []
    t.add_peer_listener(lambda p: seen.append("up " + p),
                        lambda p: seen.append("down " + p))
    return seen


def connected_pair(net: MemNet, **kw: Any):
    a = net.node("a", "127.0.0.2", **kw)
    b = net.node("b", "127.0.0.3", **kw)
    a.set_peer_address("b", ("127.0.0.3", 4000))
    (dial,) = net.new_dials()
    pipe = net.connect(dial)
    pipe.pump()
    assert a.connected("b") and b.connected("a")
    return a, b, pipe


def decode_all(data: bytes) -> List[tuple]:
    return wire.FrameDecoder().feed(data)


def test_provides_the_interface():
    t = TcpTransport("a", COOKIE, ("127.0.0.2", 0), MemoryReactorClock())
    assert verifyObject(IClusterTransport, t)


def test_dial_binds_own_clustering_ip_as_source():
    """Outgoing connections use bindAddress=(node IP, 0)."""
    net = MemNet()
    a = net.node("a", "127.0.0.2")
    a.set_peer_address("b", ("127.0.0.3", 5000))
    ((host, port, _f, _t, bind), _c), = net.new_dials()
    assert (host, port, bind) == ("127.0.0.3", 5000, ("127.0.0.2", 0))


def test_reconnect_backoff_grows_with_jitter_to_the_cap_and_resets():
    """0.5 s doubling to 10 s, +-20% jitter; a link that came up resets."""
    net = MemNet()
    a = net.node("a", "127.0.0.2")
    net.node("b", "127.0.0.3")
    a.set_peer_address("b", ("127.0.0.3", 4000))
    delays = []
    for _ in range(8):
        (dial,) = net.new_dials()
        net.refuse(dial)
        start = net.reactor.seconds()
        while not net.reactor.tcpClients[net._dialed:]:
            net.reactor.advance(0.01)
        delays.append(net.reactor.seconds() - start)
    nominal = [0.5, 1, 2, 4, 8, 10, 10, 10]
    for got, nom in zip(delays, nominal):
        assert max(0.5, nom * 0.8) - 0.02 <= got <= min(10, nom * 1.2) + 0.02
    assert len({round(d, 2) for d in delays[5:]}) > 1 or delays[5] == 10
    # a successful link resets the backoff
    pipe = net.connect(net.new_dials()[0])
    pipe.pump()
    assert a.connected("b")
    pipe.ct.loseConnection()
    pipe.pump()
    assert not a.connected("b")
    start = net.reactor.seconds()
    while not net.reactor.tcpClients[net._dialed:]:
        net.reactor.advance(0.01)
    assert net.reactor.seconds() - start <= 0.62


def test_handshake_timeout_closes_half_open_connection():
    net = MemNet()
    b = net.node("b", "127.0.0.3", handshake_timeout=5.0)
    listen = net.reactor.tcpServers[0][1]
    proto = listen.buildProtocol(None)
    tr = RecordingTransport("127.0.0.3", "127.0.0.9")
    proto.makeConnection(tr)
    net.reactor.advance(4.9)
    assert not tr.disconnecting
    net.reactor.advance(0.2)
    assert tr.disconnecting
    assert b.connected_peers() == []


def warnings_of(logs: List[dict]) -> List[dict]:
    """Warnings of the link module; none may carry a traceback."""
    assert not [e for e in logs if "log_failure" in e]
    return [e for e in logs if e["log_level"] >= LogLevel.warn
            and e.get("log_namespace") == "vmqtw.cluster.link"]


def test_wrong_cookie_refused_and_no_cookie_on_the_wire():
    """
    Each side logs one warning line, without traceback; neither cookie is
    ever written.
    """
    net = MemNet()
    a = net.node("a", "127.0.0.2", cookie=b"cookie-of-a")
    b = net.node("b", "127.0.0.3", cookie=b"cookie-of-b")
    seen_a, seen_b = events(a), events(b)
    a.set_peer_address("b", ("127.0.0.3", 4000))
    with capturedLogs() as logs:
        pipe = net.connect(net.new_dials()[0])
        pipe.pump()
    assert len(warnings_of(logs)) == 2
    assert pipe.closed
    assert not a.connected("b") and not b.connected("a")
    assert seen_a == seen_b == []
    assert b.counters.handshake_failures == 1
    wire_bytes = pipe.ct.sent + pipe.st.sent
    assert wire_bytes  # the handshake did happen
    assert b"cookie-of-a" not in wire_bytes
    assert b"cookie-of-b" not in wire_bytes
    assert wire.refuse("authentication failed") in decode_all(pipe.st.sent)


def test_same_cookie_links_and_cookie_not_on_the_wire():
    net = MemNet()
    a, b, pipe = connected_pair(net)
    a.cast("b", "ch", b"x")
    net.reactor.advance(0)
    pipe.pump()
    assert COOKIE not in pipe.ct.sent + pipe.st.sent


def _bad_handshake(b: TcpTransport, net: MemNet, ip: str):
    proto = net.reactor.tcpServers[0][1].buildProtocol(None)
    tr = RecordingTransport("127.0.0.3", ip)
    proto.makeConnection(tr)
    proto.dataReceived(wire.encode_frame(
        wire.hello("evil", auth.PROTOCOL_VERSION, b"\x00" * 32))
        + wire.encode_frame(wire.proof(b"\x00" * 32)))
    return tr


def test_rate_limit_refuses_an_ip_after_repeated_failures():
    net = MemNet()
    b = net.node("b", "127.0.0.3", limiter=auth.FailureLimiter(
        max_failures=3, window=10.0, base_block=10.0))
    for _ in range(3):
        tr = _bad_handshake(b, net, "127.0.0.9")
        assert tr.disconnecting and tr.sent  # answered, then refused
    assert b.counters.handshake_failures == 3
    tr = _bad_handshake(b, net, "127.0.0.9")
    assert tr.disconnecting and tr.sent == b""  # closed before a byte
    assert b.counters.refused_rate_limited == 1
    assert _bad_handshake(b, net, "127.0.0.8").sent  # other IPs still heard
    net.reactor.advance(10.0)
    assert _bad_handshake(b, net, "127.0.0.9").sent


def test_oversize_frame_closes_the_link_with_one_log_line():
    net = MemNet()
    a = net.node("a", "127.0.0.2", max_frame_size=1000)
    b = net.node("b", "127.0.0.3")
    got = []
    a.register_cast_handler("ch", lambda p, m: got.append(len(m)))
    b.set_peer_address("a", ("127.0.0.2", 4000))
    pipe = net.connect(net.new_dials()[0])
    pipe.pump()
    with capturedLogs() as logs:
        assert b.cast("a", "ch", b"x" * 100)
        assert b.cast("a", "ch", b"x" * 2000)
        net.reactor.advance(0)
        pipe.pump()
    assert pipe.closed and got == [100]
    assert a.counters.protocol_errors == 1
    (warning,) = warnings_of(logs)
    assert "exceeds" in warning["error"]


def test_cast_larger_than_own_frame_limit_is_dropped_at_once():
    net = MemNet()
    a, b, pipe = connected_pair(net, max_frame_size=1000)
    assert not a.cast("b", "ch", b"x" * 2000)
    assert a.counters.dropped_frames == 1 and a.buffered_bytes("b") == 0


@pytest.mark.parametrize("frame", [
    (wire.KIND_CAST, 5, "channel not a str"),
    (wire.KIND_CALL, "id", "m", ()),
    (wire.KIND_REPLY, {"unhashable": 1}, True, None),
    wire.hello("x", 1, b"\x00" * 32),  # handshake frame after handshake
])
def test_malformed_data_frame_closes_the_link(frame):
    net = MemNet()
    a, b, pipe = connected_pair(net)
    seen = events(b)
    pipe.server.dataReceived(wire.encode_frame(frame))
    assert pipe.st.disconnecting
    assert b.counters.protocol_errors == 1
    pipe.pump()
    assert seen == ["down a"]


def test_data_before_the_handshake_is_refused():
    """A cast from a connection that never proved the cookie is no cast."""
    net = MemNet()
    b = net.node("b", "127.0.0.3")
    got = []
    b.register_cast_handler("ch", lambda p, m: got.append(m))
    proto = net.reactor.tcpServers[0][1].buildProtocol(None)
    tr = RecordingTransport("127.0.0.3", "127.0.0.9")
    proto.makeConnection(tr)
    proto.dataReceived(wire.encode_frame(wire.cast("ch", "sneaky")))
    assert tr.disconnecting and got == []
    assert b.counters.handshake_failures == 1


def test_casts_of_one_reactor_turn_are_one_write():
    net = MemNet()
    a, b, pipe = connected_pair(net)
    got = []
    b.register_cast_handler("ch", lambda peer, m: got.append((peer, m)))
    pipe.ct.writes.clear()
    for i in range(3):
        assert a.cast("b", "ch", (i, "m"))
    assert pipe.ct.writes == []
    net.reactor.advance(0)
    assert len(pipe.ct.writes) == 1
    assert decode_all(pipe.ct.writes[0]) == [
        wire.cast("ch", (i, "m")) for i in range(3)]
    pipe.pump()
    assert got == [("a", (0, "m")), ("a", (1, "m")), ("a", (2, "m"))]


def test_forgetting_a_peer_writes_what_was_queued_for_it_first():
    """
    set_peer_address(peer, None) closes the link gracefully after writing
    the queued frames: the notice telling a node it left the cluster is the
    last frame that node gets.
    """
    net = MemNet()
    a, b, pipe = connected_pair(net)
    got = []
    b.register_cast_handler("ch", lambda peer, m: got.append(m))
    pipe.ct.writes.clear()
    assert a.cast("b", "ch", ("you", "left"))
    a.set_peer_address("b", None)
    assert decode_all(b"".join(pipe.ct.writes)) == [wire.cast("ch", ("you", "left"))]
    pipe.pump()
    assert got == [("you", "left")]


def test_flush_threshold_writes_without_waiting_for_the_turn():
    net = MemNet()
    a, b, pipe = connected_pair(net, flush_threshold=1000)
    pipe.ct.writes.clear()
    a.cast("b", "ch", b"x" * 600)
    assert pipe.ct.writes == []
    a.cast("b", "ch", b"y" * 600)
    assert len(pipe.ct.writes) == 1


def test_paused_link_keeps_frames_in_the_bounded_buffer():
    """While TCP pushes back nothing is written; resume flushes in order."""
    net = MemNet()
    a, b, pipe = connected_pair(net, buffer_limit=300)
    pipe.ct.writes.clear()
    accepted = [a.cast("b", "ch", 0)]  # schedules a flush for this turn
    pipe.client.pauseProducing()  # then TCP pushes back
    accepted += [a.cast("b", "ch", i * 10 ** 6) for i in range(1, 40)]
    net.reactor.advance(0)
    assert pipe.ct.writes == []
    assert False in accepted and a.counters.dropped_frames > 0
    pipe.client.resumeProducing()
    frames = decode_all(b"".join(pipe.ct.writes))
    assert frames == [wire.cast("ch", i * 10 ** 6)
                      for i, ok in enumerate(accepted) if ok]


def test_heartbeat_pings_and_declares_a_silent_peer_down():
    net = MemNet()
    a, b, pipe = connected_pair(net, heartbeat_interval=1.0,
                                heartbeat_timeout=3.0)
    seen = events(a)
    pipe.ct.clear()
    net.reactor.advance(1.0)
    assert wire.ping() in decode_all(pipe.ct.value())
    net.reactor.advance(1.0)
    assert not pipe.ct.disconnecting
    net.reactor.advance(1.0)  # 3 s without a byte from b
    assert pipe.ct.disconnecting
    pipe.pump()
    assert seen == ["down b"] and not a.connected("b")


def test_traffic_keeps_the_link_alive():
    net = MemNet()
    a, b, pipe = connected_pair(net, heartbeat_interval=1.0,
                                heartbeat_timeout=3.0)
    for _ in range(10):
        net.reactor.advance(1.0)
        pipe.pump()  # pings flow both ways
    assert a.connected("b") and b.connected("a")


def crossing(order: str):
    """Both transports dial each other; ``order`` picks the interleaving."""
    net = MemNet()
    a = net.node("a", "127.0.0.2")
    b = net.node("b", "127.0.0.3")
    seen_a, seen_b = events(a), events(b)
    a.set_peer_address("b", ("127.0.0.3", 4000))
    b.set_peer_address("a", ("127.0.0.2", 4000))
    ab, ba = [net.connect(d) for d in net.new_dials()]
    if order == "ab-first":
        ab.pump()
        ba.pump()
    elif order == "ba-first":
        ba.pump()
        ab.pump()
    else:  # lock-step: HELLOs and PROOFs cross in flight
        for _ in range(10):
            for pipe in (ab, ba):
                pipe.step(0)
            for pipe in (ab, ba):
                pipe.step(1)
            ab._check_closed()
            ba._check_closed()
    for _ in range(5):  # retries that were scheduled must not dial again
        net.reactor.advance(1.0)
        for d in net.new_dials():
            net.connect(d)
        net.pump()
    return net, a, b, seen_a, seen_b


@pytest.mark.parametrize("order", ["ab-first", "ba-first", "lockstep"])
def test_simultaneous_dial_keeps_exactly_one_link(order):
    """The link dialed by the smaller name ("a") survives, on both ends."""
    net, a, b, seen_a, seen_b = crossing(order)
    assert a.connected("b") and b.connected("a")
    assert a.link_info("b")["dialed_by"] == "a"
    assert b.link_info("a")["dialed_by"] == "a"
    assert a.open_connections == b.open_connections == 1
    assert seen_a == ["up b"] and seen_b == ["up a"]


def test_calls_in_memory_and_timeout():
    net = MemNet()
    a, b, pipe = connected_pair(net)
    never = defer.Deferred()
    b.register_call_handler("add", lambda peer, x, y: (peer, x + y))
    b.register_call_handler("hang", lambda peer: never)
    ok = a.call("b", "add", (2, 3), 5.0)
    hang = a.call("b", "hang", (), 5.0)
    net.reactor.advance(0)
    pipe.pump()
    net.reactor.advance(0)
    pipe.pump()
    assert ok.result == ("a", 5)
    assert not hang.called
    net.reactor.advance(5.0)
    with pytest.raises(CallTimeout):
        hang.result.raiseException()
    hang.addErrback(lambda f: None)


# -- real reactor on loopback aliases ---------------------------------------

FAST = dict(backoff_min=0.05, backoff_max=0.2, heartbeat_interval=0.2,
            heartbeat_timeout=1.0, connect_timeout=0.5)


@pytest.fixture
def transports():
    """Build TcpTransports on the real reactor; all stopped at teardown."""
    from twisted.internet import reactor
    made: List[TcpTransport] = []

    def make(name: str, ip: str, port: int = 0, cookie: bytes = COOKIE,
             start: bool = True, **kw: Any) -> TcpTransport:
        opts = dict(FAST)
        opts.update(kw)
        t = TcpTransport(name, cookie, (ip, port), reactor, **opts)
        made.append(t)
        if start:
            t.start()
        return t

    make.reactor = reactor
    try:
        yield make
    finally:
        pytest_twisted.blockon(defer.DeferredList([t.stop() for t in made]))


def until(transports, predicate, timeout=5.0, what="condition"):
    return wait_until_deferred(transports.reactor, predicate, timeout,
                               what=what)


@pytest_twisted.ensureDeferred
async def test_casts_and_calls_both_ways(transports):
    a = transports("a@n", "127.0.0.2")
    b = transports("b@n", "127.0.0.3")
    got_a, got_b = [], []
    a.register_cast_handler("ch", lambda p, m: got_a.append((p, m)))
    b.register_cast_handler("ch", lambda p, m: got_b.append((p, m)))
    for t in (a, b):
        t.register_call_handler("echo", lambda p, *args: (p, args))
        t.register_call_handler("boom", lambda p: 1 / 0)
    a.set_peer_address("b@n", b.address)
    await until(transports, lambda: a.connected("b@n") and b.connected("a@n"))
    msg = (1, 2.5, None, True, "s", b"\x00\xff", (("nested",),), {"k": b"v"})
    assert a.cast("b@n", "ch", msg) and b.cast("a@n", "ch", msg)
    await until(transports, lambda: got_a and got_b)
    assert got_b == [("a@n", msg)] and got_a == [("b@n", msg)]
    big = b"\x01" * 300000  # far above the handshake frame limit
    assert a.cast("b@n", "ch", big)
    await until(transports, lambda: len(got_b) == 2)
    assert got_b[1] == ("a@n", big)
    assert await a.call("b@n", "echo", (1, b"x"), 2.0) == ("a@n", (1, b"x"))
    assert await b.call("a@n", "echo", ("y",), 2.0) == ("b@n", ("y",))
    with pytest.raises(RemoteCallError, match="ZeroDivisionError"):
        await a.call("b@n", "boom", (), 2.0)
    with pytest.raises(RemoteCallError, match="UnknownMethod"):
        await b.call("a@n", "nope", (), 2.0)
    with pytest.raises(PeerUnreachable):
        await a.call("nobody", "echo", (), 2.0)
    assert not a.cast("nobody", "ch", 1)


@pytest_twisted.ensureDeferred
async def test_start_fails_when_the_port_is_taken(transports):
    a = transports("a@n", "127.0.0.2")
    b = transports("b@n", "127.0.0.2", port=a.address[1], start=False)
    with pytest.raises(CannotListenError):
        await b.start()


@pytest_twisted.ensureDeferred
async def test_outgoing_source_address_is_the_node_ip(transports):
    a = transports("a@n", "127.0.0.2")
    b = transports("b@n", "127.0.0.3")
    a.set_peer_address("b@n", b.address)
    await until(transports, lambda: a.connected("b@n") and b.connected("a@n"))
    info_a, info_b = a.link_info("b@n"), b.link_info("a@n")
    assert info_a["dialed_by"] == "a@n"
    assert info_a["local"][0] == "127.0.0.2"  # client side getHost()
    assert info_b["remote"] == info_a["local"]


@pytest_twisted.ensureDeferred
async def test_wrong_cookie_never_links(transports):
    a = transports("a@n", "127.0.0.2", cookie=b"one")
    b = transports("b@n", "127.0.0.3", cookie=b"two")
    a.set_peer_address("b@n", b.address)
    await until(transports, lambda: b.counters.handshake_failures >= 2)
    assert not a.connected("b@n") and not b.connected("a@n")
    assert b.connected_peers() == []


@pytest_twisted.ensureDeferred
async def test_unknown_node_with_cookie_is_accepted_and_known(transports):
    """A joining node dials the seed before the seed knows it."""
    seed = transports("seed@n", "127.0.0.2")
    joiner = transports("join@n", "127.0.0.3")
    got = []
    joiner.register_cast_handler("hi", lambda p, m: got.append((p, m)))
    joiner.set_peer_address("seed@n", seed.address)
    await until(transports, lambda: seed.connected("join@n"))
    assert "join@n" in seed.known_peers()
    assert seed.cast("join@n", "hi", "welcome")
    await until(transports, lambda: got)
    assert got == [("seed@n", "welcome")]


@pytest_twisted.ensureDeferred
async def test_reconnect_after_remote_restarts(transports):
    a = transports("a@n", "127.0.0.2")
    b = transports("b@n", "127.0.0.3")
    seen = events(a)
    port = b.address[1]
    a.set_peer_address("b@n", ("127.0.0.3", port))
    await until(transports, lambda: a.connected("b@n"))
    b.register_call_handler("hang", lambda p: defer.Deferred())
    calling = a.call("b@n", "hang", (), 5.0)
    await b.stop()
    await until(transports, lambda: not a.connected("b@n"))
    with pytest.raises(PeerUnreachable):
        await calling
    b2 = transports("b@n", "127.0.0.3", port=port)
    await until(transports, lambda: a.connected("b@n") and b2.connected("a@n"))
    assert seen == ["up b@n", "down b@n", "up b@n"]


@pytest_twisted.ensureDeferred
async def test_buffer_while_down_then_delivered_in_order(transports):
    port = free_port("127.0.0.3")
    a = transports("a@n", "127.0.0.2")
    a.set_peer_address("b@n", ("127.0.0.3", port))
    for i in range(200):
        assert a.cast("b@n", "seq", i)
    assert a.buffered_bytes("b@n") > 0
    b = transports("b@n", "127.0.0.3", port=port, start=False)
    got = []
    b.register_cast_handler("seq", lambda p, m: got.append(m))
    b.start()
    await until(transports, lambda: len(got) == 200)
    assert got == list(range(200))
    assert a.counters.dropped_frames == 0 and a.buffered_bytes("b@n") == 0


@pytest_twisted.ensureDeferred
async def test_buffer_overflow_drops_and_counts(transports):
    port = free_port("127.0.0.3")
    a = transports("a@n", "127.0.0.2", buffer_limit=2000)
    a.set_peer_address("b@n", ("127.0.0.3", port))
    accepted = [i for i in range(100)
                if a.cast("b@n", "seq", b"x" * 90 + bytes([i]))]
    assert 0 < len(accepted) < 100
    assert a.counters.dropped_frames == 100 - len(accepted)
    assert a.counters.dropped_bytes > 0
    assert a.buffered_bytes("b@n") <= 2000
    b = transports("b@n", "127.0.0.3", port=port, start=False)
    got = []
    b.register_cast_handler("seq", lambda p, m: got.append(m[-1]))
    b.start()
    await until(transports, lambda: len(got) == len(accepted))
    assert got == accepted


@pytest_twisted.ensureDeferred
async def test_simultaneous_dial_on_real_sockets_keeps_one_link(transports):
    for round_ in range(3):
        a = transports("a%d@n" % round_, "127.0.0.2")
        b = transports("b%d@n" % round_, "127.0.0.3")
        b.set_peer_address(a.node, a.address)
        a.set_peer_address(b.node, b.address)
        await until(transports, lambda: a.connected(b.node)
                    and b.connected(a.node)
                    and a.open_connections == b.open_connections == 1)
        assert a.link_info(b.node)["dialed_by"] == a.node
        assert b.link_info(a.node)["dialed_by"] == a.node
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_oversize_frame_closes_the_link(transports):
    a = transports("a@n", "127.0.0.2", max_frame_size=1000, backoff_min=5.0,
              backoff_max=5.0)
    b = transports("b@n", "127.0.0.3", backoff_min=5.0, backoff_max=5.0)
    got = []
    a.register_cast_handler("ch", lambda p, m: got.append(len(m)))
    b.set_peer_address("a@n", a.address)
    await until(transports, lambda: a.connected("b@n"))
    assert b.cast("a@n", "ch", b"x" * 100)
    assert b.cast("a@n", "ch", b"x" * 5000)
    await until(transports, lambda: not a.connected("b@n")
                and not b.connected("a@n"))
    assert got == [100]
    assert a.counters.protocol_errors == 1


@pytest_twisted.ensureDeferred
async def test_forgetting_a_peer_closes_its_link(transports):
    a = transports("a@n", "127.0.0.2")
    b = transports("b@n", "127.0.0.3", backoff_min=5.0, backoff_max=5.0)
    seen = events(a)
    a.set_peer_address("b@n", b.address)
    await until(transports, lambda: b.connected("a@n"))
    a.set_peer_address("b@n", None)
    assert not a.connected("b@n") and seen == ["up b@n", "down b@n"]
    assert not a.cast("b@n", "ch", 1)
    await until(transports, lambda: not b.connected("a@n"))


@pytest_twisted.ensureDeferred
async def test_partition_detected_by_heartbeat_then_healed(transports,
                                                           partitions):
    """
    A partition (an nft DROP, or the proxy in front of each transport)
    blackholes the established connection: only the heartbeat notices.
    After healing the link comes back and casts made during the partition
    are delivered in order.
    """
    a = transports("a@n", "127.0.0.22")
    b = transports("b@n", "127.0.0.23")
    got = []
    b.register_cast_handler("seq", lambda p, m: got.append(m))
    a.set_peer_address("b@n", partitions.front("127.0.0.23", b.address))
    b.set_peer_address("a@n", partitions.front("127.0.0.22", a.address))
    await until(transports, lambda: a.connected("b@n") and b.connected("a@n"))
    with partitions.cut([["127.0.0.22"], ["127.0.0.23"]]):
        await until(transports, lambda: not a.connected("b@n")
                    and not b.connected("a@n"), timeout=5.0,
                    what="partition detected")
        for i in range(20):
            assert a.cast("b@n", "seq", i)
        assert a.buffered_bytes("b@n") > 0
    await until(transports, lambda: a.connected("b@n") and b.connected("a@n"),
                timeout=5.0, what="healed")
    await until(transports, lambda: len(got) == 20)
    assert got == list(range(20))


@pytest_twisted.ensureDeferred
async def test_blackholing_proxy_detected_by_heartbeat_then_healed(
        transports):
    """
    The same without nft: a proxy in the middle silently drops bytes, the
    heartbeat notices, and after healing a new link carries the casts
    buffered meanwhile.
    """
    a = transports("a@n", "127.0.0.2", handshake_timeout=0.5)
    b = transports("b@n", "127.0.0.3", handshake_timeout=0.5)
    got = []
    b.register_cast_handler("seq", lambda p, m: got.append(m))
    with FaultyProxy(b.address, listen=("127.0.0.3", 0)) as proxy:
        a.set_peer_address("b@n", proxy.address)
        await until(transports, lambda: b.connected("a@n"))
        proxy.cut()
        await until(transports, lambda: not a.connected("b@n")
                    and not b.connected("a@n"), what="cut detected")
        for i in range(20):
            assert a.cast("b@n", "seq", i)
        proxy.heal()
        await until(transports, lambda: len(got) == 20, what="healed")
        assert got == list(range(20))
        await a.stop()  # before the proxy's sockets go away
