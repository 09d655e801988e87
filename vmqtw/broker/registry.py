"""
The registry: who is connected to this node, and what becomes of a session
when its connection goes, another connection takes it over, it expires, or
the node restarts.

It owns the sessions and queues of this node.  What it builds on has its own
module: the subscriber records and routing trie
(:mod:`vmqtw.broker.subscriptions`), retained messages
(:mod:`vmqtw.broker.retain`), routing a published message
(:mod:`vmqtw.broker.router`) and the messages between nodes
(:mod:`vmqtw.cluster.dataplane`).  The session (:mod:`vmqtw.mqtt.session`)
still talks to the registry alone; the methods that only pass its calls on
are grouped at the end.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from vmqtw.broker.coordinator import Lease, RegistrationCoordinator
from vmqtw.broker.orphans import Orphans
from vmqtw.broker.queue import QueueCounters, QueueLimits, SubscriberQueue
from vmqtw.broker.retain import Author, RetainStore
from vmqtw.broker.router import Router
from vmqtw.broker.subscriptions import Subscriptions, all_filters, record_owner
from vmqtw.cluster.dataplane import OUTBOX_MOUNTPOINT, DataPlane
from vmqtw.interfaces import IClusterTransport, IMessageStore, IMetadataStore
from vmqtw.trie import RetainTree, SubscriptionTrie
from vmqtw.types import SUBSCRIBER_PREFIX, Message, SubscriberId

__all__ = ["Registry", "MOVED_FORWARDING", "MOVED_GRACE", "HAND_OVER_WAIT",
           "SESSION_EXPIRY_PREFIX"]

#: MQTT 5.0 sessions' own expiry intervals, in the replicated metadata:
#: subscriber id -> seconds as the client gave them (0xFFFFFFFF = never).
#: Written by the node the session is registered on, only when it changes
#: (a CONNECT or DISCONNECT giving another value), so it is on disk for a
#: restart and on every node a session may move to (takeover, drain,
#: re-homing after a node left) without travelling with the hand-over.
#: A session without an entry expires after ``persistent_client_expiration``.
SESSION_EXPIRY_PREFIX = ("vmqtw", "session_expiry")
#: The session expiry interval meaning "never" (MQTT 5.0, 3.1.2.11.2).
_EXPIRY_NEVER = 0xFFFFFFFF

#: Seconds a node passes on what still arrives for a session that moved
#: away (sent before the sender saw the move, or resent after a cut) when
#: not every member confirmed the move.
MOVED_FORWARDING = 60.0
#: Seconds it goes on passing them on after every reachable member
#: confirmed the move, with the cluster whole: what a member sent before it
#: merged the move is in flight no longer.
MOVED_GRACE = 0.5
#: Seconds a session that moved here waits at most for its old node's
#: hand-over before delivering what reached this node directly.
HAND_OVER_WAIT = 3.0


class Registry:
    """
    Sessions and queues of one node: register, take over, unregister,
    expire, restore.

    ``subscriptions``, ``retain`` and ``dataplane`` are built from
    ``metadata`` and ``cluster`` (the cluster transport, None on a lone
    node) unless given.
    """

    log = Logger()

    def __init__(self, node: str, metadata: IMetadataStore, clock: IReactorTime,
                 limits: QueueLimits = QueueLimits(), store: Optional[IMessageStore] = None,
                 session_expiration: Optional[float] = None,
                 cluster: Optional[IClusterTransport] = None,
                 ready: Optional[Callable[[], bool]] = None, *,
                 subscriptions: Optional[Subscriptions] = None,
                 retain: Optional[RetainStore] = None,
                 dataplane: Optional[DataPlane] = None,
                 confirm: Optional[Callable[[Tuple[str, str], Any], Deferred]] = None,
                 coordinator: Optional[RegistrationCoordinator] = None) -> None:
        self.node = node
        #: Serializes registrations per client id across the cluster
        #: (``coordinate_registrations``); None: registrations are local.
        self.coordinator = coordinator
        #: ``confirm(prefix, key)``: a Deferred firing once every reachable
        #: node merged the key (see :mod:`vmqtw.metadata.confirm`).
        self.confirm = confirm
        #: True while every cluster member is reachable (no netsplit).
        self.ready: Callable[[], bool] = ready if ready is not None else (lambda: True)
        #: ``persistent_client_expiration`` in seconds; None = never.
        self.session_expiration = session_expiration
        self._expiry_calls: Dict[SubscriberId, IDelayedCall] = {}
        #: MQTT 5.0 wills waiting for their delay (see :meth:`delay_will`).
        self._delayed_wills: Dict[SubscriberId, IDelayedCall] = {}
        self.metadata = metadata
        self.clock = clock
        self.limits = limits
        #: An IMessageStore, or None for a node that keeps nothing on disk.
        self.store = store
        #: A store every node of the cluster shares (``shared``, e.g.
        #: PostgreSQL): a session's stored messages are the same rows
        #: wherever it lives, so a node never deletes them because the
        #: session moved away, and a node taking over the session of a
        #: node that died finds them there.
        self.shared_store = bool(getattr(store, "shared", False))
        self.counters = QueueCounters()
        self.queues: Dict[SubscriberId, SubscriberQueue] = {}
        #: Connected sessions by subscriber id (for takeover).
        self.sessions: Dict[SubscriberId, Any] = {}
        self.subscription_table = (subscriptions if subscriptions is not None
                                   else Subscriptions(node, metadata))
        self.subscription_table.on_moved = self._moved_away
        self.retain = retain if retain is not None else RetainStore(metadata)
        if dataplane is None and cluster is not None:
            dataplane = DataPlane(node, cluster, clock, store)
        #: Messages to and from other nodes; None on a lone node.
        self.dataplane = dataplane
        self.router = Router(self.subscription_table, self.retain, self.queues.get, dataplane)
        #: :meth:`Router.publish` itself (not a method that calls it): one
        #: call fewer on every publish.
        self.publish = self.router.publish
        #: Wraps the handling of each frame from another node, so that what
        #: it delivers to clients here leaves as a client's read does (the
        #: MQTT listeners' ``TurnWrites.as_one_read``, set by the node).
        self.as_one_read: Optional[Callable[[Callable[..., Any]], Callable[..., Any]]] = None
        #: Sessions that moved away lately: their filters, so that what still
        #: arrives for them is passed on (see :meth:`_forward_moved`).
        self.moved = SubscriptionTrie()
        self._moved: Dict[SubscriberId, Tuple[Dict[str, int], IDelayedCall]] = {}
        #: The node each of them moved to from here: what still arrives
        #: goes there, behind our hand-over, not to the newest owner past it.
        self._successors: Dict[SubscriberId, str] = {}
        #: Sessions that moved here and wait for the old node's hand-over.
        self._hold_calls: Dict[SubscriberId, IDelayedCall] = {}
        #: The node whose hand-over marker a held queue waits for (a late
        #: marker of an earlier move must not release it).
        self._awaited: Dict[SubscriberId, str] = {}
        #: Sessions that moved on while their queue here still waited for
        #: the hand-over from the node before: ``(queue, timer)``, handed on
        #: once that is complete, so the next node gets everything in order.
        #: ``(queue, successor, timer)``: the successor is the node it moved
        #: to from here, which waits for our marker (not the current owner:
        #: each node hands on to the next one, in the order of the moves).
        self._handing_on: Dict[SubscriberId, Tuple[SubscriberQueue, str, IDelayedCall]] = {}
        self.router.moved = self.moved
        self.router.forward_moved = self._forward_moved
        #: What waited for nodes that left, passed on once their sessions
        #: are re-homed.
        self.orphans = Orphans(self, clock)
        #: Sessions whose hand-over to another node waits for every node to
        #: route to that node before its end marker goes (a draining node
        #: is not done while any does).
        self.ending: Set[SubscriberId] = set()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Build the trie and the retained tree, then follow changes."""
        self.subscription_table.start()
        self.retain.start()
        if self.coordinator is not None:
            self.coordinator.start()

    def receive_from_peers(self) -> Optional[Deferred]:
        """
        Take messages from other nodes from now on -- only once
        :meth:`restore` brought back the offline queues, or a message for a
        restored session would find no queue, be taken as delivered and be
        acknowledged to its sender.  Returns a Deferred firing once the data
        plane has read back its outbox (None on a lone node).
        """
        if self.dataplane is not None:
            self.dataplane.on_orphaned = self.orphans.orphaned
            return self.dataplane.start(self.router.route_remote, self._handed_over,
                                        self._hand_over_released, self._hand_over_done,
                                        self.router.route_remote_batch, self.as_one_read)
        return None

    def stop(self) -> None:
        self.subscription_table.stop()
        self.retain.stop()
        if self.coordinator is not None:
            self.coordinator.stop()
        for queue in self.queues.values():
            queue.detach()
        for call in [*self._expiry_calls.values(), *self._hold_calls.values(),
                     *(call for _queue, _node, call in self._handing_on.values()),
                     *(call for _filters, call in self._moved.values()),
                     *self._delayed_wills.values()]:
            if call.active():
                call.cancel()
        self.orphans.stop()
        self._expiry_calls.clear()
        self._delayed_wills.clear()
        self._hold_calls.clear()
        self._awaited.clear()
        self._handing_on.clear()
        self._moved.clear()
        self._successors.clear()

    @inlineCallbacks
    def restore(self) -> Any:
        """
        Bring back, after a restart, what this node's persistent sessions
        had: an offline queue for every subscriber recorded on this node with
        ``clean_session = 0``, holding the refs its messages have in the
        message store (payloads are read when the client is back).  Clean
        sessions recorded on this node died with the old process and are
        removed, as are stored messages nobody can claim any more.
        """
        persistent, stale = self.subscription_table.sessions_on_this_node()
        for subscriber_id in stale:
            self.subscription_table.remove(subscriber_id)
        store = self.store
        stored: Set[SubscriberId] = set()
        if store is not None:
            stored = set((yield store.subscribers()))
        restored_messages = 0
        for subscriber_id in persistent:
            queue = self._new_queue(subscriber_id, False)
            if store is not None and subscriber_id in stored:
                refs = yield store.find(subscriber_id)
                queue.restore(refs, self._qos_resolver(subscriber_id))
                restored_messages += len(refs)
            self._schedule_expiry(subscriber_id)
        if store is not None and not self.shared_store:
            # (A shared store's other sessions live on other nodes.)
            for subscriber_id in stored.difference(persistent):
                if subscriber_id.mountpoint == OUTBOX_MOUNTPOINT:
                    continue   # the data plane's, read back by it
                refs = yield store.find(subscriber_id)
                owner = self._moved_owner(subscriber_id)
                if owner is not None and self.dataplane is not None:
                    # Handed over before a crash and not yet acknowledged:
                    # the session's node gets them (again).
                    yield self._hand_over_stored(subscriber_id, owner, refs)
                    continue
                for ref in refs:
                    yield store.delete(subscriber_id, ref)
        self.log.info("restored {sessions} offline sessions holding {messages} messages",
                      sessions=len(persistent), messages=restored_messages)

    @inlineCallbacks
    def _hand_over_stored(self, subscriber_id: SubscriberId, owner: str,
                          refs: List[bytes]) -> Any:
        store, dataplane = self.store, self.dataplane
        assert store is not None and dataplane is not None
        sent = 0
        for ref in refs:
            message = yield store.read(subscriber_id, ref)
            if message is None:
                continue
            message.dup = True
            dataplane.hand_over(owner, subscriber_id, message, message.qos, release=True)
            sent += 1
        self.log.info("handing {count} stored messages of {client_id} to {owner} again",
                      count=sent, client_id=subscriber_id.client_id, owner=owner)

    def _moved_owner(self, subscriber_id: SubscriberId) -> Optional[str]:
        """The other node a persistent session is registered on, or None."""
        record = self.subscription_table.record(subscriber_id)
        owner = record_owner(record)
        if owner is None or owner == self.node or record is None or record[-1][1]:
            return None
        return owner

    def _qos_resolver(self, subscriber_id: SubscriberId) -> Callable[[Message], int]:
        granted_qos = self.subscription_table.granted_qos

        def qos_for(message: Message) -> int:
            return granted_qos(subscriber_id, message.topic, message.qos)
        return qos_for

    # -- expiry ---------------------------------------------------------------

    def _schedule_expiry(self, subscriber_id: SubscriberId) -> None:
        """
        ``persistent_client_expiration`` starts when a session goes offline,
        or the session's own expiry interval (MQTT 5.0) when it gave one.
        """
        expiration = self.session_expiry(subscriber_id)
        if expiration is None or expiration == math.inf:
            return
        self._cancel_expiry(subscriber_id)
        self._expiry_calls[subscriber_id] = self.clock.callLater(
            expiration, self._expire, subscriber_id)

    def session_expiry(self, subscriber_id: SubscriberId) -> Optional[float]:
        """
        Seconds ``subscriber_id``'s session lives on once offline
        (``math.inf`` = never, None = never by ``persistent_client_expiration``):
        its own MQTT 5.0 interval, else the node's setting.  Counted from
        when it went offline here, or from a restart (the time offline
        before it is not known, so a session may outlive its interval by
        that much, never fall short of it).
        """
        stored = self.metadata.get(SESSION_EXPIRY_PREFIX, subscriber_id.as_key())
        if stored is None:
            return self.session_expiration
        return math.inf if stored == _EXPIRY_NEVER else float(stored)

    def _keep_expiry(self, subscriber_id: SubscriberId, expiry: Optional[float]) -> None:
        """
        Record an MQTT 5.0 session's expiry interval (seconds, ``math.inf``
        = never), or None for a session without one (3.1.1, or ended):
        written only when it changes, since each write is replicated.
        """
        key = subscriber_id.as_key()
        stored = self.metadata.get(SESSION_EXPIRY_PREFIX, key)
        if expiry is None:
            if stored is not None:
                self.metadata.delete(SESSION_EXPIRY_PREFIX, key)
            return
        value = _EXPIRY_NEVER if expiry == math.inf else int(expiry)
        if stored != value:
            self.metadata.put(SESSION_EXPIRY_PREFIX, key, value)

    def _cancel_expiry(self, subscriber_id: SubscriberId) -> None:
        call = self._expiry_calls.pop(subscriber_id, None)
        if call is not None and call.active():
            call.cancel()

    def _expire(self, subscriber_id: SubscriberId) -> None:
        """An offline persistent session expired: remove it and all it holds."""
        self._expiry_calls.pop(subscriber_id, None)
        if subscriber_id in self.sessions:
            return
        self._keep_expiry(subscriber_id, None)
        queue = self.queues.pop(subscriber_id, None)
        if queue is not None:
            queue.discard()
        self.subscription_table.remove(subscriber_id)
        self.counters.expired_sessions += 1
        self.log.info("session {client_id} expired", client_id=subscriber_id.client_id)

    # -- sessions -------------------------------------------------------------

    def disconnect(self, subscriber_id: SubscriberId, cleanup: bool = False) -> Tuple[bool, bool]:
        """
        An operator closes ``subscriber_id``'s connection here (``session
        disconnect``); with ``cleanup`` its session ends too, queue and
        subscriptions with it.  Returns ``(was connected, session ended)``.
        """
        session = self.sessions.get(subscriber_id)
        if not cleanup:
            if session is not None:
                session.close_by_admin()
            return session is not None, False
        if session is not None:
            del self.sessions[subscriber_id]
            session.close_by_admin()
        self._cancel_expiry(subscriber_id)
        queue = self.queues.pop(subscriber_id, None)
        if queue is not None:
            queue.discard()
        self.subscription_table.remove(subscriber_id)
        self._keep_expiry(subscriber_id, None)
        self.log.info("session {client_id} ended by an operator", client_id=subscriber_id.client_id)
        return session is not None, True


    def coordinate(self, subscriber_id: SubscriberId) -> "Optional[Deferred[Lease]]":
        """
        None when a CONNECT may register at once; else a Deferred firing
        with the lease of ``subscriber_id`` once it is this CONNECT's turn
        (see :mod:`vmqtw.broker.coordinator`), to pass to :meth:`register`.
        """
        if self.coordinator is None:
            return None
        return self.coordinator.acquire(subscriber_id)

    def register(self, subscriber_id: SubscriberId, clean_session: bool,
                 session: Any, lease: Optional[Lease] = None,
                 session_expiry: Optional[float] = None) -> Tuple[SubscriberQueue, bool]:
        """
        Attach a new connection to ``subscriber_id``'s session.

        An existing connection with the same client id is taken over: it is
        closed (its will fires) and the new one proceeds [MQTT-3.1.4-2].
        Returns the queue and the CONNACK session-present flag.  ``lease``
        is given back once every reachable node has the new record (so the
        next registration of the client id sees it, wherever it runs).
        ``session_expiry`` is an MQTT 5.0 session's expiry interval
        (seconds, ``math.inf`` = never), kept with it from now on (it must
        hold if this node dies with the client connected); None for a
        session without one.
        """
        try:
            queue, present = self._register(subscriber_id, clean_session, session)
            self._keep_expiry(subscriber_id, None if clean_session else session_expiry)
            return queue, present
        finally:
            if lease is not None:
                self._give_back(subscriber_id, lease)

    def _give_back(self, subscriber_id: SubscriberId, lease: Lease) -> None:
        if self.confirm is None:
            lease.release()
            return
        self.confirm(SUBSCRIBER_PREFIX, subscriber_id.as_key()).addBoth(
            lambda _: lease.release())

    def delay_will(self, subscriber_id: SubscriberId, delay: float,
                   publish: Callable[[], Any]) -> None:
        """
        Call ``publish`` (an MQTT 5.0 will) after ``delay`` seconds, unless
        the client id registers again first [MQTT-3.1.3-9].
        """
        self._cancel_will(subscriber_id)
        self._delayed_wills[subscriber_id] = self.clock.callLater(
            delay, self._publish_will, subscriber_id, publish)

    def _publish_will(self, subscriber_id: SubscriberId, publish: Callable[[], Any]) -> None:
        self._delayed_wills.pop(subscriber_id, None)
        publish()

    def _cancel_will(self, subscriber_id: SubscriberId) -> None:
        call = self._delayed_wills.pop(subscriber_id, None)
        if call is not None and call.active():
            call.cancel()

    def _register(self, subscriber_id: SubscriberId, clean_session: bool,
                  session: Any) -> Tuple[SubscriberQueue, bool]:
        self._cancel_will(subscriber_id)
        previous = self.sessions.pop(subscriber_id, None)
        if previous is not None:
            previous.take_over()
        self._cancel_expiry(subscriber_id)
        self._forget_move(subscriber_id)
        handing = self._handing_on.pop(subscriber_id, None)
        if handing is not None:
            # Back before its queue was handed on: it is ours again.
            handed_back, _successor, call = handing
            if call.active():
                call.cancel()
            self.queues[subscriber_id] = handed_back
            self._hold(subscriber_id, handed_back, self._awaited.get(subscriber_id))
        queue = self.queues.get(subscriber_id)
        if clean_session:
            # [MQTT-3.1.2-6]: discard any previous session, wherever it was.
            if queue is not None:
                queue.discard()
            queue = self._new_queue(subscriber_id, True)
            present_here = False
        else:
            present_here = queue is not None and not queue.clean_session
            if queue is None or queue.clean_session:
                if queue is not None:
                    queue.discard()
                queue = self._new_queue(subscriber_id, False)
            old_owner = self._moved_owner(subscriber_id)
            dataplane = self.dataplane
            if (old_owner is not None and dataplane is not None
                    and dataplane.transport.connected(old_owner)):
                # The old node hands its messages over once it sees the
                # record move: they go out before what reaches us directly.
                self._hold(subscriber_id, queue, old_owner)
            elif old_owner is not None:
                self._take_stored(subscriber_id, queue)
        # Recorded with this node, so that a node where the session was
        # closes its connection and hands a persistent queue over.
        held_persistent = self.subscription_table.claim(subscriber_id, clean_session)
        present = not clean_session and (present_here or held_persistent)
        self.sessions[subscriber_id] = session
        return queue, present

    def _hold(self, subscriber_id: SubscriberId, queue: SubscriberQueue,
              old_node: Optional[str]) -> None:
        queue.hold()
        if old_node is not None:
            self._awaited[subscriber_id] = old_node
        call = self._hold_calls.pop(subscriber_id, None)
        if call is not None and call.active():
            call.cancel()
        self._hold_calls[subscriber_id] = self.clock.callLater(
            HAND_OVER_WAIT, self._hand_over_done, subscriber_id, None)

    def _hand_over_done(self, subscriber_id: SubscriberId, old_node: Optional[str]) -> None:
        """The old node handed everything over (or we waited long enough)."""
        awaited = self._awaited.get(subscriber_id)
        if old_node is not None and awaited is not None and old_node != awaited:
            return   # the end of an earlier hand-over
        self._awaited.pop(subscriber_id, None)
        if subscriber_id in self._handing_on:
            self._hand_on(subscriber_id)
            return
        call = self._hold_calls.pop(subscriber_id, None)
        if call is not None and call.active():
            call.cancel()
        queue = self.queues.get(subscriber_id)
        if queue is not None:
            queue.release_hold()
            owner = self._moved_owner(subscriber_id)
            if owner is not None and owner != old_node and subscriber_id not in self.sessions:
                # Handed over here, while the session moved on to a third
                # node (whose record this node merged without ever being
                # named in one): it goes on there.
                self._moved_away(subscriber_id, owner)

    def _new_queue(self, subscriber_id: SubscriberId, clean_session: bool) -> SubscriberQueue:
        queue = SubscriberQueue(subscriber_id, clean_session, self.limits, self.clock,
                                self.counters, self.store)
        self.queues[subscriber_id] = queue
        return queue

    def unregister(self, subscriber_id: SubscriberId, session: Any,
                   clean_session: bool, session_expiry: Optional[float] = None) -> None:
        """
        ``session``'s connection is gone.  A clean session ends with it
        [MQTT-3.1.2-6]; a persistent one stays, offline.  A session that was
        taken over is no longer registered, and this is a no-op for it.
        ``session_expiry`` (MQTT 5.0; seconds, ``math.inf`` = never) replaces
        ``persistent_client_expiration`` for this session.
        """
        if self.sessions.get(subscriber_id) is not session:
            return
        del self.sessions[subscriber_id]
        self._keep_expiry(subscriber_id, None if clean_session else session_expiry)
        queue = self.queues.get(subscriber_id)
        if queue is None:
            return
        if clean_session:
            queue.discard()
            del self.queues[subscriber_id]
            self.subscription_table.remove(subscriber_id)
        else:
            queue.detach()
            self._schedule_expiry(subscriber_id)

    def _moved_away(self, subscriber_id: SubscriberId, owner: Optional[str]) -> None:
        """
        The session registered on another node (or ended there): close the
        connection still open here and hand a persistent session's waiting
        messages to its new node.  Stored copies stay until the new node
        acknowledged them, and what still arrives here for the session is
        passed on for :data:`MOVED_FORWARDING` seconds.
        """
        session = self.sessions.pop(subscriber_id, None)
        if session is not None:
            session.take_over()
        # An expiry timer of the session here would delete the new record.
        self._cancel_expiry(subscriber_id)
        hold = self._hold_calls.pop(subscriber_id, None)
        if hold is not None and hold.active():
            hold.cancel()
        queue = self.queues.pop(subscriber_id, None)
        dataplane = self.dataplane
        if owner is None or owner == self.node or dataplane is None:
            if queue is not None:
                queue.discard()
            return
        self._remember_move(subscriber_id)
        new_node: str = owner
        self._successors[subscriber_id] = new_node
        if queue is None or queue.clean_session:
            if queue is not None:
                queue.discard()
            self._end_hand_over(subscriber_id, new_node)
            return
        if queue.held:
            # Moved on before the node before handed everything here: wait
            # for it (bounded), then hand on all of it, oldest first.
            self._handing_on[subscriber_id] = (queue, new_node, self.clock.callLater(
                HAND_OVER_WAIT, self._hand_on, subscriber_id))
            return
        self._hand_over_queue(subscriber_id, queue, new_node)

    def _hand_on(self, subscriber_id: SubscriberId) -> None:
        self._awaited.pop(subscriber_id, None)
        handing = self._handing_on.pop(subscriber_id, None)
        if handing is None:
            return
        queue, successor, call = handing
        if call.active():
            call.cancel()
        if self._moved_owner(subscriber_id) is None or self.dataplane is None:
            queue.discard()   # the session ended meanwhile
            return
        # To the node it moved to from here, which waits for our marker; if
        # it moved on too, it hands on in turn (or passes on what it gets).
        self._hand_over_queue(subscriber_id, queue, successor)

    def _hand_over_queue(self, subscriber_id: SubscriberId, queue: SubscriberQueue,
                         new_node: str) -> None:
        dataplane = self.dataplane
        assert dataplane is not None
        self.log.info("moving the queue of {client_id} to {owner}",
                      client_id=subscriber_id.client_id, owner=new_node)
        queue.hand_over(
            lambda message, qos, stored: dataplane.hand_over(
                new_node, subscriber_id, message, qos, release=stored),
            lambda: self._end_hand_over(subscriber_id, new_node))

    def _end_hand_over(self, subscriber_id: SubscriberId, new_node: str) -> None:
        """
        Tell ``new_node`` the hand-over is complete -- once every reachable
        node has merged the record that moved the session: until then a
        node may still send us messages for it, which we pass on behind the
        hand-over, and they must not reach the client after newer ones.
        """
        dataplane = self.dataplane
        assert dataplane is not None
        if self.confirm is None:
            dataplane.hand_over_done(new_node, subscriber_id)
            return
        self.ending.add(subscriber_id)

        def confirmed(_: Any) -> None:
            self.ending.discard(subscriber_id)
            dataplane.hand_over_done(new_node, subscriber_id)
            if self.ready():
                # Every member routes to the new node now: what they send
                # here from now on is for this node's other subscribers, and
                # passing it on would only duplicate it.
                self._expire_move(subscriber_id, MOVED_GRACE)

        self.confirm(SUBSCRIBER_PREFIX, subscriber_id.as_key()).addBoth(confirmed)

    def _expire_move(self, subscriber_id: SubscriberId, delay: float) -> None:
        entry = self._moved.get(subscriber_id)
        if entry is None:
            return
        filters, call = entry
        if call.active():
            call.cancel()
        self._moved[subscriber_id] = (filters, self.clock.callLater(
            delay, self._forget_move, subscriber_id))

    def _remember_move(self, subscriber_id: SubscriberId) -> None:
        self._forget_move(subscriber_id)
        filters = all_filters(self.subscription_table.record(subscriber_id))
        for flt, qos in filters.items():
            self.moved.add(flt, subscriber_id, qos)
        self._moved[subscriber_id] = (filters, self.clock.callLater(
            MOVED_FORWARDING, self._forget_move, subscriber_id))

    def _forget_move(self, subscriber_id: SubscriberId) -> None:
        self._successors.pop(subscriber_id, None)
        entry = self._moved.pop(subscriber_id, None)
        if entry is None:
            return
        filters, call = entry
        if call.active():
            call.cancel()
        for flt in filters:
            self.moved.remove(flt, subscriber_id)

    def _forward_moved(self, subscriber_id: SubscriberId, message: Message,
                       qos: int) -> Optional[Deferred]:
        """
        A message for a session this node no longer has: to the node its
        record names now, stored here first (QoS 1/2) and kept until that
        node acknowledged it -- as a hand-over -- so neither a late arrival
        nor a crash of this node loses it.
        """
        if message.origin is not None and not message.dup:
            # The sender may have sent the new node its own copy (it may
            # have seen the move first): ours is a possible duplicate.
            message = attrs.evolve(message, dup=True)
        handing = self._handing_on.get(subscriber_id)
        if handing is not None:
            # Newer than what its queue here holds: handed on after it.
            return handing[0].enqueue(message, qos)
        owner = self._next_node(subscriber_id)
        dataplane = self.dataplane
        if owner is None or dataplane is None:
            queue = self.queues.get(subscriber_id)
            if queue is None and self.subscription_table.record(subscriber_id) is not None \
                    and record_owner(self.subscription_table.record(subscriber_id)) == self.node:
                queue = self._adopt(subscriber_id)
            return queue.enqueue_handed_over(message, qos) if queue is not None else None
        stored = None
        if qos > 0 and self.store is not None:
            stored = self.store.write(subscriber_id, message)
        dataplane.hand_over(owner, subscriber_id, message, qos, release=stored is not None)
        return stored

    def _next_node(self, subscriber_id: SubscriberId) -> Optional[str]:
        """
        Where what still arrives for a session that moved away goes: the
        node it moved to from here while that is reachable, else the node
        its record names.  Each node the session left passes on to the next
        one in the order of the moves, on the stream its hand-over took, so
        a late arrival never overtakes older messages still being handed
        along the chain (a later owner would deliver it first).
        """
        owner = self._moved_owner(subscriber_id)
        if owner is None:
            return None
        successor = self._successors.get(subscriber_id)
        dataplane = self.dataplane
        if successor is None or successor == self.node or dataplane is None \
                or not dataplane.transport.connected(successor):
            return owner
        return successor

    def _adopt(self, subscriber_id: SubscriberId) -> SubscriberQueue:
        """A queue for a persistent session recorded here that has none yet."""
        queue = self._new_queue(subscriber_id, False)
        if subscriber_id not in self.sessions:
            self._schedule_expiry(subscriber_id)
        return queue

    def end_all_here(self) -> int:
        """
        This node was removed from its cluster: every session it holds
        ends here (connection closed, queue gone), as when a session ends
        on another node.  Their stored messages are deleted -- unless the
        store is shared: the sessions live on elsewhere with those very
        messages.  Returns how many ended.
        """
        ended = sorted(set(self.queues) | set(self.sessions), key=lambda s: s.as_key())
        for subscriber_id in ended:
            if self.shared_store:
                session = self.sessions.pop(subscriber_id, None)
                if session is not None:
                    session.take_over()
                self._cancel_expiry(subscriber_id)
                queue = self.queues.pop(subscriber_id, None)
                if queue is not None:
                    queue.detach()
            else:
                self.subscription_table.on_moved(subscriber_id, None)
        return len(ended)

    def adopt(self, subscriber_id: SubscriberId, from_node: Optional[str] = None) -> None:
        """
        The persistent session of a node that left the cluster
        (``from_node``; see :meth:`Subscriptions.rehome`) now lives here:
        keep an offline queue for it, so what is published for it waits
        for its client, as after a restart.
        """
        if subscriber_id in self.queues:
            return
        queue = self._new_queue(subscriber_id, False)
        self._schedule_expiry(subscriber_id)
        self.log.info("session {client_id} of {node} now lives here",
                      client_id=subscriber_id.client_id, node=from_node or "a node that left")
        if self.dataplane is not None:
            # What other nodes still had for the node that left comes here
            # too (:meth:`_orphaned`), older than what is routed here from
            # now on: it goes out first if it comes within the wait.
            self._hold(subscriber_id, queue, None)
        self._take_stored(subscriber_id, queue)

    def _take_stored(self, subscriber_id: SubscriberId, queue: SubscriberQueue) -> None:
        """
        A session came here from a node that cannot hand its queue over
        (it died, or is down): with a shared store its messages are there.
        """
        store = self.store
        if store is None or not self.shared_store:
            return

        def found(refs: List[bytes]) -> None:
            if self.queues.get(subscriber_id) is queue and refs:
                queue.restore_before(refs, self._qos_resolver(subscriber_id))
                self.log.info("{count} stored messages of {client_id} taken over",
                              count=len(refs), client_id=subscriber_id.client_id)
        store.find(subscriber_id).addCallback(found)

    def take_offline(self, subscriber_id: SubscriberId, from_node: str) -> "Deferred[bool]":
        """
        ``from_node`` leaves the cluster (``cluster leave -k``) and gives
        this node its offline persistent session ``subscriber_id``: it is
        registered here as a CONNECT here would register it -- this node
        writes the record, so it routes the session's messages before any
        other node sends them here -- and its queue waits, held, for
        ``from_node``'s hand-over.  Fires True once every reachable node
        has the record; False, changing nothing, when the session is not
        ``from_node``'s offline session (any more).
        """
        record = self.subscription_table.record(subscriber_id)
        if (record_owner(record) != from_node or record is None or record[-1][1]
                or subscriber_id in self.sessions):
            return succeed(False)
        queue = self.queues.get(subscriber_id)
        if queue is None or queue.clean_session:
            if queue is not None:
                queue.discard()
            queue = self._new_queue(subscriber_id, False)
        self._hold(subscriber_id, queue, from_node)
        self.subscription_table.claim(subscriber_id, False)
        self._schedule_expiry(subscriber_id)
        self.log.info("session {client_id} of {node} now lives here",
                      client_id=subscriber_id.client_id, node=from_node)
        if self.confirm is None:
            return succeed(True)
        return self.confirm(SUBSCRIBER_PREFIX, subscriber_id.as_key()).addBoth(lambda _: True)

    def _handed_over(self, subscriber_id: SubscriberId, message: Message,
                     qos: int) -> Optional[Deferred]:
        """
        A message of a session that moved here, from its old node: stored
        before it is acknowledged.  Without a queue here (it moved on, or
        this node does not know yet that it has it) it is never dropped:
        passed on to where the record says the session is, or kept here.
        """
        queue = self.queues.get(subscriber_id)
        if queue is None:
            handing = self._handing_on.get(subscriber_id)
            queue = handing[0] if handing is not None else None
        if queue is not None:
            return queue.enqueue_handed_over(message, qos)
        owner = self._moved_owner(subscriber_id)
        sender = message.origin
        if owner is not None and owner != sender:
            return self._forward_moved(subscriber_id, message, qos)
        queue = self._adopt(subscriber_id)
        if owner is not None and sender is not None:
            # The sender moved the session here, and the record saying so
            # has not reached this node yet (it may travel through another
            # node): keep it -- passed back, it could be in flight to the
            # sender when that node leaves the cluster -- and hold it until
            # the sender's hand-over is complete.
            self._hold(subscriber_id, queue, sender)
        return queue.enqueue_handed_over(message, qos)

    def _hand_over_released(self, subscriber_id: SubscriberId, ref: bytes) -> None:
        """The new node has a handed-over message safe: our copy may go."""
        store = self.store
        if store is None or self.shared_store:
            return   # (shared: the new owner's copy is this very row)
        queue = self.queues.get(subscriber_id)
        if queue is None and subscriber_id in self._handing_on:
            queue = self._handing_on[subscriber_id][0]
        if queue is not None and queue.holds(ref):
            return   # the session came back meanwhile, with this message
        store.delete(subscriber_id, ref)

    def place(self, subscriber_id: SubscriberId, message: Message,
              qos: int) -> Optional[Deferred]:
        """
        Give ``message`` to ``subscriber_id``'s session wherever its record
        says it lives: its queue here (made if need be), else its node,
        stored here until that node has it (see :mod:`vmqtw.broker.orphans`).
        """
        if record_owner(self.subscription_table.record(subscriber_id)) == self.node:
            queue = self.queues.get(subscriber_id) or self._adopt(subscriber_id)
            return queue.enqueue_handed_over(message, qos)
        return self._forward_moved(subscriber_id, message, qos)

    # -- what the session calls (passed on) -----------------------------------

    def subscriptions(self, subscriber_id: SubscriberId) -> Dict[str, int]:
        """This node's ``{filter: qos}`` for ``subscriber_id``."""
        return self.subscription_table.local(subscriber_id)

    def subscribe(self, subscriber_id: SubscriberId, clean_session: bool,
                  topics: Iterable[Tuple[str, int]]) -> Optional[Deferred]:
        """
        See :meth:`Subscriptions.subscribe`: this node routes the filters on
        return.  The Deferred (None on a lone node) fires once every
        reachable node routes them too, or after a bounded wait.
        """
        self.subscription_table.subscribe(subscriber_id, clean_session, topics)
        if self.confirm is None:
            return None
        return self.confirm(SUBSCRIBER_PREFIX, subscriber_id.as_key())

    def unsubscribe(self, subscriber_id: SubscriberId, clean_session: bool,
                    topics: Iterable[str]) -> None:
        self.subscription_table.unsubscribe(subscriber_id, clean_session, topics)

    def retained_matching(self, flt: str) -> Iterator[Tuple[Message, Optional[Author]]]:
        """See :meth:`RetainStore.matching`."""
        return self.retain.matching(flt)

    # -- what the admin reads -------------------------------------------------

    @property
    def trie(self) -> SubscriptionTrie:
        return self.subscription_table.trie

    @property
    def retained(self) -> RetainTree:
        return self.retain.retained

    @property
    def published(self) -> int:
        return self.router.published

    @property
    def unmatched(self) -> int:
        """Messages routed that matched no subscription (see :class:`Router`)."""
        return self.router.unmatched

    @property
    def forwarded(self) -> int:
        return self.dataplane.forwarded if self.dataplane is not None else 0

    @property
    def received_remote(self) -> int:
        return self.dataplane.received_remote if self.dataplane is not None else 0
