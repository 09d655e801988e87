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

from typing import Callable, Dict, List, Optional, Tuple, cast

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmqtw.broker.queue import SubscriberQueue
from vmqtw.broker.retain import Author, RetainStore
from vmqtw.broker.shared import ABSENT, OFFLINE, ONLINE, Choice, Group
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

__all__ = ["Router", "SharedCounters"]


def _with_retain(message: Message, retain: bool) -> Message:
    """``message`` with its RETAIN flag set to ``retain`` (built directly:
    ``attrs.evolve`` costs several times more, and this is per publish)."""
    return Message(message.ref, message.topic, message.payload, message.qos, retain,
                   message.dup, message.timestamp, message.mountpoint, message.origin,
                   message.properties)


@attrs.define(slots=True)
class SharedCounters:
    """What shared subscriptions did on this node (metrics read them)."""

    #: Copies given to the queue of a member on this node (one sent to a
    #: member on another node is counted there).
    delivered: int = 0
    #: Copies no member of the group could take (none left, or the one
    #: named by another node gone and no other online there).
    dropped: int = 0
    #: QoS 1/2 messages of a member whose session ended, given to another
    #: member of its group.
    requeued: int = 0


class Router:
    """Routes published messages to queues and other nodes."""

    log = Logger()

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
        #: Shared subscription groups (kept by ``subscriptions``).
        self.shared = subscriptions.shared
        #: The groups by name (the same dict, for a cheap test per publish).
        self._groups = self.shared.groups
        self.shared_counters = SharedCounters()
        if dataplane is not None:
            dataplane.route_shared = self.route_shared_remote
            dataplane.on_shared_orphaned = self._shared_orphaned

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
            message = _with_retain(message, False)
        return self._route(message, message.origin is None, author, retained)

    def route_remote(self, message: Message) -> Optional[Deferred]:
        """
        A message another node forwarded: local subscribers only.  One
        published retained comes with RETAIN set, for the MQTT 5.0
        "retain as published" subscribers here; the others get RETAIN=0.
        """
        self.published += 1
        if message.retain:
            return self._route(_with_retain(message, False), False, None, True)
        return self._route(message, False)

    def route_remote_batch(self, messages: List[Message]) -> None:
        """
        The QoS 0 messages another node sent in one frame (one reactor
        turn of its publishers), as :meth:`route_remote` each.  Their
        topics repeat (a publisher's stream, a fan-in): each topic is
        matched in the trie once per frame, not once per message.
        """
        matched: Dict[str, dict] = {}
        #: Per topic, the queues a plain QoS 0 message goes to (see
        #: :meth:`_plain_targets`), or None when it takes the full path.
        planned: Dict[str, Optional[List[SubscriberQueue]]] = {}
        match = self.subscriptions.trie.match
        moved = self.moved
        plain_ok = moved is None or not len(moved)
        for message in messages:
            self.published += 1
            topic = message.topic
            matches = matched.get(topic)
            if matches is None:
                matches = matched[topic] = match(topic)
            if plain_ok and not message.qos and not message.retain:
                if topic in planned:
                    queues = planned[topic]
                else:
                    queues = planned[topic] = self._plain_targets(matches)
                if queues is not None:
                    for queue in queues:
                        queue.enqueue(message, 0)
                    continue
            if message.retain:
                self._route(_with_retain(message, False), False, None, True, matches)
            else:
                self._route(message, False, None, False, matches)

    def _plain_targets(self, matches: dict) -> Optional[List[SubscriberQueue]]:
        """
        The queues here that a QoS 0 message from another node with these
        matches goes to, when nothing but that is to be done: subscribers of
        this node without MQTT 5.0 options (whatever QoS they were granted,
        a QoS 0 message is delivered at 0); other nodes' names are passed
        over, as a received message is never forwarded again.  None when
        any match has options, or none matched (the full path counts it).
        Worked out once per topic of a frame: a frame is handled in one go,
        so the queues stay what they were.
        """
        if not matches:
            return None
        queue_for = self.queue_for
        queues: List[SubscriberQueue] = []
        for subscriber, granted in matches.items():
            if isinstance(subscriber, str):
                continue
            if granted > _QOS_BITS:
                return None
            queue = queue_for(subscriber)
            if queue is not None:
                queues.append(queue)
        return queues

    def _route(self, message: Message, forward: bool, author: Optional[Author] = None,
               retained: bool = False, matches: Optional[dict] = None) -> Optional[Deferred]:
        if matches is None:
            matches = self.subscriptions.trie.match(message.topic)
        if forward and self._groups:
            # Shared groups are served by the node the message was
            # published on, never again by the nodes it is forwarded to.
            groups = self.shared.matching(message.topic)
            if groups:
                return self._route_with_groups(matches, groups, message, author, retained)
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
            # (No typing.cast here: it is a function call per subscriber.)
            queue = queue_for(subscriber)
            if queue is not None:
                if granted > _QOS_BITS:
                    granted = self._options(subscriber, message.topic)
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
        # A retained publish's copy with RETAIN as the publisher set it, for
        # "retain as published" subscribers here and on other nodes.
        kept = _with_retain(message, True) if retained else message
        if as_published is not None:
            # [MQTT-3.3.1-12]
            for queue, qos in as_published:
                waiting = queue.enqueue(kept, qos)
                if waiting is not None:
                    if waits is None:
                        waits = []
                    waits.append(waiting)
        if nodes is not None and dataplane is not None:
            # RETAIN goes along for the other nodes' "retain as published"
            # subscribers (see route_remote).
            stored = dataplane.forward(nodes, kept)
            if stored is not None:
                if waits is None:
                    waits = []
                waits.append(stored)
        return None if waits is None else joined(waits)

    # -- shared subscriptions ---------------------------------------------------

    def _state(self, subscriber_id: SubscriberId) -> int:
        """What :meth:`SharedGroups.choose` needs to know of a local member."""
        queue = self.queue_for(subscriber_id)
        if queue is None:
            return ABSENT
        return ONLINE if queue.online else OFFLINE

    def _route_with_groups(self, matches: dict, groups: List[Group], message: Message,
                           author: Optional[Author], retained: bool) -> Optional[Deferred]:
        """
        Plain subscribers as always, and one member of each matching group
        [MQTT-4.8.2]: chosen first, so that a QoS 1/2 publish a peer has no
        room for is refused before any copy is queued anywhere.
        """
        choices: List[Tuple[Group, Choice]] = []
        nodes: List[str] = []
        for group in groups:
            choice = self.shared.choose(group, self._state)
            if choice is None:
                self.shared_counters.dropped += 1
                continue
            choices.append((group, choice))
            if choice[1] is not None:
                nodes.append(choice[1])
        dataplane = self.dataplane
        if nodes and dataplane is not None and not dataplane.admits(nodes, message):
            dataplane.refused(message)
            if message.qos:
                return fail(BacklogFull(nodes))
            choices = [(group, choice) for group, choice in choices if choice[1] is None]
        if not matches and not choices:
            self.unmatched += 1   # (no member this node may choose)
            return None
        routed = self._route_matches(matches, message, True, author, retained) if matches \
            else None
        if routed is not None and routed.called and isinstance(routed.result, Failure):
            return routed   # refused whole: the client resends it
        waits: List[Deferred] = [] if routed is None else [routed]
        for group, choice in choices:
            waiting = self._deliver_shared(group, choice, message, retained)
            if waiting is not None:
                waits.append(waiting)
        return joined(waits)

    def _deliver_shared(self, group: Group, choice: Choice, message: Message,
                        retained: bool = False) -> Optional[Deferred]:
        """Give ``message`` to the chosen member: its queue, or its node."""
        subscriber_id, node, options = choice
        if node is not None:
            dataplane = self.dataplane
            if dataplane is None:
                return None
            return dataplane.forward_shared(node, message, subscriber_id, group.name)
        queue = self.queue_for(subscriber_id)
        if queue is None:
            return None
        self.shared_counters.delivered += 1
        qos = options & _QOS_BITS
        if qos > message.qos:
            qos = message.qos
        if retained and options & _RETAIN_AS_PUBLISHED:
            # [MQTT-3.3.1-12]: RETAIN as the publisher set it.
            message = _with_retain(message, True)
        return queue.enqueue_shared(message, qos, group.name, self.requeue_shared)

    def route_shared_remote(self, message: Message, subscriber_id: SubscriberId,
                            group_name: str) -> Optional[Deferred]:
        """
        Another node chose ``subscriber_id`` (recorded on this node) for
        ``message`` on the shared subscription ``group_name``: deliver to
        it if it is online here, else to another online member of the group
        here, else (QoS 1/2) to its queue if its session is persistent, else
        count a drop.  Never routed to anything else: the sending node
        served every other subscription.
        """
        self.published += 1
        group = self.shared.groups.get(group_name)
        if group is None:
            # The group has no member here any more (they unsubscribed
            # while the copy travelled).
            self.shared_counters.dropped += 1
            return None
        queue = self.queue_for(subscriber_id)
        options = group.local.get(subscriber_id, -1)
        if queue is not None and queue.online and options >= 0:
            return self._deliver_shared(group, (subscriber_id, None, options), message)
        other = self.shared.local_online(group, self._state)
        if other is not None:
            return self._deliver_shared(group, other, message)
        if message.qos and queue is not None and not queue.clean_session and options >= 0:
            return self._deliver_shared(group, (subscriber_id, None, options), message)
        self.shared_counters.dropped += 1
        return None

    def _shared_orphaned(self, node: str,
                         orphans: List[Tuple[SubscriberId, Message, str]]) -> None:
        """Shared copies for members on ``node``, which left the cluster:
        to another member of each group, on any other node."""
        for subscriber_id, message, group_name in orphans:
            self.requeue_shared(subscriber_id, [(message, group_name)], node)

    def requeue_shared(self, gone: SubscriberId, messages: List[Tuple[Message, str]],
                       gone_node: Optional[str] = None) -> None:
        """
        ``gone``'s session ended with these QoS 1/2 messages of shared
        subscriptions queued or in flight: each goes to another member of
        its group (under ``local_only`` one on another node when none is
        left here), or is counted as dropped when the group has no other
        member.  VerneMQ loses them with the queue; they were acknowledged
        to their publishers.
        """
        shared = self.shared
        for message, group_name in messages:
            group = shared.groups.get(group_name)
            choice = None
            if group is not None:
                choice = shared.choose(group, self._state, gone, gone_node)
                if choice is None and shared.policy == "local_only":
                    # Acknowledged to its publisher already: a member on
                    # another node rather than none (the policy decides
                    # where new messages go, not which ones are lost).
                    choice = shared.choose(group, self._state, gone, gone_node,
                                           policy="prefer_local")
            if group is None or choice is None:
                self.shared_counters.dropped += 1
                continue
            self.shared_counters.requeued += 1
            try:
                waiting = self._deliver_shared(group, choice, message)
            except BacklogFull:
                self._requeue_failed(Failure(), gone)
                continue
            if waiting is not None:
                waiting.addErrback(self._requeue_failed, gone)

    def _requeue_failed(self, failure: Failure, gone: SubscriberId) -> None:
        self.shared_counters.dropped += 1
        self.log.failure("passing on a shared subscription message of {client_id} failed",
                         failure, client_id=gone.client_id)

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
