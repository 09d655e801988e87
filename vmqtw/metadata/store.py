"""
The replicated metadata store: :class:`ReplicatedMetadataStore`.

Reads come from one dict per prefix; every change is written through to
LevelDB (when a directory is given), recorded in the Merkle tree for
anti-entropy, announced to subscribers synchronously, and -- for local
writes only -- handed to the broadcast layer (plumtree).  Replicated and
repaired objects arrive through :meth:`merge` / :meth:`repair`.

The store is also the plumtree *handler* for its channel: message ids are
``(p1, p2, key, context)`` and payloads the whole object, so
``is_stale``/``graft`` can be answered from the local object alone.

Identity: the DVV actor id is created once per data directory and persisted
in it.  A restart keeps it (counters continue); a wiped directory gets a new
one, so the node never reuses a dot it handed out before with a different
value -- peers would take the new value for one they already have.
"""
from __future__ import annotations

import os
from typing import (Any, Callable, Dict, Iterator, List, Optional, Tuple)

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from vmqtw.interfaces import ChangeOrigin, IMetadataStore, MetadataCallback
from vmqtw.metadata import dvvset, mdobject
from vmqtw.metadata.codec import decode, encode, encode_pkey
from vmqtw.metadata.hashtree import HashTree
from vmqtw.metadata.mdobject import DELETED, MDObject

__all__ = ["ReplicatedMetadataStore", "HANDLER", "random_actor"]

log = Logger()

#: The plumtree handler name of the metadata store.
HANDLER = "md"

Prefix = Tuple[str, str]
_ACTOR_KEY = b"\x00actor"
_COUNTER_KEY = b"\x00counter"
#: Dots are reserved in blocks so that the persisted bound is written once
#: per block, not once per put.  The write is synchronous (fsync) on the
#: reactor thread: it happens when the store opens, before the node serves,
#: and then once per block -- large, because an fsync under disk load can
#: take seconds, long enough for peers to take the node for dead.  Dots
#: skipped by a restart cost nothing.
_COUNTER_BLOCK = 1 << 20
_ABSENT = object()


def _visible(obj: Optional[MDObject]) -> Any:
    """The LWW value, or ``_ABSENT`` for absent/deleted keys."""
    if obj is None:
        return _ABSENT
    vals = dvvset.values(obj)
    if not vals:
        return _ABSENT
    boxed = (vals[0] if len(vals) == 1 else mdobject.winner(obj))[0]
    return boxed[0] if boxed else _ABSENT


def random_actor(node: str) -> str:
    """A fresh DVV actor id: the node name plus 48 random bits."""
    return "%s/%s" % (node, os.urandom(6).hex())


@implementer(IMetadataStore)
class ReplicatedMetadataStore:
    """
    ``IMetadataStore`` replicated by plumtree and anti-entropy.

    ``node`` names this node (it tie-breaks LWW); ``clock`` gives the
    timestamps of values; ``data_dir`` (optional) holds the LevelDB;
    ``actor_factory(node)`` makes a fresh DVV actor id (tests pass a
    deterministic one).
    """

    def __init__(self, node: str, clock: IReactorTime,
                 data_dir: Optional[str] = None,
                 actor_factory: Callable[[str], str] = random_actor,
                 open_now: bool = True) -> None:
        self.node = node
        self.clock = clock
        self.tree = HashTree()
        #: prefix -> key -> canonical encoding of the object.  Kept encoded
        #: because a decoded object is a dozen small Python objects (~1 KB
        #: per key); decoding one on access costs about a microsecond.
        self._data: Dict[Prefix, Dict[Any, bytes]] = {}
        self._subscribers: Dict[Prefix, List[MetadataCallback]] = {}
        self._tombstones: Dict[Tuple[Prefix, Any], None] = {}
        #: ``(prefix, key) -> (context, expires_at)`` of collected
        #: tombstones; stale copies of them are refused until expiry.
        self._collected: Dict[Tuple[Prefix, Any], Tuple[Any, float]] = {}
        self._broadcast: Optional[Callable[[str, Any, Any], None]] = None
        #: ``exchange(peer) -> Deferred``, set by the anti-entropy layer.
        self.exchanger: Optional[Callable[[str], Any]] = None
        self._db = None
        self._actor_factory = actor_factory
        #: The last dot this actor used, across all keys.
        self._counter = 0
        self._reserved = 0
        #: Where the LevelDB is (None: in memory only), and whether
        #: :meth:`open` has run.
        self.data_dir = data_dir
        self.opened = False
        #: This node's DVV actor id (read from the LevelDB by :meth:`open`).
        self.actor = ""
        if open_now:
            self.open()

    def open(self) -> None:
        """
        Open the LevelDB (if any) and load what it holds.  Separate from
        the constructor so that a node that daemonizes opens it after the
        fork: LevelDB's file lock is not inherited by a child process, and
        neither is the background thread that compacts it (a store opened
        before the fork would never compact in the daemon, and another
        process could open it beside it).
        """
        if self.opened:
            return
        data_dir = self.data_dir
        if data_dir is not None:
            import plyvel
            os.makedirs(data_dir, exist_ok=True)
            db = self._db = plyvel.DB(data_dir, create_if_missing=True)
            actor = db.get(_ACTOR_KEY)
            if actor is None:
                self.actor = self._actor_factory(self.node)
                db.put(_ACTOR_KEY, encode(self.actor), sync=True)
            else:
                self.actor = decode(actor)
            reserved = db.get(_COUNTER_KEY)
            if reserved is not None:
                self._counter = self._reserved = decode(reserved)
            self._load()
            # Reserve now, while nothing waits on this thread.
            self._reserved = self._counter + _COUNTER_BLOCK
            db.put(_COUNTER_KEY, encode(self._reserved), sync=True)
        else:
            self.actor = self._actor_factory(self.node)
        self.opened = True   # only once it is: a failed open can be retried

    def _load(self) -> None:
        db = self._db
        assert db is not None  # only called once the database is open
        for kenc, oenc in db.iterator():
            if kenc.startswith(b"\x00"):
                continue
            p1, p2, key = decode(kenc)
            prefix = (p1, p2)
            obj = decode(oenc)
            self._data.setdefault(prefix, {})[key] = oenc
            self.tree.insert(prefix, kenc, mdobject.hash_bytes(oenc))
            if mdobject.is_tombstone(obj):
                self._tombstones[(prefix, key)] = None
            n = dvvset.counter_of(obj, self.actor)
            if n > self._counter:
                self._counter = n

    def wipe(self) -> None:
        """
        Forget every key (without events or broadcasts) and take a new
        actor id: what a node does when it has left the cluster, so that
        rejoining later cannot bring back values the cluster has deleted
        and collected meanwhile.
        """
        self._data.clear()
        self._tombstones.clear()
        self._collected.clear()
        self.tree = HashTree()
        self.actor = self._actor_factory(self.node)
        self._counter = self._reserved = 0
        if self._db is not None:
            with self._db.write_batch() as batch:
                for kenc in self._db.iterator(include_value=False):
                    batch.delete(kenc)
                batch.put(_ACTOR_KEY, encode(self.actor))
            # A new block, durable with the synced put after it (one log).
            self._reserved = _COUNTER_BLOCK
            self._db.put(_COUNTER_KEY, encode(self._reserved))
            self._db.put(_ACTOR_KEY, encode(self.actor), sync=True)

    def close(self) -> None:
        """Close the LevelDB (the in-memory state stays readable)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def set_broadcast(self, broadcast: Callable[[str, Any, Any], None]
                      ) -> None:
        """``broadcast(handler, mid, payload)`` for local writes."""
        self._broadcast = broadcast

    # -- IMetadataStore -------------------------------------------------------
    def put(self, prefix: Prefix, key: Any, value: Any) -> None:
        self._write(prefix, key, (value,))

    def get(self, prefix: Prefix, key: Any, default: Any = None,
            resolver: Optional[Callable[[Tuple[Any, ...]], Any]] = None
            ) -> Any:
        """
        The value of ``key``; siblings are resolved LWW and written back,
        or, with ``resolver(values)`` (deleted siblings given as ``None``),
        replaced by its result as a new write that is broadcast.
        """
        obj = self._lookup(prefix, key)
        if obj is None:
            return default
        if dvvset.size(obj) > 1:
            if resolver is not None:
                values = tuple(v[0][0] if v[0] else None
                               for v in dvvset.values(obj))
                obj = self._write(prefix, key, (resolver(values),))
            else:
                obj = self._resolve(prefix, key, obj)
        value = _visible(obj)
        return default if value is _ABSENT else value

    def delete(self, prefix: Prefix, key: Any) -> None:
        obj = self._lookup(prefix, key)
        if obj is None or (dvvset.size(obj) == 1 and
                           mdobject.is_tombstone(obj)):
            return
        self._write(prefix, key, DELETED)

    def items(self, prefix: Prefix) -> Iterator[Tuple[Any, Any]]:
        table = self._data.get(prefix)
        if not table:
            return
        for key, enc in list(table.items()):
            obj = decode(enc)
            if dvvset.size(obj) > 1:
                obj = self._resolve(prefix, key, obj)
            value = _visible(obj)
            if value is not _ABSENT:
                yield key, value

    def fold(self, prefix: Prefix, function: Callable, accumulator: Any
             ) -> Any:
        for item in self.items(prefix):
            accumulator = function(item, accumulator)
        return accumulator

    def subscribe(self, prefix: Prefix, callback: MetadataCallback
                  ) -> Callable[[], None]:
        callbacks = self._subscribers.setdefault((prefix[0], prefix[1]), [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)
        return unsubscribe

    # -- raw access (tests, exchange, GC) -------------------------------------
    def raw(self, prefix: Prefix, key: Any) -> Optional[MDObject]:
        """The stored object, siblings and tombstones included."""
        return self._lookup(prefix, key)

    def raw_items(self, prefix: Prefix) -> List[Tuple[Any, MDObject]]:
        return [(k, decode(v)) for k, v in self._data.get(prefix, {}).items()]

    def _lookup(self, prefix: Prefix, key: Any) -> Optional[MDObject]:
        table = self._data.get(prefix)
        if table is None:
            return None
        enc = table.get(key)
        return None if enc is None else decode(enc)

    def prefixes(self) -> List[Prefix]:
        return sorted(p for p, t in self._data.items() if t)

    def key_count(self) -> int:
        return sum(len(t) for t in self._data.values())

    def tombstone_count(self) -> int:
        return len(self._tombstones)

    def tombstones(self) -> List[Tuple[Prefix, Any, MDObject]]:
        return [(p, k, decode(self._data[p][k])) for p, k in self._tombstones]

    # -- write path ------------------------------------------------------------
    def _next_dot(self, obj: Optional[MDObject]) -> int:
        """
        The dot of a new local event: above every dot this actor ever
        used, on any key, so a key whose tombstone was collected never gets
        an old dot again.  The bound is persisted a block ahead.
        """
        n = self._counter + 1
        if obj is not None:
            n = max(n, dvvset.counter_of(obj, self.actor) + 1)
        self._counter = n
        if n > self._reserved:
            self._reserved = n + _COUNTER_BLOCK
            if self._db is not None:
                self._db.put(_COUNTER_KEY, encode(self._reserved), sync=True)
        return n

    def _write(self, prefix: Prefix, key: Any, boxed: tuple) -> MDObject:
        prefix = (prefix[0], prefix[1])
        old = self._lookup(prefix, key)
        base = old
        if old is None and self._collected:
            gone = self._collected.get((prefix, key))
            if gone is not None:
                # Write over the collected tombstone's history so the new
                # value dominates any copy of it still in flight.
                base = (tuple((i, n, ()) for i, n in gone[0]), ())
        new = mdobject.modify(base, boxed, self.actor, self.clock.seconds(),
                              self.node, self._next_dot(base))
        self._commit(prefix, key, old, new, ChangeOrigin.LOCAL)
        if self._broadcast is not None:
            self._broadcast(HANDLER, *self.broadcast_data((prefix, key, new)))
        return new

    def _resolve(self, prefix: Prefix, key: Any, obj: MDObject) -> MDObject:
        """Write the LWW winner back (same history) and broadcast it."""
        new = mdobject.resolve(obj)
        # The visible value does not change (the winner was already shown),
        # so no event fires; were one to, the value is another write's.
        self._commit(prefix, key, obj, new, ChangeOrigin.REMOTE)
        if self._broadcast is not None:
            self._broadcast(HANDLER, *self.broadcast_data((prefix, key, new)))
        return new

    def _commit(self, prefix: Prefix, key: Any, old: Optional[MDObject],
                new: MDObject, origin: ChangeOrigin) -> None:
        table = self._data.get(prefix)
        if table is None:
            table = self._data[prefix] = {}
        kenc = encode_pkey(prefix, key)
        oenc = encode(new)
        table[key] = oenc
        if self._db is not None:
            self._db.put(kenc, oenc)
        self.tree.insert(prefix, kenc, mdobject.hash_bytes(oenc))
        tkey = (prefix, key)
        if mdobject.is_tombstone(new):
            self._tombstones[tkey] = None
        elif tkey in self._tombstones:
            del self._tombstones[tkey]
        if self._collected:
            self._collected.pop(tkey, None)
        self._notify(prefix, key, old, new, origin)

    def _notify(self, prefix: Prefix, key: Any, old: Optional[MDObject],
                new: Optional[MDObject], origin: ChangeOrigin) -> None:
        callbacks = self._subscribers.get(prefix)
        if not callbacks:
            return
        before, after = _visible(old), _visible(new)
        if before is _ABSENT and after is _ABSENT:
            return
        if before is not _ABSENT and after is not _ABSENT and before == after:
            return
        before = None if before is _ABSENT else before
        after = None if after is _ABSENT else after
        for callback in list(callbacks):
            try:
                callback(prefix, key, before, after, origin)
            except Exception:
                log.failure("metadata subscriber failed on {prefix} {key}",
                            prefix=prefix, key=key)

    # -- remote objects ---------------------------------------------------------
    def merge_object(self, prefix: Prefix, key: Any, remote: MDObject) -> bool:
        """
        Merge a replicated or repaired object; True when it changed ours.
        Never broadcasts (plumtree forwards, repairs are not rebroadcast).
        """
        prefix = (prefix[0], prefix[1])
        if not remote or not dvvset.values(remote):
            log.warn("ignoring an object without values for {key}", key=key)
            return False
        local = self._lookup(prefix, key)
        if local is None and self._collected:
            gone = self._collected.get((prefix, key))
            if gone is not None and dvvset.context_descends(
                    gone[0], dvvset.join(remote)):
                return False
        changed, new = mdobject.merge(local, remote)
        if changed:
            self._commit(prefix, key, local, new, ChangeOrigin.REMOTE)
        return changed

    # -- plumtree handler --------------------------------------------------------
    @staticmethod
    def broadcast_data(item: Tuple[Prefix, Any, MDObject]) -> Tuple[tuple, Any]:
        """``(mid, payload)`` of a changed object: the id names the key and
        the object's context, the payload is the object itself."""
        prefix, key, obj = item
        return (prefix[0], prefix[1], key, dvvset.join(obj)), obj

    def merge(self, mid: tuple, payload: MDObject) -> bool:
        p1, p2, key, _ = mid
        return self.merge_object((p1, p2), key, payload)

    def is_stale(self, mid: tuple) -> bool:
        p1, p2, key, ctx = mid
        obj = self._lookup((p1, p2), key)
        if obj is None:
            gone = self._collected.get(((p1, p2), key))
            return gone is not None and dvvset.context_descends(gone[0], ctx)
        return mdobject.is_stale(obj, ctx)

    def graft(self, mid: tuple) -> Any:
        """``("ok", payload)``, ``"stale"`` or ``"error"``."""
        p1, p2, key, ctx = mid
        obj = self._lookup((p1, p2), key)
        if obj is not None and dvvset.join(obj) == tuple(ctx):
            return ("ok", obj)
        if self.is_stale(mid):
            return "stale"
        return "error"

    def exchange(self, peer: str) -> Any:
        if self.exchanger is None:
            return None
        return self.exchanger(peer)

    # -- tombstone GC support ---------------------------------------------------
    def has_seen(self, prefix: Prefix, key: Any, ctx: Any) -> bool:
        """True when this replica's object (or a collected tombstone) for
        ``key`` has seen every event of ``ctx``."""
        return self.is_stale((prefix[0], prefix[1], key, ctx))

    def collect(self, prefix: Prefix, key: Any, ctx: Any,
                keep_until: float) -> bool:
        """
        Drop the tombstone of ``key`` if it is still exactly ``ctx``; stale
        copies are refused until ``keep_until``.  True when dropped.
        """
        prefix = (prefix[0], prefix[1])
        table = self._data.get(prefix)
        obj = self._lookup(prefix, key)
        if table is None or obj is None or dvvset.join(obj) != tuple(ctx) \
                or not mdobject.is_tombstone(obj):
            return False
        del table[key]
        if not table:
            del self._data[prefix]
        kenc = encode_pkey(prefix, key)
        if self._db is not None:
            self._db.delete(kenc)
        self.tree.delete(prefix, kenc)
        self._tombstones.pop((prefix, key), None)
        self._collected[(prefix, key)] = (tuple(ctx), keep_until)
        return True

    def expire_collected(self, now: float) -> None:
        """Forget collected tombstones whose grace period is over."""
        if self._collected:
            for k in [k for k, (_, t) in self._collected.items() if t <= now]:
                del self._collected[k]

    def collected_count(self) -> int:
        return len(self._collected)
