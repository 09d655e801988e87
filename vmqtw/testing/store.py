"""
Conformance kit for :class:`vmqtw.interfaces.IMessageStore` implementations.

One suite, run against every store (memory, leveldb, third-party plugins), so
that the broker can rely on the same promises whichever store is configured.
Use it from pytest by subclassing and implementing :meth:`make_store`::

    from vmqtw.testing.store import MessageStoreConformance

    class TestMyStore(MessageStoreConformance):
        def make_store(self, path, clock):
            return MyStore(str(path / "db"), clock)

The kit drives time itself: it passes a ``twisted.internet.task.Clock`` to
``make_store`` and :func:`resolve` advances it until a Deferred fires, so a
store may batch with ``reactor.callLater`` but must use the reactor it is
given for nothing beyond ``IReactorTime`` (no threads, no sockets).

``make_store(path, clock)`` is called again with the same ``path`` to test a
restart; stores with ``durable = True`` must then return what was written.
Stores may provide the testing hook ``stored_payloads() -> int`` (committed
payload copies, counted from the backing storage); set
``check_payload_count = False`` if yours cannot.
"""
from __future__ import annotations

import pathlib
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from vmqtw.interfaces import IMessageStore
from vmqtw.types import Message, SubscriberId, new_message_ref

__all__ = ["MessageStoreConformance", "StoreHarness", "resolve", "message",
           "STORED_FIELDS", "assert_same_message"]

#: The fields of a :class:`Message` a store must give back unchanged.
#: ``origin`` is excluded: it only matters while a message is in transit.
STORED_FIELDS = ("ref", "topic", "payload", "qos", "retain", "dup",
                 "timestamp", "mountpoint")


def resolve(d: Deferred, clock: Clock, turns: int = 1000,
            step: float = 0.1) -> Any:
    """
    Advance ``clock`` until ``d`` fires and return its result (raising its
    failure).  Fails the test if it has not fired after ``turns`` steps of
    ``step`` seconds, rather than hanging.
    """
    results: List[Any] = []
    d.addBoth(results.append)
    for _ in range(turns):
        if results:
            break
        clock.advance(0)
        if results:
            break
        clock.advance(step)
    if not results:
        raise AssertionError("Deferred %r never fired (advanced the clock "
                             "%d times)" % (d, turns))
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def message(n: int = 0, *, payload: Optional[bytes] = None,
            topic: Optional[str] = None, qos: int = 1, retain: bool = False,
            dup: bool = False, mountpoint: str = "",
            ref: Optional[bytes] = None) -> Message:
    """A distinct QoS 1 message; ``n`` shows up in the topic and payload."""
    return Message(
        ref=new_message_ref() if ref is None else ref,
        topic="t/%d" % (n,) if topic is None else topic,
        payload=b"payload %d" % (n,) if payload is None else payload,
        qos=qos, retain=retain, dup=dup, timestamp=1700000000.25 + n,
        mountpoint=mountpoint)


def assert_same_message(got: Optional[Message], want: Message) -> None:
    """Equal on :data:`STORED_FIELDS`, with a readable difference."""
    assert got is not None, "store returned None for %r" % (want.ref,)
    diff = {f: (getattr(got, f), getattr(want, f)) for f in STORED_FIELDS
            if getattr(got, f) != getattr(want, f)}
    assert not diff, "stored message differs (got, want): %r" % (diff,)


@attrs.define(slots=True, eq=False)
class StoreHarness:
    """
    Opens stores for one test on one ``Clock`` and closes them afterwards,
    even when the test fails.
    """

    make_store: Callable[[pathlib.Path, Clock], Any]
    path: pathlib.Path
    clock: Clock = attrs.field(factory=Clock)
    _open: List[Any] = attrs.field(factory=list)

    def open(self) -> Any:
        store = self.make_store(self.path, self.clock)
        self.call(store.open())
        self._open.append(store)
        return store

    def close(self, store: Any) -> None:
        self._open.remove(store)
        self.call(store.close())

    def reopen(self, store: Any) -> Any:
        """Close ``store`` and open a new one on the same path."""
        self.close(store)
        return self.open()

    def call(self, d: Deferred) -> Any:
        return resolve(d, self.clock)

    def close_all(self) -> None:
        while self._open:
            store = self._open.pop()
            resolve(store.close(), self.clock)


# Odd but valid MQTT strings: '/' and '+'/'#' characters, unicode, spaces.
ODD_IDS = [
    SubscriberId("", "a/b"),
    SubscriberId("a", "b"),
    SubscriberId("a/b", ""),
    SubscriberId("", "a/b/"),
    SubscriberId("mp/x", "a"),
    SubscriberId("mp", "x/a"),
    SubscriberId("", "ü ñ/😀/+/#"),
    SubscriberId("ταυ", "client id with spaces"),
    SubscriberId("", "x" * 65535),
]


class MessageStoreConformance:
    """
    Mixin of pytest tests every ``IMessageStore`` must pass.

    Subclass as ``Test...`` and implement :meth:`make_store`.
    """

    #: Whether the store provides the ``stored_payloads()`` testing hook.
    check_payload_count = True

    def make_store(self, path: pathlib.Path, clock: Clock) -> Any:
        """Return an unopened store keeping its data under ``path``."""
        raise NotImplementedError

    @pytest.fixture
    def harness(self, tmp_path: pathlib.Path):
        harness = StoreHarness(self.make_store, tmp_path)
        try:
            yield harness
        finally:
            harness.close_all()

    # -- helpers -----------------------------------------------------------

    def _assert_payloads(self, store: Any, n: int) -> None:
        if self.check_payload_count:
            assert store.stored_payloads() == n

    # -- the suite ---------------------------------------------------------

    def test_provides_interface(self, harness: StoreHarness) -> None:
        """The store provides IMessageStore with a name and a durability."""
        store = harness.open()
        assert verifyObject(IMessageStore, store)
        assert isinstance(store.name, str) and store.name
        assert isinstance(store.durable, bool)

    def test_write_read_find_in_order(self, harness: StoreHarness) -> None:
        """find returns refs in write order; read returns each message."""
        store = harness.open()
        sid = SubscriberId("", "c1")
        msgs = [message(i) for i in range(20)]
        for m in msgs:
            assert harness.call(store.write(sid, m)) is None
        assert harness.call(store.find(sid)) == [m.ref for m in msgs]
        for m in msgs:
            assert_same_message(harness.call(store.read(sid, m.ref)), m)

    def test_every_stored_field_kept(self, harness: StoreHarness) -> None:
        """topic, payload, qos, retain, dup, timestamp, mountpoint survive."""
        store = harness.open()
        sid = SubscriberId("mp", "c1")
        m = Message(ref=new_message_ref(), topic="a/b", payload=b"\x00\xff",
                    qos=2, retain=True, dup=True, timestamp=12345.678,
                    mountpoint="mp")
        harness.call(store.write(sid, m))
        assert_same_message(harness.call(store.read(sid, m.ref)), m)

    def test_values_not_shared(self, harness: StoreHarness) -> None:
        """Mutating the written or the returned Message changes nothing."""
        store = harness.open()
        sid = SubscriberId("", "c1")
        m = message(1)
        want = attrs.evolve(m)
        harness.call(store.write(sid, m))
        m.dup = True
        got = harness.call(store.read(sid, m.ref))
        assert_same_message(got, want)
        got.dup = True
        got.payload = b"changed"
        assert_same_message(harness.call(store.read(sid, m.ref)), want)

    def test_read_your_writes(self, harness: StoreHarness) -> None:
        """Reads issued before a write's Deferred fired already see it."""
        store = harness.open()
        sid = SubscriberId("", "c1")
        m1, m2 = message(1), message(2)
        written = [store.write(sid, m1), store.write(sid, m2)]
        found = store.find(sid)
        read = store.read(sid, m2.ref)
        deleted = store.delete(sid, m1.ref)
        after = store.find(sid)
        assert harness.call(found) == [m1.ref, m2.ref]
        assert_same_message(harness.call(read), m2)
        assert harness.call(after) == [m2.ref]
        for d in written + [deleted]:
            assert harness.call(d) is None
        assert harness.call(store.read(sid, m1.ref)) is None
        self._assert_payloads(store, 1)

    def test_shared_ref_stored_once(self, harness: StoreHarness) -> None:
        """
        One ref written for two subscribers is stored once; deleting it for
        one keeps it for the other; deleting both removes the payload.
        """
        store = harness.open()
        a, b = SubscriberId("", "a"), SubscriberId("", "b")
        m = message(1)
        harness.call(store.write(a, m))
        harness.call(store.write(b, m))
        self._assert_payloads(store, 1)
        harness.call(store.delete(a, m.ref))
        assert harness.call(store.read(a, m.ref)) is None
        assert harness.call(store.find(a)) == []
        assert_same_message(harness.call(store.read(b, m.ref)), m)
        self._assert_payloads(store, 1)
        harness.call(store.delete(b, m.ref))
        assert harness.call(store.read(b, m.ref)) is None
        self._assert_payloads(store, 0)

    def test_ref_written_again_after_last_delete(
            self, harness: StoreHarness) -> None:
        """A ref whose payload went can be written again (refcount from 0)."""
        store = harness.open()
        a = SubscriberId("", "a")
        m = message(1)
        harness.call(store.write(a, m))
        harness.call(store.delete(a, m.ref))
        harness.call(store.write(a, m))
        assert harness.call(store.find(a)) == [m.ref]
        assert_same_message(harness.call(store.read(a, m.ref)), m)
        self._assert_payloads(store, 1)

    def test_duplicate_write_idempotent(self, harness: StoreHarness) -> None:
        """Writing a ref twice for one subscriber keeps one entry."""
        store = harness.open()
        a, b = SubscriberId("", "a"), SubscriberId("", "b")
        m, other = message(1), message(2)
        harness.call(store.write(a, m))
        harness.call(store.write(a, other))
        harness.call(store.write(a, m))
        harness.call(store.write(b, m))
        assert harness.call(store.find(a)) == [m.ref, other.ref]
        harness.call(store.delete(a, m.ref))
        assert harness.call(store.find(a)) == [other.ref]
        assert_same_message(harness.call(store.read(b, m.ref)), m)
        harness.call(store.delete(b, m.ref))
        self._assert_payloads(store, 1)

    def test_delete_absent_is_fine(self, harness: StoreHarness) -> None:
        """Deleting an unknown ref, or twice, is not an error."""
        store = harness.open()
        a = SubscriberId("", "a")
        m = message(1)
        assert harness.call(store.delete(a, b"nope")) is None
        harness.call(store.write(a, m))
        assert harness.call(store.delete(a, b"nope")) is None
        assert harness.call(store.delete(SubscriberId("", "b"), m.ref)) is None
        assert harness.call(store.find(a)) == [m.ref]
        harness.call(store.delete(a, m.ref))
        assert harness.call(store.delete(a, m.ref)) is None
        assert harness.call(store.find(a)) == []

    def test_read_absent_is_none(self, harness: StoreHarness) -> None:
        """read is None for unknown subscribers, refs, and others' refs."""
        store = harness.open()
        a, b = SubscriberId("", "a"), SubscriberId("", "b")
        m = message(1)
        assert harness.call(store.read(a, m.ref)) is None
        harness.call(store.write(a, m))
        assert harness.call(store.read(b, m.ref)) is None
        assert harness.call(store.read(a, new_message_ref())) is None
        assert harness.call(store.find(b)) == []

    def test_interleaved_subscribers(self, harness: StoreHarness) -> None:
        """
        Writes and deletes for many subscribers issued together, without
        waiting in between, keep each subscriber's own order.
        """
        store = harness.open()
        sids = [SubscriberId("", "c%d" % i) for i in range(20)]
        shared = [message(1000 + i) for i in range(10)]
        expected: Dict[SubscriberId, List[bytes]] = {s: [] for s in sids}
        pending: List[Deferred] = []
        for i in range(30):
            for j, sid in enumerate(sids):
                m = shared[i % 10] if (i + j) % 3 == 0 else message(i * 100 + j)
                if m.ref in expected[sid]:
                    continue
                pending.append(store.write(sid, m))
                expected[sid].append(m.ref)
        for j, sid in enumerate(sids):
            for ref in expected[sid][j % 4::4]:
                pending.append(store.delete(sid, ref))
            expected[sid] = [r for k, r in enumerate(expected[sid])
                             if k < j % 4 or (k - j % 4) % 4]
        for d in pending:
            assert harness.call(d) is None
        for sid in sids:
            assert harness.call(store.find(sid)) == expected[sid]
        live = {r for refs in expected.values() for r in refs}
        self._assert_payloads(store, len(live))
        sample = {m.ref: m for m in shared}
        for sid in sids:
            for ref in expected[sid]:
                if ref in sample:
                    assert_same_message(harness.call(store.read(sid, ref)),
                                        sample[ref])

    def test_large_payload(self, harness: StoreHarness) -> None:
        """A 1 MiB payload comes back byte for byte."""
        store = harness.open()
        sid = SubscriberId("", "big")
        m = message(1, payload=bytes(range(256)) * 4096)
        harness.call(store.write(sid, m))
        assert_same_message(harness.call(store.read(sid, m.ref)), m)

    def test_empty_payload(self, harness: StoreHarness) -> None:
        """An empty payload is a message, not an absence."""
        store = harness.open()
        sid = SubscriberId("", "c")
        m = message(1, payload=b"")
        harness.call(store.write(sid, m))
        got = harness.call(store.read(sid, m.ref))
        assert_same_message(got, m)
        assert got.payload == b""

    def test_odd_ids_and_topics(self, harness: StoreHarness) -> None:
        """
        Mountpoints and client ids containing '/', unicode and more are
        distinct subscribers, even where their concatenations are equal.
        """
        store = harness.open()
        msgs = {}
        for i, sid in enumerate(ODD_IDS):
            m = message(i, topic="ü/%d/+/😀 x" % i, mountpoint=sid.mountpoint)
            msgs[sid] = m
            harness.call(store.write(sid, m))
        for sid, m in msgs.items():
            assert harness.call(store.find(sid)) == [m.ref]
            assert_same_message(harness.call(store.read(sid, m.ref)), m)
        assert sorted(harness.call(store.subscribers())) == sorted(ODD_IDS)

    def test_subscribers(self, harness: StoreHarness) -> None:
        """subscribers() lists exactly those holding at least one message."""
        store = harness.open()
        a, b, c = (SubscriberId("", x) for x in "abc")
        assert harness.call(store.subscribers()) == []
        m1, m2 = message(1), message(2)
        harness.call(store.write(a, m1))
        harness.call(store.write(b, m1))
        harness.call(store.write(b, m2))
        harness.call(store.write(c, m2))
        assert sorted(harness.call(store.subscribers())) == [a, b, c]
        harness.call(store.delete(a, m1.ref))
        harness.call(store.delete(b, m1.ref))
        assert sorted(harness.call(store.subscribers())) == [b, c]
        harness.call(store.delete(b, m2.ref))
        assert harness.call(store.subscribers()) == [c]

    def test_closed_store_refuses(self, harness: StoreHarness) -> None:
        """Using a closed store fails loudly instead of losing a write."""
        store = harness.open()
        harness.close(store)
        with pytest.raises(Exception):
            harness.call(store.write(SubscriberId("", "a"), message(1)))

    def test_restart(self, harness: StoreHarness) -> None:
        """
        A durable store returns after a restart what it held before: refs in
        order, messages, subscribers, the shared payload once.  A store
        that is not durable must still reopen, consistently.
        """
        store = harness.open()
        a, b = SubscriberId("", "a/1"), SubscriberId("mp", "b")
        shared = message(0)
        msgs = [message(i) for i in range(1, 6)]
        for m in [shared] + msgs:
            harness.call(store.write(a, m))
        harness.call(store.write(b, shared))
        harness.call(store.delete(a, msgs[1].ref))
        want_a = [shared.ref] + [m.ref for m in msgs if m is not msgs[1]]
        store = harness.reopen(store)
        if not store.durable:
            for sid in harness.call(store.subscribers()):
                for ref in harness.call(store.find(sid)):
                    assert harness.call(store.read(sid, ref)) is not None
            return
        assert harness.call(store.find(a)) == want_a
        assert harness.call(store.find(b)) == [shared.ref]
        assert sorted(harness.call(store.subscribers())) == sorted([a, b])
        for m in [shared] + msgs:
            if m.ref in want_a:
                assert_same_message(harness.call(store.read(a, m.ref)), m)
        assert harness.call(store.read(a, msgs[1].ref)) is None
        self._assert_payloads(store, len(want_a))
        # Refcounts were rebuilt: dropping a's copy keeps b's.
        harness.call(store.delete(a, shared.ref))
        assert_same_message(harness.call(store.read(b, shared.ref)), shared)
        harness.call(store.delete(b, shared.ref))
        self._assert_payloads(store, len(want_a) - 1)

    def test_order_across_restarts(self, harness: StoreHarness) -> None:
        """Writes after a restart go after the ones before it, every time."""
        store = harness.open()
        sids = [SubscriberId("", "a"), SubscriberId("", "b")]
        want: Dict[SubscriberId, List[bytes]] = {s: [] for s in sids}
        for round_ in range(3):
            for i in range(5):
                for sid in sids:
                    m = message(round_ * 10 + i)
                    harness.call(store.write(sid, m))
                    want[sid].append(m.ref)
            # b's queue emptied before a restart starts afresh after it.
            if round_ == 1:
                for ref in want[sids[1]]:
                    harness.call(store.delete(sids[1], ref))
                want[sids[1]] = []
            store = harness.reopen(store)
            if not store.durable:
                return
            for sid in sids:
                assert harness.call(store.find(sid)) == want[sid]

    def test_model(self) -> None:
        """
        Random writes and deletes, resolved in random turns, match a plain
        model of ordered queues; so does the store after a restart.
        """
        # @given is applied per call, not on the method: pytest-twisted
        # rewrites a hypothesis test's inner function in place, which breaks
        # when a kit test is inherited by several classes.
        run = settings(max_examples=40, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow])(
            given(ops=st.lists(
                st.tuples(st.sampled_from(["w", "d", "turn"]),
                          st.integers(0, 3), st.integers(0, 5)),
                max_size=60))(self._model_example))
        run()

    def _model_example(self, ops: List[Tuple[str, int, int]]) -> None:
        sids = [SubscriberId("", "s%d" % i) for i in range(3)] + [
            SubscriberId("s0", "")]
        msgs = [message(i) for i in range(6)]
        model: Dict[SubscriberId, List[bytes]] = {s: [] for s in sids}
        with tempfile.TemporaryDirectory() as tmp:
            harness = StoreHarness(self.make_store, pathlib.Path(tmp))
            try:
                store = harness.open()
                pending: List[Deferred] = []
                for op, i, j in ops:
                    sid, m = sids[i], msgs[j]
                    if op == "w":
                        pending.append(store.write(sid, m))
                        if m.ref not in model[sid]:
                            model[sid].append(m.ref)
                    elif op == "d":
                        pending.append(store.delete(sid, m.ref))
                        if m.ref in model[sid]:
                            model[sid].remove(m.ref)
                    else:
                        for d in pending:
                            assert harness.call(d) is None
                        pending = []
                    self._check_model(harness, store, model, msgs, False)
                for d in pending:
                    assert harness.call(d) is None
                self._check_model(harness, store, model, msgs, True)
                store = harness.reopen(store)
                if store.durable:
                    self._check_model(harness, store, model, msgs, True)
            finally:
                harness.close_all()

    def _check_model(self, harness: StoreHarness, store: Any,
                     model: Dict[SubscriberId, List[bytes]],
                     msgs: List[Message], settled: bool) -> None:
        by_ref = {m.ref: m for m in msgs}
        for sid, refs in model.items():
            assert harness.call(store.find(sid)) == refs
            for ref in refs:
                assert_same_message(harness.call(store.read(sid, ref)),
                                    by_ref[ref])
        assert (sorted(harness.call(store.subscribers()))
                == sorted(s for s, refs in model.items() if refs))
        if settled:
            live = {r for refs in model.values() for r in refs}
            self._assert_payloads(store, len(live))
