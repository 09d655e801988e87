"""
The cross-node data plane: the wire form of forwarded and handed-over
messages, one copy per node, and the receive side.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import msgpack
import pytest

from vmqtw.cluster.dataplane import (CHANNEL, DataPlane, Forwarded, HandedOver, decode,
                                     encode_forward, encode_hand_over)
from vmqtw.types import Message, SubscriberId

MESSAGE = Message(b"ref-1", "a/b", b"\x00payload", 2, True, True, 1234.5, "mp", None)


class FakeTransport:
    """Records casts; delivers what a test hands to ``receive``."""

    def __init__(self) -> None:
        self.casts: List[Tuple[str, str, Any]] = []
        self.handlers: Dict[str, Callable[[str, Any], None]] = {}

    def cast(self, peer: str, channel: str, message: Any) -> bool:
        self.casts.append((peer, channel, message))
        return True

    def register_cast_handler(self, channel: str, handler: Callable[[str, Any], None]) -> None:
        self.handlers[channel] = handler

    def receive(self, peer: str, message: Any) -> None:
        self.handlers[CHANNEL](peer, message)


def over_the_wire(data: Any) -> Any:
    """What the TCP transport makes of plain data (msgpack, lists as tuples)."""
    return msgpack.unpackb(msgpack.packb(data), use_list=False)


def test_forward_round_trip_marks_the_origin_and_drops_retain_and_dup():
    item = decode(over_the_wire(encode_forward(MESSAGE)), "B")
    assert item == Forwarded(Message(b"ref-1", "a/b", b"\x00payload", 2, False, False,
                                     1234.5, "mp", "B"))


def test_hand_over_round_trip_keeps_subscriber_and_qos():
    sid = SubscriberId("mp", "client")
    item = decode(over_the_wire(encode_hand_over(sid, MESSAGE, 1)), "A")
    assert isinstance(item, HandedOver)
    assert (item.subscriber_id, item.qos, item.message.ref, item.message.origin) == \
        (sid, 1, b"ref-1", "A")


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError):
        decode(("nope", ()), "A")


def test_forward_sends_one_copy_per_node_and_counts():
    transport = FakeTransport()
    plane = DataPlane("A", transport)
    plane.forward(["B", "C"], MESSAGE)
    assert [(peer, channel) for peer, channel, _ in transport.casts] == \
        [("B", CHANNEL), ("C", CHANNEL)]
    assert transport.casts[0][2] is transport.casts[1][2], "encoded once"
    assert plane.forwarded == 2
    plane.forward([], MESSAGE)
    assert plane.forwarded == 2


def test_receive_routes_forwarded_and_hands_over_queued_messages():
    transport = FakeTransport()
    plane = DataPlane("B", transport)
    routed: List[Message] = []
    queued: List[Tuple[SubscriberId, Message, int]] = []
    plane.start(routed.append, lambda s, m, q: queued.append((s, m, q)))
    sid = SubscriberId("", "c")
    transport.receive("A", over_the_wire(encode_forward(MESSAGE)))
    transport.receive("A", over_the_wire(encode_hand_over(sid, MESSAGE, 1)))
    assert [m.origin for m in routed] == ["A"] and plane.received_remote == 1
    assert [(s, q, m.origin) for s, m, q in queued] == [(sid, 1, "A")]


def test_a_bad_message_is_logged_not_raised():
    transport = FakeTransport()
    plane = DataPlane("B", transport)
    routed: List[Message] = []
    plane.start(routed.append, lambda s, m, q: None)
    transport.receive("A", ("msg", ("too", "short")))
    transport.receive("A", ("what", 1))
    transport.receive("A", over_the_wire(encode_forward(MESSAGE)))
    assert len(routed) == 1
