"""
The ``postgresql`` message store on a real PostgreSQL server: the
conformance suite every store passes, then what only a shared store
promises (node-private outboxes, one queue seen by every node), and the
production runner's timeouts (a locked table, a cut network).
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
import pytest_twisted

from vmqtw.store.postgresql import DirectDatabase, PostgresMessageStore, ThreadedDatabase
from vmqtw.testing.store import MessageStoreConformance, StoreHarness, message
from vmqtw.types import SubscriberId


class TestPostgresStore(MessageStoreConformance):
    check_payload_count = False

    @pytest.fixture(autouse=True)
    def _server(self, postgres: Any) -> None:
        self.server = postgres
        #: One schema per store directory: a reopened store finds its rows,
        #: each new directory (each hypothesis example) starts empty.
        self.schemas: dict = {}

    def make_store(self, path: Any, clock: Any) -> PostgresMessageStore:
        if str(path) not in self.schemas:
            self.schemas[str(path)] = self.server.dsn(schema=self.server.new_schema())
        dsn = self.schemas[str(path)]
        return PostgresMessageStore(lambda: DirectDatabase(dsn), clock, "n1@h")


def stores(pg_dsn: str, harness: StoreHarness, *nodes: str) -> Any:
    made = []
    for node in nodes:
        store = PostgresMessageStore(lambda: DirectDatabase(pg_dsn), harness.clock, node)
        harness.call(store.open())
        harness._open.append(store)
        made.append(store)
    return made


@pytest.fixture
def harness(tmp_path: Any) -> Any:
    harness = StoreHarness(lambda path, clock: None, tmp_path)
    try:
        yield harness
    finally:
        harness.close_all()


def test_session_queues_are_shared_by_every_node(pg_dsn: str, harness: StoreHarness) -> None:
    a, b = stores(pg_dsn, harness, "a@h", "b@h")
    sid = SubscriberId("", "c")
    written = [message(i) for i in range(3)]
    for m in written:
        harness.call(a.write(sid, m))
    assert harness.call(b.find(sid)) == [m.ref for m in written]
    assert harness.call(b.read(sid, written[1].ref)).payload == written[1].payload
    harness.call(b.delete(sid, written[0].ref))
    assert harness.call(a.find(sid)) == [m.ref for m in written[1:]]
    assert harness.call(a.subscribers()) == [sid]


def test_outboxes_are_private_to_their_node(pg_dsn: str, harness: StoreHarness) -> None:
    a, b = stores(pg_dsn, harness, "a@h", "b@h")
    outbox = SubscriberId("\0outbox", "z@h")
    harness.call(a.write(outbox, message(1)))
    assert harness.call(b.find(outbox)) == []
    assert harness.call(b.subscribers()) == []
    assert harness.call(a.subscribers()) == [outbox]


def test_payloads_go_with_their_last_entry(pg_dsn: str, harness: StoreHarness) -> None:
    (a,) = stores(pg_dsn, harness, "a@h")
    m = message(1)
    for client in ("x", "y"):
        harness.call(a.write(SubscriberId("", client), m))
    assert harness.call(a.stored_payloads()) == 1
    harness.call(a.delete(SubscriberId("", "x"), m.ref))
    assert harness.call(a.stored_payloads()) == 1
    harness.call(a.delete(SubscriberId("", "y"), m.ref))
    assert harness.call(a.stored_payloads()) == 0


# -- the production runner: a database that hangs is not waited for forever --

def _blocked_port(port: int) -> Iterator[None]:
    """Drop every packet sent to ``port`` (a database behind a cut network)."""
    from tests.clusterharness import _nft
    table = "vmqtwpg%d" % (port,)
    _nft("delete", "table", "inet", table, check=False)
    try:
        _nft("-f", "-", stdin=("table inet %s {\n  chain out {\n"
                               "    type filter hook output priority 0; policy accept;\n"
                               "    tcp dport %d drop\n  }\n}\n" % (table, port)))
        yield
    finally:
        _nft("delete", "table", "inet", table, check=False)


def _insert(value: int) -> Any:
    def work(cursor: Any) -> int:
        cursor.execute("INSERT INTO hang_test VALUES (%s)", (value,))
        return value
    return work


@pytest_twisted.ensureDeferred
async def test_a_locked_table_fails_the_transaction_after_query_timeout(
        pg_dsn: str) -> None:
    """
    A transaction stuck behind another's lock is cancelled by the server
    after ``query_timeout`` (the store then acknowledges nothing), and the
    next one, on a new connection, goes through once the lock is gone.
    """
    import psycopg
    from twisted.internet import reactor
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE hang_test (v int)")
    database = ThreadedDatabase(pg_dsn, reactor, connect_timeout=5, query_timeout=1.0)
    try:
        assert await database.run(_insert(1)) == 1
        with psycopg.connect(pg_dsn) as holder:
            holder.execute("LOCK TABLE hang_test IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                await database.run(_insert(2))
            assert time.monotonic() - started < 5
        assert await database.run(_insert(3)) == 3
    finally:
        await database.close()
    with psycopg.connect(pg_dsn) as check:
        assert [v for (v,) in check.execute("SELECT v FROM hang_test ORDER BY v")] == [1, 3]


@pytest_twisted.ensureDeferred
async def test_a_database_behind_a_cut_network_fails_after_query_timeout(
        pg_dsn: str, postgres: Any) -> None:
    """
    Packets to the database dropped (no error ever comes back): the kernel
    gives the connection up after ``query_timeout`` (TCP user timeout), the
    transaction fails instead of hanging the store, and once the network
    is back the next transaction reconnects.
    """
    import psycopg
    from twisted.internet import reactor
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE hang_test (v int)")
    database = ThreadedDatabase(pg_dsn, reactor, connect_timeout=2, query_timeout=1.0)
    try:
        assert await database.run(_insert(1)) == 1
        cut = _blocked_port(postgres.port)
        next(cut)
        try:
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                await database.run(_insert(2))
            assert time.monotonic() - started < 10
        finally:
            next(cut, None)
        assert await database.run(_insert(3)) == 3
    finally:
        await database.close()


def test_statistics_are_refreshed_after_many_writes_at_most_every_interval() -> None:
    """
    The planner's statistics are refreshed once this node wrote
    ``ANALYZE_AFTER`` entries, then again only after as many more *and*
    ``ANALYZE_INTERVAL`` seconds (a drain walked whole queues without them).
    """
    from twisted.internet.task import Clock

    from vmqtw.store.postgresql import ANALYZE_AFTER, ANALYZE_INTERVAL
    clock = Clock()
    store = PostgresMessageStore(lambda: DirectDatabase(""), clock, "n1@h")
    assert not store._analyze_due(ANALYZE_AFTER - 1)
    assert store._analyze_due(1)
    assert not store._analyze_due(ANALYZE_AFTER)          # too soon
    clock.advance(ANALYZE_INTERVAL - 1)
    assert not store._analyze_due(0)
    clock.advance(1)
    assert store._analyze_due(0)                          # counted writes kept
    clock.advance(ANALYZE_INTERVAL)
    assert not store._analyze_due(ANALYZE_AFTER - 1)      # not enough new writes
