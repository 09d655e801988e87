"""The ``memory`` message store passes the conformance kit."""
from __future__ import annotations

import pytest

from vmqtw.store.memory import MemoryMessageStore
from vmqtw.testing.store import MessageStoreConformance, message
from vmqtw.types import SubscriberId


class TestMemoryStore(MessageStoreConformance):
    def make_store(self, path, clock):
        return MemoryMessageStore()


def test_not_durable_and_named() -> None:
    """It says it loses messages on restart, and answers without a reactor."""
    store = MemoryMessageStore()
    assert store.name == "memory"
    assert store.durable is False
    d = store.open()
    results: list = []
    d.addCallback(results.append)
    assert results == [None]


def test_fires_synchronously() -> None:
    """Writes are visible and fired at once: no reactor turn is needed."""
    store = MemoryMessageStore()
    store.open()
    sid = SubscriberId("", "a")
    m = message(1)
    fired: list = []
    store.write(sid, m).addCallback(fired.append)
    assert fired == [None]
    found: list = []
    store.find(sid).addCallback(found.append)
    assert found == [[m.ref]]
    assert store.stored_payloads() == 1


def test_kit_resolve_fails_instead_of_hanging() -> None:
    """The kit's resolve() gives up on a Deferred that never fires."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from vmqtw.testing.store import resolve
    with pytest.raises(AssertionError, match="never fired"):
        resolve(Deferred(), Clock(), turns=5)


def test_kit_resolve_drives_clock_and_raises_failures() -> None:
    """resolve() advances the clock for callLater work and re-raises."""
    from twisted.internet.task import Clock, deferLater

    from vmqtw.testing.store import resolve
    clock = Clock()
    assert resolve(deferLater(clock, 0.5, lambda: 42), clock) == 42

    def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        resolve(deferLater(clock, 0, boom), clock)
