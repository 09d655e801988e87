"""
The cross-node MQTT data plane: published messages forwarded to the nodes
whose sessions subscribe, and persistent sessions' queued messages handed
over to the node a session moved to.

This module alone knows the wire vocabulary (on the transport's ``mqtt``
channel, plain data as :class:`~vmqtw.interfaces.IClusterTransport`
carries it)::

    ("msg", message)                       route to local subscribers only
    ("enq", (mountpoint, client_id), message, qos)
                                           enqueue into that session's queue
    message = (ref, topic, payload, qos, timestamp, mountpoint)

The broker side sees :meth:`DataPlane.forward`, :meth:`DataPlane.hand_over`
and the two receivers it passes to :meth:`DataPlane.start`.  Today a cast is
fire and forget; numbering, acknowledging and resending per peer will land
here without the broker noticing.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Tuple, Union

import attrs
from twisted.logger import Logger

from vmqtw.interfaces import IClusterTransport
from vmqtw.types import Message, SubscriberId

__all__ = ["CHANNEL", "DataPlane", "Forwarded", "HandedOver", "decode", "decode_message",
           "encode_forward", "encode_hand_over", "encode_message"]

#: The cluster transport channel of the MQTT data plane.
CHANNEL = "mqtt"

_FORWARD = "msg"
_HAND_OVER = "enq"

#: A message as plain data on the wire.
WireMessage = Tuple[bytes, str, bytes, int, float, str]


def encode_message(message: Message) -> WireMessage:
    """A routed message as plain data.  RETAIN and DUP are not carried:
    a forwarded message is routed to established subscriptions, which get
    RETAIN=0 [MQTT-3.3.1-9]."""
    return (message.ref, message.topic, message.payload, message.qos, message.timestamp,
            message.mountpoint)


def decode_message(data: Any, origin: str) -> Message:
    """The message ``origin`` sent; ``origin`` marks it as not to be
    forwarded again."""
    ref, topic, payload, qos, timestamp, mountpoint = data
    return Message(ref, topic, payload, qos, False, False, timestamp, mountpoint, origin)


@attrs.define(frozen=True, slots=True)
class Forwarded:
    """A message published on another node, for this node's subscribers."""

    message: Message


@attrs.define(frozen=True, slots=True)
class HandedOver:
    """A queued message of a persistent session that moved to this node."""

    subscriber_id: SubscriberId
    message: Message
    qos: int


def encode_forward(message: Message) -> Tuple[str, WireMessage]:
    return (_FORWARD, encode_message(message))


def encode_hand_over(subscriber_id: SubscriberId, message: Message,
                     qos: int) -> Tuple[str, Tuple[str, str], WireMessage, int]:
    return (_HAND_OVER, subscriber_id.as_key(), encode_message(message), qos)


def decode(data: Any, peer: str) -> Union[Forwarded, HandedOver]:
    """A data-plane cast from ``peer``; ValueError (or a TypeError from
    malformed fields) when it is none."""
    kind = data[0]
    if kind == _FORWARD:
        _, message = data
        return Forwarded(decode_message(message, peer))
    if kind == _HAND_OVER:
        _, key, message, qos = data
        return HandedOver(SubscriberId(*key), decode_message(message, peer), qos)
    raise ValueError("unknown data-plane message kind %r" % (kind,))


#: ``on_message(message)``: route a forwarded message to local subscribers.
MessageReceiver = Callable[[Message], Any]
#: ``on_hand_over(subscriber_id, message, qos)``: enqueue a handed-over one.
HandOverReceiver = Callable[[SubscriberId, Message, int], Any]


class DataPlane:
    """Forwarding and hand-over of MQTT messages between nodes."""

    log = Logger()

    def __init__(self, node: str, transport: IClusterTransport) -> None:
        self.node = node
        self.transport = transport
        #: Messages forwarded to other nodes (one per node and message).
        self.forwarded = 0
        #: Forwarded messages received from other nodes.
        self.received_remote = 0
        self._on_message: Optional[MessageReceiver] = None
        self._on_hand_over: Optional[HandOverReceiver] = None

    def start(self, on_message: MessageReceiver, on_hand_over: HandOverReceiver) -> None:
        """Receive from peers from now on."""
        self._on_message = on_message
        self._on_hand_over = on_hand_over
        self.transport.register_cast_handler(CHANNEL, self._received)

    def forward(self, nodes: Iterable[str], message: Message) -> None:
        """One copy of ``message`` to each of ``nodes``, encoded once."""
        encoded = None
        for node in nodes:
            if encoded is None:
                encoded = encode_forward(message)
            self.transport.cast(node, CHANNEL, encoded)
            self.forwarded += 1

    def hand_over(self, node: str, subscriber_id: SubscriberId, message: Message,
                  qos: int) -> None:
        """Put ``message`` into ``subscriber_id``'s queue on ``node``."""
        self.transport.cast(node, CHANNEL, encode_hand_over(subscriber_id, message, qos))

    def _received(self, peer: str, data: Any) -> None:
        try:
            item = decode(data, peer)
            if isinstance(item, Forwarded):
                self.received_remote += 1
                if self._on_message is not None:
                    self._on_message(item.message)
            elif self._on_hand_over is not None:
                self._on_hand_over(item.subscriber_id, item.message, item.qos)
        except Exception:
            kind = data[0] if isinstance(data, tuple) and data else None
            self.log.failure("bad data-plane message {kind!r} from {peer}", kind=kind,
                             peer=peer)
