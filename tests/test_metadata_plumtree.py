"""
Plumtree scenarios on the simulated cluster (design note T2-T4, T6-T8):
deterministic, on ``task.Clock`` with seeded RNGs and FIFO zero-delay
delivery.
"""
from __future__ import annotations

import random

from vmqtw.metadata import dvvset
from vmqtw.metadata.broadcast import tree_peers
from vmqtw.testing.simulation import SimCluster

P = ("vmq", "subscriber")
R = ("vmq", "retain")


def bcasts(c):
    return c.network.count("plumtree", "b")


def test_initial_trees_three_nodes():
    """[A,B,C]: eager A->B->C->A, each node's lazy peer is the third."""
    rng = random.Random(0)
    assert tree_peers("A", "ABC", rng) == ({"B"}, {"C"})
    assert tree_peers("B", "ABC", rng) == ({"C"}, {"A"})
    assert tree_peers("C", "ABC", rng) == ({"A"}, {"B"})
    assert tree_peers("A", "A", rng) == (set(), set())
    assert tree_peers("A", "AB", rng) == ({"B"}, set())


def test_initial_trees_reach_everyone():
    """From every root the common eager links reach every member."""
    for n in range(2, 25):
        names = ["n%02d" % i for i in range(n)]
        eager = {m: tree_peers(m, names, random.Random(1))[0] for m in names}
        for root in names:
            seen, todo = {root}, [root]
            while todo:
                for peer in eager[todo.pop()]:
                    if peer not in seen:
                        seen.add(peer)
                        todo.append(peer)
            assert seen == set(names), (n, root)


def test_t2_happy_path_three_nodes():
    """T2: first put costs 3 BCASTs + 1 PRUNE, the next exactly 2; one
    lazy tick later no node owes any announcement."""
    c = SimCluster("ABC", exchange_on_up_delay=None)
    c["A"].store.put(P, "k", 1)
    c.settle()
    assert [s.get(P, "k") for s in c.stores()] == [1, 1, 1]
    assert bcasts(c) == 3
    assert c.network.count("plumtree", "p") == 1
    # A found C's copy stale and pruned it: the tree for root A is A->B->C
    assert c["C"].broadcast.eagers("A") == {"B"}
    assert c["C"].broadcast.lazys("A") == {"A"}
    c.network.reset_counters()
    c["A"].store.put(P, "k", 2)
    c.settle()
    assert bcasts(c) == 2
    assert [s.get(P, "k") for s in c.stores()] == [2, 2, 2]
    c.advance(1.0)
    assert [n.broadcast.outstanding_count() for n in c.nodes.values()] \
        == [0, 0, 0]
    assert c.network.count("plumtree", "g") == 0
    c.close()


def test_t3_pruning_six_nodes():
    """T3: after the first broadcast prunes, a broadcast costs N-1."""
    names = ["A", "B", "C", "D", "E", "F"]
    c = SimCluster(names, exchange_on_up_delay=None)
    c["A"].store.put(P, "k", 1)
    c.settle()
    assert c.network.count("plumtree", "p") > 0
    assert all(s.get(P, "k") == 1 for s in c.stores())
    for i in range(2, 5):
        c.network.reset_counters()
        c["A"].store.put(P, "k", i)
        c.settle()
        assert bcasts(c) == 5
        assert c.network.count("plumtree", "p") == 0
        assert all(s.get(P, "k") == i for s in c.stores())
    c.close()


def test_t4_graft_repair():
    """T4: A->B BCAST lost; C grafts from A on tick 1 and B from C on
    tick 2, with no anti-entropy; B's eager set for root A holds C."""
    c = SimCluster("ABC", exchange_on_up_delay=None, exchange_tick=1000)
    c.network.drop(lambda s, d, ch, m: (s, d) == ("A", "B") and m[0] == "b")
    c["A"].store.put(P, "k", 1)
    c.settle()
    assert c["B"].store.get(P, "k") is None
    assert c["C"].store.get(P, "k") is None
    assert set(c["A"].broadcast.outstanding) == {"C"}
    c.clock.advance(1.0)
    assert c["C"].store.get(P, "k") == 1
    assert c["B"].store.get(P, "k") is None
    assert set(c["C"].broadcast.outstanding) == {"B"}
    c.clock.advance(1.0)
    assert c["B"].store.get(P, "k") == 1
    assert "C" in c["B"].broadcast.eagers("A")
    assert c.network.count("call") == 0, "no exchange took part"
    assert c.agree()
    c.close()


def test_t6_partition_with_disjoint_keys():
    """T6: each side sees only its own key; A's announcements pile up;
    after the heal everyone has both and nothing is outstanding."""
    c = SimCluster("ABC")
    c.advance(2.0)
    c.network.partition([{"A"}, {"B", "C"}])
    c["A"].store.put(P, "k1", "a")
    c["B"].store.put(P, "k2", "b")
    c.advance(3.0)
    assert c["A"].store.get(P, "k2") is None
    assert c["B"].store.get(P, "k1") is None
    assert c["C"].store.get(P, "k2") == "b"
    assert c["A"].broadcast.outstanding_count() >= 1
    c.network.heal()
    c.advance(3.0)
    for s in c.stores():
        assert s.get(P, "k1") == "a" and s.get(P, "k2") == "b"
    assert [n.broadcast.outstanding_count() for n in c.nodes.values()] \
        == [0, 0, 0]
    assert c.agree()
    c.close()


def test_t7_retained_overwritten_on_both_sides():
    """T7: concurrent writes across the split become siblings with context
    [(A,2),(B,1)] everywhere; get picks v3 (newer) and writes it back,
    and at quiescence every node holds only v3 with equal hashes."""
    c = SimCluster("ABC", exchange_tick=1000)
    key = ("", "a/b")
    c["A"].store.put(R, key, "v1")
    c.advance(2.0)
    c.network.partition([{"A"}, {"B", "C"}])
    c.clock.advance(1.0)
    c["A"].store.put(R, key, "v2")      # ts 3
    c.clock.advance(2.0)
    c["B"].store.put(R, key, "v3")      # ts 5
    c.settle()
    c.network.heal()
    c.advance(3.0)
    for s in c.stores():
        raw = s.raw(R, key)
        assert sorted(v[0] for v in dvvset.values(raw)) == [("v2",), ("v3",)]
        assert dvvset.join(raw) == (("A", 2), ("B", 1))
    assert c.agree()
    assert c["C"].store.get(R, key) == "v3"
    c.advance(3.0)
    for s in c.stores():
        assert [v[0] for v in dvvset.values(s.raw(R, key))] == [("v3",)]
        assert s.get(R, key) == "v3"
    assert c.agree()
    c.close()


def test_t8_subscribe_and_unsubscribe_across_split():
    """T8: A adds t2 to S while B deletes S; all nodes converge to the LWW
    winner, and routing tables rebuilt from events are identical."""
    c = SimCluster("ABC", exchange_tick=1000)
    tables = {}
    for name, node in c.nodes.items():
        table = tables[name] = {}

        def on_event(prefix, key, old, new, origin, table=table):
            if new is None:
                table.pop(key, None)
            else:
                table[key] = new
        node.store.subscribe(P, on_event)
    s_key, other = ("", "S"), ("", "T")
    c["A"].store.put(P, s_key, (("A", False, (("t1", 0),)),))
    c["A"].store.put(P, other, (("A", False, (("x", 1),)),))
    c.advance(2.0)
    c.network.partition([{"A"}, {"B", "C"}])
    c.clock.advance(1.0)
    c["B"].store.delete(P, s_key)
    c.clock.advance(1.0)
    c["A"].store.put(P, s_key, (("A", False, (("t1", 0), ("t2", 1))),))
    c["C"].store.put(P, other, (("C", True, ()),))
    c.settle()
    c.network.heal()
    c.advance(3.0)
    for node in c.nodes.values():
        node.store.get(P, s_key)
    assert c.agree(), "concurrent read repairs resolve identically"
    c.advance(3.0)
    expected = {s_key: (("A", False, (("t1", 0), ("t2", 1))),),
                other: (("C", True, ()),)}
    for name, node in c.nodes.items():
        assert dict(node.store.items(P)) == expected, name
        assert tables[name] == expected, name
    assert c.agree()
    c.close()


def test_t8_delete_wins_when_later():
    """The later delete wins over an earlier concurrent add, everywhere."""
    c = SimCluster("ABC", exchange_tick=1000)
    s_key = ("", "S")
    c["A"].store.put(P, s_key, "t1")
    c.advance(2.0)
    c.network.partition([{"A"}, {"B", "C"}])
    c["A"].store.put(P, s_key, "t1+t2")
    c.clock.advance(1.0)
    c["B"].store.delete(P, s_key)
    c.settle()
    c.network.heal()
    c.advance(3.0)
    assert [s.get(P, s_key) for s in c.stores()] == [None] * 3
    assert [list(s.items(P)) for s in c.stores()] == [[]] * 3
    c.close()


def test_membership_change_resets_trees_and_forgets_peer():
    """A membership change rebuilds the trees; a removed peer is dropped
    from every set and from the outstanding table."""
    c = SimCluster("ABCD", exchange_on_up_delay=None)
    c.network.partition([{"A", "B", "C"}, {"D"}])
    for name in "ABC":
        c[name].store.put(P, name, 1)
    c.settle()
    b = c["C"].broadcast
    assert b.common_eagers == {"D"} and b.eager_sets
    b.outstanding.setdefault("D", {})[("md", "mid", 0, "C")] = None
    b.update_members({"A", "B", "C"})
    assert not b.eager_sets and not b.lazy_sets
    assert all("D" not in s for s in (b.common_eagers, b.common_lazys))
    assert "D" not in b.outstanding
    assert b.all_members == {"A", "B", "C"}
    c.close()


def test_outstanding_is_bounded_and_i_haves_only_to_connected():
    c = SimCluster("ABC", outstanding_limit=10, exchange_on_up_delay=None,
                   exchange_tick=1000)
    c.network.partition([{"A", "B"}, {"C"}])
    for i in range(50):
        c["A"].store.put(P, i, i)
    c.settle()
    a = c["A"].broadcast
    assert len(a.outstanding["C"]) == 10 and a.shed == 40
    c.network.reset_counters()
    c.advance(2.0)
    assert c.network.counters[("plumtree", "i")] == 0
    assert c.network.dropped[("plumtree", "i")] == 0
    c.close()


def test_failed_graft_ends_the_announcements():
    """An announcement the origin can no longer serve (graft error) is
    dropped instead of being re-announced for ever."""
    c = SimCluster("ABC", exchange_on_up_delay=None, exchange_tick=1000)
    a = c["A"].broadcast
    bogus = ("vmq", "subscriber", "gone", (("A", 7),))
    a.outstanding["C"] = {("md", bogus, 0, "A"): None}
    c.advance(1.0)
    assert "C" not in a.outstanding
    c.network.reset_counters()
    c.advance(3.0)
    assert c.network.count("plumtree") == 0


def test_t8_union_resolver_broadcasts_the_merged_value():
    """T8 variant: A adds t2 and B adds t3 across the split; a reader
    merging siblings with a union resolver writes the union, and that is
    what every node ends with."""
    c = SimCluster("ABC", exchange_tick=1000)
    s_key = ("", "S")
    c["A"].store.put(P, s_key, ("t1",))
    c.advance(2.0)
    c.network.partition([{"A"}, {"B", "C"}])
    c["A"].store.put(P, s_key, ("t1", "t2"))
    c.clock.advance(1.0)
    c["B"].store.put(P, s_key, ("t1", "t3"))
    c.settle()
    c.network.heal()
    c.advance(3.0)
    assert dvvset.size(c["C"].store.raw(P, s_key)) == 2

    def union(values):
        return tuple(sorted({t for v in values if v for t in v}))
    pushed = []

    def spy(src, dst, channel, message):
        if channel == "plumtree" and message[0] == "b":
            pushed.append(dvvset.values(message[3]))
        return False
    c.network.drop(spy)
    assert c["C"].store.get(P, s_key, resolver=union) == ("t1", "t2", "t3")
    c.settle()
    assert pushed and pushed[0] == (((("t1", "t2", "t3"),), 6.0, "C"),)
    assert [s.get(P, s_key) for s in c.stores()] == [("t1", "t2", "t3")] * 3
    assert all(dvvset.size(s.raw(P, s_key)) == 1 for s in c.stores())
    c.close()
