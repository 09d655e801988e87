"""
A conformance kit for :class:`vmqtw.interfaces.IClusterTransport`.

Every implementation -- the TCP transport of real nodes, the in-memory one
of the simulations, a third party's -- runs the same tests, so code tested
on the in-memory transport behaves the same over TCP.  Subclass
:class:`TransportConformance` in a ``Test*`` class and provide four hooks::

    class TestMine(TransportConformance):
        def make_transport(self, name):      # started, knows no peer
            ...
        def address_of(self, transport):     # for set_peer_address
            ...
        def wait_until(self, predicate, what, timeout=10.0):
            ...                              # a Deferred, bounded: advance
                                             # a Clock, or poll the reactor
        def cut(self, a, b):                 # break the a-b link now
            ...

and stop what :meth:`make_transport` made in ``teardown_method``
(:attr:`made` lists it).  Time-based cases (call timeouts) wait through
:meth:`wait_until` too, so a ``task.Clock`` implementation advances
simulated time and a real one waits :attr:`call_timeout` seconds.

Cases that are deliberately implementation-specific, and so not here:

* a cast to a *known* peer whose link is down: the TCP transport buffers it
  (bounded) and returns True, the in-memory one drops it and returns False;
  the interface only promises "False when dropped at once";
* the bounds (frame size, buffer size) and what is counted where;
* reconnect timing, duplicate-link resolution and admin clients, which only
  exist on TCP (tests/test_cluster_link.py).

Imports nothing outside ``install_requires``: no pytest, no hypothesis.
"""
from __future__ import annotations

from typing import Any, Callable, Coroutine, List, Tuple

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from vmqtw.errors import CallTimeout, PeerUnreachable, RemoteCallError
from vmqtw.interfaces import IClusterTransport

__all__ = ["TransportConformance"]

_Case = Callable[[Any], Coroutine[Any, Any, None]]


def _deferred(case: _Case) -> Callable[[Any], "defer.Deferred[None]"]:
    """
    Run an ``async`` case as a Deferred-returning method: pytest-twisted
    waits for it on the real reactor, and on a ``task.Clock`` it has fired
    before it is returned.  (A plain wrapper, so pytest does not take it
    for a coroutine it cannot run.)
    """
    def run(self: Any) -> "defer.Deferred[None]":
        return defer.ensureDeferred(case(self))

    run.__name__ = case.__name__
    run.__qualname__ = case.__qualname__
    run.__doc__ = case.__doc__
    return run

A, B, C = "a@kit", "b@kit", "c@kit"

#: Plain data as the interface defines it, nested.
PLAIN = (None, True, False, 0, -7, 2 ** 40, 2.5, "", "text", b"", b"\x00\xff",
         (1, (2, (3,))), {"k": b"v", "t": (1, "x")})


class _Recorder:
    """Peer listener that records ``("up"|"down", peer)``."""

    def __init__(self, transport: IClusterTransport) -> None:
        self.events: List[tuple] = []
        transport.add_peer_listener(lambda p: self.events.append(("up", p)),
                                    lambda p: self.events.append(("down", p)))


class TransportConformance:
    """Mixin of tests; subclasses provide the hooks (see the module)."""

    #: Timeout of the calls that are meant to time out, in seconds.
    call_timeout: float = 0.3
    #: Timeout of calls that are meant to be answered.
    answer_timeout: float = 10.0

    made: List[IClusterTransport]

    # -- hooks ---------------------------------------------------------------

    def make_transport(self, name: str
                       ) -> IClusterTransport:  # pragma: no cover - hook
        raise NotImplementedError

    def address_of(self, transport: IClusterTransport
                   ) -> Any:  # pragma: no cover - hook
        raise NotImplementedError

    def wait_until(self, predicate: Callable[[], Any], what: str,
                   timeout: float = 10.0
                   ) -> "defer.Deferred[Any]":  # pragma: no cover - hook
        raise NotImplementedError

    def cut(self, a: IClusterTransport,
            b: IClusterTransport) -> None:  # pragma: no cover - hook
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------

    def _new(self, name: str) -> IClusterTransport:
        transport = self.make_transport(name)
        if not hasattr(self, "made"):
            self.made = []
        self.made.append(transport)
        return transport

    async def _pair(self) -> Tuple[IClusterTransport, IClusterTransport]:
        """Two linked transports; only ``a`` knows ``b``'s address."""
        a, b = self._new(A), self._new(B)
        a.set_peer_address(B, self.address_of(b))
        await self.wait_until(lambda: a.connected(B) and b.connected(A),
                        "the a-b link")
        return a, b

    async def _outcome(self, d: "defer.Deferred[Any]", what: str) -> Any:
        """The result of ``d`` (a Failure when it failed), once it fired."""
        box: List[Any] = []
        d.addBoth(box.append)
        await self.wait_until(lambda: box, what)
        return box[0]

    async def _failure(self, d: "defer.Deferred[Any]", what: str
                       ) -> Failure:
        outcome = await self._outcome(d, what)
        assert isinstance(outcome, Failure), "%s succeeded: %r" % (
            what, outcome)
        return outcome

    # -- the cases -----------------------------------------------------------

    @_deferred
    async def test_provides_the_interface(self) -> None:
        assert verifyObject(IClusterTransport, self._new(A))

    @_deferred
    async def test_link_up_is_announced_on_both_ends(self) -> None:
        a, b = self._new(A), self._new(B)
        seen_a, seen_b = _Recorder(a), _Recorder(b)
        assert not a.connected(B) and a.connected_peers() == []
        a.set_peer_address(B, self.address_of(b))
        await self.wait_until(lambda: seen_a.events and seen_b.events,
                        "on_up on both ends")
        assert seen_a.events == [("up", B)] and seen_b.events == [("up", A)]
        assert a.connected(B) and b.connected(A)
        assert a.connected_peers() == [B] and b.connected_peers() == [A]

    @_deferred
    async def test_connected_peers_is_sorted_and_complete(self) -> None:
        c, a, b = self._new(C), self._new(A), self._new(B)
        c.set_peer_address(A, self.address_of(a))
        c.set_peer_address(B, self.address_of(b))
        await self.wait_until(lambda: len(c.connected_peers()) == 2, "c's links")
        assert c.connected_peers() == [A, B]

    @_deferred
    async def test_casts_reach_the_channel_handler_in_order(self) -> None:
        a, b = await self._pair()
        got: List[tuple] = []
        b.register_cast_handler("ch", lambda peer, m: got.append((peer, m)))
        for i in range(50):
            assert a.cast(B, "ch", ("n", i)) is True
        await self.wait_until(lambda: len(got) == 50, "50 casts")
        assert got == [(A, ("n", i)) for i in range(50)]

    @_deferred
    async def test_casts_carry_plain_data_unchanged(self) -> None:
        """Tuples stay tuples, bytes stay bytes, str stays str."""
        a, b = await self._pair()
        got: List[Any] = []
        b.register_cast_handler("ch", lambda peer, m: got.append(m))
        a.cast(B, "ch", PLAIN)
        a.cast(B, "ch", [1, [2, b"x"]])
        await self.wait_until(lambda: len(got) == 2, "the casts")
        assert got[0] == PLAIN
        assert type(got[0][9]) is bytes and type(got[0][8]) is str
        assert type(got[0][11]) is tuple
        assert got[1] == (1, (2, b"x")), "lists arrive as tuples"

    @_deferred
    async def test_unknown_channel_is_dropped_and_the_link_lives_on(self) -> None:
        a, b = await self._pair()
        got: List[Any] = []
        b.register_cast_handler("ch", lambda peer, m: got.append(m))
        a.cast(B, "nobody-listens", 1)
        a.cast(B, "ch", 2)
        await self.wait_until(lambda: got, "the cast after the dropped one")
        assert got == [2] and a.connected(B)

    @_deferred
    async def test_a_failing_cast_handler_does_not_stop_later_casts(self) -> None:
        a, b = await self._pair()
        got: List[Any] = []

        def handler(peer: str, m: Any) -> None:
            got.append(m)
            if m == 1:
                raise RuntimeError("handler bug")

        b.register_cast_handler("ch", handler)
        a.cast(B, "ch", 1)
        a.cast(B, "ch", 2)
        await self.wait_until(lambda: len(got) == 2, "both casts")
        assert a.connected(B) and b.connected(A)

    @_deferred
    async def test_unserialisable_cast_raises_type_error(self) -> None:
        a, b = await self._pair()
        try:
            a.cast(B, "ch", object())
        except TypeError:
            return
        raise AssertionError("cast of an object() did not raise TypeError")

    @_deferred
    async def test_cast_to_an_unknown_peer_returns_false(self) -> None:
        a = self._new(A)
        assert a.cast("nobody@kit", "ch", 1) is False

    @_deferred
    async def test_unserialisable_cast_raises_whatever_the_peer(self) -> None:
        """A programming error shows at once, not only while linked."""
        a = self._new(A)
        try:
            a.cast("nobody@kit", "ch", object())
        except TypeError:
            return
        raise AssertionError("cast of an object() did not raise TypeError")

    @_deferred
    async def test_call_returns_the_handlers_reply(self) -> None:
        a, b = await self._pair()
        b.register_call_handler("echo", lambda peer, *args: (peer, args))
        b.register_call_handler("later",
                                lambda peer, x: defer.succeed(x * 2))
        d = a.call(B, "echo", (1, b"x", PLAIN), self.answer_timeout)
        assert await self._outcome(d, "the reply") == (A, (1, b"x", PLAIN))
        d = a.call(B, "later", (21,), self.answer_timeout)
        assert await self._outcome(d, "the deferred reply") == 42

    @_deferred
    async def test_calls_work_both_ways_on_one_link(self) -> None:
        a, b = await self._pair()
        a.register_call_handler("who", lambda peer: "a saw " + peer)
        d = b.call(A, "who", (), self.answer_timeout)
        assert await self._outcome(d, "the reply") == "a saw " + B

    @_deferred
    async def test_failing_handler_is_a_remote_call_error_type_and_text(self) -> None:
        a, b = await self._pair()
        b.register_call_handler("boom", lambda peer: 1 / 0)
        f = await self._failure(a.call(B, "boom", (), self.answer_timeout), "boom")
        assert f.check(RemoteCallError)
        assert str(f.value) == "ZeroDivisionError: division by zero"

    @_deferred
    async def test_unknown_method_is_a_remote_call_error(self) -> None:
        a, b = await self._pair()
        f = await self._failure(a.call(B, "nope", (), self.answer_timeout), "nope")
        assert f.check(RemoteCallError)
        assert str(f.value) == "UnknownMethod: 'nope'"

    @_deferred
    async def test_unserialisable_result_is_a_remote_call_error(self) -> None:
        a, b = await self._pair()
        b.register_call_handler("odd", lambda peer: object())
        f = await self._failure(a.call(B, "odd", (), self.answer_timeout), "odd")
        assert f.check(RemoteCallError)
        assert str(f.value).startswith("UnserialisableResult: ")

    @_deferred
    async def test_unserialisable_call_raises_and_leaves_nothing_pending(self) -> None:
        a, b = await self._pair()
        try:
            a.call(B, "echo", (object(),), self.call_timeout)
        except TypeError:
            pass
        else:
            raise AssertionError("call with an object() did not raise")
        # Let its timeout pass (a leaked timer would errback a Deferred
        # nobody holds), then calls still work.
        b.register_call_handler("hang", lambda peer: defer.Deferred())
        b.register_call_handler("echo", lambda peer, x: x)
        late = a.call(B, "hang", (), self.call_timeout)
        assert (await self._failure(late, "a later timeout")).check(CallTimeout)
        d = a.call(B, "echo", (1,), self.answer_timeout)
        assert await self._outcome(d, "the reply") == 1

    @_deferred
    async def test_call_times_out(self) -> None:
        a, b = await self._pair()
        b.register_call_handler("hang", lambda peer: defer.Deferred())
        f = await self._failure(a.call(B, "hang", (), self.call_timeout),
                          "the timeout")
        assert f.check(CallTimeout) and f.check(defer.TimeoutError)
        assert a.connected(B), "a timeout is not a link failure"

    @_deferred
    async def test_cancelled_call_is_forgotten(self) -> None:
        a, b = await self._pair()
        b.register_call_handler("hang", lambda peer: defer.Deferred())
        d = a.call(B, "hang", (), self.call_timeout)
        d.cancel()
        assert (await self._failure(d, "cancel")).check(
            defer.CancelledError)
        # Its timeout passes without firing it again.
        after = a.call(B, "hang", (), self.call_timeout)
        assert (await self._failure(after, "the next timeout")).check(
            CallTimeout)

    @_deferred
    async def test_call_to_an_unknown_peer_is_unreachable(self) -> None:
        a = self._new(A)
        f = await self._failure(a.call("nobody@kit", "echo", (), 1.0), "call")
        assert f.check(PeerUnreachable)

    @_deferred
    async def test_calls_in_flight_fail_when_the_link_goes_down(self) -> None:
        a, b = await self._pair()
        seen_a, seen_b = _Recorder(a), _Recorder(b)
        b.register_call_handler("hang", lambda peer: defer.Deferred())
        d = a.call(B, "hang", (), self.answer_timeout)
        self.cut(a, b)
        f = await self._failure(d, "the call to fail")
        assert f.check(PeerUnreachable)
        await self.wait_until(lambda: ("down", B) in seen_a.events
                        and ("down", A) in seen_b.events,
                        "on_down on both ends")

    @_deferred
    async def test_forgetting_a_peer_closes_its_link(self) -> None:
        """set_peer_address(peer, None): link down, peer unknown."""
        a, b = await self._pair()
        seen_a, seen_b = _Recorder(a), _Recorder(b)
        a.set_peer_address(B, None)
        await self.wait_until(lambda: not a.connected(B) and not b.connected(A),
                        "the link to close")
        await self.wait_until(lambda: ("down", B) in seen_a.events
                        and ("down", A) in seen_b.events,
                        "on_down on both ends")
        assert a.connected_peers() == [] and b.connected_peers() == []
        assert a.cast(B, "ch", 1) is False
        f = await self._failure(a.call(B, "echo", (), 1.0), "call")
        assert f.check(PeerUnreachable)

    @_deferred
    async def test_stop_fails_pending_calls(self) -> None:
        a, b = await self._pair()
        b.register_call_handler("hang", lambda peer: defer.Deferred())
        d = a.call(B, "hang", (), self.answer_timeout)
        stopped = a.stop()
        assert (await self._failure(d, "the call")).check(PeerUnreachable)
        await self._outcome(stopped, "stop")
        await self.wait_until(lambda: not b.connected(A), "b to see a gone")

    @_deferred
    async def test_a_failing_listener_does_not_stop_the_others(self) -> None:
        a, b = self._new(A), self._new(B)

        def broken(peer: str) -> None:
            raise RuntimeError("listener bug")

        b.add_peer_listener(broken, broken)
        seen_b = _Recorder(b)
        a.set_peer_address(B, self.address_of(b))
        await self.wait_until(lambda: seen_b.events, "the second listener")
        assert seen_b.events == [("up", A)] and b.connected(A)
