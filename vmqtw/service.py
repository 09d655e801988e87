"""
The service tree of a node, started in dependency order and stopped in the
exact reverse, each step awaited.

Twisted's ``MultiService`` stops its children concurrently; a broker must
not: listeners close first (no new work arrives), then the registry parks
sessions, then the stores flush and close.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure


class OrderedMultiService(MultiService):
    """
    Starts children in the order added, each once the previous one is ready
    (a child may expose a ``started`` Deferred, e.g. a store that restores
    state); stops them in reverse, one by one.  ``on_failure`` is called
    with the Failure when a step cannot start.
    """

    log = Logger()

    def __init__(self, on_failure: Optional[Callable[[Any], None]] = None) -> None:
        MultiService.__init__(self)
        self.on_failure = on_failure
        self.ready: Optional[Deferred] = None
        #: Called once twistd's logging is up and before anything starts
        #: (e.g. to apply ``log.console.level`` to its observers).
        self.before_start: Optional[Callable[[], None]] = None

    def privilegedStartService(self) -> None:
        if self.before_start is not None:
            self.before_start()
        MultiService.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        self.ready = self._start_in_order()

    @inlineCallbacks
    def _start_in_order(self) -> Any:
        for child in list(self):
            if not self.running:
                return
            self.log.debug("starting {name}", name=child.name)
            try:
                child.startService()
                yield getattr(child, "started", None)
            except Exception:
                self.log.failure("starting {name} failed", name=child.name)
                if self.on_failure is not None:
                    self.on_failure(Failure())
                return

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for child in reversed(list(self)):
            if not child.running:
                continue
            self.log.info("stopping {name}", name=child.name)
            try:
                yield maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("stopping {name} failed", name=child.name)


class CallbackService(Service):
    """
    A step of the lifecycle given as two callables, so that domain objects
    need not know about ``twisted.application``.
    """

    def __init__(self, name: str, start: Callable[[], Any],
                 stop: Optional[Callable[[], Any]] = None) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop
        self.started: Optional[Deferred] = None

    def startService(self) -> None:
        Service.startService(self)
        self.started = maybeDeferred(self._start)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self._stop is None:
            return None
        return maybeDeferred(self._stop)


class ListenerService(Service):
    """
    One MQTT listener.  Stopping it stops accepting and then closes every
    connection it accepted.
    """

    log = Logger()

    def __init__(self, name: str, endpoint: Any, factory: Any,
                 on_failure: Optional[Callable[[Any], None]] = None) -> None:
        self.setName(name)
        self.endpoint = endpoint
        self.factory = factory
        #: Called with the Failure when the port cannot be opened (the node
        #: stops: a broker that cannot serve must not pretend to run).
        self.on_failure = on_failure
        self.port: Any = None
        self.listening: Optional[Deferred] = None

    def startService(self) -> None:
        Service.startService(self)
        self.listening = self.endpoint.listen(self.factory)

        def listening(port: Any) -> Any:
            self.port = port
            address = port.getHost()
            self.log.info("listener {name} accepting MQTT on {host}:{port}",
                          name=self.name, host=address.host, port=address.port)
            return port

        def failed(failure: Any) -> None:
            self.log.critical("listener {name} cannot listen: {error}", name=self.name,
                              error=failure.getErrorMessage())
            if self.on_failure is not None:
                self.on_failure(failure)

        self.listening.addCallbacks(listening, failed)

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            yield maybeDeferred(self.port.stopListening)
            self.port = None
        connections: List[Any] = list(getattr(self.factory, "connections", ()))
        for connection in connections:
            # MQTT connections say goodbye to MQTT 5.0 clients (0x8B).
            getattr(connection, "shut_down", connection.abort)()
