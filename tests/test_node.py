"""
The wiring of one node (:mod:`vmqtw.node`): its parts are typed, it starts
in the order of one table and stops in the exact reverse, and nothing a
peer sends can arrive before the part that handles it is running.
In process, on a ``MemoryReactorClock``: nothing listens for real.
"""
from __future__ import annotations

from typing import Any, Dict, List, Set, Tuple

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from vmqtw.testing.inprocess_broker import Broker, Cluster
from vmqtw.cluster import dataplane
from vmqtw.config import Config
from vmqtw.metadata import broadcast
from vmqtw.node import Node, build_node

CORE = ["metadata", "message-store", "registry", "data-plane", "cluster-transport"]


class RecordingReactor(MemoryReactorClock):
    """Remembers, at each ``listenTCP``, which peer handlers were registered."""

    def __init__(self) -> None:
        super().__init__()
        self.node: Any = None
        self.at_listen: List[Tuple[int, Set[str], Set[str]]] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        dispatch = self.node.transport._dispatch     # what a peer's frame would meet
        self.at_listen.append((port, set(dispatch._cast_handlers),
                               set(dispatch._call_handlers)))
        return super().listenTCP(port, factory, backlog, interface)


def _node(tmp_path: Any) -> Tuple[Node, RecordingReactor]:
    reactor = RecordingReactor()
    config = Config.default().replace(
        platform_data_dir=str(tmp_path / "data"), message_store="memory",
        listener_vmq_clustering=("127.0.0.1", 44053),
        tcp_listeners={"default": ("127.0.0.1", 41883)})
    node = build_node(config, reactor)
    reactor.node = node
    return node, reactor


def test_steps_start_in_the_order_of_the_table(tmp_path):
    node, _reactor = _node(tmp_path)
    names = [service.name for service in node.service]
    assert names == CORE + ["auth", "drain", "mqtt-listeners"]
    serving = node.service.getServiceNamed("mqtt-listeners")
    assert [listener.name for listener in serving.listeners] == ["listener.tcp.default"]
    assert node.registry.dataplane is not None
    assert node.registry.store is node.store


def test_every_peer_handler_is_registered_before_the_cluster_transport_listens(tmp_path):
    """
    A frame from a peer is dispatched by channel: a handler registered only
    after the transport listened would miss what came first (the data
    plane's forwarded messages for restored sessions, above all).
    """
    node, reactor = _node(tmp_path)
    node.service.startService()
    try:
        assert node.service.ready is not None and node.service.ready.called
        dispatch = node.transport._dispatch
        (port, casts, calls), (mqtt_port, _, _) = reactor.at_listen
        assert (port, mqtt_port) == (44053, 41883)   # cluster first, MQTT last
        assert casts == set(dispatch._cast_handlers)
        assert calls == set(dispatch._call_handlers)
        assert {dataplane.CHANNEL, broadcast.CHANNEL} <= casts
        assert "admin.cluster.show" in calls
    finally:
        node.service.stopService()


def test_stop_is_the_exact_reverse_of_start(tmp_path):
    node, _reactor = _node(tmp_path)
    stopped: List[str] = []

    def observer(event: Dict[str, Any]) -> None:
        if event.get("log_format") == "stopping {name}":
            stopped.append(event["name"])

    node.service.startService()
    globalLogPublisher.addObserver(observer)
    try:
        node.service.stopService()
    finally:
        globalLogPublisher.removeObserver(observer)
    names = [service.name for service in node.service]
    assert stopped == ["mqtt-listeners", "listener.tcp.default"] + list(reversed(names[:-1]))


def test_a_removed_node_serves_no_mqtt_until_it_joins_again(tmp_path):
    """
    Removed from its cluster, a node closes its MQTT listeners and says so;
    restarted, it remembers and stays closed; joined again, it serves.
    """
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        node, reactor = _node(tmp_path)
        node.service.startService()
        [port] = [p for p in reactor.tcpServers if p[0] == 41883]
        serving = node.service.getServiceNamed("mqtt-listeners")
        listener = serving.listeners[0]
        assert serving.serving and listener.port is not None
        peers = node.metadata.peers
        peers.leave(peers.node)
        assert peers.removed and not serving.serving and listener.port is None
        assert any("left the cluster" in e.get("log_format", "") for e in events)
        node.service.stopService()

        again, reactor2 = _node(tmp_path)
        again.service.startService()
        assert again.metadata.peers.removed
        assert [p for p in reactor2.tcpServers if p[0] == 41883] == []
        assert any("serves no MQTT until it joins" in e.get("log_format", "") for e in events)
        again.service.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)


class FakePeers:
    """What :class:`MqttServing` reads of a PeerService."""

    def __init__(self) -> None:
        self.removed = False
        self.removed_listeners: List[Any] = []
        self.change_listeners: List[Any] = []

    def on_removed(self, listener: Any) -> None:
        self.removed_listeners.append(listener)

    def on_change(self, listener: Any) -> None:
        self.change_listeners.append(listener)

    def remove(self) -> None:
        self.removed = True
        for listener in self.removed_listeners:
            listener()
        for listener in self.change_listeners:
            listener(frozenset({"me"}))

    def join(self) -> None:
        self.removed = False
        for listener in self.change_listeners:
            listener(frozenset({"me", "other"}))


def test_mqtt_listeners_close_when_removed_and_open_when_joined_again():
    from twisted.application.service import Service
    from vmqtw.cluster.serving import MqttServing

    listeners = [Service(), Service()]
    for n, listener in enumerate(listeners):
        listener.setName("listener.tcp.%d" % n)
    peers = FakePeers()
    serving = MqttServing(listeners, peers)
    serving.startService()
    assert [listener.running for listener in listeners] == [True, True]
    peers.remove()
    assert [listener.running for listener in listeners] == [False, False]
    peers.join()
    assert [listener.running for listener in listeners] == [True, True]
    serving.stopService()
    assert [listener.running for listener in listeners] == [False, False]
    peers.join()   # stopped: a membership change opens nothing
    assert [listener.running for listener in listeners] == [False, False]


def test_harness_runs_the_same_core_steps():
    """The in-process brokers start by the node's own table, not by hand."""
    assert [service.name for service in Broker().service] == ["registry"]
    cluster = Cluster(("A", "B"))
    try:
        assert [service.name for service in cluster["A"].service] == [
            "metadata", "registry", "data-plane", "cluster-transport"]
        assert cluster.network.linked("A", "B")
    finally:
        cluster.stop()


def test_the_heartbeat_settings_reach_the_cluster_links(tmp_path):
    reactor = RecordingReactor()
    config = Config.default().replace(
        platform_data_dir=str(tmp_path / "data"), message_store="memory",
        cluster_heartbeat_interval=0.25, cluster_heartbeat_timeout=0.8)
    node = build_node(config, reactor)
    settings = node.transport.links.settings
    assert (settings.heartbeat_interval, settings.heartbeat_timeout) == (0.25, 0.8)


def test_a_removed_node_ends_every_session_it_holds():
    """One client id, one queue: what a removed node held does not wait for a rejoin."""
    from vmqtw.node import end_sessions_of_a_removed_node
    from vmqtw.store.memory import MemoryMessageStore
    from vmqtw.testing import mqttbytes as B

    store = MemoryMessageStore()
    broker = Broker(store=store)
    broker.subscriber("offline", ("t", 1), clean_session=False).drop()
    online = broker.subscriber("online", ("t", 1), clean_session=False)
    broker.connect("pub").send(B.publish("t", b"m", qos=1, packet_id=1))
    assert len(broker.registry.queues) == 3 and store.stored_payloads() == 1
    end_sessions_of_a_removed_node(broker.registry)
    assert broker.registry.queues == {} and broker.registry.sessions == {}
    assert online.closed
    assert store.stored_payloads() == 0


def test_a_confirmation_never_overtakes_the_data_plane(tmp_path):
    node, _reactor = _node(tmp_path)
    assert node.registry.dataplane is not None
    assert node.metadata.confirmer.before_reply == node.registry.dataplane.flush_to
