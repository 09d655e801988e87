"""
Wiring: ``twistd vmqtw --config PATH`` builds a node from its configuration.

This is the only module (with the twistd plugin) that touches the global
reactor; everything it builds receives the reactor or clock it should use.
Start order: metadata store → message store → registry → listeners; the
:class:`~vmqtw.service.OrderedMultiService` stops them in reverse.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

from twisted.application.service import IService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, Logger,
                            globalLogPublisher)
from twisted.python import usage

from vmqtw import __version__
from vmqtw.broker.queue import QueueLimits
from vmqtw.broker.registry import Registry
from vmqtw.config import Config, ConfigError, load_config
from vmqtw.metadata.local import LocalMetadataStore
from vmqtw.mqtt.protocol import MQTTFactory
from vmqtw.mqtt.session import AnonymousGate, SessionSettings
from vmqtw.service import CallbackService, ListenerService, OrderedMultiService

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
            raise usage.UsageError(str(error)) from None


def _log_level_filter(level_name: str) -> None:
    """
    Apply ``log.console.level`` to whatever observers twistd installed.
    twistd offers no hook for this, so its observers are wrapped in place.
    """
    level = LogLevel.levelWithName(level_name)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observers = list(getattr(globalLogPublisher, "_observers", ()))
    for observer in observers:
        if isinstance(observer, FilteringLogObserver):
            continue
        globalLogPublisher.removeObserver(observer)
        globalLogPublisher.addObserver(FilteringLogObserver(observer, [predicate]))


def _endpoint(reactor: Any, host: str, port: int) -> Any:
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, interface=host)
    return TCP4ServerEndpoint(reactor, port, interface=host)


def build_node(config: Config, reactor: Any) -> OrderedMultiService:
    """The whole service tree of one node, not yet started."""
    from vmqtw.store.registry import find_store_factory

    os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    os.chmod(config.data_dir, 0o700)

    top = OrderedMultiService()
    metadata = LocalMetadataStore()
    store = find_store_factory(config.message_store).build(config, reactor)
    top.addService(CallbackService("message-store", store.open, store.close))

    limits = QueueLimits(
        max_inflight_messages=config.max_inflight_messages,
        max_online_messages=config.max_online_messages,
        max_offline_messages=config.max_offline_messages,
        queue_type=config.queue_type,
        retry_interval=config.retry_interval,
    )
    registry = Registry(config.nodename, metadata, reactor, limits, store)
    top.addService(CallbackService("registry", registry.start, registry.stop))

    settings = SessionSettings(
        max_client_id_size=config.max_client_id_size,
        topic_max_depth=config.topic_max_depth,
        max_keepalive=int(config.max_keepalive),
        max_subscriptions_per_client=config.max_subscriptions_per_client,
    )
    authenticator = AnonymousGate(config.allow_anonymous)

    def cannot_listen(failure: Any) -> None:
        if reactor.running:
            reactor.stop()

    for name, (host, port) in sorted(config.tcp_listeners.items()):
        factory = MQTTFactory(registry, settings, authenticator, reactor,
                              max_packet_size=config.max_message_size,
                              connect_timeout=config.connect_timeout,
                              max_connections=config.listener_max_connections)
        top.addService(ListenerService("listener.tcp." + name, _endpoint(reactor, host, port),
                                       factory, on_failure=cannot_listen))
    top.registry = registry  # type: ignore[attr-defined]
    return top


def makeService(options: Options) -> IService:
    """twistd's entry point (see ``twisted/plugins/vmqtw_plugins.py``)."""
    from twisted.internet import reactor

    config: Config = options["loaded"]
    node = build_node(config, reactor)
    reactor.callWhenRunning(_log_level_filter, config.log_console_level)
    log.info("vmqtw {version} node {node} starting (config {config})",
             version=__version__, node=config.nodename, config=config.source)
    return node
