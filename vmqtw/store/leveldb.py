"""
The ``leveldb`` message store: offline QoS 1/2 messages on disk (plyvel).

Layout (see :mod:`vmqtw.store.encoding`): each message's payload is stored
once under ``msg/<ref>``; each subscriber holding it gets one small index
entry ``idx/<subscriber>/<seq>`` -> ref, where ``seq`` is a big-endian counter
so that a prefix scan yields the subscriber's refs in insertion order.  As in
VerneMQ, refcounts live in memory and are rebuilt on ``open`` by scanning the
index; so are the per-subscriber ``ref -> seq`` maps that ``find`` and
``delete`` use.  The first write of a ref puts msg+idx, later writes only idx;
the last delete removes both.

Batching: every write and delete issued during one reactor turn is collected
into a single ``WriteBatch`` that is committed at ``callLater(0)``; only then
do their Deferreds fire.  A burst of publishes to many offline subscribers
therefore costs one LevelDB write, and the broker still acknowledges a
publisher only once its message is committed.  Reads, ``find`` and
``subscribers`` answer at once and see writes that are still pending
(read-your-writes).

Durability guarantee:

- ``sync=False`` (default, ``leveldb.sync = off``): a committed batch is in
  LevelDB's log in the OS page cache, so it survives the broker being killed
  (even ``SIGKILL``) but NOT a power loss or kernel crash, which can lose the
  last batches (LevelDB never leaves a half-applied batch behind).
- ``sync=True``: each batch is ``fsync``-ed before its Deferreds fire, so it
  also survives power loss, at the cost of one fsync per reactor turn.

If the database cannot be opened because it is corrupt, ``plyvel.repair_db``
is tried once (logged); what LevelDB can salvage is kept.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import attrs
import plyvel
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.interfaces import IMessageStore
from vmqtw.store.encoding import (IDX_PREFIX, MSG_PREFIX, StoreNotOpen,
                                  decode_message, encode_message, idx_key,
                                  idx_prefix, msg_key, parse_idx_key)
from vmqtw.types import Message, SubscriberId

__all__ = ["LevelDBMessageStore"]


@attrs.define(slots=True, eq=False)
class _Queue:
    """One subscriber's index: its key prefix and ``ref -> seq`` in order."""

    prefix: bytes
    refs: Dict[bytes, int] = attrs.field(factory=dict)


@implementer(IMessageStore)
@attrs.define(slots=True, eq=False)
class LevelDBMessageStore:
    """
    Offline messages in one LevelDB database at ``path``.

    ``reactor`` only needs ``callLater`` (an ``IReactorTime``): tests pass a
    ``task.Clock``.
    """

    log = Logger()

    path: str
    reactor: Any
    sync: bool = False
    name: str = attrs.field(default="leveldb", init=False)
    durable: bool = attrs.field(default=True, init=False)
    _db: Optional[plyvel.DB] = attrs.field(default=None, init=False)
    _index: Dict[SubscriberId, _Queue] = attrs.field(factory=dict, init=False)
    _refcount: Dict[bytes, int] = attrs.field(factory=dict, init=False)
    _next_seq: int = attrs.field(default=0, init=False)
    # The batch being collected in this reactor turn, the Deferreds waiting
    # for it, and the payloads it puts (so reads see them before the commit).
    _batch: Any = attrs.field(default=None, init=False)
    _waiting: List[Deferred] = attrs.field(factory=list, init=False)
    _pending: Dict[bytes, bytes] = attrs.field(factory=dict, init=False)
    _flush_call: Any = attrs.field(default=None, init=False)

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> Deferred:
        """Open (creating or repairing if needed) and rebuild the index."""
        if self._db is not None:
            return succeed(None)
        try:
            os.makedirs(self.path, exist_ok=True)
            self._db = self._open_db()
            self._recover()
        except Exception:
            if self._db is not None:
                self._db.close()
                self._db = None
            return fail()
        return succeed(None)

    def _open_db(self) -> plyvel.DB:
        try:
            return plyvel.DB(self.path, create_if_missing=True)
        except plyvel.CorruptionError as e:
            self.log.warn("message store {path} is corrupt ({error}); "
                          "repairing", path=self.path, error=str(e))
            plyvel.repair_db(self.path)
            db = plyvel.DB(self.path, create_if_missing=True)
            self.log.info("message store {path} repaired", path=self.path)
            return db

    def _recover(self) -> None:
        """
        Rebuild refcounts, per-subscriber maps and the counter from the idx
        keys, then drop payloads nobody refers to (left by a repair or by an
        older version) so they cannot leak forever.
        """
        assert self._db is not None
        index: Dict[SubscriberId, _Queue] = {}
        # Keys of one queue are contiguous: parse a subscriber id once per
        # queue, not once per entry (recovery time is start-up time).
        by_prefix: Dict[bytes, _Queue] = {}
        refcount: Dict[bytes, int] = {}
        top = -1
        bad: List[bytes] = []
        for key, ref in self._db.iterator(prefix=IDX_PREFIX):
            prefix = key[:-8]
            queue = by_prefix.get(prefix)
            if queue is None:
                try:
                    sid, _ = parse_idx_key(key)
                except ValueError:
                    bad.append(key)
                    continue
                queue = by_prefix[prefix] = index[sid] = _Queue(prefix)
            if ref in queue.refs:
                # Cannot be written by this code; keep the first, drop this.
                bad.append(key)
                continue
            seq = int.from_bytes(key[-8:], "big")
            queue.refs[ref] = seq
            refcount[ref] = refcount.get(ref, 0) + 1
            if seq > top:
                top = seq
        orphans = [key for key in self._db.iterator(prefix=MSG_PREFIX,
                                                     include_value=False)
                   if key[len(MSG_PREFIX):] not in refcount]
        if bad or orphans:
            self.log.warn("message store {path}: dropping {bad} malformed "
                          "index entries and {orphans} unreferenced payloads",
                          path=self.path, bad=len(bad), orphans=len(orphans))
            with self._db.write_batch(sync=self.sync) as batch:
                for key in bad + orphans:
                    batch.delete(key)
        self._index = index
        self._refcount = refcount
        self._next_seq = top + 1
        self.log.info("message store {path} opened: {messages} messages for "
                      "{subscribers} subscribers", path=self.path,
                      messages=len(refcount), subscribers=len(index))

    def close(self) -> Deferred:
        """Commit what is pending, then close the database."""
        if self._db is None:
            return succeed(None)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush()
        self._db.close()
        self._db = None
        self._index = {}
        self._refcount = {}
        return succeed(None)

    # -- batching ----------------------------------------------------------

    def _current_batch(self) -> Tuple[Any, Deferred]:
        """The batch of this reactor turn and a Deferred for its commit."""
        if self._batch is None:
            assert self._db is not None
            self._batch = self._db.write_batch(sync=self.sync)
            self._flush_call = self.reactor.callLater(0, self._flush)
        d: Deferred = Deferred()
        self._waiting.append(d)
        return self._batch, d

    def _flush(self) -> None:
        """Commit the batch of the last turn and fire its Deferreds."""
        self._flush_call = None
        batch, waiting = self._batch, self._waiting
        self._batch, self._waiting, self._pending = None, [], {}
        if batch is None:
            return
        try:
            batch.write()
        except Exception:
            # The in-memory index already holds these changes; the caller
            # learns the write failed and must not acknowledge it.
            self.log.failure("message store {path}: batch commit failed",
                             path=self.path)
            failure = Failure()
            for d in waiting:
                d.errback(failure)
            return
        for d in waiting:
            d.callback(None)

    # -- IMessageStore -----------------------------------------------------

    def write(self, subscriber_id: SubscriberId, message: Message) -> Deferred:
        if self._db is None:
            return fail(StoreNotOpen("leveldb store %s is not open"
                                     % (self.path,)))
        queue = self._index.get(subscriber_id)
        if queue is None:
            queue = _Queue(idx_prefix(subscriber_id))
        ref = message.ref
        count = self._refcount.get(ref, 0)
        # Encode before touching any state: a message that cannot be
        # encoded must leave the store as it was.
        data = encode_message(message) if count == 0 else None
        batch, d = self._current_batch()
        if ref in queue.refs:
            # Idempotent, but still answered after the commit that wrote it.
            return d
        seq = self._next_seq
        self._next_seq = seq + 1
        if not queue.refs:
            self._index[subscriber_id] = queue
        queue.refs[ref] = seq
        if data is not None:
            batch.put(msg_key(ref), data)
            self._pending[ref] = data
        self._refcount[ref] = count + 1
        batch.put(idx_key(queue.prefix, seq), ref)
        return d

    def read(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        if self._db is None:
            return fail(StoreNotOpen("leveldb store %s is not open"
                                     % (self.path,)))
        queue = self._index.get(subscriber_id)
        if queue is None or ref not in queue.refs:
            return succeed(None)
        data = self._pending.get(ref)
        if data is None:
            data = self._db.get(msg_key(ref))
        if data is None:
            self.log.warn("message store {path}: index refers to missing "
                          "payload {ref}", path=self.path, ref=ref.hex())
            return succeed(None)
        return succeed(decode_message(ref, data))

    def delete(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        if self._db is None:
            return fail(StoreNotOpen("leveldb store %s is not open"
                                     % (self.path,)))
        queue = self._index.get(subscriber_id)
        if queue is None or ref not in queue.refs:
            return succeed(None)
        seq = queue.refs.pop(ref)
        if not queue.refs:
            del self._index[subscriber_id]
        batch, d = self._current_batch()
        batch.delete(idx_key(queue.prefix, seq))
        count = self._refcount[ref] - 1
        if count:
            self._refcount[ref] = count
        else:
            del self._refcount[ref]
            self._pending.pop(ref, None)
            batch.delete(msg_key(ref))
        return d

    def find(self, subscriber_id: SubscriberId) -> Deferred:
        if self._db is None:
            return fail(StoreNotOpen("leveldb store %s is not open"
                                     % (self.path,)))
        queue = self._index.get(subscriber_id)
        return succeed([] if queue is None else list(queue.refs))

    def subscribers(self) -> Deferred:
        if self._db is None:
            return fail(StoreNotOpen("leveldb store %s is not open"
                                     % (self.path,)))
        return succeed(list(self._index))

    # -- testing hook ------------------------------------------------------

    def stored_payloads(self) -> int:
        """
        Testing hook of the conformance kit: committed ``msg/`` entries,
        counted in the database rather than taken from the refcounts.
        """
        if self._db is None:
            raise StoreNotOpen(self.path)
        return sum(1 for _ in self._db.iterator(prefix=MSG_PREFIX,
                                                include_value=False))

    def __repr__(self) -> str:
        return "<LevelDBMessageStore %s sync=%s>" % (self.path, self.sync)
