"""
Plain value types shared by every layer.

They are attrs classes with ``slots=True`` and no validators: they travel
through the per-message hot path, so validation happens at the edges (codec,
config, admin) and never here.
"""
from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Optional, Tuple

import attrs

if TYPE_CHECKING:
    from vmqtw.mqtt.packets import Properties

__all__ = ["SubscriberId", "Message", "new_message_ref", "MetadataPrefix",
           "SUBSCRIBER_PREFIX", "RETAIN_PREFIX"]

#: A metadata full prefix, e.g. ``("vmq", "subscriber")``.
MetadataPrefix = Tuple[str, str]

#: Where subscriptions live in ``IMetadataStore``: key ``(mountpoint,
#: client_id)``; value ``((node, clean_session, ((filter, qos), ...)), ...)``.
SUBSCRIBER_PREFIX: MetadataPrefix = ("vmq", "subscriber")

#: Where retained messages live in ``IMetadataStore``: key ``(mountpoint,
#: topic)``; value ``(payload, qos, timestamp, author)`` where author is
#: ``(client_id, username)`` or None.
RETAIN_PREFIX: MetadataPrefix = ("vmq", "retain")


@attrs.define(frozen=True, slots=True, order=True)
class SubscriberId:
    """
    Identifies one session across the cluster, as VerneMQ's ``{MP, ClientId}``.

    Mountpoints partition the topic space of one broker; the default is ``""``.
    """

    mountpoint: str
    client_id: str

    def as_key(self) -> Tuple[str, str]:
        """The tuple form used as a metadata key and in store encodings."""
        return (self.mountpoint, self.client_id)


#: 8 random bytes per process, so refs never repeat across restarts or
#: nodes, followed by a per-process counter (no system call per message).
_REF_PREFIX = os.urandom(8)
_ref_counter = itertools.count(1)


def new_message_ref() -> bytes:
    """
    A fresh, cluster-unique message reference (16 bytes).

    A random per-process prefix plus a counter: as unlikely to collide as
    random refs, but cheap enough for every message on the hot path, and no
    counter has to be persisted or coordinated.  The counter is big-endian,
    so the refs one process made sort (as bytes) in the order it made them
    (see :func:`ref_origin`).
    """
    return _REF_PREFIX + next(_ref_counter).to_bytes(8, "big")


def ref_origin(ref: bytes) -> bytes:
    """
    The part of ``ref`` naming the process that made it.  Two refs with the
    same origin compare (as bytes) in the order they were made, which is
    the order of the publishes they name: what a moved session's new node
    needs to merge two streams of one publisher's messages.
    """
    return ref[:8]


@attrs.define(slots=True)
class Message:
    """
    One application message as it is routed, queued and stored.

    ``ref`` names the message in an ``IMessageStore`` (payload stored once,
    one index entry per subscriber). ``qos`` is the publisher's QoS; what a
    subscriber receives is ``min(qos, granted)`` and is decided at delivery.
    """

    ref: bytes
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    dup: bool = False
    #: Seconds since the epoch at which the broker accepted the message.
    timestamp: float = 0.0
    mountpoint: str = ""
    #: Set when this copy came from another cluster node (never re-forwarded).
    origin: Optional[str] = None
    #: The MQTT 5.0 PUBLISH properties passed on to subscribers (payload
    #: format, content type, response topic, correlation data, user
    #: properties, message expiry as given at ``timestamp``), without the
    #: publisher's topic alias; None for a 3.1.1 publish or a v5 one without
    #: any, so the 3.1.1 path allocates nothing more.
    properties: Optional["Properties"] = None
