"""
What handling one read writes to plain TCP connections leaves before that
read returns to the reactor (``vmqtw.mqtt.protocol.TurnWrites``), and what
a subscriber whose socket cannot take more is sent: no more than the
transport's buffer, the rest waits in its queue (the protocol is the push producer).

The broker's connections here are real ``twisted.internet.tcp.Connection``
objects over a loopback TCP socket pair, driven by hand with no reactor running (a
``MemoryReactor`` only records which descriptors want to write): whatever
the peer socket can read right after ``dataReceived`` returned was sent in
that call, not left for a later reactor turn.
"""
from __future__ import annotations

import select
import socket
import struct
from typing import Iterator, List, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor
from twisted.internet.tcp import Connection

from vmqtw.broker.queue import QueueLimits
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import Decoder
from vmqtw.mqtt.protocol import MQTTProtocol
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker
from vmqtw.types import Message, SubscriberId


def _tcp_pair(bufsize: int = 0) -> Tuple[socket.socket, socket.socket]:
    """
    A connected pair of loopback TCP sockets (client, server side);
    ``bufsize`` shrinks the kernel's buffers from server to client (set
    before connecting, as TCP only honours it then).
    """
    with socket.socket() as listener:
        if bufsize:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket()
        if bufsize:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    return client, server


class _Server(Connection):
    """``tcp.Server`` without a listening port behind it."""

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40001)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1883)


class Peer:
    """A client socket whose broker side is a Twisted TCP connection."""

    def __init__(self, broker: Broker, reactor: MemoryReactor, sndbuf: int = 0) -> None:
        self.sock, theirs = _tcp_pair(sndbuf)
        self.sock.setblocking(False)
        theirs.setblocking(False)
        protocol = broker.factory.buildProtocol(None)
        assert protocol is not None
        self.protocol: MQTTProtocol = protocol
        self.connection = _Server(theirs, protocol, reactor)
        self.connection.connected = True
        protocol.makeConnection(self.connection)
        self.decoder = Decoder()

    def send(self, data: bytes) -> None:
        """The reactor found ``data`` readable: one ``dataReceived``."""
        self.protocol.dataReceived(data)

    def received(self) -> List[object]:
        """Packets the broker already sent (no reactor turn in between)."""
        packets: List[object] = []
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return packets
            if not data:
                return packets
            packets += self.decoder.feed(data)

    def close(self) -> None:
        self.sock.close()
        self.connection.socket.close()


@pytest.fixture
def setup(request: pytest.FixtureRequest) -> Iterator[Tuple[Broker, MemoryReactor, List[Peer]]]:
    broker = Broker(**getattr(request, "param", {}))
    peers: List[Peer] = []
    try:
        yield broker, MemoryReactor(), peers
    finally:
        for peer in peers:
            peer.close()
        broker.stop()


def _peer(setup: Tuple[Broker, MemoryReactor, List[Peer]], client_id: str) -> Peer:
    broker, reactor, peers = setup
    peer = Peer(broker, reactor)
    peers.append(peer)
    peer.send(B.connect(client_id))
    assert peer.received() == [P.ConnAck(0, False)]
    return peer


def test_replies_leave_before_the_read_returns(setup) -> None:
    """A QoS 1 PUBLISH: the publisher's PUBACK and the subscriber's copy are
    both on their sockets when the publisher's read has been handled."""
    sub = _peer(setup, "sub")
    sub.send(B.subscribe(1, [("t", 1)]))
    assert [type(p) for p in sub.received()] == [P.SubAck]
    pub = _peer(setup, "pub")
    pub.send(B.publish("t", b"x", qos=1, packet_id=7) + B.publish("t", b"y", qos=1,
                                                                   packet_id=8))
    assert [(type(p), p.packet_id) for p in pub.received()] == [(P.PubAck, 7), (P.PubAck, 8)]
    delivered = sub.received()
    assert [(p.topic, p.payload) for p in delivered] == [("t", b"x"), ("t", b"y")]
    # The subscriber's PUBACK frees the window: nothing left to send, and
    # no write is left pending for the reactor either.
    sub.send(B.puback(delivered[0].packet_id) + B.puback(delivered[1].packet_id))
    reactor = setup[1]
    assert sub.connection not in reactor.writers and pub.connection not in reactor.writers


def test_a_send_the_socket_takes_whole_never_involves_the_reactor(setup) -> None:
    """Nothing buffered in the transport: the bytes go straight to the
    socket, without registering the connection for writing (and
    unregistering it again) around the send."""
    sub = _peer(setup, "sub")
    sub.send(B.subscribe(1, [("t", 1)]))
    sub.received()
    pub = _peer(setup, "pub")
    reactor = setup[1]
    registered: List[object] = []
    add_writer = reactor.addWriter

    def spy(writer: object) -> None:
        registered.append(writer)
        add_writer(writer)

    reactor.addWriter = spy   # type: ignore[method-assign]
    pub.send(B.publish("t", b"x", qos=1, packet_id=7))
    assert [type(p) for p in pub.received()] == [P.PubAck]
    assert [p.payload for p in sub.received()] == [b"x"]
    assert registered == []


def test_messages_from_another_node_leave_when_their_frame_is_handled(setup) -> None:
    """What a frame from another node delivers, handled through
    ``as_one_read``, is on the subscriber's socket when the handling
    returns: one send, not one transport write per message left for a
    later reactor turn."""
    sub = _peer(setup, "sub")
    sub.send(B.subscribe(1, [("t/+", 0)]))
    sub.received()
    broker, reactor = setup[0], setup[1]
    deliver = sub.protocol.factory.writes.as_one_read(broker.registry.router.route_remote_batch)
    deliver([Message(b"r%d" % n, "t/%d" % n, b"m%d" % n, 0, origin="other@node")
             for n in range(5)])
    assert [p.payload for p in sub.received()] == [b"m%d" % n for n in range(5)]
    assert sub.connection not in reactor.writers


def test_failed_send_is_left_to_the_reactor(setup) -> None:
    """A subscriber whose socket is gone: the publisher's read is handled
    (PUBACK sent) and the subscriber's bytes stay buffered for the reactor,
    which ends that connection on its next attempt."""
    sub = _peer(setup, "sub")
    sub.send(B.subscribe(1, [("t", 0)]))
    sub.received()
    # Closed with a reset: the broker's next send to it fails at once.
    sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sub.sock.close()
    pub = _peer(setup, "pub")
    pub.send(B.publish("t", b"x", qos=1, packet_id=3))
    assert [type(p) for p in pub.received()] == [P.PubAck]
    assert sub.connection in setup[1].writers
    assert not sub.protocol.closing


def test_a_refusal_written_before_closing_is_not_lost(setup) -> None:
    """CONNACK 1 then close [MQTT-3.1.2-2]: the CONNACK collected during the
    read reaches the transport before the close, so the reactor's last
    write (done by hand here) still sends it."""
    broker, reactor, peers = setup
    peer = Peer(broker, reactor)
    peers.append(peer)
    level_9 = bytearray(B.connect("c"))
    level_9[8] = 9   # protocol level byte, after the fixed header and "MQTT"
    peer.send(bytes(level_9))
    assert peer.protocol.closing and peer.connection.disconnecting
    peer.connection.doWrite()
    assert peer.received() == [P.ConnAck(P.CONNACK_UNACCEPTABLE_PROTOCOL_VERSION, False)]


@pytest.mark.parametrize("setup", [{"limits": QueueLimits(max_online_messages=1000)}],
                         indirect=True)
def test_a_stalled_subscriber_is_not_buffered_without_bound(setup) -> None:
    """A QoS 0 subscriber that reads nothing: once the transport holds its
    buffer size, messages wait in the subscriber's queue up to
    max_online_messages, then are dropped and counted; when the subscriber
    reads again, what waited is delivered, in order."""
    broker, reactor, peers = setup
    sub = Peer(broker, reactor, sndbuf=4096)
    peers.append(sub)
    sub.send(B.connect("slow"))
    sub.send(B.subscribe(1, [("t", 0)]))
    assert [type(p) for p in sub.received()] == [P.ConnAck, P.SubAck]
    pub = _peer(setup, "pub")
    payload = b"p" * 1000
    for batch in range(30):
        pub.send(b"".join(B.publish("t", b"%05d" % (batch * 100 + i) + payload)
                          for i in range(100)))
    queue = broker.registry.queues[SubscriberId("", "slow")]
    buffered = len(sub.connection.dataBuffer) + sub.connection._tempDataLen
    assert buffered <= sub.connection.bufferSize + 100 * 1010   # one read's worth past it
    assert len(queue.pending) == 1000
    dropped = broker.registry.counters.dropped_online
    assert dropped > 0
    # The subscriber reads again: the reactor's writes (by hand) drain the
    # transport, which resumes the queue.
    got: List[int] = []
    while len(got) < 3000 - dropped:
        sub.connection.doWrite()
        packets = sub.received()
        if not packets:   # a bounded wait for what the kernel still carries
            assert select.select([sub.sock], [], [], 5)[0], (len(got), dropped)
        got += [int(p.payload[:5]) for p in packets]
    assert got == sorted(got) and len(set(got)) == len(got)
    assert len(got) == 3000 - dropped
    assert not queue.pending


def test_nagle_is_off_on_plain_tcp(setup) -> None:
    """Writes are coalesced per read already; TCP_NODELAY keeps the kernel
    from holding a small one back until the peer's ACK comes."""
    peer = _peer(setup, "c")
    sock = peer.connection.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
