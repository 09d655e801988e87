"""
Subscriptions: the subscriber records in the metadata store and the routing
trie that caches them.

Subscriptions live in :class:`~vmqtw.interfaces.IMetadataStore` under
:data:`~vmqtw.types.SUBSCRIBER_PREFIX`.  The trie is a cache built from a
fold of the store plus its change events, so a change arriving from another
node (or a repair after a netsplit) updates routing exactly as a local
SUBSCRIBE does -- and routing never scans all subscriptions.

Subscriber record (VerneMQ's layout)::

    key   = (mountpoint, client_id)
    value = ((node, clean_session, ((filter, options), ...)), ...)

``options`` is the QoS for a 3.1.1 subscription, as it always was; for an
MQTT 5.0 one it is the SUBSCRIBE options byte (QoS in the low two bits, then
no local, retain as published, retain handling) plus the subscription
identifier shifted left by 8.  A plain QoS is such a value with only the
QoS bits, so records written before MQTT 5.0 read the same; whoever needs
the QoS masks it with :data:`QOS_BITS`.  The trie keeps the same value.

The last entry names the node the session is registered on.  The pure
helpers below read a record; :class:`Subscriptions` writes them.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Collection, Dict, Iterable, List, Optional, Set, Tuple

from vmqtw.broker.shared import SHARED_START, SharedGroups, shared_members
from vmqtw.interfaces import ChangeOrigin, IMetadataStore
from vmqtw.trie import SubscriptionTrie
from vmqtw.types import SUBSCRIBER_PREFIX, MetadataPrefix, SubscriberId

__all__ = ["AdoptedCallback", "SubscriberRecord", "Subscriptions", "all_filters", "home_node", "local_filters",
           "record_clean_session", "record_owner", "remote_filters", "rehomed_record"]

#: One entry per node that holds the session: ``(node, clean_session,
#: ((filter, qos), ...))``; the last entry is where it is registered.
SubscriberRecord = Tuple[Tuple[str, bool, Tuple[Tuple[str, int], ...]], ...]

#: ``on_moved(subscriber_id, new_node)``: another node took the session over
#: (``new_node`` is where a persistent session's messages must go) or ended it
#: (``new_node`` is None).
MovedCallback = Callable[[SubscriberId, Optional[str]], None]

#: ``on_adopted(subscriber_id, from_node)``: another node gave this node a
#: persistent session that ``from_node`` held (it left, or leaves).
AdoptedCallback = Callable[[SubscriberId, Optional[str]], None]

#: The QoS bits of a subscription's options value (see the module docstring).
QOS_BITS = 0x03
#: Where the subscription identifier starts in an options value.
SUBSCRIPTION_ID_SHIFT = 8

#: Every remote node is entered in the trie with this QoS: the node
#: re-matches and applies its own subscribers' QoS, so the message is
#: forwarded at the QoS it was published with.
REMOTE_QOS = 2


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


def record_clean_session(record: Optional[SubscriberRecord], node: str) -> Optional[bool]:
    """The clean-session flag ``record`` holds for ``node``, if any."""
    if record:
        for entry_node, clean, _topics in record:
            if entry_node == node:
                return clean
    return None


def home_node(client_id: str, nodes: Collection[str]) -> str:
    """
    The node of ``nodes`` that takes over ``client_id``'s session when its
    own node left: a stable hash (the same on every node and every run,
    unlike Python's salted ``hash``) over the sorted names, so sessions
    spread evenly and whoever computes it gets the same answer.
    """
    ordered = sorted(nodes)
    digest = hashlib.blake2b(client_id.encode("utf-8"), digest_size=8).digest()
    return ordered[int.from_bytes(digest, "big") % len(ordered)]


def rehomed_record(record: SubscriberRecord, gone: str, home: str) -> Optional[SubscriberRecord]:
    """
    ``record`` once node ``gone`` left the cluster: a persistent session it
    held lives on ``home`` with every filter it had (its client reconnects
    anywhere and finds its subscriptions); a clean session there ended with
    its connection.  None when nothing is left of the record; ``record``
    itself when ``gone`` is not in it.
    """
    if not any(node == gone for node, _clean, _topics in record):
        return record
    if record_owner(record) != gone:
        # Registered elsewhere: only the stale entry of ``gone`` goes.
        rest = tuple(entry for entry in record if entry[0] != gone)
        return rest or None
    if record[-1][1]:
        return None  # a clean session of ``gone``
    return ((home, False, tuple(sorted(all_filters(record).items()))),)


def _ignore_moves(subscriber_id: SubscriberId, node: Optional[str]) -> None:
    """The default ``on_moved``: nobody to tell."""


def _ignore_adoptions(subscriber_id: SubscriberId, from_node: Optional[str]) -> None:
    """The default ``on_adopted``: nobody to tell."""


class Subscriptions:
    """
    The subscriber records of one node's view of the cluster, and the trie
    that routes by them.

    The trie holds this node's subscribers by :class:`SubscriberId` and every
    other node by name, once per filter however many of that node's
    sessions subscribe to it (``_remote_refs`` counts them), so a publish
    sends one copy per node.

    It closes no session itself: when another node takes a session of this
    node over (or ends it), it tells ``on_moved``, which the registry sets;
    when another node hands this node the persistent session of a node
    that left (:meth:`rehome`), it tells ``on_adopted``.
    """

    def __init__(self, node: str, metadata: IMetadataStore,
                 on_moved: MovedCallback = _ignore_moves,
                 on_adopted: AdoptedCallback = _ignore_adoptions) -> None:
        self.node = node
        self.metadata = metadata
        self.on_moved = on_moved
        self.on_adopted = on_adopted
        #: False while :meth:`start` folds the store (restore, not adoption).
        self._following = False
        self.trie = SubscriptionTrie()
        #: Shared subscription groups (``$share/...`` filters), which the
        #: trie never holds: the router picks one member per group.
        self.shared = SharedGroups(node)
        #: ``(node, filter) -> number of that node's sessions subscribed``.
        self._remote_refs: Dict[Tuple[str, str], int] = {}
        self._unsubscribe: Optional[Callable[[], None]] = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Build the trie from the store, then follow its changes."""
        for key, record in self.metadata.items(SUBSCRIBER_PREFIX):
            self._on_change(SUBSCRIBER_PREFIX, key, None, record, ChangeOrigin.REMOTE)
        self._unsubscribe = self.metadata.subscribe(SUBSCRIBER_PREFIX, self._on_change)
        self._following = True

    def stop(self) -> None:
        self._following = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- reading --------------------------------------------------------------

    def record(self, subscriber_id: SubscriberId) -> Optional[SubscriberRecord]:
        """``subscriber_id``'s record, or None."""
        record: Optional[SubscriberRecord] = self.metadata.get(
            SUBSCRIBER_PREFIX, subscriber_id.as_key())
        return record

    def local(self, subscriber_id: SubscriberId) -> Dict[str, int]:
        """This node's ``{filter: qos}`` for ``subscriber_id``."""
        return local_filters(self.record(subscriber_id), self.node)

    def granted_qos(self, subscriber_id: SubscriberId, topic: str, published: int) -> int:
        """The QoS ``subscriber_id`` gets a message on ``topic`` published
        at ``published``: ``min(published, granted)``."""
        granted = self.trie.match(topic).get(subscriber_id, published) & QOS_BITS
        return granted if granted < published else published

    def sessions_on_this_node(self) -> Tuple[List[SubscriberId], List[SubscriberId]]:
        """``(persistent, clean)`` subscriber ids recorded on this node."""
        persistent: List[SubscriberId] = []
        clean: List[SubscriberId] = []
        for key, record in list(self.metadata.items(SUBSCRIBER_PREFIX)):
            flag = record_clean_session(record, self.node)
            if flag is False:
                persistent.append(SubscriberId(*key))
            elif flag is True:
                clean.append(SubscriberId(*key))
        return persistent, clean

    # -- writing --------------------------------------------------------------

    def claim(self, subscriber_id: SubscriberId, clean_session: bool) -> bool:
        """
        Record that ``subscriber_id`` is now registered on this node, as
        VerneMQ does: a node that sees the record move elsewhere closes its
        own connection for that client id and hands a persistent queue over.
        A clean session starts with no subscriptions [MQTT-3.1.2-6]; a
        persistent one brings its subscriptions along from wherever they
        were.  Returns True when the record held a persistent session (the
        CONNACK session-present flag, as far as the cluster knows).
        """
        key = subscriber_id.as_key()
        record = self.record(subscriber_id)
        mine: SubscriberRecord
        if clean_session:
            held_persistent = False
            mine = ((self.node, True, ()),)
        else:
            held_persistent = any(clean is False for _node, clean, _topics in (record or ()))
            mine = ((self.node, False, tuple(sorted(all_filters(record).items()))),)
        if record is None or tuple(record) != mine:
            self.metadata.put(SUBSCRIBER_PREFIX, key, mine)
        return held_persistent

    def rehome(self, gone: str, survivors: Collection[str],
               homes: Optional[Collection[str]] = None) -> Tuple[int, int]:
        """
        Node ``gone`` left the cluster: rewrite every record naming it (see
        :func:`rehomed_record`), each persistent session going to its
        :func:`home_node` among ``survivors``.  ``homes`` limits this to the
        records whose home is one of them: each survivor rewrites its own
        share (one writer per record, so one version of it; and the home
        routes the session's messages before any other node sends them
        there -- a record written elsewhere could reach a third node first,
        whose messages the home would then not route).
        Returns ``(persistent sessions re-homed, clean sessions ended)``.
        """
        moved = ended = 0
        if not survivors:
            return moved, ended
        for key, record in list(self.metadata.items(SUBSCRIBER_PREFIX)):
            subscriber_id = SubscriberId(*key)
            home = home_node(subscriber_id.client_id, survivors)
            if homes is not None and home not in homes:
                continue
            new = rehomed_record(record, gone, home)
            if new is record:
                continue
            if new is None:
                self.metadata.delete(SUBSCRIBER_PREFIX, key)
                ended += record_owner(record) == gone
            else:
                self.metadata.put(SUBSCRIBER_PREFIX, key, new)
                if record_owner(record) == gone:
                    moved += 1
                    if record_owner(new) == self.node:
                        # Our own write: no event says so.
                        self.on_adopted(subscriber_id, gone)
        return moved, ended

    def remove(self, subscriber_id: SubscriberId) -> None:
        """Delete ``subscriber_id``'s record (its session ended)."""
        if self.record(subscriber_id) is not None:
            self.metadata.delete(SUBSCRIBER_PREFIX, subscriber_id.as_key())

    def subscribe(self, subscriber_id: SubscriberId, clean_session: bool,
                  topics: Iterable[Tuple[str, int]]) -> None:
        """
        Add or replace subscriptions; a repeated filter replaces the old
        one's QoS [MQTT-3.8.4-3].  The trie is updated (through the store's
        change event) before this returns, so a SUBACK sent afterwards never
        precedes routing.
        """
        filters = self.local(subscriber_id)
        for flt, qos in topics:
            filters[flt] = qos
        self._write(subscriber_id, clean_session, filters)

    def unsubscribe(self, subscriber_id: SubscriberId, clean_session: bool,
                    topics: Iterable[str]) -> None:
        filters = self.local(subscriber_id)
        changed = False
        for flt in topics:
            if filters.pop(flt, None) is not None:
                changed = True
        if changed:
            self._write(subscriber_id, clean_session, filters)

    def _write(self, subscriber_id: SubscriberId, clean_session: bool,
               filters: Dict[str, int]) -> None:
        old = self.record(subscriber_id)
        others = tuple(entry for entry in (old or ()) if entry[0] != self.node)
        mine = (self.node, clean_session, tuple(sorted(filters.items())))
        self.metadata.put(SUBSCRIBER_PREFIX, subscriber_id.as_key(), others + (mine,))

    # -- change events --------------------------------------------------------

    def _on_change(self, prefix: MetadataPrefix, key: Tuple[str, str],
                   old: Optional[SubscriberRecord], new: Optional[SubscriberRecord],
                   origin: ChangeOrigin) -> None:
        subscriber_id = SubscriberId(*key)
        node = self.node
        before = local_filters(old, node)
        after = local_filters(new, node)
        trie = self.trie
        shared = False
        for flt in before:
            if flt not in after:
                if flt.startswith(SHARED_START):
                    shared = True
                    continue
                trie.remove(flt, subscriber_id)
        for flt, qos in after.items():
            if before.get(flt) != qos:
                if flt.startswith(SHARED_START):
                    shared = True
                    continue
                trie.add(flt, subscriber_id, qos)
        remote_before = remote_filters(old, node)
        remote_after = remote_filters(new, node)
        if remote_before != remote_after:
            gone = remote_before - remote_after
            added = remote_after - remote_before
            if any(flt.startswith(SHARED_START) for _node, flt in gone | added):
                shared = True
                gone = {pair for pair in gone if not pair[1].startswith(SHARED_START)}
                added = {pair for pair in added if not pair[1].startswith(SHARED_START)}
            self._count_remote(gone, added)
        if shared:
            self.shared.set_member(subscriber_id, *shared_members(new, node))
        if (origin is not ChangeOrigin.LOCAL and record_clean_session(old, node) is not None
                and record_clean_session(new, node) is None):
            # Another node wrote this node out of the record: the session
            # registered there.  A clean session elsewhere ends this one
            # [MQTT-3.1.2-6]; a persistent one takes its messages along.
            owner = record_owner(new)
            moved_to = owner if owner is not None and new is not None \
                and new[-1][1] is False else None
            self.on_moved(subscriber_id, moved_to)
        elif (self._following and origin is not ChangeOrigin.LOCAL and record_owner(new) == node
              and record_owner(old) not in (node, None) and new is not None
              and new[-1][1] is False):
            # Another node gave this node the persistent session of a node
            # that left (:meth:`rehome`): it waits here for its client.
            self.on_adopted(subscriber_id, record_owner(old))

    def _count_remote(self, gone: Set[Tuple[str, str]], added: Set[Tuple[str, str]]) -> None:
        """Keep one trie entry per ``(node, filter)`` while any session of
        that node subscribes to the filter."""
        refs = self._remote_refs
        trie = self.trie
        for pair in gone:
            count = refs.get(pair, 0) - 1
            if count <= 0:
                refs.pop(pair, None)
                trie.remove(pair[1], pair[0])
            else:
                refs[pair] = count
        for pair in added:
            count = refs.get(pair, 0) + 1
            refs[pair] = count
            if count == 1:
                trie.add(pair[1], pair[0], REMOTE_QOS)

    def remote_refs(self) -> Dict[Tuple[str, str], int]:
        """A copy of ``(node, filter) -> sessions subscribed`` (for tests
        and the admin)."""
        return dict(self._remote_refs)
