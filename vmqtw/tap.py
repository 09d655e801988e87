"""
Wiring: ``twistd vmqtw --config PATH`` builds a node from its configuration.

This is the only module (with the twistd plugin) that touches the global
reactor; everything it builds receives the reactor or clock it should use.
The node itself, its parts and their start order, is built by
:func:`vmqtw.node.build_node`.
"""
from __future__ import annotations

import gc
import os
import signal
from typing import Any

from twisted.application.service import IService
from twisted.logger import (FilteringLogObserver, LogLevelFilterPredicate, Logger,
                            globalLogPublisher)
from twisted.python import usage

from vmqtw import __version__
from vmqtw.config import Config, ConfigError, load_config
from vmqtw.node import build_node
from vmqtw.startup import StartupError, install_excepthook, listener_addresses, probe_listeners

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


def _log_level_filter(predicate: LogLevelFilterPredicate) -> None:
    """
    Put ``predicate`` (``log.console.level``, changed at run time by
    ``vmqtw-admin set``) in front of whatever observers twistd installed.
    twistd offers no hook for this, so its observers are wrapped in place.
    """
    observers = list(getattr(globalLogPublisher, "_observers", ()))
    for observer in observers:
        if isinstance(observer, FilteringLogObserver):
            continue
        globalLogPublisher.removeObserver(observer)
        globalLogPublisher.addObserver(FilteringLogObserver(observer, [predicate]))


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


def _freeze_startup_heap() -> None:
    """
    What exists once the node started (modules, configuration, restored
    state) lives as long as the node: it is moved out of the cyclic garbage
    collector's sight, so that the full collections that growing queues
    trigger under load stop re-scanning it.  Each such pass took tens of
    milliseconds, a stall for every connection (see benchmarks/README.md).
    """
    gc.collect()
    gc.freeze()


def makeService(options: Options) -> IService:
    """twistd's entry point (see ``twisted/plugins/vmqtw_plugins.py``)."""
    from twisted.internet import reactor

    config: Config = options["loaded"]
    try:
        # What can be checked before twistd daemonizes is checked here, so
        # that the command itself fails with the sentence: the ports (a
        # probe; the listeners still catch a port taken after it) and, in
        # build_node, the files and the metadata LevelDB's lock.
        probe_listeners(listener_addresses(config))
        node = build_node(config, reactor)
    except (ConfigError, StartupError) as error:
        raise SystemExit("vmqtw: " + str(error)) from None
    # Later failures: raised out of startService while twistd starts the
    # node (before a daemon reports success to its parent), printed as one
    # sentence; once the reactor runs, the exit status says it.
    node.service.raise_at_once = True
    install_excepthook()
    node.exit_status.install()
    _reload_on_sighup(reactor, node.authenticator.reload)
    reactor.addSystemEventTrigger("after", "startup", _freeze_startup_heap)
    runtime = node.runtime
    if runtime is not None:
        log_filter = runtime.log_filter
        node.service.before_start = lambda: _log_level_filter(log_filter)
    log.info("vmqtw {version} node {node} starting (config {config})",
             version=__version__, node=config.nodename, config=config.source)
    return node.service
