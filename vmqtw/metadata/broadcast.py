"""
Plumtree: epidemic broadcast trees (Leitao et al.) as riak_core/VerneMQ run
them, over an :class:`IClusterTransport`.

Per root (the node a broadcast started on) every node keeps *eager* peers
(sent the whole payload at once) and *lazy* peers (sent only an ``i_have``
announcement on the lazy tick).  A duplicate payload prunes its sender to
lazy; an announcement of something new grafts its sender to eager.  So the
eager links converge to a spanning tree per root -- N-1 payloads per
broadcast -- while the lazy links repair it when a link or node fails.

What the broadcast means is up to *handlers* (the metadata store is one):
``merge(mid, payload) -> changed``, ``is_stale(mid)``,
``graft(mid) -> ("ok", payload) | "stale" | "error"``, ``exchange(peer)``.

Departures from riak_core, each for a reason:

* announcements and their answers are batched per peer and tick (one
  ``i`` message carries many ids), so a burst of writes costs one lazy
  message per peer per tick instead of one per write;
* the outstanding table is bounded per peer (load shedding during long
  partitions; anti-entropy repairs what was shed);
* i_haves go only to connected peers; a peer coming up gets them at once
  and an anti-entropy exchange soon after, so healing is fast;
* any membership change rebuilds the initial trees, and ``all_members``
  is always refreshed;
* the exchange peer is a uniformly random connected member (riak's
  preference for peers outside the tree pins each node to one partner).

Wire messages on channel ``plumtree`` (tuples, the tag first):
``("b", handler, mid, payload, round, root)``, ``("p", root)``,
``("i", handler, ((mid, round, root), ...))`` and likewise ``"ig"``
(ignored i_have, the ack) and ``"g"`` (graft).
"""
from __future__ import annotations

import math
import random
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["PlumtreeBroadcast", "CHANNEL", "tree_peers"]

log = Logger()

CHANNEL = "plumtree"
#: Announcements per ``i``/``ig``/``g`` message.
BATCH = 500

Entry = Tuple[Any, int, str]  # (mid, round, root)


def tree_peers(node: str, members: Iterable[str], rng: random.Random
               ) -> Tuple[Set[str], Set[str]]:
    """
    The initial ``(eager, lazy)`` peers of ``node``: the sorted members as
    an array k-ary tree wrapped around (so leaves have children too), our
    children eager; one random other node lazy.
    """
    ordered = sorted(set(members) | {node})
    n = len(ordered)
    if n <= 1:
        return set(), set()
    if n == 2:
        return {m for m in ordered if m != node}, set()
    if n <= 4:
        k = 1
    elif n <= 9:
        k = 2
    else:
        k = int(round(math.log(n) + 1))
    i = ordered.index(node)
    eager = {ordered[(i * k + j) % n] for j in range(1, k + 1)} - {node}
    if not eager:
        eager = {ordered[(i + 1) % n]}
    others = [m for m in ordered if m != node and m not in eager]
    lazy = {rng.choice(others)} if others else set()
    return eager, lazy


class PlumtreeBroadcast:
    """One node's broadcast server; see the module docstring."""

    def __init__(self, node: str, transport: Any, clock: IReactorTime,
                 rng: Optional[random.Random] = None,
                 members: Iterable[str] = (),
                 lazy_tick: float = 1.0, exchange_tick: float = 10.0,
                 outstanding_limit: int = 250_000,
                 exchange_limit: int = 1,
                 exchange_on_up_delay: Optional[float] = 1.0) -> None:
        self.node = node
        self.transport = transport
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.lazy_tick = lazy_tick
        self.exchange_tick = exchange_tick
        self.outstanding_limit = outstanding_limit
        self.exchange_limit = exchange_limit
        self.exchange_on_up_delay = exchange_on_up_delay
        self.handlers: Dict[str, Any] = {}
        self._mods: List[str] = []
        self.all_members: Set[str] = {node}
        self.common_eagers: Set[str] = set()
        self.common_lazys: Set[str] = set()
        self.eager_sets: Dict[str, Set[str]] = {}
        self.lazy_sets: Dict[str, Set[str]] = {}
        #: ``peer -> {(handler, mid, round, root): None}`` (insertion order)
        self.outstanding: Dict[str, Dict[tuple, None]] = {}
        self.shed = 0
        self.exchanges_running = 0
        self._loops: List[LoopingCall] = []
        self._delayed: List[Any] = []
        self._initialised = False
        transport.register_cast_handler(CHANNEL, self._received)
        transport.add_peer_listener(self._peer_up, self._peer_down)
        self.update_members(members)

    # -- lifecycle ------------------------------------------------------------
    def register_handler(self, name: str, handler: Any) -> None:
        self.handlers[name] = handler
        self._mods.append(name)

    def start(self) -> None:
        """Start the lazy and exchange ticks (not run at once)."""
        for interval, function in ((self.lazy_tick, self.send_lazy),
                                   (self.exchange_tick, self.exchange_once)):
            loop = LoopingCall(self._guarded, function)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def _guarded(self, function: Any) -> None:
        """Run a tick; an error is logged and never stops the loop."""
        try:
            function()
        except Exception:
            log.failure("plumtree tick {name} failed",
                        name=getattr(function, "__name__", function))

    def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for call in self._delayed:
            if call.active():
                call.cancel()
        self._delayed = []

    # -- membership ---------------------------------------------------------------
    def update_members(self, members: Iterable[str]) -> None:
        """
        Rebuild the trees for a new membership; peers that left are
        forgotten everywhere, outstanding entries included.
        """
        members = set(members) | {self.node}
        if members == self.all_members and self._initialised:
            return
        self._initialised = True
        removed = self.all_members - members
        added = members - self.all_members - {self.node}
        self.all_members = members
        self.common_eagers, self.common_lazys = tree_peers(
            self.node, members, self.rng)
        self.eager_sets.clear()
        self.lazy_sets.clear()
        for peer in removed:
            self.outstanding.pop(peer, None)
        for peer in sorted(added):
            # a joining node is usually connected before it is a member:
            # exchange with it soon, as on a reconnect
            if self.transport.connected(peer):
                self._schedule_exchange(peer)

    def eagers(self, root: str) -> Set[str]:
        return self.eager_sets.get(root, self.common_eagers)

    def lazys(self, root: str) -> Set[str]:
        return self.lazy_sets.get(root, self.common_lazys)

    def _sets(self, root: str) -> Tuple[Set[str], Set[str]]:
        eager = self.eager_sets.get(root)
        if eager is None:
            eager = self.eager_sets[root] = set(self.common_eagers)
            self.lazy_sets[root] = set(self.common_lazys)
        return eager, self.lazy_sets[root]

    def _add_eager(self, peer: str, root: str) -> None:
        if peer not in self.all_members:
            return
        eager, lazy = self._sets(root)
        eager.add(peer)
        lazy.discard(peer)

    def _add_lazy(self, peer: str, root: str) -> None:
        if peer not in self.all_members:
            return
        eager, lazy = self._sets(root)
        eager.discard(peer)
        lazy.add(peer)

    # -- broadcasting ------------------------------------------------------------
    def broadcast(self, handler: str, mid: Any, payload: Any) -> None:
        """Broadcast a local change (round 0, rooted here)."""
        self._eager_push(handler, mid, payload, 0, self.node, self.node)
        self._schedule_lazy(handler, mid, 0, self.node, self.node)

    def _eager_push(self, handler: str, mid: Any, payload: Any, round_: int,
                    root: str, sender: str) -> None:
        cast = self.transport.cast
        for peer in sorted(self.eagers(root)):
            if peer != sender:
                cast(peer, CHANNEL, ("b", handler, mid, payload, round_, root))

    def _schedule_lazy(self, handler: str, mid: Any, round_: int, root: str,
                       sender: str) -> None:
        for peer in self.lazys(root):
            if peer == sender:
                continue
            table = self.outstanding.get(peer)
            if table is None:
                table = self.outstanding[peer] = {}
            if len(table) >= self.outstanding_limit:
                self.shed += 1
                continue
            table[(handler, mid, round_, root)] = None

    def outstanding_count(self) -> int:
        return sum(len(t) for t in self.outstanding.values())

    # -- receiving -----------------------------------------------------------------
    def _received(self, peer: str, message: tuple) -> None:
        tag = message[0]
        if tag == "b":
            _, handler, mid, payload, round_, root = message
            self._on_broadcast(peer, handler, mid, payload, round_, root)
        elif tag == "p":
            self._add_lazy(peer, message[1])
        elif tag == "i":
            self._on_i_have(peer, message[1], message[2])
        elif tag == "ig":
            self._ack(peer, message[1], message[2])
        elif tag == "g":
            self._on_graft(peer, message[1], message[2])
        else:
            log.warn("unknown plumtree message {tag} from {peer}",
                     tag=tag, peer=peer)

    def _on_broadcast(self, peer: str, handler: str, mid: Any, payload: Any,
                      round_: int, root: str) -> None:
        h = self.handlers.get(handler)
        if h is None:
            return
        if h.merge(mid, payload):
            self._add_eager(peer, root)
            self._eager_push(handler, mid, payload, round_ + 1, root, peer)
            self._schedule_lazy(handler, mid, round_ + 1, root, peer)
        else:
            self._add_lazy(peer, root)
            self.transport.cast(peer, CHANNEL, ("p", root))

    def _on_i_have(self, peer: str, handler: str, entries: tuple) -> None:
        h = self.handlers.get(handler)
        if h is None:
            return
        ignored: List[Entry] = []
        wanted: List[Entry] = []
        for entry in entries:
            if h.is_stale(entry[0]):
                ignored.append(entry)
            else:
                wanted.append(entry)
                self._add_eager(peer, entry[2])
        if ignored:
            self.transport.cast(peer, CHANNEL, ("ig", handler, tuple(ignored)))
        if wanted:
            self.transport.cast(peer, CHANNEL, ("g", handler, tuple(wanted)))

    def _ack(self, peer: str, handler: str, entries: tuple) -> None:
        table = self.outstanding.get(peer)
        if not table:
            return
        for mid, round_, root in entries:
            table.pop((handler, mid, round_, root), None)
        if not table:
            del self.outstanding[peer]

    def _on_graft(self, peer: str, handler: str, entries: tuple) -> None:
        h = self.handlers.get(handler)
        if h is None:
            return
        stale: List[Entry] = []
        for mid, round_, root in entries:
            result = h.graft(mid)
            if result == "stale":
                stale.append((mid, round_, root))
            elif isinstance(result, tuple) and result[0] == "ok":
                self._add_eager(peer, root)
                self.transport.cast(peer, CHANNEL,
                                    ("b", handler, mid, result[1], round_,
                                     root))
            else:
                # we no longer have it (collected or never complete): stop
                # announcing it -- anti-entropy repairs whatever is missing
                log.warn("graft of {mid} for {peer} failed", mid=mid,
                         peer=peer)
                stale.append((mid, round_, root))
        if stale:
            self._ack(peer, handler, tuple(stale))

    # -- ticks -----------------------------------------------------------------------
    def send_lazy(self, peers: Optional[Iterable[str]] = None) -> None:
        """Announce every outstanding entry to connected peers."""
        targets = sorted(self.outstanding) if peers is None else peers
        for peer in targets:
            table = self.outstanding.get(peer)
            if not table or not self.transport.connected(peer):
                continue
            by_handler: Dict[str, List[Entry]] = {}
            for handler, mid, round_, root in table:
                by_handler.setdefault(handler, []).append((mid, round_, root))
            for handler, entries in by_handler.items():
                for i in range(0, len(entries), BATCH):
                    self.transport.cast(
                        peer, CHANNEL,
                        ("i", handler, tuple(entries[i:i + BATCH])))

    def exchange_once(self, peer: Optional[str] = None) -> Optional[defer.Deferred]:
        """
        Start one anti-entropy exchange with ``peer`` or a random connected
        one, with the next handler in turn, unless ``exchange_limit`` are
        running.
        """
        if not self._mods or self.exchanges_running >= self.exchange_limit:
            return None
        if peer is None:
            peer = self._pick_exchange_peer()
            if peer is None:
                return None
        name = self._mods[0]
        self._mods = self._mods[1:] + self._mods[:1]
        d = self.handlers[name].exchange(peer)
        if d is None:
            return None
        self.exchanges_running += 1

        def done(result: Any) -> Any:
            self.exchanges_running -= 1
            return result

        def failed(failure: Any) -> None:
            log.info("exchange with {peer} failed: {why}", peer=peer,
                     why=failure.getErrorMessage())
        return d.addBoth(done).addErrback(failed)

    def _pick_exchange_peer(self) -> Optional[str]:
        """
        A uniformly random connected member.  riak_core prefers members
        outside a random root's tree, but with a stable tree that is the
        same peer every time: the randomised fault tests found clusters
        split into pairs ({A,C}, {B,D}) that repaired only each other.
        """
        connected = [p for p in sorted(self.all_members - {self.node})
                     if self.transport.connected(p)]
        if not connected:
            return None
        return self.rng.choice(connected)

    # -- liveness -----------------------------------------------------------------------
    def _peer_up(self, peer: str) -> None:
        if peer not in self.all_members:
            return
        self.send_lazy([peer])
        self._schedule_exchange(peer)

    def _schedule_exchange(self, peer: str) -> None:
        """An exchange with ``peer`` within ``exchange_on_up_delay``."""
        if self.exchange_on_up_delay is not None and self._loops:
            delay = self.rng.uniform(0, self.exchange_on_up_delay)
            self._delayed = [c for c in self._delayed if c.active()]
            self._delayed.append(
                self.clock.callLater(delay, self._exchange_if_up, peer))

    def _exchange_if_up(self, peer: str) -> None:
        if self.transport.connected(peer):
            self.exchange_once(peer)

    def _peer_down(self, peer: str) -> None:
        """Nothing to do: membership, not liveness, shapes the trees."""
