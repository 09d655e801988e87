"""T16 (hashtree unit tests) and T5 (anti-entropy repair)."""
from __future__ import annotations

import random

from vmqtw.interfaces import ChangeOrigin
from vmqtw.metadata.codec import encode_pkey
from vmqtw.metadata.hashtree import HashTree
from vmqtw.testing.simulation import SimCluster

P = ("vmq", "subscriber")
R = ("vmq", "retain")


def k(i):
    return encode_pkey(P, ("", "c%d" % i))


def h(i):
    return bytes([i % 256]) * 20


def diff_keys(a: HashTree, b: HashTree, prefix):
    """What an exchange would find: descend only differing hashes."""
    out = set()
    if dict(a.prefixes()).get(prefix) == dict(b.prefixes()).get(prefix):
        return out
    for bucket in a.diff_buckets(prefix, b.buckets(prefix)):
        la = a.segment_hashes(prefix, bucket)
        lb = b.segment_hashes(prefix, bucket)
        segs = [bucket * a.width + j for j in range(a.width) if la[j] != lb[j]]
        ka = dict(a.key_hashes(prefix, segs))
        kb = dict(b.key_hashes(prefix, segs))
        out |= {x for x in set(ka) | set(kb) if ka.get(x) != kb.get(x)}
    return out


def test_one_differing_key_reported_exactly():
    a, b = HashTree(), HashTree()
    for i in range(300):
        a.insert(P, k(i), h(i))
        b.insert(P, k(i), h(i))
    assert a.root() == b.root()
    b.insert(P, k(17), h(99))
    assert a.root() != b.root()
    assert diff_keys(a, b, P) == {k(17)}


def test_one_sided_prefix_is_a_missing_prefix():
    a, b = HashTree(), HashTree()
    a.insert(P, k(1), h(1))
    b.insert(P, k(1), h(1))
    a.insert(R, encode_pkey(R, "t"), h(2))
    tops_a, tops_b = dict(a.prefixes()), dict(b.prefixes())
    assert set(tops_a) - set(tops_b) == {R}
    assert b.buckets(R) == ()
    assert diff_keys(a, b, R) == {encode_pkey(R, "t")}


def test_insert_after_update_is_kept():
    a = HashTree()
    a.insert(P, k(1), h(1))
    a.update()
    first = a.root()
    a.insert(P, k(2), h(2))
    a.update()
    fresh = HashTree()
    fresh.insert(P, k(2), h(2))
    fresh.insert(P, k(1), h(1))
    assert a.root() == fresh.root() != first


def test_root_independent_of_insertion_order():
    pairs = [(k(i), h(i)) for i in range(200)]
    a, b = HashTree(), HashTree()
    for key, value in pairs:
        a.insert(P, key, value)
    random.Random(3).shuffle(pairs)
    for key, value in pairs:
        b.insert(P, key, value)
    assert a.root() == b.root()


def test_delete_restores_previous_root_and_empty_prefix_vanishes():
    a = HashTree()
    empty = a.root()
    a.insert(P, k(1), h(1))
    before = a.root()
    a.insert(P, k(2), h(2))
    a.delete(P, k(2))
    assert a.root() == before
    a.delete(P, k(1))
    assert a.prefixes() == () and a.root() == empty


def test_t5_aae_repairs_what_plumtree_lost():
    """T5: everything to B dropped; one exchange makes B byte-equal to A,
    reports 1 key repaired, and the roots match."""
    c = SimCluster("ABC", exchange_on_up_delay=None, exchange_tick=1000)
    undo = c.network.drop(lambda s, d, ch, m: d == "B" and ch == "plumtree"
                          and m[0] in ("b", "i", "g"))
    c["A"].store.put(P, "k", "v")
    c.advance(2.0)
    assert c["B"].store.raw(P, "k") is None
    assert c["C"].store.get(P, "k") == "v"
    undo()
    d = c["A"].broadcast.exchange_once("B")
    c.settle()
    results = []
    d.addCallback(results.append)
    assert results == [1]
    assert c["B"].store.raw(P, "k") == c["A"].store.raw(P, "k")
    assert c["A"].store.tree.root() == c["B"].store.tree.root()


def test_aae_repairs_both_directions_and_fires_events():
    """Keys only on each side and a conflicting key: both sides end equal;
    repairs fire change events."""
    c = SimCluster("AB", exchange_on_up_delay=None, exchange_tick=1000)
    c.network.partition([{"A"}, {"B"}])
    for i in range(40):
        c["A"].store.put(P, ("a", i), i)
    c["B"].store.put(P, ("b", 1), "b")
    c["B"].store.put(R, "only-b", 1)
    c["A"].store.put(P, "both", "a")
    c.clock.advance(1)
    c["B"].store.put(P, "both", "b")
    events = []
    c["B"].store.subscribe(P, lambda *e: events.append(e))
    c.network.heal()
    results = []
    c["A"].aae.exchange("B").addCallback(results.append)
    c.settle()
    assert results == [43]
    assert c.agree()
    assert c["A"].store.get(P, "both") == c["B"].store.get(P, "both") == "b"
    assert c["A"].store.get(R, "only-b") == 1
    assert len([e for e in events if e[2] is None]) == 40
    assert {e[4] for e in events} == {ChangeOrigin.REMOTE}, "a repair is another node's write"


def test_exchange_starts_soon_after_peer_up():
    """T16-ish healing: a reconnect triggers an exchange within 1 s, long
    before the 10 s exchange tick."""
    c = SimCluster("AB", exchange_tick=10.0)
    c.advance(2.0)
    c.network.partition([{"A"}, {"B"}])
    undo = c.network.drop(lambda s, d, ch, m: ch == "plumtree")
    c["A"].store.put(P, "k", 1)
    c.advance(1.0)
    c.network.heal()
    c.advance(1.0)
    assert c["B"].store.get(P, "k") == 1
    assert c.network.count("call", "md_aae_summary") >= 1
    undo()
