"""
The ``leveldb`` message store: the conformance kit, its key encoding, the
per-turn batching, recovery (repair, orphans) and the SIGKILL guarantee.
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap

import plyvel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from vmqtw.store import encoding
from vmqtw.store.leveldb import LevelDBMessageStore
from vmqtw.testing.store import (MessageStoreConformance, assert_same_message,
                                 message, resolve)
from vmqtw.types import Message, SubscriberId

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TestLevelDBStore(MessageStoreConformance):
    def make_store(self, path, clock):
        return LevelDBMessageStore(str(path / "msgstore"), clock)


class TestLevelDBStoreSync(MessageStoreConformance):
    """The same promises hold with fsync on every batch."""

    def make_store(self, path, clock):
        return LevelDBMessageStore(str(path / "msgstore"), clock, sync=True)


# -- encoding -------------------------------------------------------------

sids = st.builds(SubscriberId, st.text(max_size=8), st.text(max_size=8))
seqs = st.integers(0, 2 ** 64 - 1)


@settings(max_examples=200, deadline=None)
@given(sid=sids, seq=seqs)
def test_idx_key_round_trip(sid: SubscriberId, seq: int) -> None:
    """An index key gives back its subscriber id and counter."""
    key = encoding.idx_key(encoding.idx_prefix(sid), seq)
    assert encoding.parse_idx_key(key) == (sid, seq)


@settings(max_examples=200, deadline=None)
@given(a=sids, b=sids)
def test_subscriber_prefixes_never_nest(a: SubscriberId,
                                        b: SubscriberId) -> None:
    """
    No subscriber's key prefix is a prefix of another's, whatever '/' or
    NUL their fields hold, so a prefix scan never mixes two queues.
    """
    pa, pb = encoding.idx_prefix(a), encoding.idx_prefix(b)
    if a != b:
        assert not pa.startswith(pb) and not pb.startswith(pa)
    else:
        assert pa == pb


@settings(max_examples=200, deadline=None)
@given(sid=sids, x=seqs, y=seqs)
def test_idx_keys_sort_by_counter(sid: SubscriberId, x: int, y: int) -> None:
    """Bytewise key order is insertion (counter) order within a queue."""
    prefix = encoding.idx_prefix(sid)
    assert ((encoding.idx_key(prefix, x) < encoding.idx_key(prefix, y))
            == (x < y))


@settings(max_examples=100, deadline=None)
@given(topic=st.text(), payload=st.binary(), qos=st.integers(0, 2),
       retain=st.booleans(), dup=st.booleans(),
       timestamp=st.floats(allow_nan=False), mountpoint=st.text())
def test_message_round_trip(topic, payload, qos, retain, dup, timestamp,
                            mountpoint) -> None:
    """Every stored field survives encoding; str stays str, bytes bytes."""
    m = Message(ref=b"r" * 16, topic=topic, payload=payload, qos=qos,
                retain=retain, dup=dup, timestamp=timestamp,
                mountpoint=mountpoint)
    assert_same_message(encoding.decode_message(
        m.ref, encoding.encode_message(m)), m)


def test_malformed_keys_and_formats_rejected() -> None:
    """Garbage is reported as ValueError, never misread as data."""
    for key in [b"msg/x", b"idx/", b"idx/\x00\x00\x00\x09ab",
                encoding.idx_prefix(SubscriberId("a", "b")) + b"short"]:
        with pytest.raises(ValueError):
            encoding.parse_idx_key(key)
    import msgpack
    with pytest.raises(ValueError):
        encoding.decode_message(b"r", msgpack.packb((99, "t")))


# -- batching ---------------------------------------------------------------

def _open(path, clock, **kw) -> LevelDBMessageStore:
    store = LevelDBMessageStore(str(path), clock, **kw)
    resolve(store.open(), clock)
    return store


def test_one_batch_per_turn(tmp_path) -> None:
    """
    Writes of one reactor turn are committed together at callLater(0), and
    none of their Deferreds fires before that commit.
    """
    clock = Clock()
    store = _open(tmp_path / "db", clock)
    try:
        fired: list = []
        sid = SubscriberId("", "a")
        for i in range(3):
            store.write(sid, message(i)).addCallback(fired.append)
        assert fired == []
        assert store.stored_payloads() == 0
        assert len(clock.getDelayedCalls()) == 1
        clock.advance(0)
        assert fired == [None, None, None]
        assert store.stored_payloads() == 3
        assert clock.getDelayedCalls() == []
    finally:
        resolve(store.close(), clock)


def test_close_commits_pending(tmp_path) -> None:
    """close() commits what the current turn collected and fires it."""
    clock = Clock()
    store = _open(tmp_path / "db", clock)
    sid = SubscriberId("", "a")
    m = message(1)
    fired: list = []
    store.write(sid, m).addCallback(fired.append)
    resolve(store.close(), clock)
    assert fired == [None]
    assert clock.getDelayedCalls() == []
    store = _open(tmp_path / "db", clock)
    try:
        assert resolve(store.find(sid), clock) == [m.ref]
    finally:
        resolve(store.close(), clock)


def test_payload_written_once(tmp_path) -> None:
    """
    Five subscribers of one message cost one msg entry and five idx
    entries (checked in the database itself).
    """
    clock = Clock()
    path = tmp_path / "db"
    store = _open(path, clock)
    m = message(1, payload=b"x" * 1000)
    for i in range(5):
        store.write(SubscriberId("", "c%d" % i), m)
    resolve(store.close(), clock)
    db = plyvel.DB(str(path))
    try:
        assert len(list(db.iterator(prefix=encoding.MSG_PREFIX))) == 1
        refs = [v for _, v in db.iterator(prefix=encoding.IDX_PREFIX)]
        assert refs == [m.ref] * 5
    finally:
        db.close()


def test_open_creates_missing_parents(tmp_path) -> None:
    """data_dir/msgstore is created, parents included."""
    clock = Clock()
    store = _open(tmp_path / "a" / "b" / "msgstore", clock)
    resolve(store.close(), clock)
    assert (tmp_path / "a" / "b" / "msgstore" / "CURRENT").exists()


# -- recovery ---------------------------------------------------------------

def test_corrupt_database_is_repaired(tmp_path) -> None:
    """A corrupt MANIFEST is repaired once, logged, and data kept."""
    clock = Clock()
    path = tmp_path / "db"
    store = _open(path, clock)
    sid = SubscriberId("", "a")
    msgs = [message(i) for i in range(10)]
    for m in msgs:
        store.write(sid, m)
    resolve(store.close(), clock)
    for manifest in glob.glob(str(path / "MANIFEST-*")):
        with open(manifest, "wb") as f:
            f.write(b"garbage" * 10)
    with pytest.raises(plyvel.CorruptionError):
        plyvel.DB(str(path))
    with capturedLogs() as events:
        store = _open(path, clock)
    try:
        assert any("repairing" in e.get("log_format", "") for e in events)
        assert resolve(store.find(sid), clock) == [m.ref for m in msgs]
        assert_same_message(resolve(store.read(sid, msgs[3].ref), clock),
                            msgs[3])
    finally:
        resolve(store.close(), clock)


def test_locked_database_not_repaired(tmp_path) -> None:
    """A store already open elsewhere fails to open; no repair attempted."""
    clock = Clock()
    path = tmp_path / "db"
    first = _open(path, clock)
    try:
        second = LevelDBMessageStore(str(path), clock)
        with capturedLogs() as events:
            with pytest.raises(plyvel.IOError):
                resolve(second.open(), clock)
        assert not any("repair" in e.get("log_format", "") for e in events)
        with pytest.raises(Exception):
            resolve(second.find(SubscriberId("", "a")), clock)
    finally:
        resolve(first.close(), clock)


def test_open_drops_orphans_and_garbage(tmp_path) -> None:
    """
    Unreferenced payloads and malformed index keys found on open are
    removed (with a warning) instead of leaking or breaking recovery.
    """
    clock = Clock()
    path = tmp_path / "db"
    store = _open(path, clock)
    sid = SubscriberId("", "a")
    m = message(1)
    store.write(sid, m)
    resolve(store.close(), clock)
    db = plyvel.DB(str(path))
    try:
        db.put(encoding.msg_key(b"orphan-ref"), encoding.encode_message(m))
        db.put(encoding.IDX_PREFIX + b"junk", b"ref")
    finally:
        db.close()
    with capturedLogs() as events:
        store = _open(path, clock)
    try:
        assert any(e.get("orphans") == 1 and e.get("bad") == 1
                   for e in events)
        assert store.stored_payloads() == 1
        assert resolve(store.find(sid), clock) == [m.ref]
        assert resolve(store.subscribers(), clock) == [sid]
    finally:
        resolve(store.close(), clock)


# -- durability guarantee ---------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    from twisted.internet.task import Clock
    from vmqtw.store.leveldb import LevelDBMessageStore
    from vmqtw.testing.store import message, resolve
    from vmqtw.types import SubscriberId
    clock = Clock()
    store = LevelDBMessageStore(sys.argv[1], clock, sync=False)
    resolve(store.open(), clock)
    for i in range(200):
        d = store.write(SubscriberId("", "c%d" % (i % 3)),
                        message(i, ref=b"%016d" % i))
    resolve(d, clock)
    print("committed", flush=True)
    sys.stdin.read()
""")


def test_committed_batch_survives_sigkill(tmp_path) -> None:
    """
    Without sync, a batch whose Deferreds fired survives SIGKILL of the
    process (the module docstring's guarantee).
    """
    path = str(tmp_path / "db")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line == b"committed\n"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    clock = Clock()
    store = _open(path, clock)
    try:
        for c in range(3):
            want = [b"%016d" % i for i in range(c, 200, 3)]
            assert resolve(store.find(SubscriberId("", "c%d" % c)),
                           clock) == want
        assert store.stored_payloads() == 200
    finally:
        resolve(store.close(), clock)


# -- MQTT 5.0 properties and the format version -------------------------------


def test_v5_properties_round_trip() -> None:
    """Version 2 keeps a message's PUBLISH properties, user properties in order."""
    from vmqtw.mqtt.packets import Properties
    props = Properties(payload_format_indicator=1, message_expiry_interval=30,
                       content_type="text/plain", response_topic="r/t",
                       correlation_data=b"\x00c",
                       user_properties=(("b", "2"), ("a", "1"), ("b", "2")))
    m = Message(ref=b"r" * 16, topic="a/b", payload=b"p", qos=1, timestamp=5.5,
                properties=props)
    data = encoding.encode_message(m)
    import msgpack
    assert msgpack.unpackb(data)[0] == 2
    assert encoding.decode_message(m.ref, data).properties == props


def test_plain_messages_keep_the_old_format() -> None:
    """
    A message without properties is written exactly as before the version
    bump (older code can read it), and bytes written by that older encoder
    -- this literal is its output -- still open.
    """
    old = bytes.fromhex("9801a3612f62c402007002c3c2cb41d954fc40100000a26d70")
    m = encoding.decode_message(b"r" * 16, old)
    assert (m.topic, m.payload, m.qos, m.retain, m.dup, m.timestamp, m.mountpoint,
            m.properties) == ("a/b", b"\x00p", 2, True, False, 1700000000.25, "mp", None)
    assert encoding.encode_message(m) == old
