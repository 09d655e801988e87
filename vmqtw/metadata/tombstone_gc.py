"""
Tombstone garbage collection: deletes that do not live forever.

Plumtree kept every tombstone for ever, so VerneMQ clusters with random
client ids grew without bound.  Here a tombstone is dropped once every
current member has seen it:

* Each tombstone has one *coordinator*: the node that wrote the winning
  delete if it is still a member, else the smallest member.  Only it runs
  the protocol for that key, so a delete costs O(N) messages, not O(N^2).
* Every ``interval`` the coordinator asks each other member
  (``md_gc_check``, batched) whether its object for the key has seen the
  tombstone's context.  A missing or older object says no; an
  unreachable member blocks collection (so memory grows during a
  partition, bounded by what was deleted, and shrinks after the heal).
* When all say yes the coordinator drops its tombstone and casts
  ``md_gc_drop``; each member drops the key if its object is still that
  exact tombstone (a newer write survives).
* A dropped key is remembered as ``(context, expiry)`` for ``grace``
  seconds: stale copies arriving late (a delayed broadcast, an exchange
  with a node that missed the drop) are refused meanwhile, and a new local
  write of the key builds on that context.  Dots are never reused because
  the store numbers its events with one counter across keys.  A tombstone
  that survives somewhere (a lost drop) is spread again by anti-entropy
  after the grace period and collected in the next round.
"""
from __future__ import annotations

from typing import Any, Callable, Generator, Iterable, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vmqtw.metadata import dvvset, mdobject

__all__ = ["TombstoneCollector"]

log = Logger()


class TombstoneCollector:
    """Collects one store's tombstones; see the module docstring."""

    def __init__(self, store: Any, transport: Any, clock: IReactorTime,
                 members: Callable[[], Iterable[str]],
                 interval: float = 10.0, grace: Optional[float] = None,
                 batch: int = 1000, timeout: float = 30.0) -> None:
        self.store = store
        self.transport = transport
        self.clock = clock
        self.members = members
        self.interval = interval
        self.grace = grace if grace is not None else 6 * interval
        self.batch = batch
        self.timeout = timeout
        self.collected = 0
        self._loop: Optional[LoopingCall] = None
        self._running = False
        transport.register_call_handler("md_gc_check", self._rpc_check)
        transport.register_cast_handler("md_gc_drop", self._on_drop)

    def start(self) -> None:
        self._loop = LoopingCall(self.collect_once)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _coordinator(self, obj: Any, members: List[str]) -> str:
        node = mdobject.winner(obj)[2]
        return node if node in members else members[0]

    def collect_once(self) -> defer.Deferred:
        """One round; fires with the number of tombstones dropped here."""
        if self._running:
            return defer.succeed(0)
        self._running = True
        d = self._round()

        def done(result: Any) -> Any:
            self._running = False
            return result

        def failed(failure: Any) -> int:
            log.info("tombstone collection failed: {why}",
                     why=failure.getErrorMessage())
            return 0
        return d.addBoth(done).addErrback(failed)

    @defer.inlineCallbacks
    def _round(self) -> Generator[defer.Deferred[Any], Any, int]:
        store = self.store
        now = self.clock.seconds()
        store.expire_collected(now)
        members = sorted(set(self.members()) | {store.node})
        mine = [(p[0], p[1], k, dvvset.join(obj))
                for p, k, obj in store.tombstones()
                if self._coordinator(obj, members) == store.node]
        others = [m for m in members if m != store.node]
        dropped = 0
        for i in range(0, len(mine), self.batch):
            items = tuple(mine[i:i + self.batch])
            acked = [True] * len(items)
            for peer in others:
                answer = yield self.transport.call(peer, "md_gc_check",
                                                   (items,), self.timeout)
                acked = [a and b for a, b in zip(acked, answer)]
            done = tuple(it for it, ok in zip(items, acked) if ok)
            if not done:
                continue
            dropped += self._drop(done)
            for peer in others:
                self.transport.cast(peer, "md_gc_drop", done)
        self.collected += dropped
        return dropped

    def _drop(self, items: tuple) -> int:
        until = self.clock.seconds() + self.grace
        n = 0
        for p1, p2, key, ctx in items:
            if self.store.collect((p1, p2), key, ctx, until):
                n += 1
        return n

    def _rpc_check(self, peer: str, items: tuple) -> tuple:
        seen = self.store.has_seen
        return tuple(seen((p1, p2), key, ctx) for p1, p2, key, ctx in items)

    def _on_drop(self, peer: str, items: tuple) -> None:
        self.collected += self._drop(items)
