"""
Registrations serialized per client id on a coordinator node
(``coordinate_registrations``), in process and deterministic.
"""
from __future__ import annotations

from typing import Any, List

from twisted.internet.task import Clock

from vmqtw.broker.coordinator import RegistrationCoordinator, client_key, coordinator_of
from vmqtw.mqtt import packets as P
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Cluster
from vmqtw.testing.memory_transport import InMemoryNetwork
from vmqtw.types import SubscriberId

SID = SubscriberId("", "racer")


def test_the_coordinator_is_a_stable_hash_over_the_sorted_members():
    key = client_key(SID)
    nodes = ["c", "a", "b"]
    chosen = coordinator_of(key, nodes)
    assert chosen == coordinator_of(key, sorted(nodes, reverse=True))
    # Spread over the members: not every client id lands on one node.
    assert len({coordinator_of("k%d" % n, nodes) for n in range(50)}) == 3


def coordinators(clock: Clock, names: List[str]) -> Any:
    net = InMemoryNetwork(clock)
    made = {}
    for name in names:
        transport = net.transport(name)
        for peer in names:
            if peer != name:
                transport.set_peer_address(peer, (peer, 0))
        made[name] = RegistrationCoordinator(name, transport, clock, lambda: names,
                                             timeout=3.0, lease=2.0)
        made[name].start()
        transport.start()
    clock.advance(0.1)
    return made


def test_leases_of_one_client_id_are_granted_one_at_a_time_in_order():
    clock = Clock()
    made = coordinators(clock, ["a", "b", "c"])
    granted: List[Any] = []
    leases = [made[n].acquire(SID).addCallback(lambda lease, n=n: granted.append((n, lease)))
              for n in ("a", "b", "c")]
    clock.advance(0.1)
    assert [n for n, _ in granted] == ["a"]
    granted[0][1].release()
    clock.advance(0.1)
    assert [n for n, _ in granted] == ["a", "b"]
    granted[1][1].release()
    granted[1][1].release()           # once only
    clock.advance(0.1)
    assert [n for n, _ in granted] == ["a", "b", "c"]
    assert all(d.called for d in leases)


def test_a_lease_never_given_back_lapses():
    clock = Clock()
    made = coordinators(clock, ["a", "b"])
    granted: List[str] = []
    made["a"].acquire(SID).addCallback(lambda lease: granted.append("a"))
    made["b"].acquire(SID).addCallback(lambda lease: granted.append("b"))
    clock.advance(0.1)
    assert len(granted) == 1, "the first one is never given back"
    clock.advance(2.0)
    assert sorted(granted) == ["a", "b"]
    owner = made[made["a"].coordinator(SID)]
    assert owner.lapsed == 1


def test_a_waiter_that_gave_up_is_skipped():
    """Past ``timeout`` the asker failed its CONNECT: the lease goes to the next one."""
    clock = Clock()
    transport = InMemoryNetwork(clock).transport("a")
    coordinator = RegistrationCoordinator("a", transport, clock, lambda: ["a"],
                                          timeout=3.0, lease=10.0)
    first: List[Any] = []
    coordinator.acquire(SID).addCallback(first.append)
    gave_up: List[Any] = []
    coordinator.acquire(SID).addErrback(gave_up.append)
    clock.advance(3.1)
    assert len(gave_up) == 1
    later: List[Any] = []
    coordinator.acquire(SID).addCallback(later.append)
    first[0].release()
    assert len(later) == 1 and coordinator.lapsed == 0


def connect_everywhere(cluster: Cluster, client_id: str, **kwargs: Any) -> List[Any]:
    """One CONNECT per node, all sent before anything is delivered."""
    clients = []
    for name in cluster.names:
        client = cluster[name].client()
        client.send(B.connect(client_id, **kwargs))
        clients.append(client)
    return clients


def live(cluster: Cluster, clients: List[Any]) -> List[Any]:
    for client in clients:
        if client.closed:
            client.finish_close()
    return [c for c in clients if not c.closed]


def test_concurrent_connects_leave_one_session_with_its_state_whole():
    cluster = Cluster(coordinate_registrations=True)
    first = cluster["A"].client()
    first.send(B.connect(SID.client_id, clean_session=False))
    cluster.settle(0.2)
    first.received()
    first.send(B.subscribe(1, [("r/#", 1)]))
    cluster.settle(0.2)
    assert first.received() == [P.SubAck(1, [1])]
    first.drop()
    cluster.settle()
    publisher = cluster["C"].connect("pub")
    for n in range(5):
        publisher.send(B.publish("r/x", b"%d" % n, qos=1, packet_id=n + 1))
    cluster.settle()
    for round_ in range(5):
        clients = connect_everywhere(cluster, SID.client_id, clean_session=False)
        cluster.settle(2)
        survivors = live(cluster, clients)
        assert len(survivors) == 1, round_
        sessions = sum(SID in cluster[n].registry.sessions for n in cluster.names)
        assert sessions == 1
        connacks = [p for c in clients for p in c.received() if isinstance(p, P.ConnAck)]
        assert all(c.return_code == 0 and c.session_present for c in connacks)
        for client in survivors:
            client.drop()
        cluster.settle()
    back = cluster["B"].client()
    back.send(B.connect(SID.client_id, clean_session=False))
    cluster.settle(2)
    got = [p for p in back.received() if isinstance(p, P.Publish)]
    # Each round's winners received them too: what is still unacknowledged
    # arrives once more, with DUP, and nothing is missing.
    assert sorted({p.payload for p in got}) == [b"%d" % n for n in range(5)]
    publisher.send(B.publish("r/y", b"after", qos=1, packet_id=20))
    cluster.settle()
    assert [p.payload for p in back.publishes()] == [b"after"]


def test_without_coordination_a_connect_registers_at_once():
    cluster = Cluster()
    assert cluster["A"].registry.coordinator is None
    client = cluster["A"].client()
    client.send(B.connect("solo"))
    assert isinstance(client.received()[0], P.ConnAck)


def test_an_unreachable_coordinator_refuses_the_connect_with_server_unavailable():
    cluster = Cluster(coordinate_registrations=True)
    registry = cluster["A"].registry
    target = next(SubscriberId("", "c%d" % n) for n in range(100)
                  if registry.coordinator.coordinator(SubscriberId("", "c%d" % n)) == "B")
    cluster.network.drop(lambda src, dst, channel, m: dst == "B" and channel == "call")
    client = cluster["A"].client()
    client.send(B.connect(target.client_id))
    cluster.settle(6)
    assert client.received() == [P.ConnAck(P.CONNACK_SERVER_UNAVAILABLE, False)]
