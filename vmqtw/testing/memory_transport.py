"""
An in-memory :class:`IClusterTransport` for deterministic simulations.

Every node of a simulated cluster gets a transport from one
:class:`InMemoryNetwork`, which owns the links and a delivery queue driven
by an injected ``IReactorTime`` (a ``task.Clock`` in tests): nothing moves
until the clock is advanced, ``clock.advance(0)`` delivers every message
that is due (and the cascade they cause), and ordering is FIFO per link.

Why it serialises: messages are msgpack-encoded at ``cast`` time and decoded
at delivery, exactly as the TCP transport does, so code that passes lists
where tuples are expected or unserialisable objects fails here first, and
byte counts are real.

Faults a test can inject: partitions (``partition([{A}, {B, C}])`` /
``heal()``), drops by predicate, per-link delays, crashed nodes (``stop``).
Messages in flight on a link that goes down are lost, as on a real cut.
"""
from __future__ import annotations

import heapq
import itertools
from collections import Counter
from typing import (Any, Callable, Dict, Iterable, List, Optional, Set,
                    Tuple)

import msgpack
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from vmqtw.errors import CallTimeout, PeerUnreachable, RemoteCallError
from vmqtw.interfaces import IClusterTransport

__all__ = ["InMemoryNetwork", "InMemoryTransport", "PeerUnreachable",
           "RemoteCallError"]

log = Logger()

DropPredicate = Callable[[str, str, str, Any], bool]


def _encode(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    """Like the TCP wire: extension types are not plain data."""
    raise ValueError("msgpack extension type %d on the wire" % (code,))


def _decode(data: bytes) -> Any:
    return msgpack.unpackb(data, use_list=False, raw=False,
                           strict_map_key=False, ext_hook=_no_ext)


def _kind(message: Any) -> Any:
    """The counter type of a cast: its first element when it is a str tag."""
    if isinstance(message, tuple) and message and isinstance(message[0], str):
        return message[0]
    return None


class InMemoryNetwork:
    """
    The simulated wire between :class:`InMemoryTransport` instances.

    ``counters[(channel, type)]`` counts messages sent (casts by their tag,
    calls as ``("call", method)``, replies as ``("reply", method)``);
    ``dropped`` counts the same keys for messages lost to a fault.
    """

    def __init__(self, clock: IReactorTime, serialize: bool = True) -> None:
        self.clock = clock
        self.serialize = serialize
        self.counters: Counter = Counter()
        self.dropped: Counter = Counter()
        self.bytes_sent = 0
        self._transports: Dict[str, InMemoryTransport] = {}
        self._groups: Optional[Dict[str, int]] = None
        self._drops: List[DropPredicate] = []
        self._delays: Dict[Tuple[str, str], float] = {}
        self._up: Set[Tuple[str, str]] = set()
        self._queue: List[tuple] = []
        self._seq = itertools.count()
        self._last: Dict[Tuple[str, str], float] = {}
        self._pump_call: Optional[IDelayedCall] = None

    # -- nodes ---------------------------------------------------------------
    def transport(self, node: str) -> "InMemoryTransport":
        """
        The transport of ``node``: a new one when the node has none or its
        previous one was stopped (a restarted process).
        """
        old = self._transports.get(node)
        if old is not None and not old._stopped:
            return old
        transport = InMemoryTransport(self, node)
        self._transports[node] = transport
        return transport

    def _live(self, node: str) -> Optional["InMemoryTransport"]:
        t = self._transports.get(node)
        if t is None or not t._started or t._stopped:
            return None
        return t

    # -- faults --------------------------------------------------------------
    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut every link between different ``groups``; unlisted nodes are
        cut from everyone."""
        self._groups = {}
        for index, group in enumerate(groups):
            for node in group:
                self._groups[node] = index
        self._recompute()

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self._groups = None
        self._recompute()

    def drop(self, predicate: DropPredicate) -> Callable[[], None]:
        """
        Drop every message for which ``predicate(src, dst, channel,
        message)`` is true (``channel`` is ``"call"``/``"reply"`` for RPC,
        with ``(method, args)`` / ``(method, result)`` as message).  Returns the undo callable.
        """
        self._drops.append(predicate)
        return lambda: self._drops.remove(predicate)

    def set_delay(self, src: str, dst: str, seconds: float) -> None:
        """Delay messages from ``src`` to ``dst`` (FIFO is kept)."""
        self._delays[(src, dst)] = seconds

    def linked(self, a: str, b: str) -> bool:
        """True while the link between ``a`` and ``b`` is up."""
        return (min(a, b), max(a, b)) in self._up

    def count(self, channel: str, kind: Any = None) -> int:
        """Messages sent on ``channel`` (of one ``kind`` if given)."""
        if kind is not None:
            return self.counters[(channel, kind)]
        return sum(v for (c, _), v in self.counters.items() if c == channel)

    def reset_counters(self) -> None:
        self.counters.clear()
        self.dropped.clear()
        self.bytes_sent = 0

    # -- links ---------------------------------------------------------------
    def _wanted(self, a: str, b: str) -> bool:
        ta, tb = self._live(a), self._live(b)
        if ta is None or tb is None:
            return False
        if b not in ta._addresses and a not in tb._addresses:
            return False
        if self._groups is not None:
            ga, gb = self._groups.get(a), self._groups.get(b)
            if ga is None or gb is None or ga != gb:
                return False
        return True

    def _recompute(self) -> None:
        nodes = sorted(self._transports)
        new = {(a, b) for a, b in itertools.combinations(nodes, 2)
               if self._wanted(a, b)}
        down = sorted(self._up - new)
        up = sorted(new - self._up)
        self._up = new
        for a, b in down:
            for x, y in ((a, b), (b, a)):
                t = self._transports.get(x)
                if t is not None:
                    t._peer_down(y)
        for a, b in up:
            for x, y in ((a, b), (b, a)):
                self._transports[x]._peer_up(y)

    # -- delivery ------------------------------------------------------------
    def _send(self, src: "InMemoryTransport", dst: str, channel: str,
              key: Tuple[str, Any], message: Any, deliver: Callable,
              inspect: Any) -> bool:
        self.counters[key] += 1
        # Encode first, as the TCP transport does: a message that is not
        # plain data raises TypeError whether the link is up or not.
        data = _encode(message) if self.serialize else message
        if not self.linked(src.node, dst):
            self.dropped[key] += 1
            return False
        for predicate in self._drops:
            if predicate(src.node, dst, channel, inspect):
                self.dropped[key] += 1
                return True
        if self.serialize:
            self.bytes_sent += len(data)
        now = self.clock.seconds()
        link = (src.node, dst)
        at = max(now + self._delays.get(link, 0.0), self._last.get(link, 0.0))
        self._last[link] = at
        target = self._transports[dst]
        heapq.heappush(self._queue, (at, next(self._seq), src.node, target,
                                     key, data, deliver))
        self._schedule()
        return True

    def _schedule(self) -> None:
        if not self._queue:
            return
        at = self._queue[0][0]
        if self._pump_call is not None and self._pump_call.active():
            if self._pump_call.getTime() <= at:
                return
            self._pump_call.cancel()
        delay = max(0.0, at - self.clock.seconds())
        self._pump_call = self.clock.callLater(delay, self._pump)

    def _pump(self) -> None:
        self._pump_call = None
        queue = self._queue
        while queue and queue[0][0] <= self.clock.seconds():
            _, _, src, target, key, data, deliver = heapq.heappop(queue)
            if (target._stopped or not target._started
                    or not self.linked(src, target.node)):
                self.dropped[key] += 1
                continue
            try:
                message = _decode(data) if self.serialize else data
                deliver(target, src, message)
            except Exception:
                log.failure("in-memory delivery to {node} failed",
                            node=target.node)
        self._schedule()


@implementer(IClusterTransport)
class InMemoryTransport:
    """One node's end of an :class:`InMemoryNetwork`."""

    def __init__(self, network: InMemoryNetwork, node: str) -> None:
        self.network = network
        self.node = node
        self._addresses: Dict[str, Any] = {}
        self._cast_handlers: Dict[str, Callable] = {}
        self._call_handlers: Dict[str, Callable] = {}
        self._listeners: List[Tuple[Callable, Callable]] = []
        #: call id -> (deferred, timeout call, peer)
        self._pending: Dict[int, Tuple[defer.Deferred, Any, str]] = {}
        self._ids = itertools.count(1)
        self._started = False
        self._stopped = False

    def start(self) -> defer.Deferred:
        self._started = True
        self.network._recompute()
        return defer.succeed(None)

    def stop(self) -> defer.Deferred:
        self._stopped = True
        self.network._recompute()
        self._fail_pending(None, "transport stopped")
        return defer.succeed(None)

    def _fail_pending(self, peer: Optional[str], why: str) -> None:
        """Fail calls to ``peer`` (all when None), as a lost TCP link
        fails the calls waiting on it."""
        for call_id, (d, timer, to) in list(self._pending.items()):
            if peer is None or to == peer:
                del self._pending[call_id]
                if timer.active():
                    timer.cancel()
                d.errback(PeerUnreachable(why))

    def set_peer_address(self, peer: str, address: Any) -> None:
        if address is None:
            self._addresses.pop(peer, None)
        else:
            self._addresses[peer] = tuple(address)
        self.network._recompute()

    def connected(self, peer: str) -> bool:
        return self.network.linked(self.node, peer)

    def connected_peers(self) -> List[str]:
        return sorted(n for n in self.network._transports
                      if n != self.node and self.connected(n))

    def cast(self, peer: str, channel: str, message: Any) -> bool:
        return self.network._send(self, peer, channel,
                                  (channel, _kind(message)),
                                  (channel, message), _deliver_cast, message)

    def call(self, peer: str, method: str, args: tuple,
             timeout: float) -> defer.Deferred:
        key = ("call", method)
        if not self.connected(peer):
            self.network.counters[key] += 1
            self.network.dropped[key] += 1
            return defer.fail(PeerUnreachable(peer))
        call_id = next(self._ids)
        # Sent (encoded) before it is pending: unserialisable arguments
        # raise TypeError and leave no timer behind.  Delivery waits for
        # the clock, so the reply cannot come before the entry exists.
        self.network._send(self, peer, "call", key,
                           (call_id, method, tuple(args)), _deliver_call,
                           (method, tuple(args)))
        d: defer.Deferred = defer.Deferred(
            lambda _d: self._forget(call_id))
        timer = self.network.clock.callLater(timeout, self._timeout, call_id,
                                             timeout)
        self._pending[call_id] = (d, timer, peer)
        return d

    def _forget(self, call_id: int) -> None:
        """A cancelled call: neither its timeout nor its reply fires it."""
        entry = self._pending.pop(call_id, None)
        if entry is not None and entry[1].active():
            entry[1].cancel()

    def _timeout(self, call_id: int, timeout: float) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is not None:
            entry[0].errback(CallTimeout(
                "no reply from %s within %ss" % (entry[2], timeout)))

    def _reply(self, call_id: int, ok: bool, value: Any) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is None:
            return
        d, timer, _ = entry
        if timer.active():
            timer.cancel()
        if ok:
            d.callback(value)
        else:
            d.errback(RemoteCallError(value))

    def register_cast_handler(self, channel: str, handler: Callable) -> None:
        self._cast_handlers[channel] = handler

    def register_call_handler(self, method: str, handler: Callable) -> None:
        self._call_handlers[method] = handler

    def add_peer_listener(self, on_up: Callable, on_down: Callable) -> None:
        self._listeners.append((on_up, on_down))

    def _peer_up(self, peer: str) -> None:
        for on_up, _ in list(self._listeners):
            self._notify(on_up, peer)

    def _peer_down(self, peer: str) -> None:
        self._fail_pending(peer, "link to %s lost" % (peer,))
        for _, on_down in list(self._listeners):
            self._notify(on_down, peer)

    def _notify(self, listener: Callable, peer: str) -> None:
        """Like TCP: one failing listener neither stops the others nor
        leaves the network half recomputed."""
        try:
            listener(peer)
        except Exception:
            log.failure("peer listener of {node} failed for {peer}",
                        node=self.node, peer=peer)


def _deliver_cast(target: InMemoryTransport, src: str, message: Any
                  ) -> None:
    channel, body = message
    handler = target._cast_handlers.get(channel)
    if handler is None:
        log.warn("{node}: no handler for channel {channel}",
                 node=target.node, channel=channel)
        return
    handler(src, body)


def _deliver_call(target: InMemoryTransport, src: str, message: Any) -> None:
    call_id, method, args = message
    handler = target._call_handlers.get(method)
    if handler is None:
        _answer(target, src, method, call_id, False,
                "UnknownMethod: %r" % (method,))
        return
    d = defer.maybeDeferred(handler, src, *args)
    d.addCallbacks(
        lambda value: _answer(target, src, method, call_id, True, value),
        lambda failure: _answer(target, src, method, call_id, False, "%s: %s"
                                % (failure.type.__name__,
                                   failure.getErrorMessage())))
    d.addErrback(lambda f: log.failure("reply to {method} failed", f,
                                       method=method))


def _answer(target: InMemoryTransport, caller: str, method: str,
            call_id: int, ok: bool, value: Any) -> None:
    if target._stopped:
        return
    if target.network.serialize:
        try:
            _encode(value)
        except (TypeError, ValueError, OverflowError) as e:
            # As over TCP: the caller learns why instead of timing out.
            ok, value = False, "UnserialisableResult: %s" % (e,)
    target.network._send(target, caller, "reply", ("reply", method),
                         (call_id, ok, value), _deliver_reply, (method, value))


def _deliver_reply(target: InMemoryTransport, src: str, message: Any) -> None:
    call_id, ok, value = message
    target._reply(call_id, ok, value)
