"""
The raw-socket test client (:mod:`vmqtw.testing.rawclient`) over a local
socket pair: the test plays the broker by writing bytes built with
:mod:`vmqtw.testing.mqttbytes`, so each behaviour the real-process tests rely
on is checked without a broker.
"""
from __future__ import annotations

import socket
import threading
from typing import Iterator, Tuple

import pytest

from vmqtw.mqtt import packets as P
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.rawclient import ConnectRefused, PeerClosed, RawClient, ReadTimeout


@pytest.fixture
def pair() -> Iterator[Tuple[RawClient, socket.socket]]:
    ours, broker = socket.socketpair()
    client = RawClient(ours, timeout=5.0)
    try:
        yield client, broker
    finally:
        client.close()
        broker.close()


def test_packets_split_and_joined_arbitrarily(pair):
    """Frames cut at any byte, or several in one segment, come out whole and in order."""
    client, broker = pair
    stream = B.suback(1, [0, 1]) + B.publish("a/b", b"x" * 300, qos=1, packet_id=7) + B.pingresp()
    broker.sendall(stream[:1])
    broker.sendall(stream[1:4])
    broker.sendall(stream[4:])
    assert client.read(2) == [P.SubAck(1, [0, 1]), P.Publish("a/b", b"x" * 300, qos=1, packet_id=7)]
    assert client.next() == P.PingResp()


def test_read_takes_exactly_count_and_keeps_the_rest(pair):
    client, broker = pair
    broker.sendall(B.puback(1) + B.puback(2) + B.puback(3))
    assert client.read(2) == [P.PubAck(1), P.PubAck(2)]
    assert client.next() == P.PubAck(3)


def test_read_times_out_with_what_it_read(pair):
    client, broker = pair
    broker.sendall(B.puback(1) + B.puback(2)[:1])
    with pytest.raises(ReadTimeout) as caught:
        client.read(2, timeout=0.2)
    assert caught.value.packets == [P.PubAck(1)]
    assert isinstance(caught.value, AssertionError)


def test_read_reports_a_close_with_what_it_read(pair):
    client, broker = pair
    broker.sendall(B.puback(1))
    broker.close()
    with pytest.raises(PeerClosed) as caught:
        client.read(2)
    assert caught.value.packets == [P.PubAck(1)]


def test_read_until_a_kind(pair):
    client, broker = pair
    broker.sendall(B.puback(4) + B.suback(2, [0x80]) + B.pingresp() + B.puback(5))
    assert client.read_until(P.PingResp) == [P.PubAck(4), P.SubAck(2, [0x80]), P.PingResp()]
    assert client.next() == P.PubAck(5)


def test_read_until_closed_returns_the_unread_bytes(pair):
    """What the broker sent after the last packet read is returned as bytes, then the close."""
    client, broker = pair
    broker.sendall(B.puback(1) + B.connack(1))
    assert client.next() == P.PubAck(1)
    broker.close()
    assert client.read_until_closed() == (B.connack(1), True)


def test_read_until_closed_times_out_on_an_open_connection(pair):
    client, broker = pair
    broker.sendall(b"\x90")
    assert client.read_until_closed(timeout=0.1) == (b"\x90", False)
    assert not client.closed_by_peer(timeout=0.1)
    broker.close()
    assert client.closed_by_peer()


def test_send_quietly_tells_a_closed_peer(pair):
    client, broker = pair
    assert client.send_quietly(B.pingreq())
    assert broker.recv(16) == B.pingreq()
    broker.close()
    # The first write after the close may still be accepted by the kernel.
    results = [client.send_quietly(b"\x00" * 65536) for _ in range(4)]
    assert results[-1] is False


def serve_one(listener: socket.socket, answer: bytes, received: list) -> None:
    conn, _ = listener.accept()
    with conn:
        received.append(conn.recv(4096))
        conn.sendall(answer)


@pytest.mark.parametrize("answer, expect, got", [
    (B.connack(0), P.ConnAck(0, False), P.ConnAck(0, False)),
    (B.connack(0, session_present=True), P.ConnAck(0, False), None),   # refused
    (B.connack(5), None, P.ConnAck(5, False)),                          # any CONNACK
], ids=["accepted", "not-the-expected-connack", "no-expectation"])
def test_connect_sends_connect_and_checks_the_connack(answer, expect, got):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received: list = []
    server = threading.Thread(target=serve_one, args=(listener, answer, received))
    server.start()
    try:
        host, port = listener.getsockname()
        if got is None:
            with pytest.raises(ConnectRefused):
                RawClient.connect(host, port, "cid", expect=expect, keepalive=7)
        else:
            with RawClient.connect(host, port, "cid", expect=expect, keepalive=7) as client:
                assert client.connack == got
    finally:
        server.join(5)
        listener.close()
    assert received == [B.connect("cid", keepalive=7)]
