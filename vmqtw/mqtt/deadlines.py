"""
One timer for the deadlines of many connections (CONNECT timeout, keepalive).

A ``DelayedCall`` per connection costs about 300 bytes (plus its place in the
reactor's heap, and a cancelled one lingers there until the heap is
compacted); an idle connection's only business with time is being checked
now and then.  Here deadlines are rounded *up* to a tick (a tenth of a
second: never early, at most a tick late) and kept in one set per tick; a
single ``DelayedCall`` waits for the earliest non-empty tick, and a tick's
connections are told together.  A connection costs one set entry and the
number of its tick.
"""
from __future__ import annotations

import heapq
import math
from typing import Any, Dict, List, Optional, Protocol, Set

from twisted.internet.interfaces import IReactorTime

#: Ticks per second.
TICKS = 10


class Expiring(Protocol):
    """What a deadline belongs to: told, with the time, when it has passed."""

    def deadline_passed(self, now: float) -> None: ...


class Deadlines:
    """Deadlines of many connections on one timer; see the module docstring."""

    __slots__ = ("clock", "_ticks", "_heap", "_call", "_armed")

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        #: tick -> what expires then.
        self._ticks: Dict[int, Set[Expiring]] = {}
        #: The ticks of ``_ticks``, smallest first (each pushed once).
        self._heap: List[int] = []
        self._call: Any = None
        #: The tick the timer waits for, or None.
        self._armed: Optional[int] = None

    def add(self, when: float, target: Expiring) -> int:
        """Tell ``target`` once ``when`` has passed; returns the handle for
        :meth:`discard`."""
        tick = math.ceil(when * TICKS)
        members = self._ticks.get(tick)
        if members is None:
            members = self._ticks[tick] = set()
            heapq.heappush(self._heap, tick)
            if self._armed is None or tick < self._armed:
                self._arm(tick)
        members.add(target)
        return tick

    def discard(self, tick: int, target: Expiring) -> None:
        """
        Forget ``target``'s deadline.  An emptied tick stays until its time
        and then fires idle, so once a listener's connections are gone the
        timer runs out by itself.
        """
        members = self._ticks.get(tick)
        if members is not None:
            members.discard(target)

    def __len__(self) -> int:
        return sum(len(members) for members in self._ticks.values())

    def _arm(self, tick: int) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._armed = tick
        self._call = self.clock.callLater(max(0.0, tick / TICKS - self.clock.seconds()),
                                          self._fire)

    def _fire(self) -> None:
        self._call = self._armed = None
        now = self.clock.seconds()
        heap, ticks = self._heap, self._ticks
        while heap and heap[0] / TICKS <= now:
            for target in ticks.pop(heapq.heappop(heap), ()):
                # A target may add itself (or others) again: later ticks only.
                target.deadline_passed(now)
        if heap and (self._armed is None or heap[0] < self._armed):
            self._arm(heap[0])
