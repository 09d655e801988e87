"""
Calls and casts between nodes, as a cluster transport sees them: without
sockets, frames or peers' addresses.

:class:`CallTable` numbers outgoing calls and keeps each one until its reply
arrives, its timeout passes, the caller cancels it or the link to its peer
goes down (then it fails with :class:`~vmqtw.errors.PeerUnreachable`: a reply
written to a link that died is lost, and waiting for the timeout would only
hide that).  :class:`Dispatcher` hands incoming casts and calls to the
handlers registered for their channel or method and turns a handler's result
or failure into a reply.

Both are pure apart from timers: the clock is injected, so they are tested
on ``task.Clock`` without any transport (``tests/test_cluster_calls.py``),
and how replies reach the wire is the caller's business (``ReplySender``).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from vmqtw.errors import CallTimeout, PeerUnreachable, RemoteCallError

__all__ = ["CallTable", "Dispatcher", "ReplySender", "CastHandler",
           "CallHandler"]

# One namespace for every part of the TCP transport, as before the split,
# so operators' log filters keep working.
log = Logger(namespace="vmqtw.cluster.link")

#: ``send(peer, call_id, ok, value)``: write a reply to ``peer``.
ReplySender = Callable[[str, Any, bool, Any], None]
#: ``handler(peer, message)`` for the casts of one channel.
CastHandler = Callable[[str, Any], Any]
#: ``handler(peer, *args)`` returning a value or a Deferred.
CallHandler = Callable[..., Any]


@attrs.define(slots=True, eq=False)
class _PendingCall:
    peer: str
    deferred: "defer.Deferred[Any]"
    timer: IDelayedCall


class CallTable:
    """
    Outgoing calls waiting for a reply.

    The caller takes an id with :meth:`next_id`, writes the call frame and,
    only when that worked, :meth:`track`\\ s it: a call that never left
    must not wait for a timeout.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._calls: Dict[int, _PendingCall] = {}
        self._ids: Iterator[int] = itertools.count(1)

    def __len__(self) -> int:
        return len(self._calls)

    def next_id(self) -> int:
        """A fresh call id (ids are never reused)."""
        return next(self._ids)

    def track(self, call_id: int, peer: str,
              timeout: float) -> "defer.Deferred[Any]":
        """
        The Deferred of call ``call_id`` to ``peer``: fires with the
        reply's value, fails with :class:`RemoteCallError`,
        :class:`CallTimeout` after ``timeout`` seconds, or
        :class:`PeerUnreachable`.  Cancelling it forgets the call.
        """
        def cancel(_d: "defer.Deferred[Any]") -> None:
            self._forget(call_id)

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        timer = self._clock.callLater(timeout, self._timed_out, call_id,
                                      timeout)
        self._calls[call_id] = _PendingCall(peer, d, timer)
        return d

    def reply(self, call_id: Any, ok: bool, value: Any) -> None:
        """A reply arrived; one for a forgotten call is ignored."""
        pending = self._forget(call_id)
        if pending is None:
            return  # timed out or cancelled already
        if ok:
            pending.deferred.callback(value)
        else:
            pending.deferred.errback(RemoteCallError(value))

    def peer_down(self, peer: str) -> None:
        """The link to ``peer`` is gone: its calls never get a reply."""
        for call_id, pending in list(self._calls.items()):
            if pending.peer == peer:
                self._fail(call_id, PeerUnreachable(
                    "%s went down during the call" % (peer,)))

    def fail_all(self, exc: Exception) -> None:
        """Fail every pending call with ``exc`` (the transport stopped)."""
        for call_id in list(self._calls):
            self._fail(call_id, exc)

    def _forget(self, call_id: Any) -> Optional[_PendingCall]:
        pending = self._calls.pop(call_id, None)
        if pending is not None and pending.timer.active():
            pending.timer.cancel()
        return pending

    def _fail(self, call_id: int, exc: Exception) -> None:
        pending = self._forget(call_id)
        if pending is not None:
            pending.deferred.errback(exc)

    def _timed_out(self, call_id: int, timeout: float) -> None:
        pending = self._calls.get(call_id)
        if pending is not None:
            self._fail(call_id, CallTimeout(
                "no reply from %s within %ss" % (pending.peer, timeout)))


class Dispatcher:
    """
    Incoming casts and calls to their handlers.

    A failing cast handler is logged and forgotten (a cast has nobody to
    tell); a failing call handler becomes a reply ``(False, "Type: text")``
    that the caller sees as :class:`RemoteCallError`.
    """

    def __init__(self) -> None:
        self._cast_handlers: Dict[str, CastHandler] = {}
        self._call_handlers: Dict[str, CallHandler] = {}

    def register_cast_handler(self, channel: str,
                              handler: CastHandler) -> None:
        self._cast_handlers[channel] = handler

    def register_call_handler(self, method: str,
                              handler: CallHandler) -> None:
        self._call_handlers[method] = handler

    def cast(self, peer: str, channel: str, message: Any) -> None:
        handler = self._cast_handlers.get(channel)
        if handler is None:
            log.debug("cast on unknown channel {channel} from {peer}",
                      channel=channel, peer=peer)
            return
        try:
            handler(peer, message)
        except Exception:
            log.failure("cast handler for {channel} failed", channel=channel)

    def call(self, peer: str, call_id: Any, method: str,
             args: Tuple[Any, ...], send: ReplySender) -> None:
        """Run the handler of ``method``; ``send`` its reply, now or later."""
        handler = self._call_handlers.get(method)
        if handler is None:
            send(peer, call_id, False, "UnknownMethod: %r" % (method,))
            return
        d = defer.maybeDeferred(handler, peer, *args)

        def ok(value: Any) -> None:
            send(peer, call_id, True, value)

        def failed(f: Failure) -> None:
            kind = f.type.__name__ if f.type is not None else "Error"
            send(peer, call_id, False, "%s: %s" % (kind, f.getErrorMessage()))

        d.addCallbacks(ok, failed)
        d.addErrback(lambda f: log.failure("reply to {method} failed",
                                           f, method=method))
