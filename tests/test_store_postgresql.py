"""
The ``postgresql`` message store on a real PostgreSQL server: the
conformance suite every store passes, then what only a shared store
promises (node-private outboxes, one queue seen by every node).
"""
from __future__ import annotations

from typing import Any

import pytest

from vmqtw.store.postgresql import DirectDatabase, PostgresMessageStore
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
