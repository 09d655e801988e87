"""
A conformance kit for :class:`vmqtw.interfaces.IMetadataStore`.

Every implementation (the single-node store, the replicated store, a third
party plugin) runs the same tests: subclass :class:`MetadataStoreConformance`
in a ``Test*`` class and implement ``make_store(clock)``, returning a fresh,
empty store whose value timestamps come from ``clock`` (a ``task.Clock``)::

    class TestMine(MetadataStoreConformance):
        def make_store(self, clock):
            return MyStore(clock)

A store that replicates also runs :class:`ReplicatedMetadataStoreConformance`,
whose extra hook ``write_from_peer(store, prefix, key, value)`` makes a write
arrive in ``store`` the way another node's would (broadcast or repair).

Only behaviour the interface promises is checked, so a store that fires
extra events for no-op writes or skips them both pass.
"""
from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from vmqtw.interfaces import ChangeOrigin, IMetadataStore

__all__ = ["MetadataStoreConformance", "ReplicatedMetadataStoreConformance"]

LOCAL = ChangeOrigin.LOCAL
REMOTE = ChangeOrigin.REMOTE

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

    def _recorder(self, store: Any, prefix: Tuple[str, str] = P) -> List[tuple]:
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
        assert events == [(P, SUB_KEY, None, "one", LOCAL)]
        self.clock.advance(1)
        store.put(P, SUB_KEY, "two")
        assert events[-1] == (P, SUB_KEY, "one", "two", LOCAL)
        self.clock.advance(1)
        store.delete(P, SUB_KEY)
        assert events[-1] == (P, SUB_KEY, "two", None, LOCAL)
        assert len(events) == 3

    def test_events_only_for_subscribed_prefix(self) -> None:
        store = self._store()
        events = self._recorder(store, Q)
        store.put(P, "k", 1)
        assert events == []
        store.put(Q, "k", 1)
        assert events == [(Q, "k", None, 1, LOCAL)]

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
        assert events == [(P, "k", None, 1, LOCAL)]
        assert other[-1] == (P, "k", 1, 2, LOCAL)

    def test_local_writes_have_local_origin(self) -> None:
        """
        A put and a delete on the store are announced as this process's own
        doing, so a subscriber can tell its echo from another node's write.
        """
        store = self._store()
        events = self._recorder(store)
        store.put(P, SUB_KEY, SUB_VALUE)
        self.clock.advance(1)
        store.delete(P, SUB_KEY)
        assert [event[4] for event in events] == [LOCAL, LOCAL]
        assert all(event[4] is ChangeOrigin.LOCAL for event in events)


class ReplicatedMetadataStoreConformance(MetadataStoreConformance):
    """
    The kit for a store that replicates: subclasses also provide
    :meth:`write_from_peer`.
    """

    def write_from_peer(self, store: Any, prefix: Tuple[str, str], key: Any,
                        value: Any) -> None:  # pragma: no cover - hook
        """Make ``value`` arrive in ``store`` as another node's write."""
        raise NotImplementedError

    def test_replicated_write_has_remote_origin(self) -> None:
        """
        A write another node made is announced as remote, also where it
        overwrites a value this process wrote; a later local write is local
        again.
        """
        store = self._store()
        events = self._recorder(store)
        self.write_from_peer(store, P, ("", "from-peer"), "theirs")
        assert events == [(P, ("", "from-peer"), None, "theirs", REMOTE)]
        store.put(P, SUB_KEY, "mine")
        self.clock.advance(1)
        self.write_from_peer(store, P, SUB_KEY, "overwritten")
        assert store.get(P, SUB_KEY) == "overwritten"
        assert events[-1] == (P, SUB_KEY, "mine", "overwritten", REMOTE)
        self.clock.advance(1)
        store.put(P, SUB_KEY, "mine again")
        assert events[-1] == (P, SUB_KEY, "overwritten", "mine again", LOCAL)
