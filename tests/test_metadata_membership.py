"""T14 (ORSWOT) and T10-T12 (join with data, leave, crash) on the
simulated cluster with the gossiped, persisted membership."""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from vmqtw.metadata import orswot
from vmqtw.metadata.broadcast import tree_peers
from vmqtw.metadata.membership import NotPresent, SelfJoin
from vmqtw.testing.simulation import SimCluster

P = ("vmq", "subscriber")


# -- T14: ORSWOT ---------------------------------------------------------------

def base():
    s = orswot.new()
    for n in "ABC":
        s = orswot.add(s, n, "a1")
    return s


def test_t14_concurrent_join_and_leave_both_take_effect():
    s = base()
    left = orswot.remove(s, "C")
    joined = orswot.add(s, "D", "b1")
    assert orswot.value(orswot.merge(left, joined)) == {"A", "B", "D"}
    assert orswot.merge(left, joined) == orswot.merge(joined, left)


def test_t14_add_wins_over_concurrent_remove():
    s = base()
    removed = orswot.remove(s, "C")
    readded = orswot.add(s, "C", "b1")
    assert "C" in orswot.value(orswot.merge(removed, readded))


def test_t14_stale_state_does_not_resurrect():
    s = base()
    removed = orswot.remove(s, "C")
    assert orswot.value(orswot.merge(removed, s)) == {"A", "B"}
    assert orswot.merge(removed, s) == removed


def test_t14_remove_unknown_is_not_present():
    with pytest.raises(NotPresent):
        orswot.remove(base(), "Z")


ops = st.lists(st.tuples(st.sampled_from("xyz"), st.sampled_from("ab"),
                         st.sampled_from("DEF")), max_size=8)


def replay(history):
    """Apply (replica, op-kind, element) steps to two replicas."""
    reps = {"x": orswot.new(), "y": orswot.new(), "z": orswot.new()}
    for rep, kind, elem in history:
        if kind == "a":
            reps[rep] = orswot.add(reps[rep], elem, rep)
        elif orswot.contains(reps[rep], elem):
            reps[rep] = orswot.remove(reps[rep], elem)
    return reps


@settings(max_examples=100, deadline=None)
@given(ops)
def test_orswot_merge_is_a_semilattice(history):
    r = replay(history)
    x, y, z = r["x"], r["y"], r["z"]
    m = orswot.merge
    assert m(x, y) == m(y, x)
    assert m(m(x, y), z) == m(x, m(y, z))
    assert m(x, x) == x


# -- T10-T12: peer service ------------------------------------------------------

def cluster(names="ABC", **kw):
    c = SimCluster(names, membership=True, **kw)
    for n in names[1:]:
        c.join(n, names[0])
        c.settle()
    return c


def test_join_refuses_self():
    c = SimCluster("A", membership=True)
    failures = []
    c["A"].peers.join("A", ("mem", 0)).addErrback(failures.append)
    assert failures[0].check(SelfJoin)


def test_t10_join_with_existing_data():
    """D (holding k_d) joins a cluster holding 500 keys: the ORSWOT is
    identical everywhere within 2 gossip rounds, the trees are rebuilt
    for N=4, all nodes end with 501 keys and D emits one event per key
    it received."""
    c = SimCluster("ABCD", membership=True, gossip_interval=15.0)
    for n in "BC":
        c.join(n, "A")
        c.settle()
    for i in range(500):
        c["ABC"[i % 3]].store.put(P, ("", "k%d" % i), i)
    c.settle()
    c["D"].store.put(P, ("", "kd"), "d")
    events = []
    c["D"].store.subscribe(P, lambda *e: events.append(e))
    joined = []
    c.join("D", "B").addCallback(joined.append)
    c.settle()
    assert joined and joined[0] == {"A", "B", "C", "D"}
    # well before the 10 s exchange tick: new members are exchanged with
    # as soon as they join
    c.advance(3.0, step=0.5)
    states = {n.peers.state for n in c.nodes.values()}
    assert len(states) == 1
    assert orswot.value(states.pop()) == {"A", "B", "C", "D"}
    for name, node in c.nodes.items():
        b = node.broadcast
        assert b.all_members == {"A", "B", "C", "D"}
        expected = tree_peers(name, "ABCD", random.Random(0))[0]
        assert b.common_eagers == expected
        assert node.store.key_count() == 501, name
    assert len(events) == 500
    assert c.agree()
    for name, node in c.nodes.items():
        assert [r for _, r in node.peers.cluster_status()] == [True] * 4
        assert node.peers.ready


def test_t10_membership_converges_by_gossip_when_the_push_is_lost():
    """Even if every push of the join is lost, gossip rounds (15 s, one
    random member each) spread the new membership to everyone within two
    rounds."""
    c = SimCluster("ABCD", membership=True, gossip_interval=15.0)
    for n in "BC":
        c.join(n, "A")
        c.settle()
    undo = c.network.drop(lambda s, d, ch, m: ch == "peer_gossip")
    c.join("D", "A")
    c.settle()
    undo()
    assert c["A"].peers.members() == {"A", "B", "C"}
    assert c["D"].peers.members() == {"A", "B", "C", "D"}
    c.advance(30.0, step=15.0)
    assert len({n.peers.state for n in c.nodes.values()}) == 1
    assert c["B"].peers.members() == {"A", "B", "C", "D"}


def test_t11_leave(tmp_path):
    """C leaves: A and B forget it in every tree set and outstanding
    table, new puts send nothing to C, cluster_status lists A and B,
    C's state file is deleted and C can rejoin with a new actor."""
    c = cluster("ABC", data_root=str(tmp_path))
    state_file = os.path.join(str(tmp_path), "C", "peer_service",
                              "cluster_state")
    assert os.path.exists(state_file)
    old_actor = c["C"].peers.actor
    old_md_actor = c["C"].store.actor
    c["B"].store.put(P, "before", 1)
    c.settle()
    assert c["C"].store.get(P, "before") == 1
    c["A"].peers.leave("C")
    c.advance(2.0)
    # a left node forgets its metadata (and DVV actor) so that joining
    # again cannot resurrect what the cluster deleted meanwhile
    assert c["C"].store.key_count() == 0
    assert c["C"].store.actor != old_md_actor
    for name in "AB":
        b = c[name].broadcast
        assert "C" not in b.all_members and "C" not in b.outstanding
        assert "C" not in b.common_eagers | b.common_lazys
        assert all("C" not in s for s in b.eager_sets.values())
        assert c[name].peers.cluster_status() == [("A", True), ("B", True)]
    assert c["C"].peers.members() == {"C"}
    assert not os.path.exists(state_file)
    assert c["C"].peers.actor != old_actor
    c.network.reset_counters()
    c["A"].store.put(P, "after", 1)
    c.advance(3.0)
    assert c["B"].store.get(P, "after") == 1
    assert c["C"].store.get(P, "after") is None
    assert not c.network.linked("A", "C")
    c.join("C", "A")
    c.advance(5.0)
    assert {frozenset(n.peers.members()) for n in c.nodes.values()} == \
        {frozenset("ABC")}
    assert c["C"].store.get(P, "after") == 1
    assert c["C"].store.get(P, "before") == 1
    c["C"].crash()
    c["C"].restart()
    assert c["C"].store.get(P, "before") == 1
    c.close()


def test_t12_crash_is_not_leave(tmp_path):
    """C crashes: puts still reach B, C is shown not running and the
    cluster not ready, C's outstanding entries stay bounded, and after a
    restart from its LevelDB C catches up."""
    c = cluster("ABC", data_root=str(tmp_path), outstanding_limit=20)
    c["A"].store.put(P, "before", 0)
    c.settle()
    c["C"].crash()
    for i in range(50):
        c["A"].store.put(P, i, i)
    c.advance(3.0)
    assert all(c["B"].store.get(P, i) == i for i in range(50))
    assert ("C", False) in c["A"].peers.cluster_status()
    assert not c["A"].peers.ready
    assert all(len(n.broadcast.outstanding.get("C", ())) <= 20
               for n in c.nodes.values() if n.running)
    c["C"].restart()
    assert c["C"].store.get(P, "before") == 0
    assert c["C"].peers.members() == {"A", "B", "C"}
    c.advance(3.0)
    assert all(c["C"].store.get(P, i) == i for i in range(50))
    assert c["A"].peers.ready
    assert c.agree()
    c.close()


def test_removed_node_that_missed_the_news_learns_it_from_gossip():
    """C is removed while its link is down; when it gossips again it is
    told, resets, and stays out (it does not pull A back into its view)."""
    c = cluster("ABC", gossip_interval=5.0)
    c.network.partition([{"A", "B"}, {"C"}])
    c["A"].peers.leave("C")
    c.settle()
    assert c["C"].peers.members() == {"A", "B", "C"}
    c.network.heal()
    c.advance(20.0, step=1.0)
    assert c["C"].peers.members() == {"C"}
    assert c["A"].peers.members() == {"A", "B"}
    assert c["B"].peers.members() == {"A", "B"}


def test_stale_gossip_does_not_pull_a_reset_node_back():
    """A node that was removed and reset ignores gossip from members of
    its old cluster that still count it in."""
    c = cluster("ABC")
    stale = c["B"].peers._wire()
    c["A"].peers.leave("C")
    c.settle()
    assert c["C"].peers.members() == {"C"}
    c["C"].peers._on_gossip("B", stale)
    assert c["C"].peers.members() == {"C"}


def test_a_node_removed_while_down_knows_it_as_soon_as_a_link_is_up(tmp_path):
    """
    C is removed while it is down; restarted with its old state, it learns
    the removal from the first member its link reaches -- within a second,
    not at the next gossip round (15 s) -- and remembers it across a
    restart until it joins again.
    """
    c = cluster("ABC", data_root=str(tmp_path), gossip_interval=15.0)
    c["C"].crash()
    c["A"].peers.leave("C")
    c.advance(1.0, step=0.1)
    c["C"].restart()
    assert c["C"].peers.members() == {"A", "B", "C"} and not c["C"].peers.removed
    c.advance(0.5, step=0.1)
    assert c["C"].peers.members() == {"C"}
    assert c["C"].peers.removed
    assert c["A"].peers.members() == c["B"].peers.members() == {"A", "B"}
    c["C"].crash()
    c["C"].restart()
    assert c["C"].peers.removed and c["C"].peers.members() == {"C"}
    c.join("C", "A")
    c.advance(2.0, step=0.1)
    assert not c["C"].peers.removed
    assert not os.path.exists(os.path.join(str(tmp_path), "C", "peer_service", "removed"))
    assert {frozenset(n.peers.members()) for n in c.nodes.values()} == {frozenset("ABC")}
    c.close()


def test_a_node_removed_while_running_remembers_it():
    c = cluster("ABC")
    assert not c["C"].peers.removed
    c["A"].peers.leave("C")
    c.settle()
    assert c["C"].peers.removed and c["C"].peers.members() == {"C"}
