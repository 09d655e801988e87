"""
Registrations serialized per client id on one node of the cluster
(``coordinate_registrations``, as VerneMQ's ``vmq_reg_sync``).

Two CONNECTs with one client id on different nodes at once would each write
the subscriber record and each close "the other" session: the record's
replicas may resolve to one owner while the two nodes each already took
over, or handed over, what the other had.  So a CONNECT first asks the
client id's *coordinator* -- ``sorted(reachable members)[crc32(key) % n]``,
a stable hash every node computes alike -- for a lease on the client id.
The coordinator grants leases for one client id one at a time, in the order
asked.  The holder registers (writes the record) and gives the lease back
only once every reachable node merged the record: by then the previous
owner closed its connection and started handing its queue over, and the
next registrant reads the record it wrote.  So concurrent CONNECTs end with
exactly one live session whose subscriptions and queue are whole.

A lease not given back (its holder died) lapses after ``lease`` seconds
(shorter than ``timeout``, so the next in line still gets it); a CONNECT
whose turn does not come within ``timeout`` fails (CONNACK 3: the client
tries again), as during a netsplit.
"""
from __future__ import annotations

import itertools
import zlib
from collections import deque
from typing import Callable, Deque, Dict, Iterable, Iterator, Tuple

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from vmqtw.interfaces import IClusterTransport
from vmqtw.types import SubscriberId

__all__ = ["RegistrationCoordinator", "Lease", "coordinator_of", "LOCK_METHOD",
           "UNLOCK_CHANNEL"]

log = Logger(namespace="vmqtw.broker.coordinator")

#: The call asking the coordinator for a lease: ``(key,)`` -> token.
LOCK_METHOD = "vmq.reg.lock"
#: The cast giving a lease back: ``(key, token)``.
UNLOCK_CHANNEL = "vmq.reg.unlock"


def client_key(subscriber_id: SubscriberId) -> str:
    """The client id as one string (U+0000 never occurs in MQTT strings)."""
    return subscriber_id.mountpoint + "\x00" + subscriber_id.client_id


def coordinator_of(key: str, nodes: Iterable[str]) -> str:
    """The node that serializes ``key``'s registrations among ``nodes``."""
    ordered = sorted(nodes)
    return ordered[zlib.crc32(key.encode("utf-8")) % len(ordered)]


@attrs.define(slots=True, eq=False)
class _Lock:
    """The lease of one client id at the coordinator, and who waits."""

    token: int
    timer: IDelayedCall
    waiters: Deque[Deferred] = attrs.Factory(deque)


@attrs.define(slots=True, eq=False)
class Lease:
    """A granted lease; :meth:`release` gives it back (once)."""

    key: str
    token: int
    _give_back: Callable[[str, int], None]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._give_back(self.key, self.token)


class RegistrationCoordinator:
    """
    Both ends of lease handling on one node: it asks coordinators for
    leases, and it is the coordinator of its share of client ids.
    ``members()`` gives the cluster members (this node included).
    """

    def __init__(self, node: str, transport: IClusterTransport, clock: IReactorTime,
                 members: Callable[[], Iterable[str]], timeout: float = 5.0,
                 lease: float = 4.0) -> None:
        self.node = node
        self.transport = transport
        self.clock = clock
        self.members = members
        self.timeout = timeout
        self.lease = lease
        self._locks: Dict[str, _Lock] = {}
        self._tokens: Iterator[int] = itertools.count(1)
        #: Leases that lapsed because their holder never gave them back.
        self.lapsed = 0

    def start(self) -> None:
        self.transport.register_call_handler(LOCK_METHOD, self._remote_lock)
        self.transport.register_cast_handler(UNLOCK_CHANNEL, self._remote_unlock)

    def stop(self) -> None:
        for lock in self._locks.values():
            if lock.timer.active():
                lock.timer.cancel()
        self._locks.clear()

    # -- asking --------------------------------------------------------------

    def coordinator(self, subscriber_id: SubscriberId) -> str:
        """Where ``subscriber_id``'s registrations are serialized now."""
        connected = self.transport.connected
        nodes = [n for n in self.members() if n == self.node or connected(n)]
        if self.node not in nodes:
            nodes.append(self.node)
        return coordinator_of(client_key(subscriber_id), nodes)

    def acquire(self, subscriber_id: SubscriberId) -> "Deferred[Lease]":
        """A Deferred firing with the lease once it is this CONNECT's turn."""
        key = client_key(subscriber_id)
        coordinator = self.coordinator(subscriber_id)
        if coordinator == self.node:
            return self._lock(key).addCallback(
                lambda token: Lease(key, token, self._unlock))
        asked = self.transport.call(coordinator, LOCK_METHOD, (key,), self.timeout)

        def give_back(lease_key: str, token: int) -> None:
            self.transport.cast(coordinator, UNLOCK_CHANNEL, (lease_key, token))

        return asked.addCallback(lambda token: Lease(key, token, give_back))

    # -- coordinating ----------------------------------------------------------

    def _remote_lock(self, peer: str, key: str) -> "Deferred[int]":
        return self._lock(key)

    def _remote_unlock(self, peer: str, message: Tuple[str, int]) -> None:
        key, token = message
        self._unlock(key, token)

    def _lock(self, key: str) -> "Deferred[int]":
        lock = self._locks.get(key)
        if lock is None:
            token = next(self._tokens)
            self._locks[key] = _Lock(token, self.clock.callLater(self.lease, self._lapse, key,
                                                                 token))
            return succeed(token)
        waiting: Deferred[int] = Deferred()
        lock.waiters.append(waiting)
        # The asker stops waiting after ``timeout``: a lease granted to it
        # later would only block the client id until it lapsed.
        expiry = self.clock.callLater(self.timeout, waiting.cancel)
        waiting.addBoth(self._stop_timer, expiry)
        return waiting

    @staticmethod
    def _stop_timer(result: object, timer: IDelayedCall) -> object:
        if timer.active():
            timer.cancel()
        return result

    def _unlock(self, key: str, token: int) -> None:
        lock = self._locks.get(key)
        if lock is None or lock.token != token:
            return   # lapsed already
        if lock.timer.active():
            lock.timer.cancel()
        self._grant_next(key, lock)

    def _lapse(self, key: str, token: int) -> None:
        lock = self._locks.get(key)
        if lock is None or lock.token != token:
            return
        self.lapsed += 1
        log.warn("registration lease of {key!r} lapsed", key=key)
        self._grant_next(key, lock)

    def _grant_next(self, key: str, lock: _Lock) -> None:
        while lock.waiters:
            waiting = lock.waiters.popleft()
            if waiting.called:
                continue
            lock.token = next(self._tokens)
            lock.timer = self.clock.callLater(self.lease, self._lapse, key, lock.token)
            waiting.callback(lock.token)
            return
        del self._locks[key]

    def pending(self) -> Dict[str, int]:
        """``key -> waiters`` for client ids leased now (tests, the admin)."""
        return {key: len(lock.waiters) for key, lock in self._locks.items()}
