"""
Wiring: the parts of one node, and the order they start in.

:func:`build_node` builds a whole node from its configuration (twistd's
``makeService`` returns its ``service``); :func:`build_broker_core` builds
the broker's domain parts over a metadata store, message store, cluster
transport and clock it is given, and is shared by :func:`build_node` and
the in-process test harness (``vmqtw/testing/inprocess_broker.py``), so tests run the
parts wired, and started, as a node wires and starts them.

Start order is data: :meth:`BrokerCore.steps` and the table in
:func:`build_node`.  Every handler of something a peer can send is
registered before the cluster transport listens or dials, so nothing from
a peer arrives before the part that handles it runs:

* metadata (membership, plumtree, anti-entropy, tombstone GC) registers
  its handlers when :class:`~vmqtw.metadata.node.MetadataNode` is built,
  and its timers start with the ``metadata`` step;
* the admin handlers are registered when the node is built;
* the data plane registers its channel in the ``data-plane`` step, which
  comes after the ``registry`` step has restored the offline queues (a
  forwarded message for a restored session must find its queue, or it is
  taken as delivered and acknowledged to its sender);
* only then does ``cluster-transport`` listen and dial.

Auth, the monitoring HTTP listeners and the MQTT listeners come last: no
client is served before the node can route (``/health`` says 503 until
MQTT is served).  A step that cannot start ends the node with one sentence
naming its configuration key (:mod:`vmqtw.startup`).
:class:`~vmqtw.service.OrderedMultiService` stops the steps in the exact
reverse order, each awaited.
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Mapping, Optional, Tuple

import attrs
from twisted.application.service import IService
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from vmqtw.admin.inspect import plugin_rows
from vmqtw.admin.server import AdminHandlers, ListenerInfo, register_admin_handlers
from vmqtw.admin.settings import RuntimeSettings
from vmqtw.broker.auth import BrokerAuthenticator
from vmqtw.broker.coordinator import RegistrationCoordinator
from vmqtw.broker.queue import QueueLimits
from vmqtw.broker.registry import Registry
from vmqtw.broker.retain import RetainStore
from vmqtw.broker.subscriptions import Subscriptions
from vmqtw.cluster.dataplane import DataPlane
from vmqtw.cluster.link import TcpTransport
from vmqtw.cluster.readiness import Readiness
from vmqtw.broker.drain import Drain
from vmqtw.broker.systree import SysTree, registry_samples
from vmqtw.cluster.serving import MqttServing
from vmqtw.config import Config
from vmqtw.http import health_reason, monitoring_site
from vmqtw.interfaces import IClusterTransport, IMessageStore, IMetadataStore
from vmqtw.metadata.node import MetadataNode
from vmqtw.metrics import MetricSources, node_registry
from vmqtw.mqtt.protocol import MQTTFactory, TurnWrites
from vmqtw.mqtt.session import MqttCounters, SessionSettings
from vmqtw.mqtt.websocket import MQTTWebSocketFactory
from vmqtw.service import CallbackService, ListenerService, OrderedMultiService
from vmqtw.auth.enhanced import AuthPluginError, build_enhanced_authenticators
from vmqtw.startup import (ExitStatus, StartupError, data_dir_error, leveldb_sentence,
                           probe_leveldb_lock, startup_error)
from vmqtw.tls import (TLSServerFactory, cluster_tls_from_config, server_options_from_config,
                       wss_options_from_config)

__all__ = ["BrokerCore", "Node", "Step", "build_broker_core", "build_node",
           "end_sessions_of_a_removed_node", "queue_limits", "session_settings"]

log = Logger()

#: Listen backlog: Twisted's default of 50 drops SYNs in a connect burst
#: (each costing the client a 1 s retransmit).
LISTEN_BACKLOG = 1024


@attrs.frozen
class Step:
    """One step of a node's lifecycle: started in order, stopped in reverse."""

    name: str
    start: Callable[[], Any]
    stop: Optional[Callable[[], Any]] = None

    def service(self) -> CallbackService:
        return CallbackService(self.name, self.start, self.stop)


@attrs.define(slots=True, eq=False)
class BrokerCore:
    """
    The broker's domain parts over the storage and transport they were
    given: ``replication`` (None where the metadata is not replicated, e.g.
    a lone in-process test broker), ``store`` (None keeps nothing) and
    ``transport`` (None on a lone node, then there is no data plane).
    """

    registry: Registry
    replication: Optional[MetadataNode] = None
    store: Optional[IMessageStore] = None
    transport: Optional[IClusterTransport] = None

    @property
    def dataplane(self) -> Optional[DataPlane]:
        return self.registry.dataplane

    def steps(self) -> List[Step]:
        """
        The start order of the core, as data (see the module docstring for
        why it is this one): metadata → message store → registry (trie,
        retained tree, restore) → data plane → cluster transport.
        """
        steps: List[Step] = []
        if self.replication is not None:
            steps.append(Step("metadata", self.replication.start, self.replication.stop))
        if self.store is not None:
            steps.append(Step("message-store", self.store.open, self.store.close))
        steps.append(Step("registry", self._start_registry, self.registry.stop))
        dataplane = self.dataplane
        if dataplane is not None:
            steps.append(Step("data-plane", self.registry.receive_from_peers, dataplane.stop))
        if self.transport is not None:
            steps.append(Step("cluster-transport", self.transport.start, self.transport.stop))
        return steps

    @inlineCallbacks
    def _start_registry(self) -> Any:
        self.registry.start()
        yield self.registry.restore()


def build_broker_core(node: str, clock: IReactorTime, *,
                      metadata: Optional[IMetadataStore] = None,
                      replication: Optional[MetadataNode] = None,
                      store: Optional[IMessageStore] = None,
                      transport: Optional[IClusterTransport] = None,
                      limits: QueueLimits = QueueLimits(),
                      session_expiration: Optional[float] = None,
                      ready: Optional[Callable[[], bool]] = None,
                      buffer_limit: int = 64 * 1024 * 1024,
                      coordinate_registrations: bool = False) -> BrokerCore:
    """
    The registry with its subscriptions, retained messages and (given a
    ``transport``) data plane, over ``replication``'s store or, without
    one, ``metadata``.  ``buffer_limit`` bounds each peer's unacknowledged
    bytes on the data plane.  ``coordinate_registrations`` serializes
    CONNECTs per client id across the cluster (it needs ``replication``,
    which knows the members, and ``transport``).
    """
    if replication is not None:
        metadata = replication.store
    if metadata is None:
        raise TypeError("build_broker_core needs metadata or replication")
    dataplane = (DataPlane(node, transport, clock, store, buffer_limit)
                 if transport is not None else None)
    if dataplane is not None and replication is not None:
        replication.confirmer.before_reply = dataplane.flush_to
        if replication.peers is not None:
            replication.peers.on_change(dataplane.keep_peers)
    coordinator = (RegistrationCoordinator(node, transport, clock, replication.members)
                   if coordinate_registrations and transport is not None
                   and replication is not None else None)
    registry = Registry(node, metadata, clock, limits, store,
                        session_expiration=session_expiration, ready=ready,
                        subscriptions=Subscriptions(node, metadata),
                        retain=RetainStore(metadata), dataplane=dataplane,
                        confirm=(replication.confirmer.confirm
                                 if replication is not None else None),
                        coordinator=coordinator)
    registry.subscription_table.on_adopted = registry.adopt
    return BrokerCore(registry, replication, store, transport)


def _reachable_others(cluster: MetadataNode,
                      transport: IClusterTransport) -> Callable[[], List[str]]:
    """The members a draining node may move its sessions to: reachable, not itself."""
    def others() -> List[str]:
        return [node for node in cluster.members()
                if node != cluster.node and transport.connected(node)]
    return others


def end_sessions_of_a_removed_node(registry: Registry) -> None:
    """
    This node was removed from its cluster: every session it holds ends
    here (:meth:`Registry.end_all_here`).  The cluster moved the persistent
    ones elsewhere (the leave re-homes them) and, with a per-node store,
    accepted the loss of their messages; a queue kept here would give one
    client id a second queue once this node joins again.
    """
    ended = registry.end_all_here()
    log.info("this node left its cluster: {count} sessions ended here", count=ended)


def queue_limits(config: Config) -> QueueLimits:
    return QueueLimits(
        max_inflight_messages=config.max_inflight_messages,
        max_online_messages=config.max_online_messages,
        max_offline_messages=config.max_offline_messages,
        queue_type=config.queue_type,
        retry_interval=config.retry_interval,
    )


def session_settings(config: Config) -> SessionSettings:
    return SessionSettings(
        max_client_id_size=config.max_client_id_size,
        topic_max_depth=config.topic_max_depth,
        max_keepalive=int(config.max_keepalive),
        max_subscriptions_per_client=config.max_subscriptions_per_client,
        allow_register_during_netsplit=config.allow_register_during_netsplit,
        allow_publish_during_netsplit=config.allow_publish_during_netsplit,
        allow_subscribe_during_netsplit=config.allow_subscribe_during_netsplit,
        allow_unsubscribe_during_netsplit=config.allow_unsubscribe_during_netsplit,
        protocol_versions=config.listener_allowed_protocol_versions,
        max_message_size=config.max_message_size,
        topic_alias_max_client=config.topic_alias_max_client,
        topic_alias_max_broker=config.topic_alias_max_broker,
        receive_max_broker=config.receive_max_broker,
        max_message_rate=config.max_message_rate,
    )


@attrs.define(slots=True, eq=False)
class Node:
    """One broker node's parts, and ``service``, the tree that runs them."""

    config: Config
    metadata: MetadataNode
    transport: TcpTransport
    readiness: Readiness
    store: IMessageStore
    registry: Registry
    authenticator: BrokerAuthenticator
    admin: AdminHandlers
    drain: Drain
    service: OrderedMultiService
    #: The node's metrics (``GET /metrics`` of its HTTP listeners).
    metrics: Any = None
    #: Why the node is not healthy now, or None (``GET /health``).
    health: Optional[Callable[[], Optional[str]]] = None
    #: What ``vmqtw-admin set`` changes (its ``log_filter`` is the console's).
    runtime: Optional[RuntimeSettings] = None
    #: The process's exit status: set when the node stops because it
    #: could not start (twistd's wiring makes the process end with it).
    exit_status: ExitStatus = attrs.field(factory=ExitStatus)


def _endpoint(reactor: Any, host: str, port: int) -> IStreamServerEndpoint:
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG, interface=host)
    return TCP4ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG, interface=host)


def _explaining(start: Callable[[], Any], explain: Callable[[Failure], Any]) -> Callable[[], Any]:
    """``start``, its failure replaced by ``explain(failure)`` (a StartupError naming the key)."""
    def explained() -> Any:
        def replace(failure: Failure) -> Any:
            raise explain(failure)
        return maybeDeferred(start).addErrback(replace)
    return explained


def _explained_steps(steps: List[Step], config: Config, store: IMessageStore) -> List[Step]:
    """
    The core's steps, with the failures an operator causes said in the
    words of the configuration: the clustering port taken, the message
    store's LevelDB locked or unreadable.
    """
    host, port = config.listener_vmq_clustering

    def transport_failure(failure: Failure) -> Any:
        return startup_error(failure, "listener.vmq.clustering", host, port)

    def store_failure(failure: Failure) -> Any:
        if isinstance(failure.value, OSError) and not isinstance(failure.value, StartupError):
            path = getattr(store, "path", config.data_dir)
            return StartupError(leveldb_sentence(config.data_dir, path, failure.value))
        return failure.value

    def metadata_failure(failure: Failure) -> Any:
        # plyvel.IOError is an OSError: a LevelDB lock held, unreadable files.
        if isinstance(failure.value, OSError) and not isinstance(failure.value, StartupError):
            return StartupError(leveldb_sentence(config.data_dir,
                                                 os.path.join(config.data_dir, "metadata"),
                                                 failure.value))
        return failure.value

    explain = {"cluster-transport": transport_failure, "message-store": store_failure,
               "metadata": metadata_failure}
    return [attrs.evolve(step, start=_explaining(step.start, explain[step.name]))
            if step.name in explain else step for step in steps]


def build_node(config: Config, reactor: Any) -> Node:
    """
    The whole node, not yet started.  Raises
    :class:`~vmqtw.config.ConfigError` before anything is opened when a
    file it names (auth, TLS) is missing or wrong.
    """
    from vmqtw.store.registry import find_store_factory

    # Password checks get their own small pool, so a connect storm cannot
    # starve the reactor's default pool (DNS lookups) or the reactor thread.
    pool = (ThreadPool(0, max(2, os.cpu_count() or 2), "vmqtw-passwd")
            if config.plugins_vmq_passwd else None)
    authenticator = BrokerAuthenticator.from_config(config, reactor, pool)
    # Read the auth files first: a missing one stops the node before it
    # opens a store or listens (ConfigError).
    authenticator.load()
    # Likewise the TLS certificate and key: checked before anything opens.
    tls_options = server_options_from_config(config)
    wss_options = wss_options_from_config(config)
    cluster_tls = cluster_tls_from_config(config)

    try:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        os.chmod(config.data_dir, 0o700)
    except OSError as error:
        raise data_dir_error(config.data_dir, error) from None

    # The cluster: metadata (subscriptions, retained messages, membership)
    # replicated over the inter-node transport.  On a lone node it still
    # keeps subscriptions and retained messages in LevelDB, so persistent
    # sessions survive a restart.
    clustering_host, _port = config.listener_vmq_clustering
    transport = TcpTransport(config.nodename, config.distributed_cookie.encode("utf-8"),
                             config.listener_vmq_clustering, reactor,
                             source_ip=clustering_host,
                             buffer_limit=config.outgoing_clustering_buffer_size,
                             heartbeat_interval=config.cluster_heartbeat_interval,
                             heartbeat_timeout=config.cluster_heartbeat_timeout,
                             tls=cluster_tls)
    # The metadata LevelDB opens with the node's first step, after twistd
    # forked (see ReplicatedMetadataStore.open); a lock held by another
    # node is found now, so a daemonized start still fails in the foreground.
    probe_leveldb_lock(config.data_dir, os.path.join(config.data_dir, "metadata"))
    cluster = MetadataNode(config.nodename, transport, reactor, data_dir=config.data_dir,
                           address=config.cluster_advertised_address,
                           lazy_tick=config.metadata_lazy_tick,
                           exchange_tick=config.metadata_exchange_tick,
                           gossip_interval=config.metadata_gossip_interval,
                           open_store_at_start=True)
    readiness = Readiness(cluster.peers)
    store = find_store_factory(config.message_store).build(config, reactor)
    core = build_broker_core(config.nodename, reactor, replication=cluster, store=store,
                             transport=transport, limits=queue_limits(config),
                             session_expiration=config.persistent_client_expiration,
                             ready=readiness,
                             buffer_limit=config.outgoing_clustering_buffer_size,
                             coordinate_registrations=config.coordinate_registrations)
    registry = core.registry
    registry.subscription_table.shared.policy = config.shared_subscription_policy
    if cluster.peers is not None:
        cluster.peers.on_removed(lambda: end_sessions_of_a_removed_node(registry))

    exit_status = ExitStatus()

    def fatal(failure: Failure) -> None:
        # Logged by the service tree; here the node only ends, non-zero.
        exit_status.fail()
        if getattr(reactor, "running", False):
            reactor.stop()

    top = OrderedMultiService(on_failure=fatal)
    settings = session_settings(config)
    if config.enhanced_auth_plugins:
        try:
            settings.enhanced_auth = build_enhanced_authenticators(
                config.enhanced_auth_plugins, config, reactor)
        except AuthPluginError as error:
            raise StartupError("enhanced_auth.plugins: %s" % (error,)) from None
    mqtt_counters = MqttCounters()
    # Every MQTT listener: the same protocol over TCP, TLS, WebSocket, secure
    # WebSocket; ``kinds`` keeps (kind, address) for vmqtw-admin listener show.
    listeners: List[IService] = []
    kinds: List[Tuple[str, Tuple[str, int], ListenerService]] = []
    turn_writes = TurnWrites()
    registry.as_one_read = turn_writes.as_one_read

    def mqtt_listeners(kind: str, key: str, table: Mapping[str, Tuple[str, int]],
                       listener_settings: SessionSettings, wrap: Callable[[Any], Any],
                       identity_from_certificate: bool = False) -> None:
        for name, (host, port) in sorted(table.items()):
            factory = MQTTFactory(registry, listener_settings, authenticator, reactor,
                                  max_packet_size=config.max_message_size,
                                  connect_timeout=config.connect_timeout,
                                  max_connections=config.listener_max_connections,
                                  identity_from_certificate=identity_from_certificate,
                                  counters=mqtt_counters, writes=turn_writes)
            service = ListenerService("listener.%s.%s" % (key, name),
                                      _endpoint(reactor, host, port), wrap(factory),
                                      on_failure=top.fail)
            listeners.append(service)
            kinds.append((kind, (host, port), service))

    ssl_settings = attrs.evolve(settings, use_identity_as_username=(
        config.listener_ssl_use_identity_as_username))
    wss_settings = attrs.evolve(settings, use_identity_as_username=(
        config.listener_wss_use_identity_as_username))
    mqtt_listeners("mqtt", "tcp", config.tcp_listeners, settings, lambda factory: factory)
    mqtt_listeners("mqtts", "ssl", config.ssl_listeners, ssl_settings,
                   lambda factory: TLSServerFactory(tls_options, factory, reactor),
                   identity_from_certificate=config.listener_ssl_cafile is not None)
    # WebSocket listeners: the same MQTT protocol, its bytes in binary messages.
    mqtt_listeners("mqttws", "ws", config.ws_listeners, settings,
                   lambda factory: MQTTWebSocketFactory(factory, reactor))
    mqtt_listeners("mqttwss", "wss", config.wss_listeners, wss_settings,
                   lambda factory: TLSServerFactory(
                       wss_options, MQTTWebSocketFactory(factory, reactor, secure=True),
                       reactor),
                   identity_from_certificate=config.listener_wss_cafile is not None)

    # Closed while this node is removed from its cluster, or drained for a leave.
    serving = MqttServing(listeners, cluster.peers)
    drain = Drain(registry, reactor, serving.suspend, _reachable_others(cluster, transport),
                  transport)

    metrics = node_registry(config.nodename, MetricSources(
        mqtt=mqtt_counters, queue=registry.counters,
        dataplane=registry.dataplane.counters if registry.dataplane is not None else None,
        links=transport.counters, auth=authenticator.counters, readiness=readiness,
        gauges=[
            ("router_subscriptions", "subscriptions routed on this node",
             lambda: len(registry.trie)),
            ("retain_messages", "retained messages", lambda: len(registry.retained)),
            ("queue_processes", "session queues on this node", lambda: len(registry.queues)),
            ("mqtt_sessions_online", "sessions with a connection on this node",
             lambda: len(registry.sessions)),
        ],
        totals=[("router_messages_routed",
                 "messages routed (published here or received from other nodes)",
                 lambda: registry.published),
                ("shared_subscription_messages_delivered",
                 "copies given to a shared subscription member's queue on this node",
                 lambda: registry.router.shared_counters.delivered),
                ("shared_subscription_messages_dropped",
                 "messages a shared subscription group had no member to take",
                 lambda: registry.router.shared_counters.dropped),
                ("shared_subscription_messages_requeued",
                 "QoS 1/2 messages of an ended member's session given to another member",
                 lambda: registry.router.shared_counters.requeued)]))
    admin = register_admin_handlers(transport, cluster, registry, readiness, drain=drain,
                                    metrics=metrics)
    # vmqtw-admin set/show: the knobs every listener's sessions and the queues read at use.
    runtime = RuntimeSettings.from_config(config, [settings, ssl_settings, wss_settings],
                                          registry)
    admin.settings = runtime
    admin.plugins = plugin_rows(config, store, cluster.store, authenticator,
                                settings.enhanced_auth)

    def health() -> Optional[str]:
        peers = cluster.peers
        unreachable = ([member for member, running in peers.cluster_status() if not running]
                       if peers is not None and not readiness.ready else [])
        return health_reason(serving=serving.serving,
                             removed=peers is not None and bool(peers.removed),
                             leaving=serving.suspended, unreachable=unreachable,
                             store_failing=bool(getattr(store, "failing", False)))

    # Monitoring stays up while MQTT is closed (removed, leaving): /health says why.
    monitoring = [
        ((host, port), ListenerService("listener.http." + name, _endpoint(reactor, host, port),
                                       monitoring_site(metrics, health), on_failure=top.fail,
                                       kind="HTTP"))
        for name, (host, port) in sorted(config.http_listeners.items())]
    http: List[IService] = [service for _address, service in monitoring]
    # What vmqtw-admin listener show/stop/start work on.
    admin.listeners = [
        ListenerInfo(kind, address, service, settings.mountpoint,
                     config.listener_max_connections)
        for kind, address, service in kinds] + [
        ListenerInfo("http", address, service) for address, service in monitoring]

    # $SYS/<nodename>/...: the metrics, every systree_interval.
    systree = (SysTree(config.nodename, registry_samples(metrics), registry.publish, reactor,
                       config.systree_interval, settings.mountpoint)
               if config.systree_enabled else None)

    # The start order, as one table; stopped in exact reverse.
    steps: List[IService] = [
        # metadata → message-store → registry → data-plane → cluster-transport
        *(step.service() for step in _explained_steps(core.steps(), config, store)),
        *([Step("passwd-pool", pool.start, pool.stop).service()] if pool is not None else []),
        Step("auth", authenticator.start, authenticator.stop).service(),
        Step("drain", lambda: None, drain.stop).service(),
        *([Step("systree", systree.start, systree.stop).service()] if systree is not None
          else []),
        *http,
        serving,
    ]
    for step in steps:
        top.addService(step)
    return Node(config=config, metadata=cluster, transport=transport, readiness=readiness,
                store=store, registry=registry, authenticator=authenticator, admin=admin, drain=drain,
                service=top, metrics=metrics, health=health, runtime=runtime,
                exit_status=exit_status)
