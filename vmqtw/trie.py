"""
The subscription trie (routing table) and the retained-message tree.

Both are pure in-memory structures keyed by topic levels. ``match`` on the
subscription trie runs once for every published message, so it is written
for speed: the walk is level-synchronous over a short list of live nodes
(no recursion, no per-step tuples), wildcards live in dedicated node slots
rather than in the children dict, and the cost is proportional to the trie
paths that actually match the topic, never to the number of subscriptions.

Filters and topics are trusted: validate them with :mod:`vmqtw.topic` first.
Deep inputs are handled with explicit loops, so a 30,000-level filter costs
memory but never a ``RecursionError``.
"""
from __future__ import annotations

from typing import Any, Dict, Hashable, Iterator, List, Optional, Tuple

__all__ = ["SubscriptionTrie", "RetainTree"]

_SEP = "/"
_SINGLE = "+"
_MULTI = "#"


class _SubNode:
    """
    One level of the subscription trie.

    ``plus`` is the child for a ``+`` level and ``hash`` the subscribers of
    the filter that ends in ``#`` right below this node; keeping them out of
    ``children`` saves two dict look-ups per level on the hot path and means
    a literal ``+`` in a topic can never reach a wildcard node. ``subs`` and
    ``hash`` stay ``None`` until used: most interior nodes hold neither.
    """

    __slots__ = ("children", "plus", "hash", "subs")

    def __init__(self) -> None:
        self.children: Dict[str, _SubNode] = {}
        self.plus: Optional[_SubNode] = None
        self.hash: Optional[Dict[Hashable, int]] = None
        self.subs: Optional[Dict[Hashable, int]] = None

    def is_empty(self) -> bool:
        return not (self.children or self.plus is not None
                    or self.hash or self.subs)


class SubscriptionTrie:
    """
    Which subscribers want which filters, with the granted QoS.

    A subscriber is any hashable: the broker stores ``SubscriberId`` for
    local sessions and a node name for remote nodes, so one ``match`` yields
    both local deliveries and the peers to forward one copy to.
    """

    __slots__ = ("_root", "_count", "_last_topic", "_last_match")

    def __init__(self) -> None:
        self._root = _SubNode()
        self._count = 0
        #: The last topic matched and its result, until the next change:
        #: a publisher's stream repeats its topic, read after read, so the
        #: walk is mostly skipped; a different topic costs one comparison.
        #: (A table of many topics was slower on distinct topics.)
        self._last_topic: Optional[str] = None
        self._last_match: Dict[Hashable, int] = {}

    def __len__(self) -> int:
        """The number of (filter, subscriber) entries."""
        return self._count

    def add(self, flt: str, subscriber: Hashable, qos: int) -> None:
        """
        Subscribe ``subscriber`` to ``flt`` at ``qos``.

        Adding the same (filter, subscriber) again replaces the QoS, as a
        repeated SUBSCRIBE does [MQTT-3.8.4-3].
        """
        self._last_topic = None
        levels = flt.split(_SEP)
        # Checked before any node is created, so a refused filter leaves
        # nothing behind.
        if _MULTI in flt and _MULTI in levels[:-1]:
            raise ValueError("'#' must be the last level of a filter")
        node = self._root
        for level in levels:
            if level == _MULTI:
                if node.hash is None:
                    node.hash = {}
                table = node.hash
                break
            if level == _SINGLE:
                child = node.plus
                if child is None:
                    child = node.plus = _SubNode()
            else:
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _SubNode()
            node = child
        else:
            if node.subs is None:
                node.subs = {}
            table = node.subs
        if subscriber not in table:
            self._count += 1
        table[subscriber] = qos

    def remove(self, flt: str, subscriber: Hashable) -> None:
        """
        Unsubscribe ``subscriber`` from ``flt``; absent entries are ignored.

        Nodes left empty are pruned bottom-up, so memory stays bounded by the
        live subscriptions under any amount of subscribe/unsubscribe churn.
        """
        self._last_topic = None
        levels = flt.split(_SEP)
        last = len(levels) - 1
        node = self._root
        # (parent, key) for every step taken; key None means the '+' slot.
        path: List[Tuple[_SubNode, Optional[str]]] = []
        multi = False
        for i, level in enumerate(levels):
            if level == _MULTI:
                if i != last:
                    return
                multi = True
                break
            if level == _SINGLE:
                child = node.plus
                key: Optional[str] = None
            else:
                child = node.children.get(level)
                key = level
            if child is None:
                return
            path.append((node, key))
            node = child
        table = node.hash if multi else node.subs
        if not table or subscriber not in table:
            return
        del table[subscriber]
        self._count -= 1
        if not table:
            if multi:
                node.hash = None
            else:
                node.subs = None
        while path and node.is_empty():
            parent, key = path.pop()
            if key is None:
                parent.plus = None
            else:
                del parent.children[key]
            node = parent

    def match(self, topic: str) -> Dict[Hashable, int]:
        """
        Every subscriber whose filters match ``topic``, once each.

        The QoS is the maximum over that subscriber's matching filters, so
        overlapping subscriptions deliver a single copy at the highest
        granted QoS. Filters starting with ``+`` or ``#`` do not match
        topics starting with ``$`` [MQTT-4.7.2-1]. The returned dict is
        shared with the next caller of the same topic: read it, never change
        it.
        """
        if topic == self._last_topic:
            return self._last_match
        found = self._walk(topic)
        self._last_topic = topic
        self._last_match = found
        return found

    def _walk(self, topic: str) -> Dict[Hashable, int]:
        """:meth:`match` without the memo: a new dict."""
        words = topic.split(_SEP)
        root = self._root
        found: List[Dict[Hashable, int]] = []
        # The '$' rule only concerns the root's wildcard slots, so it is
        # decided once here instead of on every step of the walk.
        first = root.children.get(words[0])
        if topic[:1] == "$":
            if first is None:
                return {}
            nodes = [first]
        else:
            if root.hash:
                found.append(root.hash)
            plus = root.plus
            if first is None:
                if plus is None:
                    return self._merge(found)
                nodes = [plus]
            elif plus is None:
                nodes = [first]
            else:
                nodes = [first, plus]
        for i in range(1, len(words)):
            word = words[i]
            nxt = []
            for node in nodes:
                if node.hash:
                    found.append(node.hash)
                child = node.children.get(word)
                if child is not None:
                    nxt.append(child)
                if node.plus is not None:
                    nxt.append(node.plus)
            if not nxt:
                return self._merge(found)
            nodes = nxt
        for node in nodes:
            # 'a/#' matches 'a' itself: '#' also covers the parent level.
            if node.hash:
                found.append(node.hash)
            if node.subs:
                found.append(node.subs)
        return self._merge(found)

    @staticmethod
    def _merge(found: List[Dict[Hashable, int]]) -> Dict[Hashable, int]:
        """Union of subscriber tables, keeping the highest QoS of each."""
        if not found:
            return {}
        if len(found) == 1:
            return dict(found[0])
        # Copy the biggest table and fold the others in with C-level dict
        # operations: only subscribers present in both need a Python-level
        # QoS comparison, and those are few (overlapping subscriptions).
        found.sort(key=len, reverse=True)
        result = dict(found[0])
        for i in range(1, len(found)):
            table = found[i]
            common = result.keys() & table.keys()
            if common:
                keep = [(sub, result[sub]) for sub in common
                        if result[sub] > table[sub]]
                result.update(table)
                for sub, qos in keep:
                    result[sub] = qos
            else:
                result.update(table)
        return result

    def node_count(self) -> int:
        """
        The number of trie nodes, root included.

        For tests and metrics: it shows that pruning keeps memory tied to
        the live subscriptions.
        """
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
        return count


_NO_VALUE: Any = object()


class _RetainNode:
    """One level of the retain tree; ``value`` is set where a topic ends."""

    __slots__ = ("children", "topic", "value")

    def __init__(self) -> None:
        self.children: Dict[str, _RetainNode] = {}
        self.topic: str = ""
        self.value: Any = _NO_VALUE


class RetainTree:
    """
    Retained messages by topic name, searchable by filter.

    A new subscription asks which retained topics its filter matches; the
    tree answers by walking only the branches the filter allows (all of them
    below a ``#``), which beats scanning every retained topic. Values are
    opaque to the tree.
    """

    __slots__ = ("_root", "_count")

    def __init__(self) -> None:
        self._root = _RetainNode()
        self._count = 0

    def __len__(self) -> int:
        """The number of retained topics."""
        return self._count

    def set(self, topic: str, value: Any) -> None:
        """Store ``value`` for ``topic``, replacing any previous one."""
        node = self._root
        for level in topic.split(_SEP):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _RetainNode()
            node = child
        if node.value is _NO_VALUE:
            self._count += 1
            node.topic = topic
        node.value = value

    def get(self, topic: str, default: Any = None) -> Any:
        """The value stored for ``topic``, or ``default``."""
        node = self._root
        for level in topic.split(_SEP):
            child = node.children.get(level)
            if child is None:
                return default
            node = child
        if node.value is _NO_VALUE:
            return default
        return node.value

    def delete(self, topic: str) -> bool:
        """
        Forget ``topic``; returns whether it was stored.

        Emptied nodes are pruned bottom-up so deleted topics leave no
        memory behind.
        """
        node = self._root
        path: List[Tuple[_RetainNode, str]] = []
        for level in topic.split(_SEP):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.value is _NO_VALUE:
            return False
        node.value = _NO_VALUE
        node.topic = ""
        self._count -= 1
        while path and not node.children and node.value is _NO_VALUE:
            parent, level = path.pop()
            del parent.children[level]
            node = parent
        return True

    def match(self, flt: str) -> Iterator[Tuple[str, Any]]:
        """
        Yield ``(topic, value)`` for every stored topic ``flt`` matches.

        Same rules as the subscription trie: ``+`` is exactly one level,
        ``#`` is the parent level and everything below it, and a filter
        starting with a wildcard skips ``$`` topics [MQTT-4.7.2-1]. The walk
        uses an explicit stack. Do not change the tree while iterating.
        """
        levels = flt.split(_SEP)
        n = len(levels)
        stack: List[Tuple[_RetainNode, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == n:
                if node.value is not _NO_VALUE:
                    yield node.topic, node.value
                continue
            level = levels[i]
            if level == _MULTI:
                yield from self._subtree(node, skip_dollar=(i == 0))
            elif level == _SINGLE:
                for key, child in node.children.items():
                    if i == 0 and key[:1] == "$":
                        continue
                    stack.append((child, i + 1))
            else:
                exact = node.children.get(level)
                if exact is not None:
                    stack.append((exact, i + 1))

    @staticmethod
    def _subtree(start: _RetainNode,
                 skip_dollar: bool) -> Iterator[Tuple[str, Any]]:
        """Every value at ``start`` (the '#' parent level) and below it."""
        if start.value is not _NO_VALUE:
            yield start.topic, start.value
        stack: List[_RetainNode] = []
        for key, child in start.children.items():
            if skip_dollar and key[:1] == "$":
                continue
            stack.append(child)
        while stack:
            node = stack.pop()
            if node.value is not _NO_VALUE:
                yield node.topic, node.value
            stack.extend(node.children.values())

    def items(self) -> Iterator[Tuple[str, Any]]:
        """Every stored ``(topic, value)``, ``$`` topics too (admin use)."""
        return self._subtree(self._root, skip_dollar=False)

    def node_count(self) -> int:
        """The number of tree nodes, root included (tests and metrics)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count
