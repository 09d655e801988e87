"""
Unit tests of :mod:`vmqtw.cluster.calls` on ``task.Clock``: the pending-call
table and the dispatch of incoming casts and calls, without any transport.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from vmqtw.cluster.calls import CallTable, Dispatcher
from vmqtw.errors import CallTimeout, PeerUnreachable, RemoteCallError


def failure_of(d: defer.Deferred) -> Any:
    failures: List[Any] = []
    d.addErrback(failures.append)
    assert len(failures) == 1, "the Deferred has not failed"
    return failures[0]


def test_ids_are_fresh_and_increasing() -> None:
    table = CallTable(Clock())
    ids = [table.next_id() for _ in range(5)]
    assert ids == sorted(set(ids)) and len(ids) == 5


def test_reply_fires_the_call_and_cancels_its_timer() -> None:
    clock = Clock()
    table = CallTable(clock)
    call_id = table.next_id()
    d = table.track(call_id, "b", 5.0)
    assert not d.called and len(table) == 1
    table.reply(call_id, True, ("x", b"y"))
    assert d.result == ("x", b"y")
    assert len(table) == 0 and clock.getDelayedCalls() == []


def test_error_reply_is_a_remote_call_error_with_its_text() -> None:
    table = CallTable(Clock())
    call_id = table.next_id()
    d = table.track(call_id, "b", 5.0)
    table.reply(call_id, False, "ZeroDivisionError: division by zero")
    f = failure_of(d)
    assert f.check(RemoteCallError)
    assert str(f.value) == "ZeroDivisionError: division by zero"


def test_timeout_fails_with_call_timeout_and_a_late_reply_is_ignored() -> None:
    clock = Clock()
    table = CallTable(clock)
    call_id = table.next_id()
    d = table.track(call_id, "b", 5.0)
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.1)
    f = failure_of(d)
    assert f.check(CallTimeout) and f.check(defer.TimeoutError)
    assert "no reply from b within 5.0s" in str(f.value)
    table.reply(call_id, True, 1)        # late: nothing happens
    assert len(table) == 0


def test_peer_down_fails_only_that_peers_calls() -> None:
    clock = Clock()
    table = CallTable(clock)
    to_b = table.track(table.next_id(), "b", 5.0)
    to_c = table.track(table.next_id(), "c", 5.0)
    table.peer_down("b")
    f = failure_of(to_b)
    assert f.check(PeerUnreachable) and "b went down" in str(f.value)
    assert not to_c.called and len(table) == 1
    assert len(clock.getDelayedCalls()) == 1   # b's timer is gone


def test_fail_all_fails_every_call() -> None:
    clock = Clock()
    table = CallTable(clock)
    calls = [table.track(table.next_id(), peer, 5.0) for peer in "bcd"]
    table.fail_all(PeerUnreachable("transport stopped"))
    assert all(failure_of(d).check(PeerUnreachable) for d in calls)
    assert len(table) == 0 and clock.getDelayedCalls() == []


def test_cancelling_a_call_forgets_it() -> None:
    clock = Clock()
    table = CallTable(clock)
    call_id = table.next_id()
    d = table.track(call_id, "b", 5.0)
    d.cancel()
    assert failure_of(d).check(defer.CancelledError)
    assert len(table) == 0 and clock.getDelayedCalls() == []
    table.reply(call_id, True, 1)        # nothing left to fire twice
    clock.advance(10)


# -- dispatch ---------------------------------------------------------------

def replies() -> Tuple[List[tuple], Any]:
    sent: List[tuple] = []
    return sent, lambda *reply: sent.append(reply)


def test_cast_goes_to_its_channel_handler() -> None:
    dispatcher = Dispatcher()
    got: List[tuple] = []
    dispatcher.register_cast_handler("ch", lambda peer, m: got.append((peer, m)))
    dispatcher.cast("b", "ch", (1, 2))
    dispatcher.cast("b", "other", 3)     # unknown channel: dropped
    assert got == [("b", (1, 2))]


def test_a_failing_cast_handler_is_logged_not_raised() -> None:
    dispatcher = Dispatcher()
    dispatcher.register_cast_handler("ch", lambda peer, m: 1 / 0)
    with capturedLogs() as logs:
        dispatcher.cast("b", "ch", 1)
    assert [e for e in logs if "log_failure" in e]


def test_call_replies_with_the_handlers_result() -> None:
    dispatcher = Dispatcher()
    dispatcher.register_call_handler("add", lambda peer, x, y: (peer, x + y))
    sent, send = replies()
    dispatcher.call("b", 7, "add", (2, 3), send)
    assert sent == [("b", 7, True, ("b", 5))]


def test_call_reply_waits_for_a_deferred_result() -> None:
    dispatcher = Dispatcher()
    later: defer.Deferred = defer.Deferred()
    dispatcher.register_call_handler("slow", lambda peer: later)
    sent, send = replies()
    dispatcher.call("b", 1, "slow", (), send)
    assert sent == []
    later.callback("done")
    assert sent == [("b", 1, True, "done")]


def test_failing_handler_replies_type_and_text() -> None:
    dispatcher = Dispatcher()
    dispatcher.register_call_handler("boom", lambda peer: 1 / 0)
    sent, send = replies()
    dispatcher.call("b", 1, "boom", (), send)
    assert sent == [("b", 1, False, "ZeroDivisionError: division by zero")]


def test_unknown_method_replies_unknown_method() -> None:
    dispatcher = Dispatcher()
    sent, send = replies()
    dispatcher.call("b", 4, "nope", (), send)
    assert sent == [("b", 4, False, "UnknownMethod: 'nope'")]


@pytest.mark.parametrize("ok", [True, False])
def test_a_failing_reply_sender_is_logged(ok: bool) -> None:
    dispatcher = Dispatcher()
    dispatcher.register_call_handler("m", (lambda peer: 1) if ok
                                     else (lambda peer: 1 / 0))

    def send(*reply: Any) -> None:
        raise RuntimeError("link gone")

    with capturedLogs() as logs:
        dispatcher.call("b", 1, "m", (), send)
    assert [e for e in logs if "log_failure" in e]
