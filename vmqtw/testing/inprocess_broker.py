"""
An in-process broker for unit tests: the real registry, sessions and
protocols over ``StringTransport`` with a ``task.Clock`` — no sockets, no
sleeps.  Clients speak raw bytes built by :mod:`vmqtw.testing.mqttbytes` (independent
of the codec under test) and read what the broker wrote with a client-side
decoder.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from vmqtw.testing import mqttbytes as B
from vmqtw.broker.queue import QueueLimits
from vmqtw.interfaces import IClusterTransport, IMessageStore, IMetadataStore
from vmqtw.metadata.local import LocalMetadataStore
from vmqtw.metadata.node import MetadataNode
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import Decoder
from vmqtw.mqtt.protocol import MQTTFactory, MQTTProtocol
from vmqtw.mqtt.session import AnonymousGate, Authenticator, SessionSettings
from vmqtw.node import build_broker_core
from vmqtw.service import OrderedMultiService


class Client:
    """One raw client connection to the in-process broker."""

    def __init__(self, broker: "Broker", port: int) -> None:
        self.broker = broker
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        protocol = broker.factory.buildProtocol(None)
        assert protocol is not None
        self.protocol: MQTTProtocol = protocol
        self.protocol.makeConnection(self.transport)
        self.decoder = Decoder()
        self.lost = False
        #: Packets read by a helper (e.g. behind a CONNACK) not yet returned.
        self.backlog: List[Any] = []
        #: Set by Broker.connect / Broker.subscriber: what the broker answered.
        self.connack: Optional[P.ConnAck] = None
        self.suback: Optional[P.SubAck] = None
        self.retained: List[Any] = []

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> List[Any]:
        """Every packet the broker wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        packets, self.backlog = self.backlog + self.decoder.feed(data), []
        return packets

    @property
    def closed(self) -> bool:
        """The broker closed (or aborted) the connection."""
        return self.transport.disconnecting

    def finish_close(self) -> None:
        """Deliver connectionLost, as the reactor does after a close."""
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(None)

    def drop(self) -> None:
        """The network dies under the client (no DISCONNECT)."""
        self.transport.loseConnection()
        self.finish_close()

    def publishes(self) -> List[P.Publish]:
        return [p for p in self.received() if isinstance(p, P.Publish)]


class Broker:
    """
    The broker core a node runs (:func:`vmqtw.node.build_broker_core`),
    started by its own steps on a Clock, with knobs for the tests.
    ``replication`` (a MetadataNode) replaces ``metadata``; ``cluster`` is
    the cluster transport, None for a lone broker.
    """

    def __init__(self, limits: QueueLimits = QueueLimits(),
                 settings: SessionSettings = SessionSettings(),
                 authenticator: Any = None, connect_timeout: float = 10.0,
                 max_packet_size: int = 0, store: Optional[IMessageStore] = None,
                 session_expiration: Optional[float] = None,
                 clock: Optional[Clock] = None, metadata: Optional[IMetadataStore] = None,
                 node: str = "vmqtw@127.0.0.1", cluster: Optional[IClusterTransport] = None,
                 ready: Any = None, replication: Optional[MetadataNode] = None,
                 coordinate_registrations: bool = False) -> None:
        if clock is None:
            clock = Clock()
            clock.advance(1_700_000_000)
        self.clock = clock
        if replication is None and metadata is None:
            metadata = LocalMetadataStore()
        self.core = build_broker_core(node, clock, metadata=metadata, replication=replication,
                                      store=store, transport=cluster, limits=limits,
                                      session_expiration=session_expiration, ready=ready,
                                      coordinate_registrations=coordinate_registrations)
        self.registry = self.core.registry
        self.metadata = self.registry.metadata
        self.failures: List[Failure] = []
        self.service = OrderedMultiService(on_failure=self.failures.append)
        for step in self.core.steps():
            self.service.addService(step.service())
        self.service.startService()
        # Everything in process fires at once: the broker is up, or says why not.
        assert self.service.ready is not None and self.service.ready.called
        assert not self.failures, self.failures
        gate: Authenticator = authenticator or AnonymousGate(True)
        self.factory = MQTTFactory(self.registry, settings, gate, self.clock,
                                   max_packet_size=max_packet_size,
                                   connect_timeout=connect_timeout)
        self._port = 40000

    def stop(self) -> None:
        """Stop the steps in reverse, as a node does."""
        self.service.stopService()

    def client(self) -> Client:
        self._port += 1
        return Client(self, self._port)

    def answer(self, client: Client, seconds: float = 1.0) -> List[Any]:
        """
        What the broker wrote to ``client``, letting the Clock (and so an
        in-memory cluster's network) run in small steps until something
        came, for at most ``seconds``.
        """
        packets = client.received()
        for _ in range(int(seconds / 0.01)):
            if packets:
                break
            self.clock.advance(0.01)
            packets = client.received()
        return packets

    def connect(self, client_id: str = "c1", **kwargs: Any) -> Client:
        """A client that sent CONNECT and got CONNACK 0 (checked)."""
        client = self.client()
        client.send(B.connect(client_id, **kwargs))
        # A coordinated registration waits for the coordinator's turn.
        packets = self.answer(client)
        assert packets and isinstance(packets[0], P.ConnAck), packets
        assert packets[0].return_code == 0, packets
        client.connack = packets[0]
        client.backlog = packets[1:]
        return client

    def subscriber(self, client_id: str, *filters: Any, **kwargs: Any) -> Client:
        """Connected and subscribed to ``(filter, qos)`` pairs (SUBACK checked)."""
        client = self.connect(client_id, **kwargs)
        client.send(B.subscribe(1, list(filters)))
        # In a cluster the SUBACK waits until the other nodes route the filter.
        packets = self.answer(client)
        assert packets and isinstance(packets[0], P.SubAck), packets
        client.suback = packets[0]
        client.retained = packets[1:]
        return client


def only(packets: List[Any], kind: type) -> Optional[Any]:
    """The single packet of ``kind`` in ``packets`` (asserts there is one)."""
    found = [p for p in packets if isinstance(p, kind)]
    assert len(found) == 1, packets
    return found[0]


class Cluster:
    """
    Several in-process brokers joined by the in-memory transport on one
    Clock: replicated metadata and the data plane, deterministic.
    """

    def __init__(self, names: Any = ("A", "B", "C"),
                 stores: Optional[Dict[str, IMessageStore]] = None,
                 clock: Optional[Clock] = None, **broker_kwargs: Any) -> None:
        """``clock``: the one the ``stores`` were made with, if any (brought
        to a realistic time, as a fresh one is, unless it is there already)."""
        from vmqtw.testing.memory_transport import InMemoryNetwork

        self.clock = Clock() if clock is None else clock
        self.clock.advance(max(0, 1_700_000_000 - self.clock.seconds()))
        self.network = InMemoryNetwork(self.clock)
        self.names = list(names)
        self.metadata_nodes: Dict[str, MetadataNode] = {}
        self.brokers: Dict[str, Broker] = {}
        for name in self.names:
            transport = self.network.transport(name)
            for peer in self.names:
                if peer != name:
                    transport.set_peer_address(peer, (peer, 0))
            md = MetadataNode(name, transport, self.clock, members=self.names,
                              lazy_tick=0.1, exchange_tick=0.5, gc_interval=None)
            self.metadata_nodes[name] = md
            if stores is not None:
                broker_kwargs["store"] = stores.get(name)
            self.brokers[name] = Broker(clock=self.clock, replication=md, node=name,
                                        cluster=transport, **broker_kwargs)
        self.settle()

    def __getitem__(self, name: str) -> Broker:
        return self.brokers[name]

    def settle(self, seconds: float = 1.0, step: float = 0.05) -> None:
        """Let replication and forwarding run for ``seconds`` of Clock time."""
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def stop(self) -> None:
        for name in self.names:
            self.brokers[name].stop()
