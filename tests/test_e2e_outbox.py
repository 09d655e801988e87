"""
The sending node's outbox on real nodes (``twistd -n vmqtw`` on 127.0.0.95
and .96, a real cut of their link with nft, a real kill -9).

A publisher is acknowledged once the other node acknowledged the copy, or
once the copy is in this node's outbox.  While the other node cannot
answer, only the outbox can make the PUBACK true: so every message
acknowledged during the cut must be in it, and must reach the subscriber
on the other node even though the publisher's node was killed and
restarted before the heal.
"""
from __future__ import annotations

from typing import Any

from tests.test_e2e_cluster import admin, cluster_address, name, show_or_none, start_cluster
from tests.test_e2e_cluster_mqtt5 import routed
from tests.test_e2e_shared_store import status
from tests.waiting import wait_until

HOSTS = ("127.0.0.95", "127.0.0.96")
COUNT = 20


def test_messages_acknowledged_during_a_cut_survive_a_kill_of_their_node(
        nodes: Any, partitions: Any) -> None:
    a, b = start_cluster(nodes, HOSTS, allow_publish_during_netsplit="on")
    done = admin(b, "cluster", "join", "discovery-node=" + cluster_address(a))
    assert done.returncode == 0, done.stderr
    both = sorted((name(n), True) for n in (a, b))
    for node in (a, b):
        wait_until(lambda: show_or_none(node) == both, 20, what="2 running on " + name(node))
    sub = nodes.client(b, "outbox-sub", clean_session=False)
    assert sub.subscribe(("outbox/#", 1)) == [1]
    pub = nodes.client(a, "outbox-pub")
    routed(pub, sub, "outbox/probe")

    with partitions.cut([[a.host], [b.host]]):
        for n in range(COUNT):
            pub.publish("outbox/t", b"%02d" % n, 1)     # returns once PUBACKed
        assert status(a)["cluster_messages_outboxed"] == COUNT
        pub.disconnect()
        a.kill9()
        a.start()
        assert status(a)["cluster_messages_restored"] == COUNT

    def delivered() -> list:
        with sub.lock:
            return sorted(int(m.payload) for m in sub.messages if m.topic == "outbox/t")

    wait_until(lambda: delivered() == list(range(COUNT)), 60, interval=0.2,
               what="the %d acknowledged messages on B" % COUNT)
