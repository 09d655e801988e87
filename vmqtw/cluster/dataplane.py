"""
The cross-node MQTT data plane: published messages forwarded to the nodes
whose sessions subscribe, and persistent sessions' queued messages handed
over to the node a session moved to -- acknowledged, so that a PUBACK on one
node means "delivered" to subscribers on the others.

This module alone knows the wire vocabulary (the tags below, on the
transport's ``mqtt`` channel); the broker sees :meth:`DataPlane.admits`,
:meth:`DataPlane.forward`, :meth:`DataPlane.hand_over` and the two receivers
it passes to :meth:`DataPlane.start`.

A message for subscribers on another node travels one copy per node on a
numbered stream (:mod:`vmqtw.cluster.stream`) over the cluster transport:

* **Kept until acknowledged.**  The sender holds every QoS 1/2 entry until
  the peer says it is safe there (routed, and stored where its subscriber's
  session demands it), resends what is unacknowledged on every new link, and
  the receiver drops sequence numbers it already applied.  Frames lost
  between a cut and its detection are therefore sent again after the heal.
* **Safe across a crash of the sender.**  The publisher of a QoS 1/2
  message is acknowledged once every copy is safe somewhere that outlives
  this process: when the peer acknowledged it (it is then where a copy on
  that node would be), or when it is in this node's message store, in a
  per-peer *outbox* that a node killed and restarted sends again --
  whichever comes first.  A copy goes to the outbox only when the peer has
  not acknowledged it within ``outbox_delay`` (one to two ticks of one
  timer for all peers), or at once when there is no link to the peer.  In
  the common case the peer answers first and the message never touches
  this node's disk: that write, and its delete on the peer's
  acknowledgement, were most of what a message crossing nodes cost.  During
  a netsplit a node allowed to accept publishes
  (``allow_publish_during_netsplit``) still acknowledges them, from the
  outbox, and delivers them after the heal; an outbox copy is deleted when
  the peer acknowledges it.  A receiving node acknowledges at the end of
  the reactor turn in which the copies became safe, since publishers'
  windows now wait on it.
* **Bounded, never silent.**  Unacknowledged bytes per peer are bounded by
  ``outgoing_clustering_buffer_size``.  :meth:`DataPlane.admits` tells the
  router, before anything is routed, whether the peers a message needs have
  room: a QoS 1/2 publish that does not fit is not acknowledged (the client
  resends it), a QoS 0 copy is dropped; both are counted.
* QoS 0 copies are not numbered: sent while the link is up, else dropped and
  counted -- at most once, as the client asked.

* **Hand-overs.**  A persistent session's queue moving to another node
  travels on the same stream (:meth:`DataPlane.hand_over`), followed by a
  marker (:meth:`DataPlane.hand_over_done`) that lets the new queue deliver
  what reached it directly; the old node's stored copy of each message is
  deleted only when the peer acknowledged it (``on_released``).

Redelivered entries reach subscribers with DUP set, so the one case that
can apply an entry twice (the receiver was killed after applying and before
acknowledging) is visible to clients as MQTT allows.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmqtw.cluster.stream import APPLY, GAP, Inbound, Outbound, OutboundEntry
from vmqtw.errors import BacklogFull
from vmqtw.interfaces import IClusterTransport, IMessageStore
from vmqtw.mqtt.properties import pack_message_properties, unpack_message_properties
from vmqtw.types import Message, SubscriberId
from vmqtw.waits import joined

__all__ = ["DataPlane", "DataPlaneCounters", "BacklogFull", "CHANNEL",
           "OUTBOX_MOUNTPOINT", "outbox_id", "encode_message", "decode_message",
           "MessageReceiver", "HandOverReceiver", "HandOverReleased", "HandOverDone",
           "HandOverToken", "SharedCopy", "SharedToken", "shared_outbox_id", "SharedReceiver",
           "SharedOrphanReceiver", "encode_target", "decode_target"]

log = Logger(namespace="vmqtw.cluster.dataplane")

#: The cluster transport channel of the MQTT data plane.
CHANNEL = "mqtt"

#: Mountpoint of the message-store queues holding forwarded messages until
#: the peer acknowledges them.  MQTT strings cannot contain U+0000, so no
#: client's session can ever be confused with an outbox.
OUTBOX_MOUNTPOINT = "\x00outbox"

#: Frame tags on :data:`CHANNEL`.
#: ("m", epoch, base, entries): the numbered entries written in one reactor
#: turn, each ``(seq, redelivery, message)`` for a forwarded message,
#: ``(seq, redelivery, message, target)`` for one forwarded to the member
#: of a shared subscription this node chose (``target`` as
#: :func:`encode_target`), or ``(seq, redelivery, message, subscriber key,
#: qos)`` for a handed-over one; ``base`` is the sender's acknowledged
#: position (see Inbound.receive).
NUMBERED = "m"
#: ("m0", message) or ("m0", message, target): QoS 0, at most once.
UNNUMBERED = "m0"
#: ("mb", (message, ...)): the QoS 0 messages of one reactor turn for a
#: peer, at most once, in order (one frame instead of one per message).
UNNUMBERED_BATCH = "mb"
ACK = "a"           # ("a", epoch, upto)
#: ("h", epoch or None, upto, gap): "your stream is safe here up to
#: ``upto``; send the rest again" -- on every new link, and (``gap`` true)
#: when a gap shows that entries were lost with an older connection.
HELLO = "h"

#: Bytes counted per entry on top of topic and payload.
ENTRY_OVERHEAD = 64
#: Entries per ``NUMBERED`` frame at most (frames stay well under the
#: transport's frame limit however many entries one turn produced).
BATCH_ENTRIES = 256


def outbox_id(peer: str) -> SubscriberId:
    """The message-store queue of what waits for ``peer``'s acknowledgement."""
    return SubscriberId(OUTBOX_MOUNTPOINT, peer)


def encode_message(message: Message) -> tuple:
    """
    A routed message as plain data for the inter-node wire: six fields, a
    seventh (the MQTT 5.0 PUBLISH property block) only when the message
    has properties, and an eighth (True) only when it was published
    retained -- for MQTT 5.0 "retain as published" subscribers on the
    receiving node, and the RETAIN flag of a queued message handed over --
    so 3.1.1 traffic is framed exactly as before.
    """
    if message.retain:
        return (message.ref, message.topic, message.payload, message.qos, message.timestamp,
                message.mountpoint, pack_message_properties(message.properties), True)
    if message.properties is None:
        return (message.ref, message.topic, message.payload, message.qos, message.timestamp,
                message.mountpoint)
    return (message.ref, message.topic, message.payload, message.qos, message.timestamp,
            message.mountpoint, pack_message_properties(message.properties))


def decode_message(data: tuple, origin: str, dup: bool = False) -> Message:
    if len(data) == 6:
        ref, topic, payload, qos, timestamp, mountpoint = data
        return Message(ref, topic, payload, qos, False, dup, timestamp, mountpoint, origin)
    ref, topic, payload, qos, timestamp, mountpoint, packed = data[:7]
    return Message(ref, topic, payload, qos, len(data) > 7 and data[7] is True, dup, timestamp,
                   mountpoint, origin, unpack_message_properties(packed))


def encode_target(subscriber_id: SubscriberId, group: str) -> tuple:
    """The member a shared-subscription copy is for, as plain wire data:
    ``(mountpoint, client id, $share/<group>/<filter>)``."""
    return (subscriber_id.mountpoint, subscriber_id.client_id, group)


def decode_target(data: tuple) -> Tuple[SubscriberId, str]:
    mountpoint, client_id, group = data
    return SubscriberId(mountpoint, client_id), group


@attrs.frozen(slots=True)
class SharedCopy:
    """An outbound entry for the member of a shared subscription another
    node holds (see :meth:`DataPlane.forward_shared`)."""

    message: Message
    subscriber_id: SubscriberId
    group: str


def shared_outbox_id(peer: str, subscriber_id: SubscriberId, group: str) -> SubscriberId:
    """
    The outbox queue of what waits for ``peer``'s acknowledgement for one
    member of a shared subscription: the target must survive a restart with
    the message (a plain copy would reach no member).  Under the outbox
    mountpoint, so whoever skips outboxes skips these; the parts are joined
    by U+0000, which no MQTT string, group or node name holds.
    """
    return SubscriberId(OUTBOX_MOUNTPOINT, "\x00".join(
        (peer, subscriber_id.mountpoint, subscriber_id.client_id, group)))


@attrs.frozen(slots=True)
class SharedToken:
    """The release handle of a shared copy: its outbox queue and ref."""

    outbox: SubscriberId
    ref: bytes


def entry_size(message: Message) -> int:
    return len(message.payload) + len(message.topic) + ENTRY_OVERHEAD


@attrs.define(slots=True)
class DataPlaneCounters:
    """What the data plane did, for ``node status`` and metrics."""

    forwarded: int = 0
    received_remote: int = 0
    #: QoS 1/2 publishes not acknowledged because a peer's backlog was full.
    refused_backlog_full: int = 0
    #: QoS 0 copies dropped (backlog full, or no link to the peer).
    dropped_qos0: int = 0
    #: Entries sent again after a link was lost or replaced.
    resent: int = 0
    #: Entries received twice and dropped.
    duplicates_dropped: int = 0
    #: Entries read back from the outbox after a restart.
    restored: int = 0
    #: Entries for a node that left the cluster for good, given to the
    #: registry to pass on to where that node's sessions live now.
    orphaned_node_left: int = 0
    #: QoS 1/2 copies written to the outbox: the peer had not acknowledged
    #: them within ``outbox_delay``, or there was no link to it.
    outboxed: int = 0


@attrs.define(slots=True, eq=False)
class _Peer:
    name: str
    outbound: Outbound
    inbound: Inbound = attrs.Factory(Inbound)
    ack_call: Optional[IDelayedCall] = None
    #: ``outbound.acked`` at the last retransmission check.
    acked_at_check: int = -1
    #: This node saw the link come up and resent already; the peer's hello
    #: on that link needs no second resend.
    fresh_link: bool = False
    #: A hello was sent for a gap and nothing was applied since.
    gap_reported: bool = False
    #: The write of this turn's new entries, scheduled once per turn.
    send_call: Optional[IDelayedCall] = None
    #: Numbered entries were pushed this turn and not written yet.
    numbered_pending: bool = False
    #: This turn's QoS 0 messages for the peer, encoded, not written yet
    #: (only one of the two kinds waits at a time: see DataPlane.forward).
    qos0: Optional[List[tuple]] = None
    #: The message-store queue of the outbox for this peer.
    outbox: Optional[SubscriberId] = None
    #: Entries a publisher's acknowledgement waits on, pushed since the
    #: last outbox tick, in order ...
    young: List[OutboundEntry] = attrs.Factory(list)
    #: ... and those pushed in the tick before: the ones still not
    #: acknowledged at the next tick go to the outbox.
    aging: List[OutboundEntry] = attrs.Factory(list)


#: ``on_message(message)``: route a forwarded message to local subscribers
#: only; None when every copy is safe, else a Deferred firing when it is.
MessageReceiver = Callable[[Message], Optional[Deferred]]
#: ``route_shared(message, subscriber_id, group)``: deliver a message this
#: node's ``subscriber_id`` was chosen for on the shared subscription
#: ``group`` (or to another member there); None or a Deferred as above.
SharedReceiver = Callable[[Message, SubscriberId, str], Optional[Deferred]]
#: ``on_shared_orphaned(node, [(subscriber_id, message, group), ...])``:
#: shared copies for members on ``node``, which left the cluster: another
#: member of each group gets them.
SharedOrphanReceiver = Callable[[str, List[Tuple[SubscriberId, Message, str]]], None]
#: ``on_hand_over(subscriber_id, message, qos)``: enqueue a handed-over one.
HandOverReceiver = Callable[[SubscriberId, Message, int], Optional[Deferred]]
#: ``on_released(subscriber_id, ref)``: the new owner has a handed-over
#: message safe, so the old queue's stored copy may go.
HandOverReleased = Callable[[SubscriberId, bytes], None]
#: ``on_done(subscriber_id, old_node)``: ``old_node`` handed over all it
#: held for the session (every entry before this one on its stream).
HandOverDone = Callable[[SubscriberId, str], None]
#: What waited for a node that left: ``(subscriber_id, message, qos)`` for
#: a hand-over, ``(None, message, qos)`` for a forwarded publish.
Orphan = Tuple[Optional[SubscriberId], Message, int]
#: ``on_orphaned(node, orphans)``: ``node`` left with these unacknowledged
#: (or they were routed to it after it left); None, or a Deferred firing
#: once the copies passed on at once are stored.
OrphanReceiver = Callable[[str, List[Orphan]], Optional[Deferred]]


@attrs.frozen(slots=True)
class HandOverToken:
    """
    The release handle of a handed-over entry: the old queue keeps its
    stored copy under ``subscriber_id`` until the new owner acknowledged the
    entry, so a crash of the old node in between loses nothing.
    """

    subscriber_id: SubscriberId
    ref: bytes


def _nothing(*args: Any) -> None:
    return None


def _safe_now(_: Any, entry: OutboundEntry) -> None:
    """``entry`` is safe (the peer acknowledged it, or its outbox write
    committed): the publisher waiting on it, if any still does, may be
    acknowledged."""
    waiter = entry.waiter
    if waiter is not None:
        entry.waiter = None
        waiter.callback(None)


def _not_safe(failure: Any, entry: OutboundEntry) -> None:
    """An outbox write failed: the publisher is not acknowledged (unless the
    peer's acknowledgement came first; it is resent, as on one node)."""
    waiter = entry.waiter
    if waiter is not None:
        entry.waiter = None
        waiter.errback(failure)
    # Else the peer had it first and nothing depends on this copy (a store
    # that fails says so itself, once, not once per message).


def _fire_after(placed: Optional[Deferred], waiters: List[Deferred]) -> None:
    """Fire ``waiters`` as ``placed`` fires (at once when None), leaving its
    result to whoever else waits on it."""
    def fire(result: Any) -> Any:
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)
        return result

    if placed is None:
        fire(None)
    else:
        placed.addBoth(fire)


class DataPlane:
    """
    One node's end of every peer's stream; see the module docstring.

    ``store`` keeps the outbox when it is durable (a store that does not
    survive the process would only cost; without one a publisher is
    acknowledged at once, as on a single node with that store);
    ``limit`` is the per-peer bound on unacknowledged bytes; a copy the
    peer has not acknowledged after ``outbox_delay`` to twice that goes to
    the outbox.
    """

    def __init__(self, node: str, transport: IClusterTransport, clock: IReactorTime,
                 store: Optional[IMessageStore] = None, limit: int = 64 * 1024 * 1024, *,
                 ack_batch: int = 256, ack_delay: float = 0.0,
                 resend_interval: float = 5.0, outbox_delay: float = 0.01) -> None:
        self.node = node
        self.transport = transport
        self.clock = clock
        self.store = store if store is not None and getattr(store, "durable", False) else None
        self._limit = limit
        self.route: MessageReceiver = _nothing
        #: Set by the router (it routes shared subscriptions).
        self.route_shared: SharedReceiver = _nothing
        #: The QoS 0 messages of one received frame (``start``'s
        #: ``on_batch``; by default each goes to ``route``).
        self.route_batch: Callable[[List[Message]], None] = self._route_each
        self.on_shared_orphaned: SharedOrphanReceiver = _nothing
        self.deliver_handed_over: HandOverReceiver = _nothing
        self.on_released: HandOverReleased = _nothing
        self.on_hand_over_done: HandOverDone = _nothing
        self.on_orphaned: OrphanReceiver = _nothing
        #: Nodes that left the cluster for good (until they join again).
        self._left: FrozenSet[str] = frozenset()
        self.ack_batch = ack_batch
        self.ack_delay = ack_delay
        self.resend_interval = resend_interval
        self.outbox_delay = outbox_delay
        self.counters = DataPlaneCounters()
        self._peers: Dict[str, _Peer] = {}
        self._resend_call: Optional[IDelayedCall] = None
        #: The one outbox timer, running only while copies wait on a peer.
        self._outbox_call: Optional[IDelayedCall] = None
        #: The members at the last :meth:`keep_peers`.
        self._members: FrozenSet[str] = frozenset()
        self._running = False

    # -- life cycle --------------------------------------------------------

    @property
    def limit(self) -> int:
        """Bytes that may wait for each peer's acknowledgement."""
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        """Change the bound for every peer, at run time too."""
        self._limit = limit
        for peer in self._peers.values():
            peer.outbound.limit = limit

    @property
    def forwarded(self) -> int:
        return self.counters.forwarded

    @property
    def received_remote(self) -> int:
        return self.counters.received_remote

    @property
    def outboxed(self) -> int:
        return self.counters.outboxed

    def start(self, on_message: MessageReceiver, on_hand_over: HandOverReceiver,
              on_released: Optional[HandOverReleased] = None,
              on_done: Optional[HandOverDone] = None,
              on_batch: Optional[Callable[[List[Message]], None]] = None,
              one_read: Optional[Callable[[Callable[..., Any]], Callable[..., Any]]] = None
              ) -> Deferred:
        """
        Receive from peers from now on, giving forwarded messages to
        ``on_message`` and handed-over ones to ``on_hand_over`` (and the end
        of a hand-over to ``on_done``); tell ``on_released`` when a peer
        acknowledged a handed-over message sent with ``release``.  Then send
        again what the outbox kept from before a restart.  Returns a
        Deferred firing once the outbox is read.  ``one_read`` wraps the
        handling of each frame (see ``TurnWrites.as_one_read``).
        """
        self.route = on_message
        if on_batch is not None:
            self.route_batch = on_batch
        self.deliver_handed_over = on_hand_over
        if on_released is not None:
            self.on_released = on_released
        if on_done is not None:
            self.on_hand_over_done = on_done
        self.transport.register_cast_handler(
            CHANNEL, self._received if one_read is None else one_read(self._received))
        self.transport.add_peer_listener(self._link_up, self._link_down)
        self._running = True
        self._resend_call = self.clock.callLater(self.resend_interval, self._check_stalled)
        if self.store is None:
            return succeed(None)
        return self._restore_outbox()

    def stop(self) -> None:
        self._running = False
        for call in (self._resend_call, self._outbox_call):
            if call is not None and call.active():
                call.cancel()
        self._resend_call = self._outbox_call = None
        for peer in self._peers.values():
            for call in (peer.ack_call, peer.send_call):
                if call is not None and call.active():
                    call.cancel()
            peer.ack_call = peer.send_call = None

    def _restore_outbox(self) -> Deferred:
        store = self.store
        assert store is not None

        def restore(subscribers: List[SubscriberId]) -> Deferred:
            reads = []
            for sid in subscribers:
                if sid.mountpoint == OUTBOX_MOUNTPOINT:
                    reads.append(store.find(sid).addCallback(self._read_outbox, sid))
            return gatherResults(reads, consumeErrors=True)

        return store.subscribers().addCallback(restore)

    def _read_outbox(self, refs: List[bytes], sid: SubscriberId) -> Deferred:
        store = self.store
        assert store is not None

        name, shared = sid.client_id, None
        if "\x00" in name:
            # A shared subscription member's copies (see shared_outbox_id).
            name, mountpoint, client_id, group = name.split("\x00", 3)
            shared = (SubscriberId(mountpoint, client_id), group)

        def requeue(messages: List[Optional[Message]]) -> None:
            peer = self._peer(name)
            for message in messages:
                if message is None:
                    continue
                # Sent before the restart, maybe received: a redelivery.
                if shared is None:
                    peer.outbound.push(message, entry_size(message), message.ref,
                                       redelivery=True, force=True)
                else:
                    peer.outbound.push(SharedCopy(message, *shared), entry_size(message),
                                       SharedToken(sid, message.ref), redelivery=True,
                                       force=True)
                self.counters.restored += 1
            if messages:
                log.info("{count} messages for {peer} kept from before the restart",
                         count=len(messages), peer=name)
            self._send(peer)

        return gatherResults([store.read(sid, ref) for ref in refs],
                             consumeErrors=True).addCallback(requeue)

    def _peer(self, name: str) -> _Peer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _Peer(name, Outbound(self.limit),
                                             outbox=outbox_id(name))
        return peer

    # -- sending -------------------------------------------------------------

    def admits(self, nodes: Iterable[str], message: Message) -> bool:
        """Whether every peer in ``nodes`` has room for ``message``'s copy."""
        size = entry_size(message)
        peers = self._peers
        for name in nodes:
            peer = peers.get(name)
            if peer is not None and not peer.outbound.has_room(size):
                return False
        return True

    def refused(self, message: Message) -> None:
        """Count a publish refused because a backlog was full."""
        if message.qos:
            self.counters.refused_backlog_full += 1
        else:
            self.counters.dropped_qos0 += 1

    def forward(self, nodes: Iterable[str], message: Message) -> Optional[Deferred]:
        """
        One copy of ``message`` to each of ``nodes``' subscribers.  Returns
        None, or for a QoS 1/2 message a Deferred firing once every copy is
        safe: acknowledged by its peer, or in the outbox (the publisher's
        acknowledgement waits for it).  Raises
        :class:`BacklogFull` when a peer's backlog has no room: ask
        :meth:`admits` first, so that nothing is routed anywhere then.
        """
        if not message.qos:
            encoded = None
            connected = self.transport.connected
            counters = self.counters
            peers = self._peers
            for node in nodes:
                counters.forwarded += 1
                if not connected(node):
                    counters.dropped_qos0 += 1
                    continue
                peer = peers.get(node)
                if peer is None:
                    peer = self._peer(node)
                if peer.numbered_pending:
                    # Numbered entries of this turn go first: a publisher's
                    # messages keep their order whatever their QoS.
                    self._flush_now(peer)
                if encoded is None:
                    encoded = encode_message(message)   # once for every peer
                batch = peer.qos0
                if batch is None:
                    batch = peer.qos0 = []
                    if peer.send_call is None and self._running:
                        peer.send_call = self.clock.callLater(0, self._flush, peer)
                batch.append(encoded)
                if len(batch) >= BATCH_ENTRIES:
                    self._cast_qos0(peer)
            return None
        return joined([stored for stored in (self._forward_one(node, message) for node in nodes)
                       if stored is not None])

    def forward_shared(self, node: str, message: Message, subscriber_id: SubscriberId,
                       group: str) -> Optional[Deferred]:
        """
        ``message`` to ``node`` for its member ``subscriber_id`` of the
        shared subscription ``group``, which this node chose: kept and
        acknowledged like :meth:`forward` (ask :meth:`admits` first).
        """
        if not message.qos:
            self.counters.forwarded += 1
            self.flush_to(node)
            if self.transport.connected(node):
                self.transport.cast(node, CHANNEL, (UNNUMBERED, encode_message(message),
                                                    encode_target(subscriber_id, group)))
            else:
                self.counters.dropped_qos0 += 1
            return None
        if node in self._left:
            self.counters.orphaned_node_left += 1
            self.on_shared_orphaned(node, [(subscriber_id, message, group)])
            return None
        self.counters.forwarded += 1
        peer = self._peer(node)
        entry = peer.outbound.push(SharedCopy(message, subscriber_id, group),
                                   entry_size(message))
        if entry is None:
            self.counters.refused_backlog_full += 1
            raise BacklogFull(node)
        self._send(peer)
        return None if self.store is None else self._awaited(peer, entry)

    def _forward_one(self, node: str, message: Message) -> Optional[Deferred]:
        if node in self._left:
            # Routed by a subscriber record not yet re-homed after ``node``
            # left: the registry passes it on once it is.
            self.counters.orphaned_node_left += 1
            return self.on_orphaned(node, [(None, message, message.qos)])
        self.counters.forwarded += 1
        peer = self._peer(node)
        entry = peer.outbound.push(message, entry_size(message))
        if entry is None:
            self.counters.refused_backlog_full += 1
            raise BacklogFull(node)
        self._send(peer)
        return None if self.store is None else self._awaited(peer, entry)

    # -- the outbox ------------------------------------------------------------

    def _awaited(self, peer: _Peer, entry: OutboundEntry) -> Deferred:
        """
        A Deferred firing once ``entry`` is safe: the peer acknowledged it,
        or it is in the outbox.  Written there at once without a link (no
        acknowledgement is coming soon), else left to the outbox tick.
        """
        waiter = entry.waiter = Deferred()
        if self._running and self.transport.connected(peer.name):
            peer.young.append(entry)
            if self._outbox_call is None:
                self._outbox_call = self.clock.callLater(self.outbox_delay, self._outbox_tick)
        else:
            self._to_outbox(peer, entry)
        return waiter

    def _outbox_tick(self) -> None:
        """
        Every copy a publisher waits on that its peer has not acknowledged
        in a whole tick goes to the outbox.  The peer acknowledges a prefix
        of the stream, so one comparison settles a tick whose copies were
        all acknowledged, the common case.
        """
        self._outbox_call = None
        waiting = False
        for peer in self._peers.values():
            aging = peer.aging
            if aging and aging[-1].seq > peer.outbound.acked:
                for entry in aging:
                    self._to_outbox(peer, entry)
            peer.aging = peer.young
            peer.young = []
            waiting = waiting or bool(peer.aging)
        if waiting and self._running:
            self._outbox_call = self.clock.callLater(self.outbox_delay, self._outbox_tick)

    def _outbox_now(self, peer: _Peer) -> None:
        """The link to ``peer`` went: what waits on it goes to the outbox now."""
        for entries in (peer.aging, peer.young):
            for entry in entries:
                self._to_outbox(peer, entry)

    def _to_outbox(self, peer: _Peer, entry: OutboundEntry) -> None:
        """
        Write ``entry`` to its outbox queue, unless nobody waits on it any
        more (the peer acknowledged it) or it is written already; its token
        says where, so the peer's acknowledgement deletes it (after the
        write: the store keeps the order of what it is asked).
        """
        if entry.waiter is None or entry.token is not None:
            return
        store = self.store
        assert store is not None
        body = entry.body
        if body.__class__ is SharedCopy:
            message = body.message
            outbox = shared_outbox_id(peer.name, body.subscriber_id, body.group)
            entry.token = SharedToken(outbox, message.ref)
        else:
            message = body
            assert peer.outbox is not None
            outbox = peer.outbox
            entry.token = message.ref
        self.counters.outboxed += 1
        store.write(outbox, message).addCallbacks(_safe_now, _not_safe, (entry,),
                                                  errbackArgs=(entry,))

    def hand_over(self, node: str, subscriber_id: SubscriberId, message: Message,
                  qos: int, release: bool = False) -> None:
        """
        Give a message of a session that moved to ``node`` to its new queue,
        on the same numbered stream (kept until acknowledged, never refused:
        the session's old queue held it already).  With ``release``, the
        peer's acknowledgement calls ``on_released(subscriber_id, ref)``:
        the old node's stored copy is deleted only then.
        """
        if node in self._left:
            self.counters.orphaned_node_left += 1
            self.on_orphaned(node, [(subscriber_id, message, qos)])
            return
        peer = self._peer(node)
        token = HandOverToken(subscriber_id, message.ref) if release else None
        peer.outbound.push((subscriber_id, message, qos), entry_size(message), token,
                           force=True)
        self._send(peer)

    def hand_over_done(self, node: str, subscriber_id: SubscriberId) -> None:
        """
        Everything this node held for ``subscriber_id`` went to ``node``
        before this marker (same stream, in order): its new queue may stop
        holding back the messages that reached it directly.
        """
        peer = self._peer(node)
        peer.outbound.push((subscriber_id, None, 0), ENTRY_OVERHEAD, force=True)
        self._send(peer)

    def _send(self, peer: _Peer) -> None:
        """Write what is unsent at the end of this reactor turn, batched."""
        if peer.qos0:
            # QoS 0 messages of this turn came first: they leave first.
            self._cast_qos0(peer)
        peer.numbered_pending = True
        if peer.send_call is None and self._running:
            peer.send_call = self.clock.callLater(0, self._flush, peer)

    def _flush_now(self, peer: _Peer) -> None:
        if peer.send_call is not None:
            peer.send_call.cancel()
        self._flush(peer)

    def _cast_qos0(self, peer: _Peer) -> None:
        """Write this turn's QoS 0 messages for ``peer`` (at most once: lost with the link)."""
        batch, peer.qos0 = peer.qos0, None
        if not batch:
            return
        if not self._running or not self.transport.connected(peer.name):
            self.counters.dropped_qos0 += len(batch)
            return
        frame = (UNNUMBERED, batch[0]) if len(batch) == 1 else (UNNUMBERED_BATCH, tuple(batch))
        if not self.transport.cast(peer.name, CHANNEL, frame):
            self.counters.dropped_qos0 += len(batch)

    def flush_to(self, name: str) -> None:
        """
        Write now what this turn holds for ``name``: something about to be
        sent to it on another channel (a confirmation that this node routes
        a moved session elsewhere) must not overtake these messages.
        """
        peer = self._peers.get(name)
        if peer is not None and peer.send_call is not None:
            peer.send_call.cancel()
            self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        peer.send_call = None
        if peer.qos0:
            self._cast_qos0(peer)
        peer.numbered_pending = False
        if not self._running or not self.transport.connected(peer.name):
            return
        outbound = peer.outbound
        epoch = outbound.epoch
        base = outbound.acked
        items: List[tuple] = []
        for entry in outbound.unsent():
            if entry.redelivery:
                self.counters.resent += 1
            body = entry.body
            if body.__class__ is tuple:
                subscriber_id, message, qos = body
                # The redelivery flag becomes DUP at the new owner: a
                # handed-over message that was in flight carries it too.
                items.append((entry.seq, entry.redelivery or (message is not None and message.dup),
                              None if message is None else encode_message(message),
                              subscriber_id.as_key(), qos))
            elif body.__class__ is SharedCopy:
                items.append((entry.seq, entry.redelivery, encode_message(body.message),
                              encode_target(body.subscriber_id, body.group)))
            else:
                items.append((entry.seq, entry.redelivery, encode_message(body)))
            if len(items) == BATCH_ENTRIES:
                if not self._cast_batch(peer, epoch, base, items):
                    return
                items = []
        if items:
            self._cast_batch(peer, epoch, base, items)

    def _cast_batch(self, peer: _Peer, epoch: bytes, base: int, items: List[tuple]) -> bool:
        if self.transport.cast(peer.name, CHANNEL, (NUMBERED, epoch, base, tuple(items))):
            return True
        # The transport's own buffer refused it: everything unacknowledged
        # goes again on the next check.
        peer.outbound.link_lost()
        return False

    def _released(self, peer: _Peer, entries: List[OutboundEntry]) -> None:
        store = self.store
        sid = peer.outbox
        for entry in entries:
            _safe_now(None, entry)
            token = entry.token
            if token is None:
                continue
            if token.__class__ is HandOverToken:
                self.on_released(token.subscriber_id, token.ref)
            elif token.__class__ is SharedToken:
                if store is not None:
                    store.delete(token.outbox, token.ref)
            elif store is not None and sid is not None:
                store.delete(sid, token)

    # -- links -----------------------------------------------------------------

    def _link_up(self, name: str) -> None:
        """
        A new link: tell the peer how far its stream got here (it resends
        the rest), and resend ours from our last acknowledgement.
        """
        if not self._running:
            return
        peer = self._peer(name)
        epoch, upto = peer.inbound.reack()
        self.transport.cast(name, CHANNEL, (HELLO, epoch, upto, False))
        peer.outbound.link_lost()
        peer.fresh_link = True
        self._send(peer)

    def _link_down(self, name: str) -> None:
        peer = self._peers.get(name)
        if peer is not None:
            peer.outbound.link_lost()
            if self.store is not None:
                self._outbox_now(peer)

    def _check_stalled(self) -> None:
        """
        A safety net for links replaced without this node noticing: an
        outbound stream that made no progress for a whole interval while
        holding entries sends them again (the receiver drops duplicates).
        """
        self._resend_call = self.clock.callLater(self.resend_interval, self._check_stalled)
        for peer in self._peers.values():
            outbound = peer.outbound
            if len(outbound) and outbound.acked == peer.acked_at_check:
                outbound.link_lost()
                self._send(peer)
            peer.acked_at_check = outbound.acked

    # -- receiving ---------------------------------------------------------------

    def _route_each(self, messages: List[Message]) -> None:
        route = self.route
        for message in messages:
            route(message)

    def _received(self, name: str, frame: Any) -> None:
        tag = frame[0]
        try:
            if tag == NUMBERED:
                peer = self._peer(name)
                _, epoch, base, items = frame
                for item in items:
                    self._numbered(peer, epoch, base, item)
            elif tag == ACK:
                peer = self._peer(name)
                self._released(peer, peer.outbound.acknowledge(frame[1], frame[2]))
            elif tag == UNNUMBERED_BATCH:
                batch = frame[1]
                self.counters.received_remote += len(batch)
                self.route_batch([decode_message(data, name) for data in batch])
            elif tag == UNNUMBERED:
                self.counters.received_remote += 1
                if len(frame) == 2:
                    self.route(decode_message(frame[1], name))
                else:
                    self.route_shared(decode_message(frame[1], name), *decode_target(frame[2]))
            elif tag == HELLO:
                peer = self._peer(name)
                _, epoch, upto, gap = frame
                if epoch is not None:
                    self._released(peer, peer.outbound.acknowledge(epoch, upto))
                if peer.fresh_link and not gap:
                    peer.fresh_link = False   # resent from our side already
                else:
                    peer.outbound.link_lost()
                    self._send(peer)
            else:
                log.warn("unknown data-plane frame {tag!r} from {peer}", tag=tag, peer=name)
        except Exception:
            log.failure("bad data-plane frame {tag!r} from {peer}", tag=tag, peer=name)

    def _numbered(self, peer: _Peer, epoch: bytes, base: int, item: tuple) -> None:
        name = peer.name
        inbound = peer.inbound
        seq, redelivery = item[0], item[1]
        verdict = inbound.receive(epoch, seq, base)
        if verdict != APPLY:
            if verdict == GAP:
                if not peer.gap_reported:
                    peer.gap_reported = True
                    self.transport.cast(name, CHANNEL, (HELLO, epoch, inbound.safe_upto, True))
            else:
                self.counters.duplicates_dropped += 1
                # Sent again: our acknowledgement may never have arrived
                # (a resend check, not a new link), so it goes again.
                if inbound.acked >= seq:
                    inbound.acked = seq - 1
                self._schedule_ack(peer)
            return
        peer.gap_reported = False
        self.counters.received_remote += 1
        if len(item) == 3:
            waiting = self.route(decode_message(item[2], name, redelivery))
        elif len(item) == 4:
            waiting = self.route_shared(decode_message(item[2], name, redelivery),
                                        *decode_target(item[3]))
        else:
            encoded, key, qos = item[2], item[3], item[4]
            if encoded is None:
                self.on_hand_over_done(SubscriberId(*key), name)
                waiting = None
            else:
                waiting = self.deliver_handed_over(
                    SubscriberId(*key), decode_message(encoded, name, redelivery), qos)
        if waiting is None:
            inbound.safe(epoch, seq)
            self._schedule_ack(peer)
        else:
            waiting.addCallbacks(self._safe, self._not_stored,
                                 callbackArgs=(peer, epoch, seq), errbackArgs=(peer, epoch))

    def _safe(self, _: Any, peer: _Peer, epoch: bytes, seq: int) -> None:
        peer.inbound.safe(epoch, seq)
        self._schedule_ack(peer)

    def _not_stored(self, failure: Any, peer: _Peer, epoch: bytes) -> None:
        """
        A copy could not be stored: never acknowledge it.  Forgetting the
        stream makes this node apply the sender's resend again.
        """
        log.failure("storing a message from {peer} failed; it will be resent", failure,
                    peer=peer.name)
        if peer.inbound.epoch == epoch:
            peer.inbound = Inbound()

    def _schedule_ack(self, peer: _Peer) -> None:
        """Acknowledge at the end of this turn (after ``ack_delay``), or now
        when ``ack_batch`` entries wait for it."""
        inbound = peer.inbound
        if inbound.safe_upto - inbound.acked >= self.ack_batch:
            self._send_ack(peer)
        elif peer.ack_call is None and inbound.safe_upto > inbound.acked:
            peer.ack_call = self.clock.callLater(self.ack_delay, self._send_ack, peer)

    def _send_ack(self, peer: _Peer) -> None:
        if peer.ack_call is not None and peer.ack_call.active():
            peer.ack_call.cancel()
        peer.ack_call = None
        ack = peer.inbound.ack_due()
        if ack is not None:
            self.transport.cast(peer.name, CHANNEL, (ACK, ack[0], ack[1]))

    def keep_peers(self, members: Iterable[str]) -> None:
        """
        Membership changed: what waits for a node that was a member and is
        no longer one is dropped (its subscribers left with it), and the
        outbox forgets it, so a restart does not send it again forever.
        Only nodes seen as members before count: a node that is joining
        may be heard from before it shows up in the member list.
        """
        current = frozenset(members)
        removed = self._members - current
        self._members = current
        self._left = (self._left | removed) - current
        for name in removed:
            peer = self._peers.pop(name, None)
            if peer is None or name == self.node:
                continue
            for call in (peer.ack_call, peer.send_call):
                if call is not None and call.active():
                    call.cancel()
            entries = list(peer.outbound.entries())
            # Publishers waiting on these are acknowledged once the copies
            # are where the orphans go (not by the release just below).
            waiters = []
            for entry in entries:
                if entry.waiter is not None:
                    waiters.append(entry.waiter)
                    entry.waiter = None
            orphans: List[Orphan] = []
            shared: List[Tuple[SubscriberId, Message, str]] = []
            for entry in entries:
                body = entry.body
                if isinstance(body, Message):
                    orphans.append((None, body, body.qos))
                elif isinstance(body, SharedCopy):
                    shared.append((body.subscriber_id, body.message, body.group))
                elif body[1] is not None:
                    orphans.append((SubscriberId(*body[0]) if not isinstance(body[0], SubscriberId)
                                    else body[0], body[1], body[2]))
            if orphans:
                self.counters.orphaned_node_left += len(orphans)
                log.warn("{count} messages waiting for {peer}, which left the cluster, go to "
                         "where its sessions live now", count=len(orphans), peer=name)
            # Released first: a copy the registry stores again for the
            # sessions' new homes (same subscriber and ref) must survive.
            self._released(peer, entries)
            placed = self.on_orphaned(name, orphans) if orphans else None
            if shared:
                self.counters.orphaned_node_left += len(shared)
                self.on_shared_orphaned(name, shared)
            if waiters:
                _fire_after(placed, waiters)

    # -- inspection ------------------------------------------------------------------

    def backlog(self) -> Dict[str, Tuple[int, int]]:
        """``peer -> (entries, bytes)`` waiting for the peer's acknowledgement."""
        return {name: (len(p.outbound), p.outbound.held_bytes)
                for name, p in self._peers.items() if len(p.outbound)}
