"""
The shared subscription groups and their policies (vmqtw.broker.shared):
pure, no broker.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict

import pytest

from vmqtw.broker.shared import (ABSENT, OFFLINE, ONLINE, SharedGroups, inner_filter, is_shared,
                                 shared_members)
from vmqtw.types import SubscriberId

G = "$share/g/t/+"
L1, L2, L3 = SubscriberId("", "l1"), SubscriberId("", "l2"), SubscriberId("", "l3")
R1, R2 = SubscriberId("", "r1"), SubscriberId("", "r2")


def groups(policy: str = "prefer_local") -> SharedGroups:
    shared = SharedGroups("A", policy)
    shared.set_member(L1, {G: 1}, {})
    shared.set_member(L2, {G: 2}, {})
    shared.set_member(R1, {}, {G: "B"})
    shared.set_member(R2, {}, {G: "C"})
    return shared


def states(**seen: int):
    table: Dict[SubscriberId, int] = {SubscriberId("", k): v for k, v in seen.items()}
    return lambda sid: table.get(sid, ABSENT)


def picks(shared: SharedGroups, state, n: int = 12, **kwargs) -> Counter:
    group = shared.groups[G]
    out: Counter = Counter()
    for _ in range(n):
        choice = shared.choose(group, state, **kwargs)
        out[None if choice is None else (choice[0].client_id, choice[1])] += 1
    return out


def test_helpers_read_shared_filters() -> None:
    assert is_shared("$share/g/a/#") and not is_shared("$sharex/a") and not is_shared("a/$share/b")
    assert inner_filter("$share/g/a/#") == "a/#"
    assert inner_filter("$share/g//x") == "/x"
    record = (("B", False, (("$share/g/x", 1), ("plain", 0))),
              ("A", True, (("$share/g/x", 2), ("$share/h/y", 1))),
              ("C", True, (("$share/h/y", 0),)))
    assert shared_members(record, "A") == ({"$share/g/x": 2, "$share/h/y": 1},
                                           {"$share/g/x": "B", "$share/h/y": "C"})
    assert shared_members(None, "A") == ({}, {})


def test_membership_builds_and_drops_groups() -> None:
    """Groups exist while they have members; the trie finds them by topic."""
    shared = groups()
    assert len(shared) == 1
    assert [g.name for g in shared.matching("t/x")] == [G]
    assert shared.matching("t") == [] and shared.matching("$share/g/t/x") == []
    shared.set_member(L1, {G: 1, "$share/h/#": 0}, {})
    assert sorted(g.name for g in shared.matching("t/x")) == [G, "$share/h/#"]
    for sid in (L1, L2, R1, R2):
        shared.set_member(sid, {}, {})
    assert len(shared) == 0 and len(shared.trie) == 0 and shared.matching("t/x") == []


def test_a_remote_member_moving_node_is_followed() -> None:
    shared = groups()
    shared.set_member(R1, {}, {G: "C"})
    assert shared.groups[G].remote == {R1: "C", R2: "C"}
    shared.set_member(R1, {G: 1}, {})   # now here
    assert R1 in shared.groups[G].local and R1 not in shared.groups[G].remote


def test_prefer_local_takes_turns_among_online_local_members() -> None:
    assert picks(groups(), states(l1=ONLINE, l2=ONLINE)) == {("l1", None): 6, ("l2", None): 6}


def test_prefer_local_goes_remote_only_without_an_online_local_member() -> None:
    """An offline (persistent) local member stops receiving while others may."""
    assert picks(groups(), states(l1=OFFLINE, l2=OFFLINE)) == {("r1", "B"): 6, ("r2", "C"): 6}
    shared = groups()
    shared.set_member(R1, {}, {})
    shared.set_member(R2, {}, {})
    assert picks(shared, states(l1=OFFLINE)) == {("l1", None): 12}


def test_local_only_never_crosses_nodes() -> None:
    assert picks(groups("local_only"), states(l2=ONLINE)) == {("l2", None): 12}
    assert picks(groups("local_only"), states(l1=OFFLINE)) == {("l1", None): 12}
    assert picks(groups("local_only"), states()) == {None: 12}


def test_random_spreads_over_online_local_and_remote_members() -> None:
    assert picks(groups("random"), states(l1=ONLINE, l2=OFFLINE)) == {
        ("l1", None): 4, ("r1", "B"): 4, ("r2", "C"): 4}


def test_absent_and_excluded_members_are_never_chosen() -> None:
    shared = groups("local_only")
    assert picks(shared, states(l1=ONLINE, l2=ONLINE), exclude=L1) == {("l2", None): 12}
    shared = groups()
    assert picks(shared, states(), exclude_node="B") == {("r2", "C"): 12}


def test_local_online_is_for_a_named_member_that_is_gone() -> None:
    shared = groups()
    group = shared.groups[G]
    assert shared.local_online(group, states(l1=OFFLINE)) is None
    assert shared.local_online(group, states(l2=ONLINE)) == (L2, None, 2)


def test_unknown_policy_refused() -> None:
    with pytest.raises(ValueError):
        SharedGroups("A", "round_robin")
