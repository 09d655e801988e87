"""
T9 (tombstones) and their garbage collection: a tombstone is dropped once
every member has seen it, memory returns to ~0 after client-id churn, and
nothing deleted comes back.
"""
from __future__ import annotations

import random

from vmqtw.metadata import dvvset
from vmqtw.metadata.mdobject import DELETED
from vmqtw.testing.simulation import SimCluster

P = ("vmq", "subscriber")


def tombstones(c):
    return [s.tombstone_count() for s in c.stores()]


def test_t9_delete_propagates_as_tombstone():
    """get gives the default, fold skips it, the raw object holds the
    marker and the key stays in the hashtree (no GC configured)."""
    c = SimCluster("ABC", exchange_tick=1000)
    c["A"].store.put(P, "k", 1)
    c.settle()
    c["B"].store.delete(P, "k")
    c.advance(2.0)
    for s in c.stores():
        assert s.get(P, "k", "gone") == "gone"
        assert s.fold(P, lambda kv, acc: acc + [kv], []) == []
        assert dvvset.values(s.raw(P, "k"))[0][0] == DELETED
        assert s.tree.key_count(P) == 1
    assert tombstones(c) == [1, 1, 1]
    c["C"].store.put(P, "k", 2)
    c.settle()
    assert [s.get(P, "k") for s in c.stores()] == [2, 2, 2]
    assert tombstones(c) == [0, 0, 0]


def test_t9_delete_against_concurrent_update_is_lww():
    c = SimCluster("ABC", exchange_tick=1000)
    c["A"].store.put(P, "k", 1)
    c.advance(2.0)
    c.network.partition([{"A"}, {"B", "C"}])
    c["A"].store.delete(P, "k")
    c.clock.advance(1)
    c["B"].store.put(P, "k", "later")
    c.settle()
    c.network.heal()
    c.advance(3.0)
    assert sorted(v[0] for v in dvvset.values(c["C"].store.raw(P, "k"))) \
        == [DELETED, ("later",)]
    assert [s.get(P, "k") for s in c.stores()] == ["later"] * 3


def test_churn_of_10k_keys_leaves_no_tombstones():
    """10k client ids connect and go (put + delete) on random nodes; after
    a few GC rounds no node keeps a tombstone or a drop record."""
    c = SimCluster("ABC", gc_interval=5.0, gc_grace=15.0,
                   exchange_tick=10.0)
    rng = random.Random(7)
    names = ["A", "B", "C"]
    for i in range(10_000):
        key = ("", "client-%d" % i)
        node = c[rng.choice(names)].store
        node.put(P, key, ((node.node, True, ()),))
        node.delete(P, key)
        if i % 500 == 0:
            c.settle()
    c.settle()
    assert sum(tombstones(c)) == 30_000
    c.advance(6.0)
    assert tombstones(c) == [0, 0, 0]
    assert [s.key_count() for s in c.stores()] == [0, 0, 0]
    c.advance(20.0, step=5.0)
    assert [s.collected_count() for s in c.stores()] == [0, 0, 0]
    assert c.agree()
    c.close()


def test_gc_waits_for_unreachable_member():
    """A member that cannot confirm blocks collection; after the heal the
    tombstone is collected everywhere."""
    c = SimCluster("ABC", gc_interval=5.0, exchange_tick=10.0)
    c["A"].store.put(P, "k", 1)
    c.settle()
    c.network.partition([{"A", "B"}, {"C"}])
    c["A"].store.delete(P, "k")
    c.advance(12.0, step=1.0)
    assert tombstones(c) == [1, 1, 0]
    assert c["C"].store.get(P, "k") == 1
    c.network.heal()
    c.advance(12.0, step=1.0)
    assert tombstones(c) == [0, 0, 0]
    assert [s.get(P, "k") for s in c.stores()] == [None] * 3
    c.close()


def test_stale_copy_after_gc_does_not_resurrect():
    """A delayed broadcast of the old value arriving after collection is
    refused, and anti-entropy does not bring the tombstone back."""
    c = SimCluster("ABC", gc_interval=5.0, gc_grace=60.0, exchange_tick=2.0)
    c["A"].store.put(P, "k", "old")
    c.settle()
    old = c["A"].store.raw(P, "k")
    c["A"].store.delete(P, "k")
    c.advance(6.0)
    assert tombstones(c) == [0, 0, 0]
    assert not c["B"].store.merge_object(P, "k", old)
    c.advance(10.0)
    assert [s.key_count() for s in c.stores()] == [0, 0, 0]
    c.close()


def test_rewrite_after_gc_wins_even_where_the_drop_was_lost():
    """
    The drop to C is lost, so C keeps the tombstone.  A re-put of the key
    must still win everywhere: the store never reuses a dot, so the new
    write is not mistaken for an older one.
    """
    c = SimCluster("ABC", gc_interval=5.0, gc_grace=5.0, exchange_tick=1000,
                   exchange_on_up_delay=None)
    c["A"].store.put(P, "k", "v1")
    c.settle()
    c["A"].store.delete(P, "k")
    c.settle()
    undo = c.network.drop(lambda s, d, ch, m: ch == "md_gc_drop" and d == "C")
    c.advance(5.0, step=5.0)
    undo()
    assert tombstones(c) == [0, 0, 1]
    c.advance(10.0, step=5.0)     # grace over: A forgot the drop
    c["A"].store.put(P, "k", "v2")
    c.advance(2.0)
    assert [s.get(P, "k") for s in c.stores()] == ["v2"] * 3
    c.close()
