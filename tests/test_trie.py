"""
Tests for vmqtw.trie: the subscription trie and the retain tree.

The property tests compare both structures against a brute-force matcher
written here, level by level, without looking at the trie code.
"""
from __future__ import annotations

import time
from typing import Dict, Hashable, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, invariant,
                                 rule)

from vmqtw.trie import RetainTree, SubscriptionTrie
from vmqtw.types import SubscriberId


def reference_matches(flt: str, topic: str) -> bool:
    """
    Whether ``flt`` matches ``topic``, by walking both level lists.

    '+' takes one level (empty ones too), '#' takes the rest including
    none, and '$' topics are out of reach of a leading wildcard
    [MQTT-4.7.2-1].
    """
    f = flt.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def reference_route(entries: Dict[Tuple[str, Hashable], int],
                    topic: str) -> Dict[Hashable, int]:
    """Scan every subscription; keep the highest QoS per subscriber."""
    out: Dict[Hashable, int] = {}
    for (flt, sub), qos in entries.items():
        if reference_matches(flt, topic):
            out[sub] = max(out.get(sub, -1), qos)
    return out


# -- the reference itself, pinned to the spec's own examples ---------------

@pytest.mark.parametrize("flt, topic, expected", [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("#", "$SYS/x", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/+/$x", "a/b/$x", True),
    ("a/+", "a/$x", True),
])
def test_spec_examples(flt: str, topic: str, expected: bool) -> None:
    """Examples of section 4.7 and [MQTT-4.7.2-1], checked on the reference,
    the trie and the retain tree alike."""
    assert reference_matches(flt, topic) is expected
    trie = SubscriptionTrie()
    trie.add(flt, "s", 1)
    assert (trie.match(topic) == {"s": 1}) is expected
    tree = RetainTree()
    tree.set(topic, "v")
    assert (list(tree.match(flt)) == [(topic, "v")]) is expected


# -- subscription trie ------------------------------------------------------

def test_overlapping_filters_one_copy_max_qos() -> None:
    """Overlapping subscriptions of one client give one entry at the highest
    granted QoS [MQTT-3.3.5-1]."""
    trie = SubscriptionTrie()
    a = SubscriberId("", "a")
    b = SubscriberId("", "b")
    trie.add("sport/#", a, 0)
    trie.add("sport/+/player1", a, 2)
    trie.add("sport/tennis/player1", a, 1)
    trie.add("#", b, 1)
    trie.add("node@host", "node2", 0)
    assert trie.match("sport/tennis/player1") == {a: 2, b: 1}
    assert trie.match("sport") == {a: 0, b: 1}
    assert trie.match("node@host") == {b: 1, "node2": 0}
    assert len(trie) == 5


def test_readd_replaces_qos() -> None:
    """A repeated SUBSCRIBE to the same filter replaces the granted QoS and
    does not add a second entry [MQTT-3.8.4-3]."""
    trie = SubscriptionTrie()
    trie.add("a/+", "s", 2)
    trie.add("a/+", "s", 0)
    assert len(trie) == 1
    assert trie.match("a/b") == {"s": 0}


def test_match_result_is_not_the_routing_table() -> None:
    """A result already returned keeps what matched then: later changes
    to the trie reach the next match only (the routing table itself is
    never handed out, so routing may subscribe or unsubscribe while it
    reads a result)."""
    trie = SubscriptionTrie()
    trie.add("a", "s", 1)
    before = trie.match("a")
    trie.add("a", "t", 0)
    assert before == {"s": 1}
    assert trie.match("a") == {"s": 1, "t": 0}
    trie.remove("a", "s")
    assert trie.match("a") == {"t": 0}
    assert before == {"s": 1}


def test_the_last_match_is_remembered_until_the_trie_changes() -> None:
    """The same topic again gives the same result without a walk; any
    change, or another topic, gives a fresh one."""
    trie = SubscriptionTrie()
    trie.add("a/+", "s", 1)
    first = trie.match("a/b")
    assert trie.match("a/b") is first
    assert trie.match("a/c") == {"s": 1}
    assert trie.match("a/b") == first and trie.match("a/b") is not first
    again = trie.match("a/b")
    trie.add("a/#", "u", 2)
    assert trie.match("a/b") == {"s": 1, "u": 2} and again == {"s": 1}
    trie.remove("a/#", "u")
    assert trie.match("a/b") == {"s": 1}


def test_remove_absent_and_prune() -> None:
    """Removing unknown entries is harmless; removing the last entry below a
    node prunes it, so churn leaves no nodes behind."""
    trie = SubscriptionTrie()
    trie.remove("a/b", "s")
    trie.remove("#/x", "s")
    trie.add("a/b", "s", 1)
    trie.remove("a/b", "other")
    trie.remove("a/c", "s")
    trie.remove("a/#", "s")
    assert len(trie) == 1
    assert trie.match("a/b") == {"s": 1}
    for i in range(1000):
        trie.add(f"churn/{i}/+/state", i, 1)
        trie.add(f"churn/{i}/#", i, 0)
    assert trie.node_count() > 3000
    for i in range(1000):
        trie.remove(f"churn/{i}/+/state", i)
        trie.remove(f"churn/{i}/#", i)
    trie.remove("a/b", "s")
    assert len(trie) == 0
    assert trie.node_count() == 1
    assert trie.match("a/b") == {}


def test_wildcard_first_level_and_dollar() -> None:
    """'#' and '+' at the first level skip '$' topics, a literal '$' level
    does not [MQTT-4.7.2-1]."""
    trie = SubscriptionTrie()
    trie.add("#", "all", 0)
    trie.add("+/x", "plus", 0)
    trie.add("$SYS/#", "sys", 1)
    assert trie.match("$SYS/x") == {"sys": 1}
    assert trie.match("$SYS") == {"sys": 1}
    assert trie.match("a/x") == {"all": 0, "plus": 0}
    assert trie.match("$") == {}


def test_hash_not_last_is_refused() -> None:
    """The trie never stores a filter that breaks [MQTT-4.7.1-2]."""
    trie = SubscriptionTrie()
    with pytest.raises(ValueError):
        trie.add("a/#/b", "s", 0)
    assert len(trie) == 0
    assert trie.node_count() == 1


def test_deep_filters_and_topics_no_recursion() -> None:
    """30,000-level filters and topics go through add, match and remove with
    explicit loops: no RecursionError, and the nodes are pruned."""
    deep = "/".join(["a"] * 30000)
    trie = SubscriptionTrie()
    trie.add(deep, "s", 1)
    trie.add("/".join(["+"] * 30000), "p", 0)
    trie.add("a/#", "h", 2)
    start = time.perf_counter()
    assert trie.match(deep) == {"s": 1, "p": 0, "h": 2}
    assert time.perf_counter() - start < 1.0
    trie.remove(deep, "s")
    trie.remove("/".join(["+"] * 30000), "p")
    trie.remove("a/#", "h")
    assert trie.node_count() == 1
    tree = RetainTree()
    tree.set(deep, 1)
    assert list(tree.match("/".join(["+"] * 30000))) == [(deep, 1)]
    assert list(tree.match("#")) == [(deep, 1)]
    assert tree.delete(deep)
    assert tree.node_count() == 1


def test_pathological_wildcards_linear() -> None:
    """Many '+' filters of many shapes cost time proportional to the matched
    paths (amqtt GHSA-2hjf-7455-w946): a topic that no filter prefix fits
    touches a handful of nodes however many subscriptions exist."""
    trie = SubscriptionTrie()
    for i in range(20000):
        trie.add(f"x/{i}/+/+/#", i, 0)
    start = time.perf_counter()
    for _ in range(20000):
        assert trie.match("y/1/2/3/4") == {}
    assert time.perf_counter() - start < 1.0


# -- retain tree --------------------------------------------------------------

def test_retain_set_get_delete() -> None:
    """Retained values are replaced per topic and deleted with pruning."""
    tree = RetainTree()
    assert tree.get("a/b") is None
    assert tree.get("a/b", 7) == 7
    tree.set("a/b", 1)
    tree.set("a/b", 2)
    tree.set("a", 3)
    assert len(tree) == 2
    assert tree.get("a/b") == 2
    assert tree.get("a") == 3
    assert tree.get("a/b/c") is None
    assert not tree.delete("a/b/c")
    assert not tree.delete("x")
    assert tree.delete("a/b")
    assert not tree.delete("a/b")
    assert tree.get("a") == 3
    assert tree.delete("a")
    assert len(tree) == 0
    assert tree.node_count() == 1


def test_retain_none_value_and_items() -> None:
    """None is a storable value; items() lists '$' topics too (admin)."""
    tree = RetainTree()
    tree.set("a", None)
    tree.set("$SYS/x", 1)
    assert len(tree) == 2
    assert list(tree.match("a")) == [("a", None)]
    assert tree.get("a", "missing") is None
    assert sorted(tree.items()) == [("$SYS/x", 1), ("a", None)]
    assert list(tree.match("#")) == [("a", None)]


# -- properties -------------------------------------------------------------

WORDS = ["a", "b", "", "$x"]
FILTER = st.builds(
    lambda levels, tail: "/".join(levels + tail),
    st.lists(st.sampled_from(WORDS + ["+"]), min_size=0, max_size=4),
    st.sampled_from([[], ["#"]]),
).filter(bool)
TOPIC = st.lists(st.sampled_from(WORDS + ["c"]), min_size=1,
                 max_size=5).map("/".join)
SUBSCRIBER = st.one_of(st.sampled_from(["n1", "n2"]),
                       st.builds(SubscriberId, st.just(""),
                                 st.sampled_from(["c1", "c2", "c3"])))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FILTER, SUBSCRIBER, st.integers(0, 2)),
                max_size=25),
       st.lists(TOPIC, min_size=1, max_size=8))
def test_trie_matches_brute_force(subs: List[Tuple[str, Hashable, int]],
                                  topics: List[str]) -> None:
    """The trie routes exactly like scanning every subscription, with the
    maximum QoS per subscriber [MQTT-4.7.1-2/3], [MQTT-4.7.2-1]."""
    trie = SubscriptionTrie()
    entries: Dict[Tuple[str, Hashable], int] = {}
    for flt, sub, qos in subs:
        trie.add(flt, sub, qos)
        entries[(flt, sub)] = qos
    assert len(trie) == len(entries)
    for topic in topics:
        assert trie.match(topic) == reference_route(entries, topic)


@settings(max_examples=300, deadline=None)
@given(st.lists(TOPIC, max_size=25), st.lists(FILTER, min_size=1, max_size=8))
def test_retain_matches_brute_force(topics: List[str],
                                    filters: List[str]) -> None:
    """The retain tree yields every stored topic the filter matches, once,
    with its value [MQTT-4.7.2-1]."""
    tree = RetainTree()
    stored: Dict[str, int] = {}
    for i, topic in enumerate(topics):
        tree.set(topic, i)
        stored[topic] = i
    assert len(tree) == len(stored)
    for flt in filters:
        got = list(tree.match(flt))
        assert len(got) == len(set(t for t, _ in got))
        expected = {t: v for t, v in stored.items()
                    if reference_matches(flt, t)}
        assert dict(got) == expected


class TrieMachine(RuleBasedStateMachine):
    """Random add/remove sequences against a plain dict of entries."""

    def __init__(self) -> None:
        super().__init__()
        self.trie = SubscriptionTrie()
        self.entries: Dict[Tuple[str, Hashable], int] = {}
        self.removed: Dict[Tuple[str, Hashable], None] = {}

    added = Bundle("added")

    @rule(target=added, flt=FILTER, sub=SUBSCRIBER, qos=st.integers(0, 2))
    def add(self, flt: str, sub: Hashable, qos: int) -> Tuple[str, Hashable]:
        self.trie.add(flt, sub, qos)
        self.entries[(flt, sub)] = qos
        self.removed.pop((flt, sub), None)
        return (flt, sub)

    @rule(key=added)
    def remove_added(self, key: Tuple[str, Hashable]) -> None:
        self.trie.remove(*key)
        self.entries.pop(key, None)
        self.removed[key] = None

    @rule(flt=FILTER, sub=SUBSCRIBER)
    def remove_any(self, flt: str, sub: Hashable) -> None:
        self.trie.remove(flt, sub)
        if (flt, sub) in self.entries:
            del self.entries[(flt, sub)]
            self.removed[(flt, sub)] = None

    @rule(topic=TOPIC)
    def match(self, topic: str) -> None:
        got = self.trie.match(topic)
        assert got == reference_route(self.entries, topic)
        for flt, sub in self.removed:
            # A removed entry never routes, unless another live filter of
            # the same subscriber matches too.
            if sub in got and reference_matches(flt, topic):
                assert any(s == sub and reference_matches(f, topic)
                           for f, s in self.entries)

    @invariant()
    def counts(self) -> None:
        assert len(self.trie) == len(self.entries)
        if not self.entries:
            assert self.trie.node_count() == 1


TrieMachine.TestCase.settings = settings(max_examples=60,
                                         stateful_step_count=40,
                                         deadline=None)
test_trie_state_machine = TrieMachine.TestCase


class RetainMachine(RuleBasedStateMachine):
    """Random set/delete sequences against a plain dict of topics."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = RetainTree()
        self.stored: Dict[str, int] = {}

    @rule(topic=TOPIC, value=st.integers())
    def set(self, topic: str, value: int) -> None:
        self.tree.set(topic, value)
        self.stored[topic] = value

    @rule(topic=TOPIC)
    def delete(self, topic: str) -> None:
        assert self.tree.delete(topic) == (topic in self.stored)
        self.stored.pop(topic, None)

    @rule(flt=FILTER)
    def match(self, flt: str) -> None:
        expected = {t: v for t, v in self.stored.items()
                    if reference_matches(flt, t)}
        assert dict(self.tree.match(flt)) == expected

    @rule(topic=TOPIC)
    def get(self, topic: str) -> None:
        assert self.tree.get(topic, "absent") == self.stored.get(topic,
                                                                 "absent")

    @invariant()
    def counts(self) -> None:
        assert len(self.tree) == len(self.stored)
        if not self.stored:
            assert self.tree.node_count() == 1


RetainMachine.TestCase.settings = settings(max_examples=60,
                                           stateful_step_count=40,
                                           deadline=None)
test_retain_state_machine = RetainMachine.TestCase
