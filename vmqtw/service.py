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
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmqtw.startup import StartupError, startup_error


class OrderedMultiService(MultiService):
    """
    Starts children in the order added, each once the previous one is ready
    (a child may expose a ``started`` Deferred, e.g. a store that restores
    state); stops them in reverse, one by one.

    A step that cannot start (or a listener, through :meth:`fail`) is
    logged once: a :class:`~vmqtw.startup.StartupError` as its sentence
    alone, anything else with its traceback.  Then ``on_failure`` is called
    with the Failure, except with ``raise_at_once`` when the failure came
    while :meth:`startService` still runs (twistd calls it before the
    reactor runs, and before a daemon tells its parent it started): then
    what started is stopped as far as it can without a reactor and
    ``startService`` raises StartupError, so twistd fails.
    """

    log = Logger()

    def __init__(self, on_failure: Optional[Callable[[Any], None]] = None,
                 raise_at_once: bool = False) -> None:
        MultiService.__init__(self)
        self.on_failure = on_failure
        self.raise_at_once = raise_at_once
        self.ready: Optional[Deferred] = None
        #: The first Failure of a step that could not start.
        self.failure: Optional[Failure] = None
        self._in_start = False
        #: Called once twistd's logging is up and before anything starts
        #: (e.g. to apply ``log.console.level`` to its observers).
        self.before_start: Optional[Callable[[], None]] = None

    def privilegedStartService(self) -> None:
        if self.before_start is not None:
            self.before_start()
        MultiService.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        self._in_start = True
        try:
            self.ready = self._start_in_order()
        finally:
            self._in_start = False
        if self.failure is not None and self.raise_at_once:
            self._abandon()
            error = self.failure.value
            if isinstance(error, StartupError):
                raise error
            raise StartupError("node cannot start: %s" % (self.failure.getErrorMessage(),))

    def fail(self, failure: Failure, name: str = "") -> None:
        """A step or a listener cannot start: log it once, then give up."""
        if self.failure is not None:
            return
        self.failure = failure
        if failure.check(StartupError):
            self.log.critical("{sentence}", sentence=str(failure.value))
        else:
            self.log.failure("starting {name} failed", failure, name=name)
        if self._in_start and self.raise_at_once:
            return
        if self.on_failure is not None:
            self.on_failure(failure)

    def _abandon(self) -> None:
        """
        Stop every running step, in reverse, without waiting for any (the
        reactor does not run yet, so a Deferred may never fire): listening
        ports and files close, thread pools stop, before twistd fails.
        """
        Service.stopService(self)
        for child in reversed(list(self)):
            if child.running:
                try:
                    maybeDeferred(child.stopService).addErrback(lambda _: None)
                except Exception:
                    pass

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
                self.fail(Failure(), child.name)
                return
            if self.failure is not None:
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
    One listener (MQTT, or the monitoring HTTP).  Stopping it stops
    accepting and then closes every connection it accepted.
    """

    log = Logger()

    def __init__(self, name: str, endpoint: Any, factory: Any,
                 on_failure: Optional[Callable[[Any], None]] = None, kind: str = "MQTT") -> None:
        self.setName(name)
        #: What it serves, for the log line ("MQTT", "HTTP").
        self.kind = kind
        self.endpoint = endpoint
        self.factory = factory
        #: Called with the Failure (a StartupError naming this listener's
        #: key when the port cannot be bound) when the port cannot be
        #: opened: the node stops, a broker that cannot serve must not
        #: pretend to run.
        self.on_failure = on_failure
        self.port: Any = None
        self.listening: Optional[Deferred] = None

    def startService(self) -> None:
        Service.startService(self)
        self.listening = self.endpoint.listen(self.factory)

        def listening(port: Any) -> Any:
            self.port = port
            address = port.getHost()
            self.log.info("listener {name} accepting {kind} on {host}:{port}",
                          name=self.name, kind=self.kind, host=address.host, port=address.port)
            return port

        def failed(failure: Any) -> None:
            error = startup_error(failure, str(self.name))
            if self.on_failure is not None:
                self.on_failure(Failure(error) if error is not failure.value else failure)
            else:
                self.log.critical("{sentence}", sentence=str(error))

        self.listening.addCallbacks(listening, failed)

    @property
    def accepting(self) -> bool:
        """Whether it accepts connections now."""
        return self.port is not None

    def connection_count(self) -> int:
        return len(getattr(self.factory, "connections", ()))

    @inlineCallbacks
    def pause_accepting(self, kill: bool = False) -> Any:
        """
        ``vmqtw-admin listener stop``: stop accepting; the connections stay
        unless ``kill`` (``-k``) closes them too.
        """
        if self.port is not None:
            port, self.port = self.port, None
            yield maybeDeferred(port.stopListening)
        if kill:
            for connection in list(getattr(self.factory, "connections", ())):
                connection.abort("listener stopped by vmqtw-admin")

    def resume_accepting(self) -> Deferred:
        """
        ``vmqtw-admin listener start``: accept again.  A failure (the port
        taken meanwhile) goes to the caller, not to ``on_failure``: the node
        runs on without this listener.
        """
        if self.port is not None:
            return succeed(self.port)
        listening: Deferred = self.endpoint.listen(self.factory)

        def listened(port: Any) -> Any:
            self.port = port
            return port
        return listening.addCallback(listened)

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            yield maybeDeferred(self.port.stopListening)
            self.port = None
        connections: List[Any] = list(getattr(self.factory, "connections", ()))
        for connection in connections:
            # MQTT connections say goodbye to MQTT 5.0 clients (0x8B).
            shut_down = getattr(connection, "shut_down", None)
            if shut_down is not None:
                shut_down()
            else:
                connection.abort("listener closed (server shutdown or leave)")
