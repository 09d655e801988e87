"""
Shared subscriptions ``$share/<group>/<filter>``: the groups, their members
on every node, and which member gets a message.

A subscriber record keeps the full ``$share/<group>/<filter>`` string as a
filter like any other (so replication, anti-entropy, session moves,
re-homing and restore carry it unchanged); :class:`SharedGroups` is the
cache that routing reads, built from the same record changes as the trie
(:meth:`vmqtw.broker.subscriptions.Subscriptions._on_change`), and the trie
itself never holds a shared filter.

A group is named by its whole filter string: two filters with the same group
name and different topic filters are two groups [MQTT-4.8.2], as in VerneMQ.
Its members are this node's subscribers (with their subscription options)
and other nodes' subscribers (with the node their record names: what this
node knows of them; the receiving node checks whether they are online).

Which member gets a message (:meth:`SharedGroups.choose`) is pure: the caller
says which local members are online.  Policies, by VerneMQ's names
(``shared_subscription_policy``):

``prefer_local`` (default)
    an online member of this node; else a member on another node; else an
    offline member of this node (a persistent session, whose queue keeps
    the message for its return).  VerneMQ's ``prefer_local`` keeps to local
    members even when they are all offline; here an offline member is taken
    only when no member anywhere may be online (a member that goes offline
    stops receiving while others can), as VerneMQ's
    ``prefer_online_before_local`` does.
``local_only``
    members of this node only: online ones first, else an offline one.
``random``
    any online member of this node or member of another node; else an
    offline member of this node.

Within the candidates of a tier the members take turns (round-robin per
group), which spreads load as evenly as VerneMQ's random pick and keeps
tests deterministic.

The node a message is published on chooses, for every group, and sends a
copy naming the member to that member's node (the data plane's target
field); a node never serves groups with the plain copies it receives.  The
receiving node delivers to the named member if it is online there, else to
another online member there, else (QoS 1/2) to the named member's queue if
its session is persistent, else counts a drop.

A member whose session ends (a clean session disconnecting, an expiring one
expiring, a takeover by a clean session) hands the QoS 1/2 messages it had
not acknowledged to another member of the group.  VerneMQ does not: the
queue of a clean session stops with its last connection and what it held
is gone (``vmq_queue`` cleans it up), which loses messages whose publisher
was acknowledged; here they go on.  A persistent member that only goes
offline keeps them in its offline queue for its return, as VerneMQ's
offline queue does; new messages go to the members that are online
meanwhile.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple, cast

import attrs

from vmqtw.trie import SubscriptionTrie
from vmqtw.types import SubscriberId

__all__ = ["SHARED_START", "POLICIES", "ONLINE", "OFFLINE", "ABSENT", "Group", "SharedGroups",
           "is_shared", "inner_filter", "shared_members"]

#: How every shared filter starts (``$share`` then ``/``).
SHARED_START = "$share/"

#: ``shared_subscription_policy`` values (VerneMQ's names).
POLICIES = ("prefer_local", "local_only", "random")

#: What :meth:`SharedGroups.choose` is told of a local member.
ONLINE = 2    # connected here: gets the message now
OFFLINE = 1   # a persistent session's queue is here, no connection
ABSENT = 0    # no queue on this node (nothing to deliver to)

#: A record as :mod:`vmqtw.broker.subscriptions` keeps it.
_Record = Iterable[Tuple[str, bool, Iterable[Tuple[str, int]]]]


def is_shared(flt: str) -> bool:
    """Whether a (validated) filter is a shared subscription."""
    return flt.startswith(SHARED_START)


def inner_filter(flt: str) -> str:
    """The topic filter of a validated ``$share/<group>/<filter>``."""
    return flt.split("/", 2)[2]


def shared_members(record: Optional[_Record], node: str
                   ) -> Tuple[Dict[str, int], Dict[str, str]]:
    """
    The shared filters ``record`` holds: ``({filter: options})`` of this
    node's entries and ``({filter: node})`` of other nodes' (the last entry
    naming a filter wins: a session's newest home).
    """
    local: Dict[str, int] = {}
    remote: Dict[str, str] = {}
    if record:
        for entry_node, _clean, topics in record:
            for flt, options in topics:
                if flt.startswith(SHARED_START):
                    if entry_node == node:
                        local[flt] = options
                    else:
                        remote[flt] = entry_node
    return local, remote


@attrs.define(slots=True, eq=False)
class Group:
    """One shared subscription group and its members across the cluster."""

    #: The whole ``$share/<group>/<filter>`` string.
    name: str
    #: This node's members: subscriber id -> subscription options.
    local: Dict[SubscriberId, int] = attrs.Factory(dict)
    #: Other nodes' members: subscriber id -> the node their record names.
    remote: Dict[SubscriberId, str] = attrs.Factory(dict)
    #: Round-robin position.
    turn: int = 0

    def __len__(self) -> int:
        return len(self.local) + len(self.remote)


#: ``(subscriber id, node or None for this node, options or 0 for remote)``.
Choice = Tuple[SubscriberId, Optional[str], int]


class SharedGroups:
    """
    Every shared group this node knows, by name, and a trie from each
    group's topic filter to the group names, so routing finds the groups a
    topic matches with one lookup (and none at all while there are no
    groups: see :meth:`__len__`).
    """

    def __init__(self, node: str, policy: str = "prefer_local") -> None:
        if policy not in POLICIES:
            raise ValueError("unknown shared_subscription_policy %r" % (policy,))
        self.node = node
        self.policy = policy
        self.groups: Dict[str, Group] = {}
        #: inner filter -> {group name: 0}.
        self.trie = SubscriptionTrie()
        #: subscriber id -> (local {filter: options}, remote {filter: node}).
        self._members: Dict[SubscriberId, Tuple[Dict[str, int], Dict[str, str]]] = {}

    def __len__(self) -> int:
        return len(self.groups)

    # -- membership -------------------------------------------------------------

    def set_member(self, subscriber_id: SubscriberId, local: Dict[str, int],
                   remote: Dict[str, str]) -> None:
        """``subscriber_id`` is now a member of exactly these groups."""
        old_local, old_remote = self._members.get(subscriber_id, ({}, {}))
        for name in old_local:
            if name not in local:
                group = self.groups.get(name)
                if group is not None:
                    group.local.pop(subscriber_id, None)
                    self._maybe_drop(group)
        for name in old_remote:
            if name not in remote:
                group = self.groups.get(name)
                if group is not None:
                    group.remote.pop(subscriber_id, None)
                    self._maybe_drop(group)
        for name, options in local.items():
            self._group(name).local[subscriber_id] = options
        for name, node in remote.items():
            self._group(name).remote[subscriber_id] = node
        if local or remote:
            self._members[subscriber_id] = (dict(local), dict(remote))
        else:
            self._members.pop(subscriber_id, None)

    def _group(self, name: str) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name)
            self.trie.add(inner_filter(name), name, 0)
        return group

    def _maybe_drop(self, group: Group) -> None:
        if not group.local and not group.remote:
            del self.groups[group.name]
            self.trie.remove(inner_filter(group.name), group.name)

    # -- routing --------------------------------------------------------------------

    def matching(self, topic: str) -> List[Group]:
        """The groups whose filter matches ``topic``."""
        groups = self.groups
        return [groups[cast(str, name)] for name in self.trie.match(topic)]

    def choose(self, group: Group, state: Callable[[SubscriberId], int],
               exclude: Optional[SubscriberId] = None,
               exclude_node: Optional[str] = None,
               policy: Optional[str] = None) -> Optional[Choice]:
        """
        The member of ``group`` that gets the next message, by ``policy``
        (this node's unless given); None when it has no member to deliver
        to.  ``state(subscriber_id)`` tells :data:`ONLINE`, :data:`OFFLINE`
        or :data:`ABSENT` for a local member; ``exclude`` is never chosen (a
        member whose session is ending), nor members recorded on
        ``exclude_node``.
        """
        online: List[Choice] = []
        offline: List[Choice] = []
        for sid, options in group.local.items():
            if sid == exclude:
                continue
            seen = state(sid)
            if seen == ONLINE:
                online.append((sid, None, options))
            elif seen == OFFLINE:
                offline.append((sid, None, options))
        if policy is None:
            policy = self.policy
        remote: List[Choice] = []
        if policy != "local_only":
            remote = [(sid, node, 0) for sid, node in group.remote.items()
                      if sid != exclude and node != exclude_node]
        tiers: Tuple[List[Choice], ...]
        if policy == "prefer_local":
            tiers = (online, remote, offline)
        elif policy == "random":
            tiers = (online + remote, offline)
        else:
            tiers = (online, offline)
        for tier in tiers:
            if tier:
                turn = group.turn
                group.turn = turn + 1
                return tier[turn % len(tier)]
        return None

    def local_online(self, group: Group, state: Callable[[SubscriberId], int]
                     ) -> Optional[Choice]:
        """
        An online member of ``group`` on this node, taking turns: where a
        message another node sent for a member that is gone goes instead.
        """
        online = [(sid, None, options) for sid, options in group.local.items()
                  if state(sid) == ONLINE]
        if not online:
            return None
        turn = group.turn
        group.turn = turn + 1
        return online[turn % len(online)]
