"""
Local routing: where a published message goes.

The trie (kept by :class:`~vmqtw.broker.subscriptions.Subscriptions`) gives
this node's subscribers and the other nodes with subscribers; the former get
the message in their queues, the latter one copy per node through the
:class:`~vmqtw.cluster.dataplane.DataPlane`.  A message that came from
another node is routed to local subscribers only, never forwarded again.

It is its own module, not part of the registry, because it is the hot path
and the seam the next data-plane work changes (when the publisher may be
acknowledged), while the registry's business -- who is connected, takeover,
expiry, restore -- does not take part in routing at all.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple, cast

from twisted.internet.defer import Deferred, fail

from vmqtw.broker.queue import SubscriberQueue
from vmqtw.broker.retain import Author, RetainStore
from vmqtw.broker.subscriptions import Subscriptions
from vmqtw.cluster.dataplane import DataPlane
from vmqtw.errors import BacklogFull
from vmqtw.trie import SubscriptionTrie
from vmqtw.topic import matches as topic_matches
from vmqtw.types import Message, SubscriberId
from vmqtw.waits import joined

#: Subscription options kept with a filter (see
#: :mod:`vmqtw.broker.subscriptions`): the low two bits are the QoS, so a
#: value above 2 carries MQTT 5.0 options and takes the slow path.
_QOS_BITS = 0x03
_NO_LOCAL = 0x04
_RETAIN_AS_PUBLISHED = 0x08

#: ``forward_moved(subscriber_id, message, qos)``: pass a message for a
#: session that moved away to its new node; None or a Deferred as
#: :meth:`SubscriberQueue.enqueue`.
MovedForwarder = Callable[[SubscriberId, Message, int], Optional[Deferred]]

__all__ = ["Router"]


class Router:
    """Routes published messages to queues and other nodes."""

    def __init__(self, subscriptions: Subscriptions, retain: RetainStore,
                 queue_for: Callable[[SubscriberId], Optional[SubscriberQueue]],
                 dataplane: Optional[DataPlane] = None) -> None:
        self.subscriptions = subscriptions
        self.retain = retain
        #: The queue of a subscriber connected or parked on this node.
        self.queue_for = queue_for
        #: None on a node without a cluster transport: nothing is forwarded.
        self.dataplane = dataplane
        #: Messages routed (published here or received from other nodes).
        self.published = 0
        #: Of those, the ones no subscription matched (anywhere); an MQTT
        #: 5.0 publisher is told so (PUBACK 0x10 No matching subscribers).
        self.unmatched = 0
        #: Sessions that moved away from this node lately, by their filters
        #: (kept by the registry): what other nodes still send here for them
        #: goes on to ``forward_moved``.
        self.moved: Optional[SubscriptionTrie] = None
        self.forward_moved: Optional[MovedForwarder] = None

    def publish(self, message: Message,
                author: Optional[Author] = None) -> Optional[Deferred]:
        """
        Route ``message`` to every matching subscriber, at
        ``min(published, granted)`` QoS, one copy per subscriber however many
        of its filters match [MQTT-3.3.5-1], and one copy per other node
        with matching subscribers.

        Returns None when every copy is where it must be before the publisher
        may be acknowledged, else a Deferred firing when it is (the message
        store wrote the copies for persistent sessions and the outboxes of
        other nodes), or failing with :class:`BacklogFull` when another
        node's backlog has no room (the publisher must not be acknowledged).
        ``author`` (client id, user name) is kept with a retained message,
        so that it can be withheld once its author may no longer publish it.
        """
        self.published += 1
        retained = message.retain
        if retained:
            self.retain.retain(message, author)
            # Established subscriptions get RETAIN=0 [MQTT-3.3.1-9].
            message = Message(message.ref, message.topic, message.payload,
                              message.qos, False, False, message.timestamp,
                              message.mountpoint, message.origin, message.properties)
        return self._route(message, message.origin is None, author, retained)

    def route_remote(self, message: Message) -> Optional[Deferred]:
        """
        A message another node forwarded: local subscribers only.  One
        published retained comes with RETAIN set, for the MQTT 5.0
        "retain as published" subscribers here; the others get RETAIN=0.
        """
        self.published += 1
        if message.retain:
            message = Message(message.ref, message.topic, message.payload,
                              message.qos, False, message.dup, message.timestamp,
                              message.mountpoint, message.origin, message.properties)
            return self._route(message, False, None, True)
        return self._route(message, False)

    def _route(self, message: Message, forward: bool, author: Optional[Author] = None,
               retained: bool = False) -> Optional[Deferred]:
        matches = self.subscriptions.trie.match(message.topic)
        moved = self.moved
        if not forward and moved is not None and len(moved):
            # Sent here by a node that had not yet seen a session move away
            # (or in flight when it moved): passed on, not dropped.
            passed_on = self._pass_on(moved, matches, message)
            if not matches:
                return passed_on
            if passed_on is not None:
                routed = self._route_matches(matches, message, forward, author, retained)
                return joined([passed_on] if routed is None else [passed_on, routed])
        if not matches:
            self.unmatched += 1
            return None
        return self._route_matches(matches, message, forward, author, retained)

    def _pass_on(self, moved: SubscriptionTrie, matches: dict,
                 message: Message) -> Optional[Deferred]:
        forward_moved = self.forward_moved
        if forward_moved is None:
            return None
        waits: List[Deferred] = []
        published_qos = message.qos
        for subscriber, granted in moved.match(message.topic).items():
            if subscriber in matches:
                continue   # back on this node meanwhile
            granted &= _QOS_BITS
            waiting = forward_moved(cast(SubscriberId, subscriber), message,
                                    granted if granted < published_qos else published_qos)
            if waiting is not None:
                waits.append(waiting)
        return joined(waits)

    def _route_matches(self, matches: dict, message: Message, forward: bool,
                       author: Optional[Author] = None,
                       retained: bool = False) -> Optional[Deferred]:
        queue_for = self.queue_for
        published_qos = message.qos
        targets: List[Tuple[SubscriberQueue, int]] = []
        #: MQTT 5.0 subscribers with "retain as published": their own copy.
        as_published: Optional[List[Tuple[SubscriberQueue, int]]] = None
        nodes: Optional[List[str]] = None
        for subscriber, granted in matches.items():
            if isinstance(subscriber, str):
                # Another node's subscribers: one copy per node, never
                # forwarded again by the node that receives it.
                if forward:
                    if nodes is None:
                        nodes = []
                    nodes.append(subscriber)
                continue
            queue = queue_for(cast(SubscriberId, subscriber))
            if queue is not None:
                if granted > _QOS_BITS:
                    granted = self._options(cast(SubscriberId, subscriber), message.topic)
                    if (granted & _NO_LOCAL and author is not None
                            and author[0] == subscriber.client_id):
                        continue   # [MQTT-3.8.3-3]
                    if granted & _RETAIN_AS_PUBLISHED and retained:
                        if as_published is None:
                            as_published = []
                        qos = granted & _QOS_BITS
                        as_published.append((queue, qos if qos < published_qos
                                             else published_qos))
                        continue
                    granted &= _QOS_BITS
                targets.append((queue, granted if granted < published_qos else published_qos))
        dataplane = self.dataplane
        if nodes is not None and dataplane is not None and not dataplane.admits(nodes, message):
            # A peer's backlog is full.  A QoS 1/2 publish is refused whole
            # (routed nowhere, not acknowledged: the client resends it); a
            # QoS 0 one still reaches this node's subscribers.
            dataplane.refused(message)
            if published_qos:
                return fail(BacklogFull(nodes))
            nodes = None
        waits: Optional[List[Deferred]] = None
        for queue, qos in targets:
            waiting = queue.enqueue(message, qos)
            if waiting is not None:
                if waits is None:
                    waits = []
                waits.append(waiting)
        if as_published is not None:
            # [MQTT-3.3.1-12]: RETAIN as the publisher set it.
            kept = Message(message.ref, message.topic, message.payload, message.qos, True,
                           False, message.timestamp, message.mountpoint, message.origin,
                           message.properties)
            for queue, qos in as_published:
                waiting = queue.enqueue(kept, qos)
                if waiting is not None:
                    if waits is None:
                        waits = []
                    waits.append(waiting)
        if nodes is not None and dataplane is not None:
            if retained:
                # RETAIN goes along for the other nodes' "retain as
                # published" subscribers (see route_remote).
                message = Message(message.ref, message.topic, message.payload, message.qos,
                                  True, False, message.timestamp, message.mountpoint,
                                  message.origin, message.properties)
            stored = dataplane.forward(nodes, message)
            if stored is not None:
                if waits is None:
                    waits = []
                waits.append(stored)
        return joined(waits)

    def _options(self, subscriber: SubscriberId, topic: str) -> int:
        """
        The MQTT 5.0 options a message on ``topic`` is delivered with to
        ``subscriber``, over every filter of it that matches: the trie keeps
        one value per subscriber (the highest), so overlapping filters are
        read again here -- the highest QoS, no local only if every matching
        filter says so, retain as published if any does.
        """
        qos = 0
        no_local = _NO_LOCAL
        as_published = 0
        for flt, options in self.subscriptions.local(subscriber).items():
            if topic_matches(flt, topic):
                if options & _QOS_BITS > qos:
                    qos = options & _QOS_BITS
                no_local &= options
                as_published |= options & _RETAIN_AS_PUBLISHED
        return qos | no_local | as_published
