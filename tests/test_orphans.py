"""
What waited for a node that left the cluster for good: publishes a node
acknowledged and forwarded to the leaving node's subscribers, and messages
it handed over to a session that had moved there.  Once the node's
persistent sessions are re-homed, they get those messages (in process, on
the in-memory cluster).
"""
from __future__ import annotations

from typing import Any, List

from vmqtw.broker.registry import HAND_OVER_WAIT
from vmqtw.broker.subscriptions import home_node
from vmqtw.cluster.dataplane import CHANNEL
from vmqtw.store.memory import MemoryMessageStore
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Cluster


def payloads(client: Any) -> List[bytes]:
    return [p.payload for p in client.publishes()]


def leave(cluster: Cluster, gone: str) -> None:
    """What a cluster leave of a dead node does, as the survivors see it."""
    survivors = [n for n in cluster.names if n != gone]
    for name in survivors:
        # (The in-memory cluster has a static member list: say it first.)
        cluster[name].registry.dataplane.keep_peers(cluster.names)
        cluster[name].registry.dataplane.keep_peers(survivors)
    for name in survivors:
        cluster[name].registry.subscription_table.rehome(gone, survivors, [name])


def test_publishes_forwarded_to_a_node_that_died_reach_its_sessions_new_home():
    cluster = Cluster(stores={n: MemoryMessageStore() for n in "ABC"})
    parked = cluster["C"].subscriber("s", ("q/#", 1), clean_session=False)
    parked.drop()
    cluster.settle()
    # C dies: nothing reaches it any more, nothing comes back.
    cluster.network.drop(lambda src, dst, channel, m: "C" in (src, dst))
    publisher = cluster["A"].connect("pub")
    for n in range(5):
        publisher.send(B.publish("q/x", b"%d" % n, qos=1, packet_id=n + 1))
    cluster.settle()
    assert len([p for p in publisher.received()]) == 5, "acknowledged by A"
    assert cluster["A"].registry.dataplane.backlog()["C"][0] == 5
    leave(cluster, "C")
    # Published after the re-homing: routed to the new home directly, but
    # newer than what waited for C, so it comes after.
    cluster["B"].connect("pub2").send(B.publish("q/x", b"new", qos=1, packet_id=1))
    home = home_node("s", ["A", "B"])
    back = cluster[home].connect("s", clean_session=False)
    assert back.connack.session_present
    cluster.settle(HAND_OVER_WAIT + 1)
    got = back.publishes()
    assert [p.payload for p in got] == [b"%d" % n for n in range(5)] + [b"new"]
    assert all(p.dup for p in got[:5]), "possibly delivered by C before it died"


def test_a_hand_over_to_a_node_that_died_reaches_the_sessions_new_home():
    cluster = Cluster(stores={n: MemoryMessageStore() for n in "ABC"})
    cluster["A"].subscriber("s", ("q/#", 1), clean_session=False).drop()
    publisher = cluster["B"].connect("pub")
    for n in range(3):
        publisher.send(B.publish("q/x", b"%d" % n, qos=1, packet_id=n + 1))
    cluster.settle()
    # The session moves to C, whose acknowledgements of A's hand-over never come.
    cluster.network.drop(lambda src, dst, channel, m: src == "C" and dst == "A"
                         and channel == CHANNEL)
    on_c = cluster["C"].connect("s", clean_session=False)
    cluster.settle()
    on_c.drop()
    cluster.network.drop(lambda src, dst, channel, m: "C" in (src, dst))
    leave(cluster, "C")
    home = home_node("s", ["A", "B"])
    back = cluster[home].connect("s", clean_session=False)
    cluster.settle(HAND_OVER_WAIT + 1)
    assert sorted(payloads(back)) == [b"0", b"1", b"2"]
