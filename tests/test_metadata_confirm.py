"""
Confirmed replication (vmqtw.metadata.confirm): a confirmation fires only
once every connected member merged the key -- even with plumtree's own
messages lost -- and a peer that does not answer delays it by the timeout
at most.
"""
from __future__ import annotations

from vmqtw.interfaces import ChangeOrigin
from vmqtw.metadata.confirm import Confirmer
from vmqtw.testing.simulation import SimCluster

P = ("vmq", "subscriber")


def cluster():
    c = SimCluster(["A", "B", "C"], seed=1)
    confirmers = {}
    for name, node in c.nodes.items():
        confirmers[name] = Confirmer(name, node.store, node.transport,
                                     lambda c=c: c.members, timeout=2.0)
        confirmers[name].start()
    c.settle()
    return c, confirmers


def test_confirmed_once_every_peer_merged_it_even_without_plumtree():
    c, confirmers = cluster()
    seen = {name: [] for name in c.nodes}
    for name, node in c.nodes.items():
        node.store.subscribe(P, lambda prefix, key, old, new, origin, name=name:
                             seen[name].append((key, origin)))
    c.network.drop(lambda src, dst, channel, m: channel == "plumtree")
    c["A"].store.put(P, ("", "c1"), "v")
    done = confirmers["A"].confirm(P, ("", "c1"))
    assert not done.called
    c.clock.advance(0)
    c.clock.advance(0)
    assert done.called and done.result == 2
    assert c["B"].store.get(P, ("", "c1")) == "v" and c["C"].store.get(P, ("", "c1")) == "v"
    assert seen["B"] == seen["C"] == [(("", "c1"), ChangeOrigin.REMOTE)]


def test_a_silent_peer_delays_the_confirmation_by_the_timeout_at_most():
    c, confirmers = cluster()
    c.network.drop(lambda src, dst, channel, m: dst == "C")
    c["A"].store.put(P, ("", "c1"), "v")
    done = confirmers["A"].confirm(P, ("", "c1"))
    c.clock.advance(0)
    c.clock.advance(0)
    assert not done.called
    c.clock.advance(2.0)
    assert done.called and done.result == 1
    assert confirmers["A"].missed == 1


def test_unreachable_peers_are_not_waited_for():
    c, confirmers = cluster()
    c.network.partition([["A"], ["B", "C"]])
    c["A"].store.put(P, ("", "c1"), "v")
    done = confirmers["A"].confirm(P, ("", "c1"))
    assert done.called and done.result == 0
