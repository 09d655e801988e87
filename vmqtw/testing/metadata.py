"""
A conformance kit for :class:`vmqtw.interfaces.IMetadataStore`.

Every implementation (the single-node store, the replicated store, a third
party plugin) runs the same tests: subclass :class:`MetadataStoreConformance`
in a ``Test*`` class and implement ``make_store(clock)``, returning a fresh,
empty store whose value timestamps come from ``clock`` (a ``task.Clock``)::

    class TestMine(MetadataStoreConformance):
        def make_store(self, clock):
            return MyStore(clock)

Only behaviour the interface promises is checked, so a store that fires
extra events for no-op writes or skips them both pass.
"""
from __future__ import annotations

from typing import Any, List

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from vmqtw.interfaces import IMetadataStore

__all__ = ["MetadataStoreConformance"]

P = ("vmq", "subscriber")
Q = ("vmq", "retain")
SUB_KEY = ("", "client-1")
SUB_VALUE = (("node-a", True, (("a/b", 1), ("c/#", 0))),)


class MetadataStoreConformance:
    """Mixin of tests; subclasses provide :meth:`make_store`."""

    def make_store(self, clock: Clock) -> Any:  # pragma: no cover - hook
        raise NotImplementedError

    def _store(self) -> Any:
        self.clock = Clock()
        self.clock.advance(1000)
        return self.make_store(self.clock)

    def _recorder(self, store: Any, prefix=P) -> List[tuple]:
        events: List[tuple] = []
        store.subscribe(prefix, lambda *a: events.append(a))
        return events

    def test_provides_interface(self) -> None:
        assert verifyObject(IMetadataStore, self._store())

    def test_get_absent_gives_default(self) -> None:
        store = self._store()
        assert store.get(P, SUB_KEY) is None
        assert store.get(P, SUB_KEY, "dflt") == "dflt"

    def test_put_then_get_tuples_and_bytes(self) -> None:
        store = self._store()
        store.put(P, SUB_KEY, SUB_VALUE)
        store.put(Q, ("", "t/1"), (b"\x00payload", 1, 12.5))
        assert store.get(P, SUB_KEY) == SUB_VALUE
        assert store.get(Q, ("", "t/1")) == (b"\x00payload", 1, 12.5)

    def test_overwrite(self) -> None:
        store = self._store()
        store.put(P, SUB_KEY, "one")
        self.clock.advance(1)
        store.put(P, SUB_KEY, "two")
        assert store.get(P, SUB_KEY) == "two"

    def test_overwrite_within_one_tick(self) -> None:
        """The last local write wins even when the clock did not move."""
        store = self._store()
        store.put(P, SUB_KEY, "one")
        store.put(P, SUB_KEY, "two")
        assert store.get(P, SUB_KEY) == "two"

    def test_prefixes_are_separate(self) -> None:
        store = self._store()
        store.put(P, "k", 1)
        store.put(Q, "k", 2)
        assert store.get(P, "k") == 1 and store.get(Q, "k") == 2
        assert list(store.items(P)) == [("k", 1)]

    def test_delete(self) -> None:
        store = self._store()
        store.put(P, "k", 1)
        store.put(P, "other", 2)
        self.clock.advance(1)
        store.delete(P, "k")
        assert store.get(P, "k") is None
        assert store.get(P, "k", "dflt") == "dflt"
        assert sorted(store.items(P)) == [("other", 2)]

    def test_delete_absent_is_harmless(self) -> None:
        store = self._store()
        store.delete(P, "nothing")
        assert store.get(P, "nothing") is None
        assert list(store.items(P)) == []

    def test_put_after_delete_revives(self) -> None:
        store = self._store()
        store.put(P, "k", 1)
        self.clock.advance(1)
        store.delete(P, "k")
        self.clock.advance(1)
        store.put(P, "k", 3)
        assert store.get(P, "k") == 3
        assert list(store.items(P)) == [("k", 3)]

    def test_items_and_fold(self) -> None:
        store = self._store()
        for i in range(20):
            store.put(P, ("", "c%d" % i), i)
        store.delete(P, ("", "c3"))
        items = dict(store.items(P))
        assert len(items) == 19 and items[("", "c7")] == 7
        assert ("", "c3") not in items
        total = store.fold(P, lambda kv, acc: acc + kv[1], 0)
        assert total == sum(range(20)) - 3
        assert store.fold(("no", "such"), lambda kv, acc: acc + 1, 0) == 0

    def test_events_new_update_delete(self) -> None:
        """Events fire synchronously, before the call returns."""
        store = self._store()
        events = self._recorder(store)
        store.put(P, SUB_KEY, "one")
        assert events == [(P, SUB_KEY, None, "one")]
        self.clock.advance(1)
        store.put(P, SUB_KEY, "two")
        assert events[-1] == (P, SUB_KEY, "one", "two")
        self.clock.advance(1)
        store.delete(P, SUB_KEY)
        assert events[-1] == (P, SUB_KEY, "two", None)
        assert len(events) == 3

    def test_events_only_for_subscribed_prefix(self) -> None:
        store = self._store()
        events = self._recorder(store, Q)
        store.put(P, "k", 1)
        assert events == []
        store.put(Q, "k", 1)
        assert events == [(Q, "k", None, 1)]

    def test_unsubscribe(self) -> None:
        store = self._store()
        events: List[tuple] = []
        other: List[tuple] = []
        unsubscribe = store.subscribe(P, lambda *a: events.append(a))
        store.subscribe(P, lambda *a: other.append(a))
        store.put(P, "k", 1)
        unsubscribe()
        self.clock.advance(1)
        store.put(P, "k", 2)
        assert events == [(P, "k", None, 1)]
        assert other[-1] == (P, "k", 1, 2)
