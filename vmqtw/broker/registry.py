"""
The registry: who is connected, who subscribes to what, and where a
published message goes.

Subscriptions live in :class:`~vmqtw.interfaces.IMetadataStore` under
:data:`~vmqtw.types.SUBSCRIBER_PREFIX`, retained messages under
:data:`~vmqtw.types.RETAIN_PREFIX`.  The routing trie and the retained-topic
tree are caches built from a fold of the store plus its change events, so a
change arriving from another node (or a repair after a netsplit) updates
routing exactly as a local SUBSCRIBE does -- and routing never scans all
subscriptions.

Subscriber record (VerneMQ's layout)::

    key   = (mountpoint, client_id)
    value = ((node, clean_session, ((filter, qos), ...)), ...)
"""
from __future__ import annotations

from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional, Set,
                    Tuple)

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from vmqtw.broker.queue import QueueCounters, QueueLimits, SubscriberQueue
from vmqtw.interfaces import ChangeOrigin, IMetadataStore
from vmqtw.trie import RetainTree, SubscriptionTrie
from vmqtw.types import (RETAIN_PREFIX, SUBSCRIBER_PREFIX, Message,
                         SubscriberId, new_message_ref)

SubscriberRecord = Tuple[Tuple[str, bool, Tuple[Tuple[str, int], ...]], ...]


def local_filters(record: Optional[SubscriberRecord], node: str) -> Dict[str, int]:
    """The ``{filter: qos}`` that ``record`` holds for ``node``."""
    filters: Dict[str, int] = {}
    if record:
        for entry_node, _clean, topics in record:
            if entry_node == node:
                for flt, qos in topics:
                    filters[flt] = qos
    return filters


def remote_filters(record: Optional[SubscriberRecord], node: str) -> Set[Tuple[str, str]]:
    """``{(other_node, filter)}`` that ``record`` holds for nodes but ``node``."""
    pairs: Set[Tuple[str, str]] = set()
    if record:
        for entry_node, _clean, topics in record:
            if entry_node != node:
                for flt, _qos in topics:
                    pairs.add((entry_node, flt))
    return pairs


def all_filters(record: Optional[SubscriberRecord]) -> Dict[str, int]:
    """Every ``{filter: qos}`` of ``record``, whichever node holds it."""
    filters: Dict[str, int] = {}
    if record:
        for _node, _clean, topics in record:
            for flt, qos in topics:
                filters[flt] = max(qos, filters.get(flt, 0))
    return filters


def record_owner(record: Optional[SubscriberRecord]) -> Optional[str]:
    """The node a session is registered on (the last entry written)."""
    return record[-1][0] if record else None


def encode_message(message: Message) -> tuple:
    """A routed message as plain data for the inter-node wire."""
    return (message.ref, message.topic, message.payload, message.qos, message.timestamp,
            message.mountpoint)


def decode_message(data: tuple, origin: str) -> Message:
    ref, topic, payload, qos, timestamp, mountpoint = data
    return Message(ref, topic, payload, qos, False, False, timestamp, mountpoint, origin)


#: The cluster transport channel of the MQTT data plane.
CHANNEL = "mqtt"


def record_clean_session(record: Optional[SubscriberRecord], node: str) -> Optional[bool]:
    """The clean-session flag ``record`` holds for ``node``, if any."""
    if record:
        for entry_node, clean, _topics in record:
            if entry_node == node:
                return clean
    return None


class Registry:
    """Sessions, subscriptions, retained messages and routing of one node."""

    log = Logger()

    def __init__(self, node: str, metadata: IMetadataStore, clock: IReactorTime,
                 limits: QueueLimits = QueueLimits(), store: Any = None,
                 session_expiration: Optional[float] = None,
                 cluster: Any = None, ready: Optional[Callable[[], bool]] = None) -> None:
        self.node = node
        #: The IClusterTransport to other nodes, or None on a lone node.
        self.cluster = cluster
        #: True while every cluster member is reachable (no netsplit).
        self.ready: Callable[[], bool] = ready if ready is not None else (lambda: True)
        #: ``(node, filter) -> number of that node's sessions subscribed``:
        #: the trie holds one entry per node and filter, so a publish sends
        #: one copy per node however many of its clients match.
        self._remote_refs: Dict[Tuple[str, str], int] = {}
        #: Messages forwarded to and received from other nodes.
        self.forwarded = 0
        self.received_remote = 0
        #: ``persistent_client_expiration`` in seconds; None = never.
        self.session_expiration = session_expiration
        self._expiry_calls: Dict[SubscriberId, Any] = {}
        self.metadata = metadata
        self.clock = clock
        self.limits = limits
        #: An IMessageStore, or None for a node that keeps nothing on disk.
        self.store = store
        self.counters = QueueCounters()
        self.trie = SubscriptionTrie()
        self.retained = RetainTree()
        self.queues: Dict[SubscriberId, SubscriberQueue] = {}
        #: Connected sessions by subscriber id (for takeover).
        self.sessions: Dict[SubscriberId, Any] = {}
        self._unsubscribe_events: List[Callable[[], None]] = []
        #: Messages routed and retained counts, read by metrics.
        self.published = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Build the trie and the retained tree, then follow changes."""
        for key, record in self.metadata.items(SUBSCRIBER_PREFIX):
            self._on_subscriber_change(SUBSCRIBER_PREFIX, key, None, record,
                                       ChangeOrigin.REMOTE)
        for key, value in self.metadata.items(RETAIN_PREFIX):
            self._on_retain_change(RETAIN_PREFIX, key, None, value, ChangeOrigin.REMOTE)
        self._unsubscribe_events = [
            self.metadata.subscribe(SUBSCRIBER_PREFIX, self._on_subscriber_change),
            self.metadata.subscribe(RETAIN_PREFIX, self._on_retain_change),
        ]
        if self.cluster is not None:
            self.cluster.register_cast_handler(CHANNEL, self._on_cluster_cast)

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe_events:
            unsubscribe()
        self._unsubscribe_events = []
        for queue in self.queues.values():
            queue.detach()
        for call in self._expiry_calls.values():
            if call.active():
                call.cancel()
        self._expiry_calls.clear()

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
        persistent = []
        stale = []
        for key, record in list(self.metadata.items(SUBSCRIBER_PREFIX)):
            clean = record_clean_session(record, self.node)
            if clean is False:
                persistent.append(SubscriberId(*key))
            elif clean is True:
                stale.append(SubscriberId(*key))
        for subscriber_id in stale:
            self._own_delete(subscriber_id.as_key())
        stored = set()
        if self.store is not None:
            stored = set((yield self.store.subscribers()))
        restored_messages = 0
        for subscriber_id in persistent:
            queue = self._new_queue(subscriber_id, False)
            if subscriber_id in stored:
                refs = yield self.store.find(subscriber_id)
                queue.restore(refs, self._qos_resolver(subscriber_id))
                restored_messages += len(refs)
            self._schedule_expiry(subscriber_id)
        for subscriber_id in stored.difference(persistent):
            for ref in (yield self.store.find(subscriber_id)):
                yield self.store.delete(subscriber_id, ref)
        self.log.info("restored {sessions} offline sessions holding {messages} messages",
                      sessions=len(persistent), messages=restored_messages)

    def _qos_resolver(self, subscriber_id: SubscriberId) -> Callable[[Message], int]:
        def qos_for(message: Message) -> int:
            granted = self.trie.match(message.topic).get(subscriber_id, message.qos)
            return granted if granted < message.qos else message.qos
        return qos_for

    def _schedule_expiry(self, subscriber_id: SubscriberId) -> None:
        """``persistent_client_expiration`` starts when a session goes offline."""
        if self.session_expiration is None:
            return
        self._cancel_expiry(subscriber_id)
        self._expiry_calls[subscriber_id] = self.clock.callLater(
            self.session_expiration, self._expire, subscriber_id)

    def _cancel_expiry(self, subscriber_id: SubscriberId) -> None:
        call = self._expiry_calls.pop(subscriber_id, None)
        if call is not None and call.active():
            call.cancel()

    def _expire(self, subscriber_id: SubscriberId) -> None:
        """An offline persistent session expired: remove it and all it holds."""
        self._expiry_calls.pop(subscriber_id, None)
        if subscriber_id in self.sessions:
            return
        queue = self.queues.pop(subscriber_id, None)
        if queue is not None:
            queue.discard()
        if self.metadata.get(SUBSCRIBER_PREFIX, subscriber_id.as_key()) is not None:
            self._own_delete(subscriber_id.as_key())
        self.counters.expired_sessions += 1
        self.log.info("session {client_id} expired", client_id=subscriber_id.client_id)

    def _on_subscriber_change(self, prefix: Any, key: Any, old: Any, new: Any,
                              origin: ChangeOrigin) -> None:
        subscriber_id = SubscriberId(*key)
        node = self.node
        before = local_filters(old, node)
        after = local_filters(new, node)
        trie = self.trie
        for flt in before:
            if flt not in after:
                trie.remove(flt, subscriber_id)
        for flt, qos in after.items():
            if before.get(flt) != qos:
                trie.add(flt, subscriber_id, qos)
        remote_before = remote_filters(old, node)
        remote_after = remote_filters(new, node)
        if remote_before != remote_after:
            refs = self._remote_refs
            for pair in remote_before - remote_after:
                count = refs.get(pair, 0) - 1
                if count <= 0:
                    refs.pop(pair, None)
                    trie.remove(pair[1], pair[0])
                else:
                    refs[pair] = count
            for pair in remote_after - remote_before:
                count = refs.get(pair, 0) + 1
                refs[pair] = count
                if count == 1:
                    # The remote node re-matches and applies its own
                    # subscribers' QoS; forward at the published QoS.
                    trie.add(pair[1], pair[0], 2)
        if (origin is not ChangeOrigin.LOCAL and record_clean_session(old, node) is not None
                and record_clean_session(new, node) is None):
            owner = record_owner(new)
            # A clean session elsewhere ends this one [MQTT-3.1.2-6]; a
            # persistent one takes its messages along.
            moved_to = owner if owner is not None and new[-1][1] is False else None
            self._moved_away(subscriber_id, moved_to)

    def _own_put(self, key: Any, record: SubscriberRecord) -> None:
        """Write a subscriber record; its change event is ours, not a move."""
        self.metadata.put(SUBSCRIBER_PREFIX, key, record)

    def _own_delete(self, key: Any) -> None:
        self.metadata.delete(SUBSCRIBER_PREFIX, key)

    def _moved_away(self, subscriber_id: SubscriberId, owner: Optional[str]) -> None:
        """
        The session registered on another node (or ended there): close the
        connection still open here, and hand a persistent session's waiting
        messages to its new node.
        """
        session = self.sessions.pop(subscriber_id, None)
        if session is not None:
            session.take_over()
        queue = self.queues.pop(subscriber_id, None)
        if queue is None:
            return
        if owner is None or owner == self.node or self.cluster is None or queue.clean_session:
            queue.discard()
            return
        self.log.info("moving the queue of {client_id} to {owner}",
                      client_id=subscriber_id.client_id, owner=owner)
        queue.hand_over(lambda message, qos: self.cluster.cast(
            owner, CHANNEL, ("enq", subscriber_id.as_key(), encode_message(message), qos)))

    def _on_retain_change(self, prefix: Any, key: Any, old: Any, new: Any,
                          origin: ChangeOrigin) -> None:
        _mountpoint, topic = key
        if new is None:
            self.retained.delete(topic)
        else:
            self.retained.set(topic, new)

    # -- sessions -------------------------------------------------------------

    def register(self, subscriber_id: SubscriberId, clean_session: bool,
                 session: Any) -> Tuple[SubscriberQueue, bool]:
        """
        Attach a new connection to ``subscriber_id``'s session.

        An existing connection with the same client id is taken over: it is
        closed (its will fires) and the new one proceeds [MQTT-3.1.4-2].
        Returns the queue and the CONNACK session-present flag.
        """
        previous = self.sessions.pop(subscriber_id, None)
        if previous is not None:
            previous.take_over()
        self._cancel_expiry(subscriber_id)
        queue = self.queues.get(subscriber_id)
        key = subscriber_id.as_key()
        record = self.metadata.get(SUBSCRIBER_PREFIX, key)
        # Every session is recorded with the node it is on, as VerneMQ
        # does: a node that sees the record move elsewhere closes its own
        # connection for that client id and hands a persistent queue over.
        if clean_session:
            # [MQTT-3.1.2-6]: discard any previous session, wherever it was.
            if queue is not None:
                queue.discard()
            queue = self._new_queue(subscriber_id, True)
            present = False
            mine = ((self.node, True, ()),)
        else:
            present = (queue is not None and not queue.clean_session) or any(
                clean is False for _node, clean, _topics in (record or ()))
            if queue is None or queue.clean_session:
                if queue is not None:
                    queue.discard()
                queue = self._new_queue(subscriber_id, False)
            # The session's subscriptions follow it to this node.
            mine = ((self.node, False, tuple(sorted(all_filters(record).items()))),)
        if record is None or tuple(record) != mine:
            self._own_put(key, mine)
        self.sessions[subscriber_id] = session
        return queue, present

    def _new_queue(self, subscriber_id: SubscriberId, clean_session: bool) -> SubscriberQueue:
        queue = SubscriberQueue(subscriber_id, clean_session, self.limits, self.clock,
                                self.counters, self.store)
        self.queues[subscriber_id] = queue
        return queue

    def unregister(self, subscriber_id: SubscriberId, session: Any,
                   clean_session: bool) -> None:
        """
        ``session``'s connection is gone.  A clean session ends with it
        [MQTT-3.1.2-6]; a persistent one stays, offline.  A session that was
        taken over is no longer registered, and this is a no-op for it.
        """
        if self.sessions.get(subscriber_id) is not session:
            return
        del self.sessions[subscriber_id]
        queue = self.queues.get(subscriber_id)
        if queue is None:
            return
        if clean_session:
            queue.discard()
            del self.queues[subscriber_id]
            if self.metadata.get(SUBSCRIBER_PREFIX, subscriber_id.as_key()) is not None:
                self._own_delete(subscriber_id.as_key())
        else:
            queue.detach()
            self._schedule_expiry(subscriber_id)

    # -- subscriptions --------------------------------------------------------

    def subscriptions(self, subscriber_id: SubscriberId) -> Dict[str, int]:
        """This node's ``{filter: qos}`` for ``subscriber_id``."""
        record = self.metadata.get(SUBSCRIBER_PREFIX, subscriber_id.as_key())
        return local_filters(record, self.node)

    def subscribe(self, subscriber_id: SubscriberId, clean_session: bool,
                  topics: Iterable[Tuple[str, int]]) -> None:
        """
        Add or replace subscriptions; a repeated filter replaces the old
        one's QoS [MQTT-3.8.4-3].  The trie is updated (through the store's
        change event) before this returns, so a SUBACK sent afterwards never
        precedes routing.
        """
        filters = self.subscriptions(subscriber_id)
        for flt, qos in topics:
            filters[flt] = qos
        self._write_record(subscriber_id, clean_session, filters)

    def unsubscribe(self, subscriber_id: SubscriberId, clean_session: bool,
                    topics: Iterable[str]) -> None:
        filters = self.subscriptions(subscriber_id)
        changed = False
        for flt in topics:
            if filters.pop(flt, None) is not None:
                changed = True
        if changed:
            self._write_record(subscriber_id, clean_session, filters)

    def _write_record(self, subscriber_id: SubscriberId, clean_session: bool,
                      filters: Dict[str, int]) -> None:
        key = subscriber_id.as_key()
        old = self.metadata.get(SUBSCRIBER_PREFIX, key)
        others = tuple(entry for entry in (old or ()) if entry[0] != self.node)
        mine = (self.node, clean_session, tuple(sorted(filters.items())))
        self._own_put(key, others + (mine,))

    # -- publishing -----------------------------------------------------------

    def publish(self, message: Message,
                author: Optional[Tuple[str, Optional[str]]] = None) -> Optional[Deferred]:
        """
        Route ``message`` to every matching subscriber, at
        ``min(published, granted)`` QoS, one copy per subscriber however many
        of its filters match [MQTT-3.3.5-1].

        Returns None when every copy is where it must be before the publisher
        may be acknowledged, else a Deferred firing when it is (the message
        store wrote the copies for offline persistent sessions).  ``author``
        (client id, user name) is kept with a retained message, so that it
        can be withheld once its author may no longer publish it.
        """
        self.published += 1
        if message.retain:
            self._retain(message, author)
            # Established subscriptions get RETAIN=0 [MQTT-3.3.1-9].
            message = Message(message.ref, message.topic, message.payload,
                              message.qos, False, False, message.timestamp,
                              message.mountpoint, message.origin)
        matches = self.trie.match(message.topic)
        if not matches:
            return None
        queues = self.queues
        published_qos = message.qos
        waits: Optional[List[Deferred]] = None
        encoded = None
        for subscriber_id, granted in matches.items():
            if subscriber_id.__class__ is str:
                # Another node's subscribers: one copy per node, never
                # forwarded again by the node that receives it.
                if message.origin is None and self.cluster is not None:
                    if encoded is None:
                        encoded = ("msg", encode_message(message))
                    self.cluster.cast(subscriber_id, CHANNEL, encoded)
                    self.forwarded += 1
                continue
            queue = queues.get(subscriber_id)
            if queue is None:
                continue
            waiting = queue.enqueue(message, granted if granted < published_qos else published_qos)
            if waiting is not None:
                if waits is None:
                    waits = []
                waits.append(waiting)
        if waits is None:
            return None
        return gatherResults(waits, consumeErrors=True)

    def _on_cluster_cast(self, peer: str, data: Any) -> None:
        """A message from another node: route it to local subscribers only."""
        kind = data[0]
        try:
            if kind == "msg":
                self.received_remote += 1
                self.publish(decode_message(data[1], peer))
            elif kind == "enq":
                _, key, encoded, qos = data
                queue = self.queues.get(SubscriberId(*key))
                if queue is not None:
                    queue.enqueue(decode_message(encoded, peer), qos)
        except Exception:
            self.log.failure("bad data-plane message {kind!r} from {peer}", kind=kind, peer=peer)

    def _retain(self, message: Message, author: Optional[Tuple[str, Optional[str]]]) -> None:
        """A zero-byte retained message clears the topic [MQTT-3.3.1-10/11]."""
        key = (message.mountpoint, message.topic)
        if message.payload:
            self.metadata.put(RETAIN_PREFIX, key,
                              (message.payload, message.qos, message.timestamp, author))
        elif self.metadata.get(RETAIN_PREFIX, key) is not None:
            self.metadata.delete(RETAIN_PREFIX, key)

    def retained_matching(self, flt: str) -> Iterator[Tuple[Message, Any]]:
        """
        Retained messages for a new subscription to ``flt``, RETAIN=1, each
        with its author ``(client_id, username)`` or None.
        """
        for topic, value in self.retained.match(flt):
            payload, qos, timestamp = value[0], value[1], value[2]
            author = value[3] if len(value) > 3 else None
            yield (Message(new_message_ref(), topic, payload, qos, True, False, timestamp),
                   author)
