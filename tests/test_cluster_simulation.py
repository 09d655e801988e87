"""
Randomised but seeded fault schedules over whole brokers: three in-process
nodes on the in-memory transport and one Clock, QoS 1 publishers on every
node, a persistent subscriber on every node, and partitions, silent frame
loss on the data plane (the window before a cut is detected) and heals in
any order.  Whatever happens, once the network heals every message a
publisher got a PUBACK for reaches every subscriber, and a second copy
carries DUP.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest
from twisted.internet.task import Clock

from vmqtw.broker.queue import QueueLimits
from vmqtw.cluster.dataplane import OUTBOX_MOUNTPOINT
from vmqtw.store.leveldb import LevelDBMessageStore
from vmqtw.mqtt import packets as P
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Client, Cluster

NAMES = ["A", "B", "C"]
#: Unbounded queues and window: a queue-limit drop is policy, not loss.
LIMITS = QueueLimits(max_inflight_messages=0, max_online_messages=-1,
                     max_offline_messages=-1)


class Publisher:
    def __init__(self, cluster: Cluster, node: str) -> None:
        self.node = node
        self.client = cluster[node].connect("pub-" + node)
        self.next_id = 1
        self.sent: Dict[int, bytes] = {}
        self.acked: Set[bytes] = set()
        self.pubacks = 0

    def publish(self) -> None:
        packet_id = self.next_id
        self.next_id += 1
        payload = b"%s:%d" % (self.node.encode(), packet_id)
        self.sent[packet_id] = payload
        self.client.send(B.publish("sim/t", payload, qos=1, packet_id=packet_id))

    def read(self) -> None:
        for packet in self.client.received():
            if isinstance(packet, P.PubAck):
                self.acked.add(self.sent[packet.packet_id])
                self.pubacks += 1


class Subscriber:
    def __init__(self, cluster: Cluster, node: str) -> None:
        self.client: Client = cluster[node].subscriber(
            "sub-" + node, ("sim/#", 1), clean_session=False)
        #: payload -> DUP flags of each copy received
        self.got: Dict[bytes, List[bool]] = {}

    def read(self) -> None:
        for packet in self.client.received():
            if isinstance(packet, P.Publish):
                self.got.setdefault(packet.payload, []).append(packet.dup)
                self.client.send(B.puback(packet.packet_id))


def run(seed: int, cluster: Optional[Cluster] = None
        ) -> Tuple[Cluster, List[Publisher], List[Subscriber]]:
    rng = random.Random(seed)
    if cluster is None:
        cluster = Cluster(NAMES, limits=LIMITS)
    subscribers = [Subscriber(cluster, name) for name in NAMES]
    cluster.settle()
    publishers = [Publisher(cluster, name) for name in NAMES]
    undo = []
    for _ in range(250):
        r = rng.random()
        if r < 0.55:
            rng.choice(publishers).publish()
        elif r < 0.60:
            cut = set(rng.sample(NAMES, rng.randrange(1, len(NAMES))))
            cluster.network.partition([cut, set(NAMES) - cut])
        elif r < 0.66:
            cluster.network.heal()
        elif r < 0.70:
            # Frames vanish while the links still look up.
            loss = rng.random()
            undo.append(cluster.network.drop(
                lambda src, dst, channel, m, loss=loss: channel == "mqtt"
                and rng.random() < loss))
        elif r < 0.76 and undo:
            undo.pop()()
        else:
            cluster.clock.advance(rng.choice((0.0, 0.01, 0.1, 0.5, 2.0)))
        for client in (*publishers, *subscribers):
            client.read()
    while undo:
        undo.pop()()
    cluster.network.heal()
    for _ in range(40):
        cluster.settle(0.5)
        for client in (*publishers, *subscribers):
            client.read()
    return cluster, publishers, subscribers


@pytest.mark.parametrize("seed", range(40))
def test_every_acknowledged_message_reaches_every_subscriber(seed: int) -> None:
    check(seed, *run(seed))


def test_with_outboxes_every_acknowledged_message_reaches_every_subscriber(
        tmp_path: Any) -> None:
    """
    The same with durable stores, so a publisher waits for each copy to
    be acknowledged by the other node or written to the outbox, whichever
    comes first: a publish acknowledged by neither, or a waiter that never
    fires, shows up here; and once everything healed, every outbox copy
    was deleted again.  One test over many seeds, so that it can say both
    ways of acknowledging were taken.
    """
    outboxed = forwarded = 0
    for seed in range(12):
        clock = Clock()
        stores = {name: LevelDBMessageStore(str(tmp_path / ("%d-%s" % (seed, name))), clock)
                  for name in NAMES}
        try:
            for store in stores.values():
                store.open()
            cluster, publishers, subscribers = run(seed, Cluster(
                NAMES, stores=dict(stores), clock=clock, limits=LIMITS))
            check(seed, cluster, publishers, subscribers)
            for name in NAMES:
                plane = cluster[name].registry.dataplane
                assert plane is not None and plane.backlog() == {}, "seed %d" % seed
                outboxed += plane.counters.outboxed
                forwarded += plane.counters.forwarded
                left = stores[name].subscribers()
                clock.advance(0)
                assert [sid for sid in left.result if sid.mountpoint == OUTBOX_MOUNTPOINT] \
                    == [], "seed %d: outbox copies left on %s" % (seed, name)
        finally:
            for store in stores.values():
                store.close()
    assert 0 < outboxed < forwarded, (outboxed, forwarded)


def check(seed: int, cluster: Cluster, publishers: List[Publisher],
          subscribers: List[Subscriber]) -> None:
    for publisher in publishers:
        # Every publish a node took (it refuses them during a netsplit)
        # was acknowledged in the end: nothing waits forever.
        promised = cluster[publisher.node].factory.counters.puback_sent
        assert publisher.pubacks == promised, "seed %d: %s" % (seed, publisher.node)
    acked = set().union(*(p.acked for p in publishers))
    assert acked, "the schedule acknowledged nothing"
    for subscriber in subscribers:
        missing = acked - set(subscriber.got)
        assert not missing, "seed %d: %s never got %s" % (
            seed, subscriber.client, sorted(missing)[:5])
        for payload, dups in subscriber.got.items():
            assert all(dups[1:]), "seed %d: %r again without DUP" % (seed, payload)
