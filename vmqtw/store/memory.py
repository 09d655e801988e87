"""
The ``memory`` message store: dicts, gone when the process ends.

Useful for tests and for brokers that accept losing offline QoS 1/2 messages
on restart (``durable = False``).  It keeps the same shape as the LevelDB
store -- one payload per ref, refcounted, one index entry per subscriber --
so the conformance kit checks the same promises on both.

Every method answers with an already-fired Deferred: there is nothing to wait
for, and callers must not rely on a reactor turn passing.
"""
from __future__ import annotations

from typing import Dict

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from vmqtw.interfaces import IMessageStore
from vmqtw.store.encoding import StoreNotOpen
from vmqtw.types import Message, SubscriberId

__all__ = ["MemoryMessageStore"]


@implementer(IMessageStore)
@attrs.define(slots=True, eq=False)
class MemoryMessageStore:
    """
    Offline messages in dicts.

    Messages are copied on the way in and out: the LevelDB store returns a
    fresh object per read, and a session that marks its copy ``dup`` must
    not change what another subscriber will later read.
    """

    name: str = attrs.field(default="memory", init=False)
    durable: bool = attrs.field(default=False, init=False)
    _open: bool = attrs.field(default=False, init=False)
    _messages: Dict[bytes, Message] = attrs.field(factory=dict, init=False)
    _refcount: Dict[bytes, int] = attrs.field(factory=dict, init=False)
    # Dicts keep insertion order: the values are unused.
    _index: Dict[SubscriberId, Dict[bytes, None]] = attrs.field(
        factory=dict, init=False)

    def open(self) -> Deferred:
        self._open = True
        return succeed(None)

    def close(self) -> Deferred:
        self._open = False
        return succeed(None)

    def write(self, subscriber_id: SubscriberId, message: Message) -> Deferred:
        if not self._open:
            return fail(StoreNotOpen("memory store is not open"))
        refs = self._index.setdefault(subscriber_id, {})
        ref = message.ref
        if ref in refs:
            return succeed(None)
        refs[ref] = None
        count = self._refcount.get(ref, 0)
        if count == 0:
            self._messages[ref] = attrs.evolve(message, origin=None)
        self._refcount[ref] = count + 1
        return succeed(None)

    def read(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        if not self._open:
            return fail(StoreNotOpen("memory store is not open"))
        refs = self._index.get(subscriber_id)
        if refs is None or ref not in refs:
            return succeed(None)
        return succeed(attrs.evolve(self._messages[ref]))

    def delete(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        if not self._open:
            return fail(StoreNotOpen("memory store is not open"))
        refs = self._index.get(subscriber_id)
        if refs is None or ref not in refs:
            return succeed(None)
        del refs[ref]
        if not refs:
            del self._index[subscriber_id]
        count = self._refcount[ref] - 1
        if count:
            self._refcount[ref] = count
        else:
            del self._refcount[ref]
            del self._messages[ref]
        return succeed(None)

    def find(self, subscriber_id: SubscriberId) -> Deferred:
        if not self._open:
            return fail(StoreNotOpen("memory store is not open"))
        return succeed(list(self._index.get(subscriber_id, ())))

    def subscribers(self) -> Deferred:
        if not self._open:
            return fail(StoreNotOpen("memory store is not open"))
        return succeed(list(self._index))

    def stored_payloads(self) -> int:
        """Testing hook of the conformance kit: payloads held right now."""
        return len(self._messages)

    def __repr__(self) -> str:
        return "<MemoryMessageStore %d payloads>" % (len(self._messages),)
