"""
Draining a node that leaves the cluster (``vmqtw-admin cluster leave -k``).

VerneMQ's clustering page warns that the offline messages of a leaving node
are lost; its ``-k`` flag moves them first, and so does this.  The leaving
node:

1. closes its MQTT listeners and drops their connections (so no session
   can start or go on here: persistent ones become offline queues, wills
   fire as for any dropped connection);
2. *waits* while clients reconnect elsewhere: each one that does moves its
   session to its new node as any takeover does (the queue is handed
   over).  It waits as long as that goes on -- the number of offline
   queues here fell during the last ``interval`` -- but not past
   ``wait_limit``;
3. *moves* every remaining offline queue to a node of the others (a stable
   hash of the client id, :func:`~vmqtw.broker.subscriptions.home_node`),
   each under the client id's registration lease, so a CONNECT of that
   client racing the move is serialized with it.  The node taking the
   session registers it itself (:meth:`Registry.take_offline`), as if its
   client had connected there: it then routes the session's messages
   before any other node sends them to it (had the leaving node written
   the record, a third node could learn it first and send messages the
   new home would not yet route), and the leaving node hands the queue
   over as in any takeover;
4. *flushes*: done once nothing is left that another node still has to
   acknowledge -- no queue, no stored message (a handed-over message's
   copy here goes when its new node stored it), nothing unacknowledged on
   the data plane -- and every hand-over's end marker went out (after
   every node routes the session to its new node).

The admin then removes the node (an ordinary leave, which finds nothing to
lose).  The drain keeps no state on disk: a node restarted in the middle
serves MQTT again, and ``cluster leave -k`` may simply be run again.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Dict, Iterable, List, Optional, Set

import attrs
from twisted.internet.defer import (Deferred, DeferredSemaphore, gatherResults, inlineCallbacks,
                                    succeed)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from vmqtw.broker.coordinator import Lease
from vmqtw.broker.registry import Registry
from vmqtw.broker.subscriptions import home_node
from vmqtw.cluster.dataplane import OUTBOX_MOUNTPOINT
from vmqtw.interfaces import IClusterTransport
from vmqtw.types import SubscriberId

__all__ = ["Drain", "DrainProgress", "IDLE", "WAITING", "MOVING", "FLUSHING", "DONE",
           "MOVES_AT_ONCE", "TAKE_METHOD"]

IDLE = "idle"
WAITING = "waiting"
MOVING = "moving"
FLUSHING = "flushing"
DONE = "done"

#: The call a draining node makes of the node taking one of its offline
#: sessions: ``(mountpoint, client_id)`` -> True once it registered it.
TAKE_METHOD = "vmq.drain.take"
#: Seconds a draining node waits for that answer (the taker's bounded
#: confirmation included).
TAKE_TIMEOUT = 15.0

#: Queues moved at once (each waits for its lease and its record's
#: confirmation; VerneMQ drains up to 1,000 at once).
MOVES_AT_ONCE = 100


@attrs.frozen(slots=True)
class DrainProgress:
    """Where a drain is, as the admin prints it (all counts of this node)."""

    phase: str
    #: Clients still connected here.
    online: int = 0
    #: Offline persistent sessions still here, and the messages they hold.
    queues: int = 0
    messages: int = 0
    #: Messages handed to other nodes that they have not acknowledged yet.
    unacknowledged: int = 0
    #: Sessions whose clients reconnected on another node (their queues
    #: went with them), and queues the drain moved with their messages.
    reconnected: int = 0
    moved_queues: int = 0
    moved_messages: int = 0
    seconds: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return attrs.asdict(self)


class Drain:
    """
    The drain of this node, and its part in other nodes' drains (it takes
    sessions they give it).  ``suspend()`` closes the MQTT listeners and
    their connections; ``others()`` names the cluster members this node
    may move sessions to (reachable, not itself); ``transport`` reaches
    them.
    """

    log = Logger()

    def __init__(self, registry: Registry, clock: IReactorTime,
                 suspend: Callable[[], Any], others: Callable[[], Collection[str]],
                 transport: IClusterTransport) -> None:
        self.registry = registry
        self.transport = transport
        transport.register_call_handler(TAKE_METHOD, self._take)
        self.clock = clock
        self.suspend = suspend
        self.others = others
        self.phase = IDLE
        self._began = 0.0
        self._interval = 1.0
        self._wait_until = 0.0
        self._last_count = 0
        self._timer: Optional[IDelayedCall] = None
        #: Persistent sessions here when the listeners closed.
        self._initial: Set[SubscriberId] = set()
        self._moved: Set[SubscriberId] = set()
        self.moved_messages = 0
        self._unacknowledged = 0

    # -- the admin's view -------------------------------------------------------

    def start(self, interval: float, wait_limit: float) -> DrainProgress:
        """
        Begin (or go on with: a second ``leave -k`` after a timeout) the
        drain; the progress so far.
        """
        if self.phase == IDLE:
            self.phase = WAITING
            self._began = self.clock.seconds()
            self._interval = max(0.05, interval)
            self._wait_until = self._began + max(0.0, wait_limit)
            self.log.warn("this node leaves the cluster: its MQTT listeners close and its "
                          "sessions move to the other nodes")
            self.suspend()
            self._initial = {sid for sid, queue in self.registry.queues.items()
                             if not queue.clean_session}
            self._last_count = len(self._initial)
            self._schedule(self._check_waiting)
        elif self.phase == DONE:
            # Something may have arrived since (a late forward): check again.
            self.phase = FLUSHING
            self._schedule(self._check_flushed, 0.0)
        return self.progress()

    def progress(self) -> DrainProgress:
        registry = self.registry
        offline = [queue for queue in registry.queues.values() if not queue.online]
        still_here = set(registry.queues)
        reconnected = len(self._initial - still_here - self._moved)
        return DrainProgress(
            phase=self.phase, online=len(registry.sessions), queues=len(offline),
            messages=sum(queue.size() for queue in offline),
            unacknowledged=self._unacknowledged, reconnected=reconnected,
            moved_queues=len(self._moved), moved_messages=self.moved_messages,
            seconds=round(self.clock.seconds() - self._began, 1) if self.phase != IDLE else 0.0)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- the phases ---------------------------------------------------------------

    def _schedule(self, step: Callable[[], Any], delay: Optional[float] = None) -> None:
        self._timer = self.clock.callLater(self._interval if delay is None else delay, step)

    def _offline_count(self) -> int:
        return sum(1 for queue in self.registry.queues.values()
                   if not queue.online and not queue.clean_session)

    def _check_waiting(self) -> None:
        # Persistent sessions still here, whether their connection is
        # closed yet or not: each client that reconnects elsewhere takes
        # its own away.
        count = sum(1 for queue in self.registry.queues.values() if not queue.clean_session)
        falling = count < self._last_count
        self._last_count = count
        if count and falling and self.clock.seconds() < self._wait_until:
            self._schedule(self._check_waiting)
            return
        self.phase = MOVING
        self._move_all().addBoth(self._moved_all)

    @inlineCallbacks
    def _move_all(self) -> Any:
        registry = self.registry
        others = sorted(self.others())
        if not others:
            self.log.warn("no other node is reachable: the offline sessions stay here for now")
            return
        waiting = [sid for sid, queue in registry.queues.items()
                   if not queue.online and not queue.clean_session]
        self.log.info("moving {count} offline sessions to {nodes}", count=len(waiting),
                      nodes=", ".join(others))
        limit = DeferredSemaphore(MOVES_AT_ONCE)
        yield gatherResults([limit.run(self._move, sid, home_node(sid.client_id, others))
                             for sid in waiting], consumeErrors=True)

    def _move(self, subscriber_id: SubscriberId, node: str) -> Deferred:
        coordinated = self.registry.coordinate(subscriber_id)
        leased: Deferred = coordinated if coordinated is not None else succeed(None)

        def give(lease: Optional[Lease]) -> Deferred:
            queue = self.registry.queues.get(subscriber_id)
            size = queue.size() if queue is not None else 0
            asked = self.transport.call(node, TAKE_METHOD,
                                        (subscriber_id.mountpoint, subscriber_id.client_id),
                                        TAKE_TIMEOUT)

            def taken(yes: Any) -> None:
                if yes is True:
                    self._moved.add(subscriber_id)
                    self.moved_messages += size

            def give_back(result: Any) -> Any:
                if lease is not None:
                    lease.release()
                return result
            return asked.addCallback(taken).addBoth(give_back)

        def not_now(failure: Any) -> None:
            # No lease or no answer: the flush phase tries again.
            self.log.info("session {client_id} not moved yet: {why}",
                          client_id=subscriber_id.client_id, why=failure.getErrorMessage())

        return leased.addCallback(give).addErrback(not_now)

    def _take(self, peer: str, mountpoint: str, client_id: str) -> "Deferred[bool]":
        """Another node drains and gives us one of its offline sessions."""
        return self.registry.take_offline(SubscriberId(mountpoint, client_id), peer)

    def _moved_all(self, result: Any) -> None:
        self.phase = FLUSHING
        self._schedule(self._check_flushed, 0.0)

    def _check_flushed(self) -> None:
        self._unacknowledged_now().addCallback(self._flushed_or_not)

    def _flushed_or_not(self, unacknowledged: int) -> None:
        self._unacknowledged = unacknowledged
        if self._offline_count():
            # A session the move could not take yet (no lease, no other
            # node): try again.
            self.phase = MOVING
            self._move_all().addBoth(lambda _: self._schedule(self._check_flushed))
            return
        if unacknowledged or self.registry.sessions or self.registry.ending:
            self._schedule(self._check_flushed)
            return
        self.phase = DONE
        self.log.info("drained: {moved} sessions with {messages} messages moved, {back} "
                      "reconnected elsewhere", moved=len(self._moved),
                      messages=self.moved_messages,
                      back=len(self._initial - set(self.registry.queues) - self._moved))

    @inlineCallbacks
    def _unacknowledged_now(self) -> Any:
        """
        Messages another node has yet to acknowledge: the data plane's
        unacknowledged entries (handed-over messages among them) or, once
        there are none, stored copies of handed-over messages not yet
        deleted.
        """
        registry = self.registry
        dataplane = registry.dataplane
        if dataplane is not None:
            pending = sum(messages for messages, _size in dataplane.backlog().values())
            if pending:
                return pending
        count = 0
        store = registry.store
        if store is not None:
            subscribers: Iterable[SubscriberId] = yield store.subscribers()
            for subscriber_id in subscribers:
                if subscriber_id.mountpoint == OUTBOX_MOUNTPOINT \
                        or subscriber_id in registry.queues:
                    continue
                refs: List[bytes] = yield store.find(subscriber_id)
                count += len(refs)
        return count
