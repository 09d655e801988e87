"""
The one bounded wait of the tests.

Tests that wait on *other processes or threads* (a node coming up, a
message crossing a real socket) poll a predicate until it holds, for a
bounded time: :func:`wait_until` from plain test code, and
:func:`wait_until_deferred` from tests on the real reactor, which must not
block it.  Tests of our own code on a ``Clock`` never need either: they
advance the clock.

A timeout raises :class:`WaitTimeout`, which is both a ``TimeoutError``
(what it is) and an ``AssertionError`` (what pytest reports as a failed
expectation), naming what was awaited.
"""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

__all__ = ["WaitTimeout", "wait_until", "wait_until_deferred"]

T = TypeVar("T")


class WaitTimeout(TimeoutError, AssertionError):
    """A bounded wait ran out: ``what`` did not happen in time."""


def _timeout(what: str, timeout: float) -> WaitTimeout:
    return WaitTimeout("%s not reached within %ss" % (what, timeout))


def wait_until(predicate: Callable[[], T], timeout: float = 10.0,
               interval: float = 0.02, what: str = "condition") -> T:
    """
    Poll ``predicate`` until it returns something true; return that.
    Raises :class:`WaitTimeout` after ``timeout`` seconds (the predicate
    is asked once more at the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timeout(what, timeout)
        time.sleep(interval)


def wait_until_deferred(reactor: IReactorTime, predicate: Callable[[], Any],
                        timeout: float = 10.0, interval: float = 0.01,
                        what: str = "condition") -> defer.Deferred:
    """
    Like :func:`wait_until` without blocking the reactor: a Deferred that
    fires with the first true value of ``predicate`` or fails with
    :class:`WaitTimeout`.  For pytest-twisted tests on the real reactor.
    """
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def poll() -> Any:
        while True:
            value = predicate()
            if value:
                return value
            if reactor.seconds() >= deadline:
                raise _timeout(what, timeout)
            yield task.deferLater(reactor, interval, lambda: None)

    return poll()
