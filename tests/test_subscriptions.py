"""
The subscriber-record format and :class:`Subscriptions`: the routing trie
kept from the metadata store, with one entry per remote node and filter.
"""
from __future__ import annotations

from twisted.internet.task import Clock

from vmqtw.broker.subscriptions import (REMOTE_QOS, Subscriptions, all_filters,
                                        local_filters, record_clean_session, record_owner,
                                        remote_filters)
from vmqtw.metadata.local import LocalMetadataStore
from vmqtw.metadata.store import ReplicatedMetadataStore
from vmqtw.types import SUBSCRIBER_PREFIX, SubscriberId

RECORD = (("A", False, (("a/#", 1), ("x", 0))),
          ("B", True, (("a/#", 2), ("b", 1))))


def sid(client_id: str) -> SubscriberId:
    return SubscriberId("", client_id)


# -- the record helpers -----------------------------------------------------------

def test_local_filters_are_the_named_nodes_only():
    assert local_filters(RECORD, "A") == {"a/#": 1, "x": 0}
    assert local_filters(RECORD, "B") == {"a/#": 2, "b": 1}
    assert local_filters(RECORD, "C") == {}
    assert local_filters(None, "A") == {}


def test_remote_filters_are_every_other_nodes_pairs():
    assert remote_filters(RECORD, "A") == {("B", "a/#"), ("B", "b")}
    assert remote_filters(RECORD, "C") == {("A", "a/#"), ("A", "x"), ("B", "a/#"), ("B", "b")}
    assert remote_filters(None, "A") == set()


def test_all_filters_keep_the_highest_qos_of_a_filter():
    assert all_filters(RECORD) == {"a/#": 2, "x": 0, "b": 1}
    assert all_filters(None) == {}


def test_owner_is_the_last_entry_and_clean_flag_per_node():
    assert record_owner(RECORD) == "B"
    assert record_owner(None) is None and record_owner(()) is None
    assert record_clean_session(RECORD, "A") is False
    assert record_clean_session(RECORD, "B") is True
    assert record_clean_session(RECORD, "C") is None


# -- the trie and remote refcounts --------------------------------------------------

def _started(node: str = "A"):
    metadata = LocalMetadataStore()
    subscriptions = Subscriptions(node, metadata)
    subscriptions.start()
    return metadata, subscriptions


def test_two_sessions_of_one_node_share_one_trie_entry_removed_with_the_last():
    metadata, subscriptions = _started("A")
    metadata.put(SUBSCRIBER_PREFIX, ("", "b1"), (("B", False, (("t/#", 1),)),))
    metadata.put(SUBSCRIBER_PREFIX, ("", "b2"), (("B", True, (("t/#", 0), ("u", 1))),))
    assert subscriptions.trie.match("t/1") == {"B": REMOTE_QOS}
    assert len(subscriptions.trie) == 2  # ("t/#", B) and ("u", B)
    assert subscriptions.remote_refs() == {("B", "t/#"): 2, ("B", "u"): 1}
    metadata.delete(SUBSCRIBER_PREFIX, ("", "b1"))
    assert subscriptions.trie.match("t/1") == {"B": REMOTE_QOS}, "b2 still subscribes"
    assert subscriptions.remote_refs() == {("B", "t/#"): 1, ("B", "u"): 1}
    metadata.put(SUBSCRIBER_PREFIX, ("", "b2"), (("B", True, (("u", 1),)),))
    assert subscriptions.trie.match("t/1") == {}
    assert subscriptions.remote_refs() == {("B", "u"): 1}
    metadata.delete(SUBSCRIBER_PREFIX, ("", "b2"))
    assert len(subscriptions.trie) == 0 and subscriptions.remote_refs() == {}


def test_local_subscribers_enter_the_trie_by_id_with_their_qos():
    metadata, subscriptions = _started("A")
    subscriptions.subscribe(sid("c"), False, [("t/+", 1), ("x", 2)])
    assert subscriptions.trie.match("t/1") == {sid("c"): 1}
    subscriptions.subscribe(sid("c"), False, [("t/+", 0)])
    assert subscriptions.local(sid("c")) == {"t/+": 0, "x": 2}, "[MQTT-3.8.4-3] replaced"
    assert subscriptions.granted_qos(sid("c"), "t/1", 2) == 0
    assert subscriptions.granted_qos(sid("c"), "x", 1) == 1
    subscriptions.unsubscribe(sid("c"), False, ["t/+", "never"])
    assert subscriptions.trie.match("t/1") == {}
    assert metadata.get(SUBSCRIBER_PREFIX, ("", "c")) == (("A", False, (("x", 2),)),)


def test_start_builds_the_trie_from_what_is_stored():
    metadata = LocalMetadataStore()
    metadata.put(SUBSCRIBER_PREFIX, ("", "c"), RECORD)
    subscriptions = Subscriptions("A", metadata)
    subscriptions.start()
    assert subscriptions.trie.match("a/1") == {sid("c"): 1, "B": REMOTE_QOS}
    subscriptions.stop()
    metadata.delete(SUBSCRIBER_PREFIX, ("", "c"))
    assert subscriptions.trie.match("a/1") != {}, "stopped: no longer follows the store"


def test_claim_keeps_a_persistent_sessions_filters_and_says_it_existed():
    metadata, subscriptions = _started("A")
    metadata.put(SUBSCRIBER_PREFIX, ("", "c"), (("B", False, (("t", 1),)),))
    assert subscriptions.claim(sid("c"), False) is True
    assert metadata.get(SUBSCRIBER_PREFIX, ("", "c")) == (("A", False, (("t", 1),)),)
    assert subscriptions.claim(sid("c"), True) is False
    assert metadata.get(SUBSCRIBER_PREFIX, ("", "c")) == (("A", True, ()),)
    subscriptions.remove(sid("c"))
    assert metadata.get(SUBSCRIBER_PREFIX, ("", "c")) is None
    subscriptions.remove(sid("c"))  # absent: harmless


# -- moves: told only for another node's writes --------------------------------------

def _replicas():
    clock = Clock()
    clock.advance(100)
    here = ReplicatedMetadataStore("A", clock)
    there = ReplicatedMetadataStore("B", clock)
    moves = []
    subscriptions = Subscriptions("A", here, on_moved=lambda s, node: moves.append((s, node)))
    subscriptions.start()
    return clock, here, there, subscriptions, moves


def _replicate(source, target, key):
    target.merge_object(SUBSCRIBER_PREFIX, key, source.raw(SUBSCRIBER_PREFIX, key))


def test_another_node_taking_a_persistent_session_over_is_told_with_its_name():
    clock, here, there, subscriptions, moves = _replicas()
    subscriptions.claim(sid("c"), False)
    assert moves == [], "our own write is no move"
    _replicate(here, there, ("", "c"))
    clock.advance(1)
    there.put(SUBSCRIBER_PREFIX, ("", "c"), (("B", False, ()),))
    _replicate(there, here, ("", "c"))
    assert moves == [(sid("c"), "B")]


def test_a_clean_session_elsewhere_or_a_remote_delete_ends_the_session_here():
    clock, here, there, subscriptions, moves = _replicas()
    for client_id in ("c", "d"):
        subscriptions.claim(sid(client_id), False)
        _replicate(here, there, ("", client_id))
    clock.advance(1)
    there.put(SUBSCRIBER_PREFIX, ("", "c"), (("B", True, ()),))
    there.delete(SUBSCRIBER_PREFIX, ("", "d"))
    _replicate(there, here, ("", "c"))
    _replicate(there, here, ("", "d"))
    assert moves == [(sid("c"), None), (sid("d"), None)]


def test_removing_our_own_record_is_no_move():
    clock, here, there, subscriptions, moves = _replicas()
    subscriptions.claim(sid("c"), True)
    clock.advance(1)
    subscriptions.remove(sid("c"))
    assert moves == []


# -- a node left: its sessions move ---------------------------------------------

def test_home_node_is_a_stable_hash_over_the_sorted_names():
    """The same on every node and every run (not Python's salted ``hash``)."""
    from vmqtw.broker.subscriptions import home_node

    homes = [home_node(c, ["C", "A", "B"]) for c in "abcdef"]
    assert homes == ["C", "C", "A", "C", "C", "A"]
    assert [home_node(c, ["B", "C", "A"]) for c in "abcdef"] == homes


def test_rehomed_record():
    from vmqtw.broker.subscriptions import rehomed_record

    persistent = (("X", False, (("a", 1),)), ("Y", False, (("b", 0),)))
    assert rehomed_record(persistent, "Y", "Z") == (("Z", False, (("a", 1), ("b", 0))),)
    # registered on X: only the stale entry of the node that left goes
    assert rehomed_record(persistent, "X", "Z") == (("Y", False, (("b", 0),)),)
    assert rehomed_record((("X", True, (("a", 1),)),), "X", "Z") is None   # clean: ended
    untouched = (("Y", False, ()),)
    assert rehomed_record(untouched, "X", "Z") is untouched
