"""
The replicated store on its own: the ``IMetadataStore`` conformance kit
(also run on the lead's single-node store), persistence and identity (T13),
LWW siblings and event semantics.
"""
from __future__ import annotations

import shutil

import pytest
from twisted.internet.task import Clock

from vmqtw.metadata import dvvset
from vmqtw.metadata.mdobject import DELETED
from vmqtw.interfaces import ChangeOrigin
from vmqtw.metadata.local import LocalMetadataStore
from vmqtw.metadata.store import ReplicatedMetadataStore
from vmqtw.testing.metadata import (MetadataStoreConformance,
                                    ReplicatedMetadataStoreConformance)

P = ("vmq", "subscriber")
LOCAL, REMOTE = ChangeOrigin.LOCAL, ChangeOrigin.REMOTE


class _FromPeer:
    """``write_from_peer``: another replica writes over what it merged from
    ``store`` and ``store`` merges the result, as a broadcast delivers it."""

    def write_from_peer(self, store, prefix, key, value):
        peer = ReplicatedMetadataStore("peer", self.clock, actor_factory=lambda n: "peer/1")
        mine = store.raw(prefix, key)
        if mine is not None:
            peer.merge_object(prefix, key, mine)
        peer.put(prefix, key, value)
        assert store.merge_object(prefix, key, peer.raw(prefix, key))


class TestReplicatedStoreInMemory(_FromPeer, ReplicatedMetadataStoreConformance):
    def make_store(self, clock):
        return ReplicatedMetadataStore("a", clock)


class TestReplicatedStoreLevelDB(_FromPeer, ReplicatedMetadataStoreConformance):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path):
        self.dir = tmp_path
        self.stores = []
        yield
        for s in self.stores:
            s.close()

    def make_store(self, clock):
        store = ReplicatedMetadataStore(
            "a", clock, str(self.dir / ("db%d" % len(self.stores))))
        self.stores.append(store)
        return store


class TestLocalMetadataStore(MetadataStoreConformance):
    def make_store(self, clock):
        return LocalMetadataStore()


def counter(n=[0]):
    def make(node):
        n[0] += 1
        return "%s#%d" % (node, n[0])
    return make


def test_restart_keeps_data_actor_tree_and_counters(tmp_path):
    """T13: a restart restores data, hashtree and actor; dots continue."""
    clock = Clock()
    path = str(tmp_path / "md")
    store = ReplicatedMetadataStore("a", clock, path)
    try:
        store.put(P, "k1", 1)
        store.put(P, "k2", (b"x", 2))
        store.delete(P, "k2")
        actor, root = store.actor, store.tree.root()
        raw = store.raw(P, "k1")
    finally:
        store.close()
    again = ReplicatedMetadataStore("a", clock, path)
    try:
        assert again.actor == actor
        assert again.raw(P, "k1") == raw
        assert again.get(P, "k1") == 1 and again.get(P, "k2") is None
        assert again.tombstone_count() == 1
        assert again.tree.root() == root
        again.put(P, "k3", 3)
        n = dvvset.counter_of(again.raw(P, "k3"), actor)
        assert n > dvvset.counter_of(raw, actor)
    finally:
        again.close()


def test_wiped_directory_gets_new_actor_and_value_wins(tmp_path):
    """
    T13: a wiped node must not reuse its old dots.  With a new actor its
    new write is concurrent with (not equal to) the old one, so a peer
    that still holds the old value takes the newer one by LWW.
    """
    clock = Clock()
    path = str(tmp_path / "md")
    a = ReplicatedMetadataStore("a", clock, path)
    peer = ReplicatedMetadataStore("b", clock)
    try:
        a.put(P, "k", "old")
        peer.merge_object(P, "k", a.raw(P, "k"))
        old_actor = a.actor
    finally:
        a.close()
    shutil.rmtree(path)
    clock.advance(5)
    a = ReplicatedMetadataStore("a", clock, path)
    try:
        assert a.actor != old_actor
        a.put(P, "k", "new")
        # with a reused actor the new object would be `equal` to the old
        # one and the peer would keep "old" for ever
        assert not dvvset.equal(a.raw(P, "k"), peer.raw(P, "k"))
        assert peer.merge_object(P, "k", a.raw(P, "k"))
        assert peer.get(P, "k") == "new"
    finally:
        a.close()


def test_siblings_resolved_lww_and_written_back():
    """get resolves siblings by (ts, node) and writes the winner back."""
    clock = Clock()
    a = ReplicatedMetadataStore("a", clock, actor_factory=lambda n: n)
    b = ReplicatedMetadataStore("b", clock, actor_factory=lambda n: n)
    sent = []
    a.set_broadcast(lambda h, mid, payload: sent.append((mid, payload)))
    clock.advance(3)
    a.put(P, "k", "v2")
    clock.advance(2)
    b.put(P, "k", "v3")
    events = []
    a.subscribe(P, lambda *e: events.append(e))
    sent.clear()
    assert a.merge_object(P, "k", b.raw(P, "k"))
    assert sorted(v[0] for v in dvvset.values(a.raw(P, "k"))) == \
        [("v2",), ("v3",)]
    assert events == [(P, "k", "v2", "v3", REMOTE)]
    assert a.get(P, "k") == "v3"
    assert dvvset.values(a.raw(P, "k")) == ((("v3",), 5.0, "b"),)
    assert dvvset.join(a.raw(P, "k")) == (("a", 1), ("b", 1))
    assert dvvset.less(b.raw(P, "k"), a.raw(P, "k"))
    assert len(sent) == 1 and sent[0][1] == a.raw(P, "k")
    assert len(events) == 1, "write-back of the same winner is no change"


def test_tie_break_is_deterministic():
    """Same ts: the larger node name wins, on both replicas."""
    clock = Clock()
    a = ReplicatedMetadataStore("a", clock)
    b = ReplicatedMetadataStore("b", clock)
    a.put(P, "k", "from-a")
    b.put(P, "k", "from-b")
    a.merge_object(P, "k", b.raw(P, "k"))
    b.merge_object(P, "k", a.raw(P, "k"))
    assert a.raw(P, "k") == b.raw(P, "k")
    assert a.get(P, "k") == b.get(P, "k") == "from-b"


def test_tombstone_is_raw_object_and_skipped():
    """T9: the raw object holds the delete marker; reads skip it."""
    clock = Clock()
    a = ReplicatedMetadataStore("a", clock)
    a.put(P, "k", 1)
    a.delete(P, "k")
    assert dvvset.values(a.raw(P, "k"))[0][0] == DELETED
    assert a.tombstone_count() == 1
    assert list(a.items(P)) == []
    a.put(P, "k", None)
    assert list(a.items(P)) == [("k", None)], "None is a value, not a delete"
    assert a.tombstone_count() == 0


def test_merge_of_older_or_equal_is_no_change():
    clock = Clock()
    a = ReplicatedMetadataStore("a", clock)
    a.put(P, "k", 1)
    first = a.raw(P, "k")
    a.put(P, "k", 2)
    events = []
    a.subscribe(P, lambda *e: events.append(e))
    assert not a.merge_object(P, "k", first)
    assert not a.merge_object(P, "k", a.raw(P, "k"))
    assert events == [] and a.get(P, "k") == 2


def test_failing_subscriber_does_not_break_others():
    clock = Clock()
    a = ReplicatedMetadataStore("a", clock)
    seen = []

    def bad(*e):
        raise RuntimeError("boom")
    a.subscribe(P, bad)
    a.subscribe(P, lambda *e: seen.append(e))
    a.put(P, "k", 1)
    assert seen == [(P, "k", None, 1, LOCAL)] and a.get(P, "k") == 1


def test_handler_contract_is_stale_and_graft():
    """is_stale: local context descends the id's; graft: the object only
    if its context equals the id's, else stale / error."""
    clock = Clock()
    a = ReplicatedMetadataStore("a", clock, actor_factory=lambda n: n)
    sent = []
    a.set_broadcast(lambda h, mid, payload: sent.append((h, mid, payload)))
    a.put(P, "k", 1)
    h, mid1, payload1 = sent[-1]
    assert h == "md" and mid1 == ("vmq", "subscriber", "k", (("a", 1),))
    assert a.broadcast_data((P, "k", payload1)) == (mid1, payload1)
    assert a.is_stale(mid1)
    assert a.graft(mid1) == ("ok", payload1)
    a.put(P, "k", 2)
    mid2 = sent[-1][1]
    assert a.is_stale(mid1) and a.graft(mid1) == "stale"
    assert not a.is_stale(("vmq", "subscriber", "k", (("a", 9),)))
    assert a.graft(("vmq", "subscriber", "k", (("a", 9),))) == "error"
    assert not a.is_stale(("vmq", "subscriber", "new", ()))
    assert a.graft(mid2)[0] == "ok"
