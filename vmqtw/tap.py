"""
Wiring: ``twistd vmqtw --config PATH`` builds a node from its configuration.

This is the only module (with the twistd plugin) that touches the global
reactor; everything it builds receives the reactor or clock it should use.
Start order: replicated metadata → cluster transport → message store →
registry (restores offline sessions) → auth → listeners; the
:class:`~vmqtw.service.OrderedMultiService` stops them in exact reverse.
"""
from __future__ import annotations

import os
import signal
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, Logger,
                            globalLogPublisher)
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from vmqtw import __version__
from vmqtw.admin.server import register_admin_handlers
from vmqtw.broker.auth import BrokerAuthenticator
from vmqtw.broker.queue import QueueLimits
from vmqtw.broker.registry import Registry
from vmqtw.broker.retain import RetainStore
from vmqtw.broker.subscriptions import Subscriptions
from vmqtw.config import Config, ConfigError, load_config
from vmqtw.cluster.dataplane import DataPlane
from vmqtw.cluster.link import TcpTransport
from vmqtw.cluster.readiness import Readiness
from vmqtw.metadata.node import MetadataNode
from vmqtw.mqtt.protocol import MQTTFactory
from vmqtw.mqtt.session import SessionSettings
from vmqtw.service import CallbackService, ListenerService, OrderedMultiService
from vmqtw.tls import TLSServerFactory, cluster_tls_from_config, server_options_from_config

log = Logger()

DEFAULT_CONFIG = os.path.join("etc", "vernemq.conf")


class Options(usage.Options):
    """``twistd vmqtw [--config PATH]``."""

    synopsis = "[--config PATH]"
    longdesc = ("Run a vmqtw MQTT broker node configured by a VerneMQ-style "
                "vernemq.conf file.")
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The node's configuration file."],
    ]

    def postOptions(self) -> None:
        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as error:
            # Not a UsageError: the command line was right, the file is not,
            # and the operator needs the file's problems, not twistd's usage.
            raise SystemExit("vmqtw: " + str(error)) from None


def _log_level_filter(level_name: str) -> None:
    """
    Apply ``log.console.level`` to whatever observers twistd installed.
    twistd offers no hook for this, so its observers are wrapped in place.
    """
    # The schema says "warning"; Twisted names that level "warn".
    level = LogLevel.levelWithName({"warning": "warn"}.get(level_name, level_name))
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observers = list(getattr(globalLogPublisher, "_observers", ()))
    for observer in observers:
        if isinstance(observer, FilteringLogObserver):
            continue
        globalLogPublisher.removeObserver(observer)
        globalLogPublisher.addObserver(FilteringLogObserver(observer, [predicate]))


#: Listen backlog: Twisted's default of 50 drops SYNs in a connect burst
#: (each costing the client a 1 s retransmit).
LISTEN_BACKLOG = 1024


def _endpoint(reactor: Any, host: str, port: int) -> Any:
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG, interface=host)
    return TCP4ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG, interface=host)


def build_node(config: Config, reactor: Any) -> OrderedMultiService:
    """The whole service tree of one node, not yet started."""
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
    cluster_tls = cluster_tls_from_config(config)

    os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    os.chmod(config.data_dir, 0o700)

    def fatal(failure: Any) -> None:
        log.critical("node cannot start: {error}", error=failure.getErrorMessage())
        if reactor.running:
            reactor.stop()

    top = OrderedMultiService(on_failure=fatal)
    # The cluster: metadata (subscriptions, retained messages, membership)
    # replicated over the inter-node transport.  On a lone node it still
    # keeps subscriptions and retained messages in LevelDB, so persistent
    # sessions survive a restart.
    clustering_host, _port = config.listener_vmq_clustering
    transport = TcpTransport(config.nodename, config.distributed_cookie.encode("utf-8"),
                             config.listener_vmq_clustering, reactor,
                             source_ip=clustering_host,
                             buffer_limit=config.outgoing_clustering_buffer_size,
                             tls=cluster_tls)
    cluster = MetadataNode(config.nodename, transport, reactor, data_dir=config.data_dir,
                           address=config.cluster_advertised_address,
                           lazy_tick=config.metadata_lazy_tick,
                           exchange_tick=config.metadata_exchange_tick,
                           gossip_interval=config.metadata_gossip_interval)
    metadata = cluster.store
    top.addService(CallbackService("metadata", cluster.start, cluster.stop))
    top.addService(CallbackService("cluster-transport", transport.start, transport.stop))
    readiness = Readiness(cluster.peers)
    store = find_store_factory(config.message_store).build(config, reactor)
    top.addService(CallbackService("message-store", store.open, store.close))

    limits = QueueLimits(
        max_inflight_messages=config.max_inflight_messages,
        max_online_messages=config.max_online_messages,
        max_offline_messages=config.max_offline_messages,
        queue_type=config.queue_type,
        retry_interval=config.retry_interval,
    )
    registry = Registry(config.nodename, metadata, reactor, limits, store,
                        session_expiration=config.persistent_client_expiration,
                        ready=readiness,
                        subscriptions=Subscriptions(config.nodename, metadata),
                        retain=RetainStore(metadata),
                        dataplane=DataPlane(config.nodename, transport, reactor, store,
                                            config.outgoing_clustering_buffer_size),
                        confirm=cluster.confirmer.confirm)

    @inlineCallbacks
    def start_registry() -> Any:
        registry.start()
        yield registry.restore()
        yield registry.receive_from_peers()

    top.addService(CallbackService("registry", start_registry, registry.stop))

    settings = SessionSettings(
        max_client_id_size=config.max_client_id_size,
        topic_max_depth=config.topic_max_depth,
        max_keepalive=int(config.max_keepalive),
        max_subscriptions_per_client=config.max_subscriptions_per_client,
        allow_register_during_netsplit=config.allow_register_during_netsplit,
        allow_publish_during_netsplit=config.allow_publish_during_netsplit,
        allow_subscribe_during_netsplit=config.allow_subscribe_during_netsplit,
        allow_unsubscribe_during_netsplit=config.allow_unsubscribe_during_netsplit,
    )
    if pool is not None:
        top.addService(CallbackService("passwd-pool", pool.start, pool.stop))
    top.addService(CallbackService("auth", authenticator.start, authenticator.stop))

    for name, (host, port) in sorted(config.tcp_listeners.items()):
        factory = MQTTFactory(registry, settings, authenticator, reactor,
                              max_packet_size=config.max_message_size,
                              connect_timeout=config.connect_timeout,
                              max_connections=config.listener_max_connections)
        top.addService(ListenerService("listener.tcp." + name, _endpoint(reactor, host, port),
                                       factory, on_failure=fatal))
    tls_settings = attrs.evolve(
        settings, use_identity_as_username=config.listener_ssl_use_identity_as_username)
    for name, (host, port) in sorted(config.ssl_listeners.items()):
        factory = MQTTFactory(registry, tls_settings, authenticator, reactor,
                              max_packet_size=config.max_message_size,
                              connect_timeout=config.connect_timeout,
                              max_connections=config.listener_max_connections,
                              identity_from_certificate=config.listener_ssl_cafile is not None)
        top.addService(ListenerService("listener.ssl." + name, _endpoint(reactor, host, port),
                                       TLSServerFactory(tls_options, factory, reactor),
                                       on_failure=fatal))
    top.registry = registry  # type: ignore[attr-defined]
    top.cluster = cluster  # type: ignore[attr-defined]
    top.transport = transport  # type: ignore[attr-defined]
    top.readiness = readiness  # type: ignore[attr-defined]
    top.authenticator = authenticator  # type: ignore[attr-defined]
    top.admin = register_admin_handlers(transport, cluster, registry, readiness)  # type: ignore[attr-defined]
    return top


def _reload_on_sighup(reactor: Any, reload: Any) -> None:
    """
    ``kill -HUP`` re-reads the password and ACL files.  The handler only
    hands the work to the reactor thread; it is installed once the reactor
    runs and the previous handler is put back at shutdown.
    """
    def install() -> None:
        previous = signal.signal(signal.SIGHUP,
                                 lambda signum, frame: reactor.callFromThread(reload))
        reactor.addSystemEventTrigger("after", "shutdown", signal.signal, signal.SIGHUP,
                                      previous)

    reactor.addSystemEventTrigger("after", "startup", install)


def makeService(options: Options) -> IService:
    """twistd's entry point (see ``twisted/plugins/vmqtw_plugins.py``)."""
    from twisted.internet import reactor

    config: Config = options["loaded"]
    try:
        node = build_node(config, reactor)
    except ConfigError as error:
        raise SystemExit("vmqtw: " + str(error)) from None
    _reload_on_sighup(reactor, node.authenticator.reload)  # type: ignore[attr-defined]
    node.before_start = lambda: _log_level_filter(config.log_console_level)
    log.info("vmqtw {version} node {node} starting (config {config})",
             version=__version__, node=config.nodename, config=config.source)
    return node
