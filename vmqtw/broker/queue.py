"""
Per-subscriber queues: what a session has yet to receive and what it has not
acknowledged.

One :class:`SubscriberQueue` exists per subscriber id (mountpoint, client id)
for as long as the session lives: for the duration of the connection with
``clean_session = 1``, across disconnects otherwise.  A connection attaches an
*outlet* (the MQTT session) while it is up; the queue then pushes messages
through it, keeping at most ``max_inflight_messages`` QoS 1/2 messages
unacknowledged, and backs up the rest (``max_online_messages``).  While no
outlet is attached, QoS 1/2 messages of a persistent session are kept
(``max_offline_messages``) and written to the :class:`IMessageStore`.

The in-flight table and the ids of incoming QoS 2 messages awaiting PUBREL
live here rather than in the connection, because MQTT requires both to
survive a reconnect of a persistent session [MQTT-4.4.0-1], [MQTT-4.3.3-2].
"""
from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import (Any, Callable, Deque, Dict, Iterable, List, Optional, Protocol, Sequence, Set,
                    Tuple, Union)

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from vmqtw.interfaces import IMessageStore
from vmqtw.types import Message, SubscriberId, ref_origin

#: The largest MQTT packet identifier; ids run 1..65535.
MAX_PACKET_ID = 65535

#: Refs of handed-over messages remembered at most per queue, to drop the
#: direct copy of one that arrives later (see ``SubscriberQueue.hold``).
MAX_HANDED_REFS = 4096

#: Stored messages read back from the message store at a time, when a
#: restored offline queue is delivered (payloads are read lazily).
LOAD_BATCH = 100

# In-flight entry states.
AWAIT_ACK = 0   # PUBLISH sent, PUBACK (QoS 1) or PUBREC (QoS 2) awaited
AWAIT_COMP = 1  # PUBREL sent, PUBCOMP awaited


@attrs.define(slots=True, eq=False)
class InFlight:
    """
    One QoS 1/2 message sent to the subscriber and not fully acknowledged.

    Mutable, because a PUBREC moves it to ``AWAIT_COMP`` and every resend
    restamps ``sent_at``; no validators, as one is made per delivery.
    """

    message: Message
    #: The QoS it was delivered at (1 or 2).
    qos: int
    #: ``AWAIT_ACK`` or ``AWAIT_COMP``.
    state: int
    #: When it was last sent (clock seconds), for the retry timer.
    sent_at: float


#: A waiting message: the message itself, or after a restart only its store
#: ref until it is read back; with the QoS to deliver it at.
Waiting = Tuple[Union[Message, bytes], int]


def _ref(waiting: Union[Message, bytes]) -> bytes:
    """The store ref of a waiting entry (a message, or only its ref)."""
    return waiting if isinstance(waiting, bytes) else waiting.ref


def _redelivery(message: Union[Message, bytes], qos: int) -> Union[Message, bytes]:
    """``message`` to go out as a possible redelivery (DUP) at ``qos``."""
    if isinstance(message, bytes) or not qos or message.dup:
        return message
    return attrs.evolve(message, dup=True)


def merge_hand_over(held: Iterable[Waiting], pending: Iterable[Waiting]
                    ) -> Tuple[List[Tuple[Waiting, bool]], Set[bytes]]:
    """
    What a held queue delivers, in order: ``held`` (what the old node
    handed over, in its order) merged with ``pending`` (what reached this
    node directly, in its order), each entry with True when it came
    directly; and the refs of the handed-over entries left out because they
    also came directly.

    The old node's stream goes first -- it holds what it had not delivered
    when the session left, older than what came here directly -- except
    where it carries messages that overtook direct ones: the old node also
    passes on what reaches it after the move, and this node may still be
    routing older messages of the same publisher that its own stream
    brought late.  So a handed-over entry goes after every direct one of
    the same origin that is older (refs of one origin sort in publish
    order: :func:`~vmqtw.types.ref_origin`), and after the direct ones
    before those.  A message that came both ways takes its direct place.
    """
    pending = list(pending)
    index_of: Dict[bytes, int] = {}
    #: origin -> (refs in pending order, their indexes in ``pending``)
    by_origin: Dict[bytes, Tuple[List[bytes], List[int]]] = {}
    for index, (message, _qos) in enumerate(pending):
        ref = _ref(message)
        index_of.setdefault(ref, index)
        refs, indexes = by_origin.setdefault(ref_origin(ref), ([], []))
        refs.append(ref)
        indexes.append(index)
    merged: List[Tuple[Waiting, bool]] = []
    moved: Set[bytes] = set()
    taken = 0     # direct entries merged so far
    for entry in held:
        ref = _ref(entry[0])
        upto = index_of.get(ref)
        if upto is not None:
            moved.add(ref)
        else:
            same_origin = by_origin.get(ref_origin(ref))
            if same_origin is not None:
                older = bisect_left(same_origin[0], ref)
                upto = same_origin[1][older - 1] if older else None
        if upto is not None:
            while taken <= upto:
                merged.append((pending[taken], True))
                taken += 1
        if ref not in moved:
            merged.append((entry, False))
    merged.extend((entry, True) for entry in pending[taken:])
    return merged, moved


#: ``requeue(subscriber_id, [(message, group filter), ...])``: a session
#: ended with these QoS 1/2 messages of shared subscriptions undelivered.
SharedRequeue = Callable[[SubscriberId, List[Tuple[Message, str]]], None]


class Outlet(Protocol):
    """What a queue needs of a connected session to deliver through it."""

    def send_publish(self, message: Message, qos: int, packet_id: Optional[int],
                     dup: bool) -> None: ...

    def send_pubrel(self, packet_id: int) -> None: ...


@attrs.define(frozen=True, slots=True)
class QueueLimits:
    """The limits of VerneMQ's queue, from the configuration."""

    #: QoS 1/2 messages sent but not acknowledged; 0 = no limit but the
    #: packet id space.
    max_inflight_messages: int = 20
    #: Messages waiting behind a full in-flight window while online.
    max_online_messages: int = 1000
    #: Messages kept while offline; -1 = unlimited.
    max_offline_messages: int = 1000
    #: ``fifo`` drops the newest message when full, ``lifo`` the oldest.
    queue_type: str = "fifo"
    #: Seconds before an unacknowledged message is sent again with DUP.
    retry_interval: float = 20.0


@attrs.define(slots=True)
class QueueCounters:
    """Counters kept across all queues of a node (metrics read them)."""

    dropped_online: int = 0
    dropped_offline: int = 0
    dropped_qos0_offline: int = 0
    #: Messages the subscriber may no longer read (ACL changed).
    dropped_unauthorized: int = 0
    retried: int = 0
    expired_sessions: int = 0
    #: MQTT 5.0 messages whose message expiry interval ran out in a queue.
    expired_messages: int = 0
    #: Messages larger than the maximum packet size their subscriber
    #: announced: dropped for it, never sent truncated.
    dropped_too_large: int = 0


def _window(limits: QueueLimits, receive_maximum: int) -> int:
    """
    QoS 1/2 messages in flight at most: ``max_inflight_messages`` (0 for no
    limit but the packet-id space), narrowed to an MQTT 5.0 client's
    receive maximum [MQTT-3.3.4-9].
    """
    window = limits.max_inflight_messages
    window = MAX_PACKET_ID if window <= 0 else min(window, MAX_PACKET_ID)
    if receive_maximum and receive_maximum < window:
        window = receive_maximum
    return window


class SubscriberQueue:
    """The session state of one subscriber id; see the module docstring."""

    log = Logger()

    __slots__ = ("subscriber_id", "clean_session", "limits", "clock", "store",
                 "counters", "_pending", "inflight", "awaiting_rel", "outlet",
                 "_next_packet_id", "_retry_call", "_window", "_qos_for", "_loading",
                 "_readable", "_held", "_handed_refs", "_shared", "_requeue",
                 "_sending_paused", "_receive_maximum")

    def __init__(self, subscriber_id: SubscriberId, clean_session: bool,
                 limits: QueueLimits, clock: IReactorTime,
                 counters: Optional[QueueCounters] = None,
                 store: Optional[IMessageStore] = None) -> None:
        self.subscriber_id = subscriber_id
        self.clean_session = clean_session
        self.limits = limits
        self.clock = clock
        #: An IMessageStore for persistent sessions, or None.
        self.store: Optional[IMessageStore] = None if clean_session else store
        self.counters = counters if counters is not None else QueueCounters()
        #: What :attr:`pending` shows; None while empty (see _waiting).
        self._pending: Optional[Deque[Waiting]] = None
        #: packet id -> in-flight entry, in send order.
        self.inflight: Dict[int, InFlight] = {}
        #: Ids of incoming QoS 2 PUBLISHes answered with PUBREC, awaiting PUBREL.
        self.awaiting_rel: Set[int] = set()
        self.outlet: Optional[Outlet] = None
        #: The connected client's read permission, or None (no ACL): checked
        #: when a message is about to be sent, because an ACL reload may
        #: narrow subscriptions granted earlier.
        self._readable: Optional[Callable[[Message], bool]] = None
        self._next_packet_id = 1
        self._retry_call: Optional[IDelayedCall] = None
        #: Decides the QoS of a restored message once it is read back.
        self._qos_for: Optional[Callable[[Message], int]] = None
        self._loading = False
        #: Handed-over messages while :meth:`hold` is in force; None when
        #: not holding.
        self._held: Optional[Deque[Waiting]] = None
        #: Refs of messages handed over (or passed on by a node the session
        #: left): a copy of one of them that reaches this node directly is
        #: the same publish (sent to the old node for this session and here
        #: for another subscriber, or both before and after the sender saw
        #: the move), and is dropped.
        self._handed_refs: Optional[Set[bytes]] = None
        #: Refs of messages queued through a shared subscription, with the
        #: group's filter (None until one is): when the session ends they
        #: go to ``_requeue`` for another member of the group.
        self._shared: Optional[Dict[bytes, str]] = None
        self._requeue: Optional[SharedRequeue] = None
        #: The connected MQTT 5.0 client's receive maximum (0: none given).
        self._receive_maximum = 0
        self._window = _window(limits, 0)
        #: The connection cannot take more for now (see pause_sending).
        self._sending_paused = False

    # -- state ------------------------------------------------------------

    @property
    def pending(self) -> Sequence[Waiting]:
        """
        Messages not yet sent, oldest first: ``(message, qos)``; after a
        restart the message is only its ref (``bytes``) until read back.
        Read-only: changes go through :meth:`_waiting`.
        """
        return self._pending or ()

    def _waiting(self) -> Deque[Waiting]:
        """
        The deque behind :attr:`pending`, made on first use: an empty deque
        costs 600 bytes, and most subscribers' queues stay empty.
        """
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        return pending

    @property
    def online(self) -> bool:
        return self.outlet is not None

    def size(self) -> int:
        """Messages held: waiting (handed over too) plus unacknowledged."""
        held = self._held
        return len(self.pending) + len(self.inflight) + (len(held) if held else 0)

    def attach(self, outlet: Outlet,
               readable: Optional[Callable[[Message], bool]] = None,
               receive_maximum: int = 0) -> None:
        """
        A connection took this session: resend what was in flight with DUP
        (or PUBREL where PUBREC had arrived) [MQTT-4.4.0-1], then deliver
        what waited.  ``readable(message)``, when given, says whether this
        client may still receive a message.  ``receive_maximum`` (an MQTT
        5.0 client's, 0 = none given) narrows the in-flight window for this
        connection [MQTT-3.3.4-9].
        """
        self.outlet = outlet
        self._readable = readable
        self._sending_paused = False
        self._receive_maximum = receive_maximum
        self._window = _window(self.limits, receive_maximum)
        now = self.clock.seconds()
        for packet_id, entry in list(self.inflight.items()):
            entry.sent_at = now
            if entry.state == AWAIT_ACK:
                if readable is not None and not readable(entry.message):
                    self._forget_inflight(packet_id)
                    continue
                outlet.send_publish(entry.message, entry.qos, packet_id, True)
            else:
                outlet.send_pubrel(packet_id)
        if self.inflight:
            self._schedule_retry()
        self.pump()

    def detach(self) -> None:
        """The connection went; keep everything for a reconnect."""
        self.outlet = None
        self._readable = None
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def discard(self) -> None:
        """
        The session ends (clean session closed, expiry, takeover by a clean
        session): forget everything and remove stored copies.
        """
        self.detach()
        shared = self._shared
        requeue: List[Tuple[Message, str]] = []
        if shared:
            # Not taken to the grave: another member of the group gets them.
            requeue = [(entry.message, shared[entry.message.ref])
                       for entry in self.inflight.values()
                       if entry.state == AWAIT_ACK and entry.message.ref in shared]
            requeue.extend((message, shared[message.ref]) for message, qos in self.pending
                           if qos > 0 and isinstance(message, Message) and message.ref in shared)
        self._shared = None
        if self.store is not None:
            refs = [m if isinstance(m, bytes) else m.ref for m, q in self.pending if q > 0]
            refs.extend(e.message.ref for e in self.inflight.values()
                        if e.qos > 0 and e.state == AWAIT_ACK)
            for ref in refs:
                self.store.delete(self.subscriber_id, ref)
        if self._held:
            refs = [m if isinstance(m, bytes) else m.ref for m, q in self._held if q > 0]
            if self.store is not None:
                for ref in refs:
                    self.store.delete(self.subscriber_id, ref)
        self._held = None
        self._handed_refs = None
        self._pending = None
        self.inflight.clear()
        self.awaiting_rel.clear()
        if requeue and self._requeue is not None:
            self._requeue(self.subscriber_id, requeue)

    def hand_over(self, send: Callable[[Message, int, bool], Any],
                  done: Optional[Callable[[], Any]] = None) -> None:
        """
        The session moved to another node: give every message not yet
        acknowledged to ``send(message, qos, stored)`` in order (reading
        stored payloads first; what was in flight goes as a possible
        redelivery, with DUP), then call ``done()`` and end this queue.

        Stored copies stay in the message store (``stored`` says which are
        there): the caller deletes each one once the new owner has it safe,
        so that a crash of this node in between loses nothing.
        """
        self.detach()
        entries: List[Waiting] = [(attrs.evolve(entry.message, dup=True), entry.qos)
                                  for entry in self.inflight.values()
                                  if entry.state == AWAIT_ACK]
        if self._held is not None:
            # Moved on while holding: in the order release_hold would have
            # delivered, and what came directly may have reached the
            # connection before as well (see :meth:`release_hold`).
            merged, _moved = merge_hand_over(self._held, self.pending)
            entries.extend(((_redelivery(waiting[0], waiting[1]), waiting[1]) if direct
                            else waiting) for waiting, direct in merged)
        else:
            entries.extend(self.pending)
        self._pending = None
        self.inflight.clear()
        self.awaiting_rel.clear()
        self._held = None
        self._handed_refs = None
        unloaded = [message for message, _qos in entries if isinstance(message, bytes)]
        keeps = self.store is not None

        def forward(loaded: List[Optional[Message]]) -> None:
            found = dict(zip(unloaded, loaded))
            for waiting, qos in entries:
                if isinstance(waiting, bytes):
                    message = found.get(waiting)
                    if message is None:
                        continue
                    qos = self._qos_for(message) if self._qos_for is not None else message.qos
                    # Stored before a restart: maybe delivered once already.
                    message.dup = True
                else:
                    message = waiting
                send(message, qos, keeps and qos > 0)
            if done is not None:
                done()

        if unloaded and self.store is not None:
            reads = gatherResults([self.store.read(self.subscriber_id, ref) for ref in unloaded],
                                  consumeErrors=True)
            reads.addCallback(forward)
            reads.addErrback(self._load_failed)
        else:
            forward([])

    # -- a session moving here ------------------------------------------------

    def holds(self, ref: bytes) -> bool:
        """Whether a message with ``ref`` waits here or is in flight."""
        for waiting in (self.pending, self._held or ()):
            for message, _qos in waiting:
                if (message if isinstance(message, bytes) else message.ref) == ref:
                    return True
        return any(entry.message.ref == ref for entry in self.inflight.values())

    @property
    def held(self) -> bool:
        """Waiting for the old node's hand-over before delivering anything."""
        return self._held is not None

    def hold(self) -> None:
        """
        The session moved here from another node that still holds older
        messages for it: deliver nothing until :meth:`release_hold`, so that
        what the old node hands over goes out before what reached this node
        directly (order per publisher).
        """
        if self._held is None:
            self._held = deque()
            self._handed_refs = set()

    def release_hold(self) -> None:
        """The hand-over is complete (or given up on): deliver, oldest first."""
        held = self._held
        if held is None:
            return
        self._held = None
        handed = self._handed_refs
        if held is not None:
            merged, moved = merge_hand_over(held, self.pending)
            ordered: Deque[Waiting] = deque()
            for (message, qos), direct in merged:
                if direct and not isinstance(message, bytes):
                    if handed and message.ref in handed:
                        handed.discard(message.ref)
                        if message.ref not in moved:
                            continue   # delivered from the hand-over already
                    # Reached this node while the old one still held the
                    # session: a node that had not yet seen the move may
                    # have sent it there too, and its client got it.
                    message = _redelivery(message, qos)
                ordered.append((message, qos))
            self._pending = ordered if ordered else None
        if not handed:
            self._handed_refs = None
        self.pump()

    def enqueue_handed_over(self, message: Message, qos: int) -> Optional[Deferred]:
        """
        A message the session's old node handed over: kept whatever the
        queue limits (the old node had accepted it), ahead of what arrived
        here directly while the hand-over runs, and stored before the old
        node is told it may delete its copy.
        """
        handed = self._handed_refs
        if handed is not None and message.ref in handed:
            return None   # handed over twice (by two nodes the session left)
        if handed is None or len(handed) >= MAX_HANDED_REFS:
            handed = self._handed_refs = set()
        handed.add(message.ref)
        held = self._held
        if held is None:
            self._waiting().append((message, qos))
        else:
            held.append((message, qos))
        stored = None
        if qos > 0 and self.store is not None:
            stored = self.store.write(self.subscriber_id, message)
        if held is None:
            self.pump()
        return stored

    # -- delivery -----------------------------------------------------------

    def enqueue(self, message: Message, qos: int) -> Optional[Deferred]:
        """
        Deliver ``message`` at ``qos`` (already ``min(published, granted)``).

        Returns a Deferred when the publisher's acknowledgement must wait for
        the message store (QoS 1/2 for a persistent session), else None.
        """
        handed = self._handed_refs
        if handed and self._held is None and message.ref in handed:
            # Came here directly too, after the hand-over delivered it.
            handed.discard(message.ref)
            return None
        outlet = self.outlet
        if outlet is not None:
            if self._readable is not None and not self._readable(message):
                self.counters.dropped_unauthorized += 1
                return None
            if message.properties is not None and self._expired(message):
                return None
            if not self._pending and self._held is None and not self._sending_paused:
                if qos == 0:
                    outlet.send_publish(message, 0, None, False)
                    return None
                if len(self.inflight) < self._window:
                    stored = None
                    if self.store is not None:
                        # A persistent session's copy is stored even while
                        # it is online, and the publisher is acknowledged
                        # only then: a kill -9 of this node must not lose it.
                        stored = self.store.write(self.subscriber_id, message)
                    self._send_new(outlet, message, qos)
                    return stored
            if 0 <= self.limits.max_online_messages <= len(self.pending):
                if not self._make_room():
                    self.counters.dropped_online += 1
                    return None
                self.counters.dropped_online += 1
            self._waiting().append((message, qos))
            if qos > 0 and self.store is not None:
                return self._store_waiting(message)
            return None
        # Offline: only persistent sessions have a queue without an outlet.
        if qos == 0:
            self.counters.dropped_qos0_offline += 1
            return None
        limit = self.limits.max_offline_messages
        if limit >= 0 and len(self.pending) >= limit:
            if not self._make_room():
                self.counters.dropped_offline += 1
                return None
            self.counters.dropped_offline += 1
        self._waiting().append((message, qos))
        if self.store is not None:
            return self._store_waiting(message)
        return None

    def enqueue_shared(self, message: Message, qos: int, group: str,
                       requeue: SharedRequeue) -> Optional[Deferred]:
        """
        :meth:`enqueue` for a message that came through the shared
        subscription ``group``: should the session end before the
        subscriber acknowledged it, ``requeue`` gets it back (see
        :meth:`discard`).  A persistent session that merely goes offline
        keeps it for its return, as VerneMQ's offline queue does.
        """
        if qos > 0:
            shared = self._shared
            if shared is None:
                shared = self._shared = {}
            elif len(shared) > 64 + 2 * (len(self.pending) + len(self.inflight)):
                self._prune_shared(shared)
            shared[message.ref] = group
            self._requeue = requeue
        return self.enqueue(message, qos)

    def _prune_shared(self, shared: Dict[bytes, str]) -> None:
        """Forget the refs of shared messages no longer held (acknowledged,
        dropped): amortized, so the acknowledgement path stays as it is."""
        held = {entry.message.ref for entry in self.inflight.values()}
        held.update(m if isinstance(m, bytes) else m.ref for m, _qos in self.pending)
        for ref in [ref for ref in shared if ref not in held]:
            del shared[ref]

    def _store_waiting(self, message: Message) -> Deferred:
        """
        Store a message that waits in ``pending``.  If the store fails,
        the publisher is not acknowledged and will resend it: the copy
        queued here goes, or the subscriber would get it twice.
        """
        assert self.store is not None
        stored: Deferred = self.store.write(self.subscriber_id, message)

        def not_stored(failure: Any) -> Any:
            rest = deque(entry for entry in self.pending if entry[0] is not message)
            self._pending = rest if rest else None
            return failure
        return stored.addErrback(not_stored)

    def _make_room(self) -> bool:
        """
        The queue is full.  ``lifo`` drops the oldest waiting message and
        returns True (room made); ``fifo`` keeps what it has and returns
        False (the new message is the one dropped).
        """
        if self.limits.queue_type != "lifo" or not self.pending:
            return False
        message, qos = self._waiting().popleft()
        if qos > 0 and self.store is not None:
            self.store.delete(self.subscriber_id,
                              message if isinstance(message, bytes) else message.ref)
        return True

    def pump(self) -> None:
        """Send waiting messages while the in-flight window has room."""
        outlet = self.outlet
        pending = self._pending
        if self._held is not None or self._sending_paused:
            return
        while outlet is not None and pending:
            message, qos = pending[0]
            if isinstance(message, bytes):
                self._load()
                break
            if self._readable is not None and not self._readable(message):
                pending.popleft()
                self.counters.dropped_unauthorized += 1
                if qos > 0 and self.store is not None:
                    self.store.delete(self.subscriber_id, message.ref)
                continue
            if message.properties is not None and self._expired(message):
                pending.popleft()
                if qos > 0 and self.store is not None:
                    self.store.delete(self.subscriber_id, message.ref)
                continue
            if qos == 0:
                pending.popleft()
                outlet.send_publish(message, 0, None, False)
            elif len(self.inflight) < self._window:
                pending.popleft()
                self._send_new(outlet, message, qos)
            else:
                break
            outlet = self.outlet

    def set_limits(self, limits: QueueLimits) -> None:
        """
        The operator changed the limits (``vmqtw-admin set``).  The queue
        bounds apply from the next arrival on (nothing queued is dropped);
        a connected client's in-flight window changes at once, never above
        the receive maximum it announced, and a wider one is filled now.
        """
        self.limits = limits
        self._window = _window(limits, self._receive_maximum)
        if self.outlet is not None:
            self.pump()

    def pause_sending(self) -> None:
        """
        The connection's send buffer is full (a slow or stalled subscriber):
        what comes now waits here, bounded by ``max_online_messages`` (drops
        counted), instead of piling up in the transport without bound.
        """
        self._sending_paused = True

    def resume_sending(self) -> None:
        """The connection drained its send buffer: deliver what waited."""
        if self._sending_paused:
            self._sending_paused = False
            self.pump()

    # -- restored queues -------------------------------------------------------

    def restore(self, refs: List[bytes], qos_for: Callable[[Message], int]) -> None:
        """
        Queue messages found in the message store at start.  Only refs are
        kept; payloads are read in batches when the subscriber is back, and
        ``qos_for(message)`` then gives the QoS to deliver it at.
        """
        self._qos_for = qos_for
        # QoS 1 is a placeholder: stored messages are always QoS 1 or 2.
        self._waiting().extend((ref, 1) for ref in refs)

    def restore_before(self, refs: List[bytes], qos_for: Callable[[Message], int]) -> None:
        """
        Messages a shared message store holds for this session, older than
        anything queued here since (a session taken over from a node that
        died): put them first, in the store's order, dropping queued copies
        of the same messages (written to the store since, so listed too).
        """
        handed = self._handed_refs
        if handed is None:
            handed = self._handed_refs = set()
        # A message handed over already is not queued twice; one handed over
        # later (the old node comes back and hands its queue over) is dropped.
        refs = [ref for ref in refs if ref not in handed]
        handed.update(refs)
        known = set(refs)
        later = [(waiting, qos) for waiting, qos in self.pending
                 if (waiting if isinstance(waiting, bytes) else waiting.ref) not in known]
        self._pending = None
        self.restore(refs, qos_for)
        self._waiting().extend(later)
        if self.outlet is not None:
            self.pump()

    def _load(self) -> None:
        if self._loading or self.store is None:
            return
        refs: List[bytes] = []
        for message, _qos in self.pending:
            if isinstance(message, bytes):
                refs.append(message)
                if len(refs) >= LOAD_BATCH:
                    break
        self._loading = True
        reads = gatherResults([self.store.read(self.subscriber_id, ref) for ref in refs],
                              consumeErrors=True)
        reads.addCallback(self._loaded, refs)
        reads.addErrback(self._load_failed)

    def _loaded(self, messages: List[Optional[Message]], refs: List[bytes]) -> None:
        self._loading = False
        found = dict(zip(refs, messages))
        store = self.store
        restored: Deque[Waiting] = deque()
        for message, qos in self.pending:
            if isinstance(message, bytes) and message in found:
                stored = found[message]
                if stored is None:
                    continue  # gone from the store meanwhile
                qos = self._qos_for(stored) if self._qos_for is not None else stored.qos
                # Restored after a restart: it may have been in flight to
                # this subscriber when the node died, so it goes out as a
                # possible re-delivery [MQTT-3.3.1-1].
                stored.dup = True
                if qos == 0 and store is not None:
                    # Downgraded by the subscription: QoS 0 copies are never
                    # kept, so this one leaves the store now.
                    store.delete(self.subscriber_id, message)
                restored.append((stored, qos))
            else:
                restored.append((message, qos))
        self._pending = restored if restored else None
        self.pump()

    def _load_failed(self, failure: Any) -> None:
        self._loading = False
        self.log.failure("reading stored messages of {subscriber_id} failed", failure,
                         subscriber_id=self.subscriber_id)

    def _expired(self, message: Message) -> bool:
        """
        Whether an MQTT 5.0 message's expiry interval ran out while it
        waited (counted); the session sends the time left with the rest.
        """
        assert message.properties is not None
        interval = message.properties.message_expiry_interval
        if interval is None or self.clock.seconds() - message.timestamp < interval:
            return False
        self.counters.expired_messages += 1
        return True

    def drop_too_large(self, packet_id: Optional[int]) -> None:
        """
        The session found a message too large for its client's maximum
        packet size [MQTT-3.1.2-25]: it is dropped for this subscriber
        (counted), and the in-flight entry it was sent under is freed.
        """
        self.counters.dropped_too_large += 1
        if packet_id is None:
            return
        entry = self.inflight.pop(packet_id, None)
        if entry is not None and self.store is not None:
            self.store.delete(self.subscriber_id, entry.message.ref)

    def _send_new(self, outlet: Outlet, message: Message, qos: int) -> None:
        packet_id = self._allocate_packet_id()
        self.inflight[packet_id] = InFlight(message, qos, AWAIT_ACK, self.clock.seconds())
        # DUP on a first send: a copy another node sent again after a lost
        # link, which this node may have delivered before a crash.
        outlet.send_publish(message, qos, packet_id, message.dup)
        if self._retry_call is None:
            self._schedule_retry()

    def _allocate_packet_id(self) -> int:
        packet_id = self._next_packet_id
        inflight = self.inflight
        while packet_id in inflight:
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_packet_id = packet_id % MAX_PACKET_ID + 1
        return packet_id

    def _forget_inflight(self, packet_id: int) -> None:
        """Drop an unsent-again in-flight message the client may not read."""
        entry = self.inflight.pop(packet_id)
        self.counters.dropped_unauthorized += 1
        if self.store is not None:
            self.store.delete(self.subscriber_id, entry.message.ref)

    # -- acknowledgements from the subscriber --------------------------------

    def puback(self, packet_id: int) -> None:
        """PUBACK: a QoS 1 delivery is done [MQTT-4.3.2-1]."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 1:
            return
        del self.inflight[packet_id]
        if self.store is not None:
            self.store.delete(self.subscriber_id, entry.message.ref)
        self.pump()

    def pubrec(self, packet_id: int) -> None:
        """
        PUBREC: the subscriber owns the QoS 2 message; answer PUBREL and
        from now on only ever resend the PUBREL [MQTT-4.3.3-1].
        """
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2:
            return
        if entry.state == AWAIT_ACK:
            entry.state = AWAIT_COMP
            if self.store is not None:
                self.store.delete(self.subscriber_id, entry.message.ref)
        entry.sent_at = self.clock.seconds()
        if self.outlet is not None:
            self.outlet.send_pubrel(packet_id)

    def pubcomp(self, packet_id: int) -> None:
        """PUBCOMP: the QoS 2 exchange is over; the id may be reused."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.state != AWAIT_COMP:
            return
        del self.inflight[packet_id]
        self.pump()

    # -- retries ------------------------------------------------------------

    def _schedule_retry(self) -> None:
        if self.outlet is None or not self.inflight:
            self._retry_call = None
            return
        oldest = min(entry.sent_at for entry in self.inflight.values())
        delay = max(0.0, oldest + self.limits.retry_interval - self.clock.seconds())
        self._retry_call = self.clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        """Resend what waited ``retry_interval`` for an acknowledgement."""
        self._retry_call = None
        outlet = self.outlet
        if outlet is None:
            return
        now = self.clock.seconds()
        due = now - self.limits.retry_interval
        for packet_id, entry in list(self.inflight.items()):
            if entry.sent_at > due:
                continue
            entry.sent_at = now
            if entry.state == AWAIT_ACK:
                if self._readable is not None and not self._readable(entry.message):
                    self._forget_inflight(packet_id)
                    continue
                self.counters.retried += 1
                outlet.send_publish(entry.message, entry.qos, packet_id, True)
            else:
                self.counters.retried += 1
                outlet.send_pubrel(packet_id)
        self._schedule_retry()
        self.pump()
