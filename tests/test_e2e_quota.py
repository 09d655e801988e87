"""
PUBACK 0x97 Quota exceeded on real nodes (``twistd -n vmqtw`` on 127.0.0.93
and .94, joined with ``vmqtw-admin``; a real cut of their link): while the
other node cannot acknowledge, node A's backlog towards it fills up to
``outgoing_clustering_buffer_size``; past it an MQTT 5.0 publisher's QoS 1
message is refused whole and the publisher is told so (3.4.2.1), rather
than acknowledged and dropped.  Once the link heals, every message that was
acknowledged reaches the subscriber on B, and none that was refused.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List

from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.test_e2e_cluster import admin, cluster_address, name, show_or_none, start_cluster
from tests.test_e2e_cluster_mqtt5 import routed
from tests.test_e2e_mqtt5 import Paho5
from tests.waiting import wait_until

HOSTS = ("127.0.0.93", "127.0.0.94")
QUOTA_EXCEEDED = 0x97
PAYLOAD = b"q" * 1024


def test_a_full_backlog_is_told_to_a_v5_publisher_and_nothing_acknowledged_is_lost(
        nodes: Any, partitions: Any) -> None:
    a, b = start_cluster(nodes, HOSTS, allow_publish_during_netsplit="on",
                         outgoing_clustering_buffer_size="16KB")
    done = admin(b, "cluster", "join", "discovery-node=" + cluster_address(a))
    assert done.returncode == 0, done.stderr
    both = sorted((name(n), True) for n in (a, b))
    for node in (a, b):
        wait_until(lambda: show_or_none(node) == both, 20, what="2 running on " + name(node))
    sub = Paho5(nodes, b, "quota-sub", clean_start=False, session_expiry=3600)
    assert sub.subscribe("quota/#", SubscribeOptions(qos=1)) == [1]
    pub = Paho5(nodes, a, "quota-pub")
    routed(pub, sub, "quota/probe")

    codes: Dict[int, int] = {}   # message number -> PUBACK reason code
    acked = threading.Condition()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any,
                   properties: Any = None) -> None:
        with acked:
            codes[mid] = reason.value
            acked.notify_all()

    pub.client.on_publish = on_publish
    numbers: Dict[int, int] = {}   # paho mid -> message number
    with partitions.cut([[a.host], [b.host]]):
        for n in range(40):   # 40 KB against a 16 KB backlog
            info = pub.client.publish("quota/t", b"%03d" % n + PAYLOAD, 1)
            numbers[info.mid] = n
            with acked:
                assert acked.wait_for(lambda: info.mid in codes, 10), "no PUBACK for %d" % n
        by_number = {numbers[mid]: code for mid, code in codes.items() if mid in numbers}
        accepted = sorted(n for n, code in by_number.items() if code == 0)
        refused = sorted(n for n, code in by_number.items() if code == QUOTA_EXCEEDED)
        assert accepted and refused and len(accepted) + len(refused) == 40, by_number
        assert accepted == list(range(len(accepted))), "refused only once the backlog is full"

    def delivered() -> List[int]:
        with sub.lock:
            return sorted(int(m.payload[:3]) for m in sub.messages if m.topic == "quota/t")

    wait_until(lambda: delivered() == accepted, 60, interval=0.2,
               what="the %d acknowledged messages on B (have %d)"
               % (len(accepted), len(delivered())))
