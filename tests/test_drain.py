"""
``cluster leave -k`` on the leaving node, in process and deterministic
(:mod:`vmqtw.broker.drain`): its clients are disconnected, those that come
back elsewhere take their queues along, every other offline queue moves to
a node of the others with all its messages, in order, and the drain is done
only once the other nodes acknowledged all of it.
"""
from __future__ import annotations

from typing import Any, Dict, List

from vmqtw.broker.drain import DONE, FLUSHING, IDLE, MOVING, WAITING, Drain
from vmqtw.broker.subscriptions import home_node, record_owner
from vmqtw.cluster.dataplane import ACK, CHANNEL
from vmqtw.store.memory import MemoryMessageStore
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Client, Cluster
from vmqtw.types import SubscriberId


def stores() -> Dict[str, Any]:
    return {name: MemoryMessageStore() for name in "ABC"}


def stored_on(store: MemoryMessageStore) -> int:
    """Messages the store holds for sessions (not the data plane's outbox)."""
    from vmqtw.cluster.dataplane import OUTBOX_MOUNTPOINT

    count: List[int] = [0]

    def counted(subscribers: List[SubscriberId]) -> None:
        for sid in subscribers:
            if sid.mountpoint != OUTBOX_MOUNTPOINT:
                store.find(sid).addCallback(lambda refs: count.__setitem__(0, count[0] + len(refs)))
    store.subscribers().addCallback(counted)
    return count[0]


class Leaving:
    """Node C of a three-node in-process cluster, with a drain whose suspend drops C's clients."""

    def __init__(self, cluster: Cluster, name: str = "C") -> None:
        self.cluster = cluster
        self.name = name
        self.clients: List[Client] = []
        self.suspended = 0
        drains = {n: Drain(cluster[n].registry, cluster.clock, self.suspend,
                           lambda n=n: [m for m in cluster.names if m != n],
                           cluster.network.transport(n)) for n in cluster.names}
        self.drain = drains[name]

    def suspend(self) -> None:
        self.suspended += 1
        for client in self.clients:
            client.drop()

    def connect(self, client_id: str, **kwargs: Any) -> Client:
        client = self.cluster[self.name].connect(client_id, **kwargs)
        self.clients.append(client)
        return client

    def parked(self, client_id: str, topic: str = "q/#") -> None:
        """A persistent QoS 1 subscriber made here, then disconnected."""
        client = self.cluster[self.name].subscriber(client_id, (topic, 1), clean_session=False)
        client.drop()


def publish(client: Client, payloads: List[bytes], topic: str = "q/x", first_id: int = 1) -> None:
    for n, payload in enumerate(payloads):
        client.send(B.publish(topic, payload, qos=1, packet_id=first_id + n))


def payloads(client: Client) -> List[bytes]:
    return [p.payload for p in client.publishes()]


def receive_all(cluster: Cluster, client: Client, quiet: float = 4.0) -> List[bytes]:
    """
    Every message the session gets, each acknowledged (past the in-flight
    window), until none came for ``quiet`` seconds (longer than a hold).
    """
    got: List[bytes] = []
    silent = 0.0
    while silent < quiet:
        cluster.settle(0.2)
        new = client.publishes()
        silent = 0.0 if new else silent + 0.2
        for publish_packet in new:
            got.append(publish_packet.payload)
            if publish_packet.packet_id is not None:
                client.send(B.puback(publish_packet.packet_id))
    return got


def run_until(cluster: Cluster, drain: Drain, phase: str, seconds: float = 30.0) -> None:
    step = 0.05
    for _ in range(int(seconds / step)):
        if drain.phase == phase:
            return
        cluster.clock.advance(step)
    raise AssertionError("the drain is %s, not %s, after %s s: %s" % (
        drain.phase, phase, seconds, drain.progress()))


def test_every_offline_session_moves_with_its_messages_in_order() -> None:
    cluster = Cluster(stores=stores())
    leaving = Leaving(cluster)
    ids = ["parked-%d" % n for n in range(6)]
    for client_id in ids:
        leaving.parked(client_id)
    publisher = cluster["A"].connect("pub")
    publish(publisher, [b"m%d" % n for n in range(4)])
    cluster.settle()
    assert leaving.drain.progress().phase == IDLE
    started = leaving.drain.start(interval=0.5, wait_limit=5.0)
    assert (started.phase, started.queues, started.messages) == (WAITING, 6, 24)
    assert leaving.suspended == 1
    run_until(cluster, leaving.drain, DONE)
    done = leaving.drain.progress()
    assert (done.queues, done.messages, done.unacknowledged) == (0, 0, 0)
    assert (done.moved_queues, done.moved_messages, done.reconnected) == (6, 24, 0)
    assert cluster["C"].registry.queues == {}
    assert stored_on(cluster["C"].registry.store) == 0, "C's copies go once acknowledged"
    for client_id in ids:
        sid = SubscriberId("", client_id)
        home = home_node(client_id, ["A", "B"])
        assert record_owner(cluster["A"].registry.subscription_table.record(sid)) == home
        assert cluster[home].registry.queues[sid].size() == 4
        back = cluster[home].connect(client_id, clean_session=False)
        assert back.connack is not None and back.connack.session_present
        cluster.settle()
        assert payloads(back) == [b"m%d" % n for n in range(4)]


def test_clients_reconnecting_elsewhere_take_their_queues_along() -> None:
    cluster = Cluster(stores=stores())
    leaving = Leaving(cluster)
    online = leaving.connect("online", clean_session=False)
    online.send(B.subscribe(1, [("q/#", 1)]))
    cluster.settle()
    online.received()
    leaving.parked("parked")
    publish(cluster["A"].connect("pub"), [b"1", b"2"])
    cluster.settle()
    assert payloads(online) == [b"1", b"2"]   # delivered, not yet acknowledged
    leaving.drain.start(interval=1.0, wait_limit=10.0)
    assert online.closed
    cluster.settle(0.3)
    back = cluster["B"].connect("online", clean_session=False)
    cluster.settle(0.5)
    assert [(p.payload, p.dup) for p in back.publishes()] == [(b"1", True), (b"2", True)]
    # The count fell during the first interval: the drain waits one more.
    cluster.settle(0.5)
    assert leaving.drain.phase == WAITING
    run_until(cluster, leaving.drain, DONE)
    done = leaving.drain.progress()
    assert (done.reconnected, done.moved_queues, done.moved_messages) == (1, 1, 2)


def test_messages_arriving_during_the_drain_reach_the_moved_sessions_in_order() -> None:
    cluster = Cluster(stores=stores())
    leaving = Leaving(cluster)
    for n in range(6):
        leaving.parked("p%d" % n)
    publisher = cluster["A"].connect("pub")
    sent: List[bytes] = []
    packet_id = 1
    # What C sends B (its hand-overs, its metadata) travels slower than
    # what A sends B directly.
    cluster.network.set_delay("C", "B", 0.3)
    leaving.drain.start(interval=0.2, wait_limit=1.0)
    for _ in range(60):
        # Publishing all along: before, during and after the moves.
        payload = b"%d" % len(sent)
        sent.append(payload)
        publish(publisher, [payload], first_id=packet_id)
        packet_id += 1
        cluster.clock.advance(0.05)
    run_until(cluster, leaving.drain, DONE)
    cluster.network.set_delay("C", "B", 0)
    for n in range(6):
        client_id = "p%d" % n
        back = cluster[home_node(client_id, ["A", "B"])].connect(client_id, clean_session=False)
        assert receive_all(cluster, back) == sent, client_id


def test_unacknowledged_hand_overs_keep_the_drain_from_being_done() -> None:
    cluster = Cluster(stores=stores())
    leaving = Leaving(cluster)
    leaving.parked("p")
    publish(cluster["A"].connect("pub"), [b"x"])
    cluster.settle()
    home = home_node("p", ["A", "B"])
    undo = cluster.network.drop(
        lambda src, dst, channel, m: channel == CHANNEL and src == home and dst == "C"
        and m[0] == ACK)
    leaving.drain.start(interval=0.2, wait_limit=1.0)
    cluster.settle(3)
    progress = leaving.drain.progress()
    assert progress.phase == FLUSHING and progress.unacknowledged >= 1, progress
    undo()
    run_until(cluster, leaving.drain, DONE)


def test_a_connect_racing_the_move_leaves_one_queue_with_everything() -> None:
    """Coordinated registration: the move and a CONNECT elsewhere are serialized."""
    cluster = Cluster(stores=stores(), coordinate_registrations=True)
    leaving = Leaving(cluster)
    leaving.parked("racer")
    publish(cluster["A"].connect("pub"), [b"a", b"b", b"c"])
    cluster.settle()
    leaving.drain.start(interval=0.05, wait_limit=0.0)
    elsewhere = "A" if home_node("racer", ["A", "B"]) == "B" else "B"
    cluster.clock.advance(0.05)   # the drain moves now
    client = cluster[elsewhere].connect("racer", clean_session=False)
    run_until(cluster, leaving.drain, DONE)
    cluster.settle(4)
    assert payloads(client) == [b"a", b"b", b"c"]
    sid = SubscriberId("", "racer")
    holders = [name for name in cluster.names if sid in cluster[name].registry.queues]
    assert holders == [elsewhere]


def test_with_no_other_node_reachable_the_sessions_stay_and_it_is_not_done() -> None:
    cluster = Cluster(stores=stores())
    leaving = Leaving(cluster)
    leaving.drain.others = lambda: []
    leaving.parked("p")
    leaving.drain.start(interval=0.2, wait_limit=0.0)
    cluster.settle(2)
    assert leaving.drain.phase in (MOVING, FLUSHING)
    assert leaving.drain.progress().queues == 1
    leaving.drain.others = lambda: ["A", "B"]
    run_until(cluster, leaving.drain, DONE)


def test_nothing_waits_for_the_others_once_the_drain_is_done() -> None:
    """
    Removed right after the drain is done, C drops whatever still waits
    there for the other nodes: there must be nothing (every hand-over
    acknowledged, every end marker sent), so the sessions lose nothing.
    """
    cluster = Cluster(stores=stores())
    leaving = Leaving(cluster)
    ids = ["p%d" % n for n in range(4)]
    for client_id in ids:
        leaving.parked(client_id)
    publish(cluster["A"].connect("pub"), [b"%d" % n for n in range(5)])
    cluster.settle()
    for src, dst in (("C", "B"), ("B", "C"), ("C", "A")):
        cluster.network.set_delay(src, dst, 0.2)
    leaving.drain.start(interval=0.1, wait_limit=0.0)
    run_until(cluster, leaving.drain, DONE)
    registry = cluster["C"].registry
    assert registry.ending == set() and registry.dataplane.backlog() == {}
    registry.dataplane.keep_peers(["C"])   # C learns it was removed
    for src, dst in (("C", "B"), ("B", "C"), ("C", "A")):
        cluster.network.set_delay(src, dst, 0)
    for client_id in ids:
        back = cluster[home_node(client_id, ["A", "B"])].connect(client_id, clean_session=False)
        assert receive_all(cluster, back) == [b"%d" % n for n in range(5)], client_id
