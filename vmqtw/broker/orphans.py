"""
What waited for a node that left the cluster for good.

A node keeps what it sent another node until that node acknowledges it:
publishes forwarded to its subscribers, messages handed over to sessions
that moved there.  When that node leaves (``cluster leave``, dead or
alive), its persistent sessions are re-homed on the survivors; what still
waited for it belongs to those sessions, and dropping it would lose
messages this node acknowledged.  So the data plane gives it here
(:meth:`Orphans.orphaned`), and each message goes to the session's new
home -- once the session's record names it -- as a move passes on a late
arrival, stored here until that node has it.

Which sessions a forwarded publish was for is read from the records as
this node knows them when the node leaves (the re-homing records come
after the membership change that brings us here); passing on is tried for
:data:`ORPHAN_WINDOW` seconds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from vmqtw.broker.subscriptions import all_filters, record_owner
from vmqtw.cluster.dataplane import Orphan
from vmqtw.topic import matches
from vmqtw.types import SUBSCRIBER_PREFIX, Message, SubscriberId
from vmqtw.waits import joined

if TYPE_CHECKING:
    from vmqtw.broker.registry import Registry

__all__ = ["Orphans", "ORPHAN_WINDOW", "ORPHAN_RETRY"]

#: Seconds this node keeps trying to pass on what waited for a node that
#: left the cluster, while that node's sessions are re-homed.
ORPHAN_WINDOW = 60.0
#: Seconds between those tries.
ORPHAN_RETRY = 0.5

#: One message for one session: ``(subscriber_id, message, qos)``.
Item = Tuple[SubscriberId, Message, int]


class Orphans:
    """What waited for nodes that left, until their sessions' new homes have it."""

    log = Logger()

    def __init__(self, registry: "Registry", clock: IReactorTime) -> None:
        self.registry = registry
        self.clock = clock
        #: ``[(node that left, [item], deadline)]``
        self._waiting: List[Tuple[str, List[Item], float]] = []
        self._call: Optional[IDelayedCall] = None

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def orphaned(self, gone: str, orphans: List[Orphan]) -> Optional[Deferred]:
        """
        ``gone`` left with ``orphans`` unacknowledged (or they were routed
        to it after it left).  None, or a Deferred firing once the copies
        passed on at once are stored.
        """
        items = self._items(gone, orphans)
        if not items:
            return None
        stored: List[Deferred] = []
        waiting = [item for item in items if not self._place(gone, *item, stored)]
        if waiting:
            self._waiting.append((gone, waiting, self.clock.seconds() + ORPHAN_WINDOW))
            self._schedule()
        return joined(stored)

    def _items(self, gone: str, orphans: List[Orphan]) -> List[Item]:
        """Each orphan once per session it is for (a forwarded publish: every match)."""
        sessions: Dict[SubscriberId, Dict[str, int]] = {}
        for key, record in self.registry.metadata.items(SUBSCRIBER_PREFIX):
            if record_owner(record) == gone and record and not record[-1][1]:
                sessions[SubscriberId(*key)] = all_filters(record)
        items: List[Item] = []
        for subscriber_id, message, qos in orphans:
            if subscriber_id is not None:
                items.append((subscriber_id, message, qos))
                continue
            for sid, filters in sessions.items():
                granted = max((q for flt, q in filters.items() if matches(flt, message.topic)),
                              default=-1)
                if granted >= 0:
                    items.append((sid, message, min(granted, message.qos)))
        return items

    def _schedule(self) -> None:
        if self._call is None:
            self._call = self.clock.callLater(ORPHAN_RETRY, self._retry)

    def _retry(self) -> None:
        self._call = None
        now = self.clock.seconds()
        left: List[Tuple[str, List[Item], float]] = []
        for gone, items, deadline in self._waiting:
            waiting = [item for item in items if not self._place(gone, *item, [])]
            if waiting and now < deadline:
                left.append((gone, waiting, deadline))
            elif waiting:
                self.registry.counters.dropped_offline += len(waiting)
                self.log.warn("{count} messages for the sessions of {gone}, which left the "
                              "cluster, found no new home in time: dropped",
                              count=len(waiting), gone=gone)
        self._waiting = left
        if left:
            self._schedule()

    def _place(self, gone: str, subscriber_id: SubscriberId, message: Message, qos: int,
               stored: List[Deferred]) -> bool:
        """
        Pass one on (the store writes to wait for go to ``stored``); False
        while its session is still recorded on ``gone``.
        """
        record = self.registry.subscription_table.record(subscriber_id)
        owner = record_owner(record)
        if owner == gone:
            return False
        if owner is None or record is None or record[-1][1]:
            return True   # the session ended
        # Possibly delivered by the node that left before it died.
        waiting = self.registry.place(subscriber_id, attrs.evolve(message, dup=True), qos)
        if waiting is not None:
            stored.append(waiting)
        return True
