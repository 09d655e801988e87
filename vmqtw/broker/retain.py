"""
Retained messages: kept in :class:`~vmqtw.interfaces.IMetadataStore` under
:data:`~vmqtw.types.RETAIN_PREFIX`, so they replicate to every node, and
cached in a :class:`~vmqtw.trie.RetainTree` built from a fold of the store
plus its change events, so a new subscription finds its retained messages
without scanning them all.

Value layout: ``(payload, qos, timestamp, author)`` where ``author`` is
``(client_id, username)`` or None (values written before authors were kept
have three fields), and a fifth field, the MQTT 5.0 PUBLISH property block
(:func:`~vmqtw.mqtt.properties.pack_message_properties`), only when the
message has properties: readers of four fields ignore it.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Tuple

from vmqtw.interfaces import ChangeOrigin, IMetadataStore
from vmqtw.mqtt.properties import pack_message_properties, unpack_message_properties
from vmqtw.trie import RetainTree
from vmqtw.types import RETAIN_PREFIX, Message, MetadataPrefix, new_message_ref

__all__ = ["Author", "RetainStore"]

#: Who published a retained message: ``(client_id, username)``.
Author = Tuple[str, Optional[str]]


class RetainStore:
    """Stores, clears and finds the retained messages of the cluster."""

    def __init__(self, metadata: IMetadataStore) -> None:
        self.metadata = metadata
        #: Topic -> stored value.  Keyed by topic alone, as it always was:
        #: mountpoints do not separate retained messages yet.
        self.retained = RetainTree()
        self._unsubscribe: Optional[Callable[[], None]] = None

    def start(self) -> None:
        """Build the tree from the store, then follow its changes."""
        for key, value in self.metadata.items(RETAIN_PREFIX):
            self._on_change(RETAIN_PREFIX, key, None, value, ChangeOrigin.REMOTE)
        self._unsubscribe = self.metadata.subscribe(RETAIN_PREFIX, self._on_change)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def __len__(self) -> int:
        return len(self.retained)

    def retain(self, message: Message, author: Optional[Author]) -> None:
        """
        Keep ``message`` as the topic's retained message, with its author so
        that it can be withheld once its author may no longer publish it.  A
        zero-byte retained message clears the topic [MQTT-3.3.1-10/11].
        """
        key = (message.mountpoint, message.topic)
        if message.payload:
            if message.properties is None:
                value: Tuple[Any, ...] = (message.payload, message.qos, message.timestamp,
                                          author)
            else:
                value = (message.payload, message.qos, message.timestamp, author,
                         pack_message_properties(message.properties))
            self.metadata.put(RETAIN_PREFIX, key, value)
        elif self.metadata.get(RETAIN_PREFIX, key) is not None:
            self.metadata.delete(RETAIN_PREFIX, key)

    def matching(self, flt: str) -> Iterator[Tuple[Message, Optional[Author]]]:
        """
        Retained messages for a new subscription to ``flt``, RETAIN=1, each
        with its author ``(client_id, username)`` or None.
        """
        for topic, value in self.retained.match(flt):
            payload, qos, timestamp = value[0], value[1], value[2]
            author = value[3] if len(value) > 3 else None
            properties = unpack_message_properties(value[4]) if len(value) > 4 else None
            yield (Message(new_message_ref(), topic, payload, qos, True, False, timestamp,
                           "", None, properties),
                   author)

    def _on_change(self, prefix: MetadataPrefix, key: Tuple[str, str], old: Any, new: Any,
                   origin: ChangeOrigin) -> None:
        _mountpoint, topic = key
        if new is None:
            self.retained.delete(topic)
        else:
            self.retained.set(topic, new)
