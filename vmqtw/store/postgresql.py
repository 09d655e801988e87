"""
A message store on PostgreSQL, shared by every node of a cluster
(``message_store = postgresql``).

The default LevelDB store is per node: a node that dies for good takes its
clients' offline messages with it, as VerneMQ documents.  This store keeps
them in one PostgreSQL database (replicated by PostgreSQL's own means for
high availability), so a survivor that takes a dead node's sessions over
finds their messages.  It is also the worked example of a store plugin
built on a real database.

Tables (created at open when missing; ``bytea`` columns, because the data
plane's outbox mountpoint contains U+0000, which PostgreSQL text refuses)::

    vmqtw_messages (ref bytea primary key, body bytea)   -- encode_message()
    vmqtw_entries  (owner, mountpoint, client_id, seq bigserial, ref)

``owner`` is ``''`` for session queues, which every node shares, and the
node's name for queues private to a node (the data plane's outbox towards
each peer, mountpoint ``"\\0outbox"``): two nodes' outboxes to the same peer
must not be one.

Like the LevelDB store, what is written and deleted in one reactor turn is
committed as one transaction; a ``write`` fires once PostgreSQL committed
it (the publisher is acknowledged only then).  Transactions run one after
another, in order, on one connection in a worker thread
(:class:`ThreadedDatabase`): a delete can never overtake the write it
undoes, and the reactor never waits for the database.  When the database is unreachable, writes fail (the broker does
not acknowledge them; clients resend) and the pool reconnects on the next
transaction.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional, Protocol, Tuple

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vmqtw.errors import StoreUnavailable
from vmqtw.interfaces import IMessageStore
from vmqtw.store.encoding import StoreNotOpen, decode_message, encode_message
from vmqtw.types import Message, SubscriberId

__all__ = ["PostgresMessageStore", "ThreadedDatabase", "DirectDatabase", "SCHEMA",
           "PRIVATE_MOUNTPOINTS"]

#: Mountpoints whose queues belong to one node (see the module docstring).
PRIVATE_MOUNTPOINTS = frozenset(["\0outbox"])

#: The advisory lock the schema is created under ("vmqtw" in ASCII).
SCHEMA_LOCK = 0x766D717477

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS vmqtw_messages ("
    " ref bytea PRIMARY KEY, body bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS vmqtw_entries ("
    " owner bytea NOT NULL, mountpoint bytea NOT NULL, client_id bytea NOT NULL,"
    " seq bigserial NOT NULL, ref bytea NOT NULL,"
    " PRIMARY KEY (owner, mountpoint, client_id, ref))",
    "CREATE INDEX IF NOT EXISTS vmqtw_entries_order"
    " ON vmqtw_entries (owner, mountpoint, client_id, seq)",
    "CREATE INDEX IF NOT EXISTS vmqtw_entries_ref ON vmqtw_entries (ref)",
)

_INSERT_MESSAGE = "INSERT INTO vmqtw_messages (ref, body) VALUES (%s, %s) ON CONFLICT DO NOTHING"
_INSERT_ENTRY = ("INSERT INTO vmqtw_entries (owner, mountpoint, client_id, ref)"
                 " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING")
_DELETE_ENTRY = ("DELETE FROM vmqtw_entries"
                 " WHERE owner = %s AND mountpoint = %s AND client_id = %s AND ref = %s")
_DELETE_UNREFERENCED = ("DELETE FROM vmqtw_messages m WHERE m.ref = %s"
                        " AND NOT EXISTS (SELECT 1 FROM vmqtw_entries e WHERE e.ref = %s)")
_READ = ("SELECT m.body FROM vmqtw_entries e JOIN vmqtw_messages m ON m.ref = e.ref"
         " WHERE e.owner = %s AND e.mountpoint = %s AND e.client_id = %s AND e.ref = %s")
_FIND = ("SELECT ref FROM vmqtw_entries"
         " WHERE owner = %s AND mountpoint = %s AND client_id = %s ORDER BY seq")
_SUBSCRIBERS = ("SELECT DISTINCT mountpoint, client_id FROM vmqtw_entries"
                " WHERE owner = '' OR owner = %s")
_PAYLOADS = "SELECT count(*) FROM vmqtw_messages"

#: ``work(cursor)`` run in one transaction.
Work = Callable[[Any], Any]


class Database(Protocol):
    """Where transactions run: one after another, in the order given."""

    def run(self, work: Work) -> Deferred: ...

    def close(self) -> Deferred: ...


class _DaemonThread(threading.Thread):
    """The worker thread: a daemon, so it never keeps the process from exiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class ThreadedDatabase:
    """
    The production runner: one psycopg connection used by one worker
    thread of its own (transactions in the order given; the reactor never
    waits), opened on first use and again after it broke, so a database
    that went away is reconnected to by the next transaction.  Chosen over
    psycopg's asyncio interface, which needs the asyncio reactor the node
    does not run, and over ``twisted.enterprise.adbapi``, which logs a
    traceback for every rollback on a dead connection.
    """

    def __init__(self, dsn: str, reactor: Any, connect_timeout: int = 5) -> None:
        from twisted.python.threadpool import ThreadPool
        self.dsn = dsn
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.pool = ThreadPool(1, 1, "vmqtw-postgresql")
        # A daemon thread: whatever is left of it never keeps the process
        # from exiting (twistd's shutdown, a node stopped mid-transaction).
        self.pool.threadFactory = _DaemonThread
        self.pool.start()
        self.connection: Any = None

    def _in_thread(self, work: Work) -> Any:
        import psycopg
        if self.connection is None or self.connection.closed:
            self.connection = psycopg.connect(self.dsn, connect_timeout=self.connect_timeout)
        try:
            with self.connection.transaction():
                with self.connection.cursor() as cursor:
                    return work(cursor)
        except psycopg.OperationalError:
            # The connection broke: the next transaction opens a new one.
            try:
                self.connection.close()
            finally:
                self.connection = None
            raise

    def run(self, work: Work) -> Deferred:
        from twisted.internet.threads import deferToThreadPool
        d: Deferred = deferToThreadPool(self.reactor, self.pool, self._in_thread, work)
        return d

    def close(self) -> Deferred:
        def shut() -> None:
            if self.connection is not None:
                self.connection.close()
                self.connection = None
        from twisted.internet.threads import deferToThreadPool
        d: Deferred = deferToThreadPool(self.reactor, self.pool, shut)
        return d.addBoth(lambda _: self.pool.stop())


class DirectDatabase:
    """
    Runs each transaction at once in the calling thread (tests on a
    ``Clock``: the same SQL on a real server, without threads).
    """

    def __init__(self, dsn: str) -> None:
        import psycopg
        self.connection = psycopg.connect(dsn)

    def run(self, work: Work) -> Deferred:
        try:
            with self.connection.transaction():
                with self.connection.cursor() as cursor:
                    return succeed(work(cursor))
        except Exception:
            return fail()

    def close(self) -> Deferred:
        self.connection.close()
        return succeed(None)


def _key(owner: bytes, subscriber_id: SubscriberId) -> Tuple[bytes, bytes, bytes]:
    return (owner, subscriber_id.mountpoint.encode("utf-8", "surrogatepass"),
            subscriber_id.client_id.encode("utf-8", "surrogatepass"))


@implementer(IMessageStore)
@attrs.define(eq=False)
class PostgresMessageStore:
    """
    ``database`` runs the transactions (:class:`PooledDatabase` in a node);
    ``node`` owns the node-private queues; ``reactor`` gives the turn a
    batch is committed at.
    """

    database_factory: Callable[[], Database]
    reactor: IReactorTime
    node: str

    name = "postgresql"
    durable = True
    #: Every node of a cluster sees the same queues (the registry then
    #: neither hands stored messages over nor deletes others' sessions).
    shared = True

    log = Logger()

    #: True from a failed commit until the next one succeeds (logged once
    #: each way; the node's health reports it).
    failing: bool = attrs.field(default=False, init=False)
    _database: Optional[Database] = attrs.field(default=None, init=False)
    _ops: List[Tuple[str, Tuple[Any, ...]]] = attrs.field(factory=list, init=False)
    _waiting: List[Deferred] = attrs.field(factory=list, init=False)
    _flush_call: Any = attrs.field(default=None, init=False)
    #: The transaction in flight: the next batch is committed after it.
    _tail: Optional[Deferred] = attrs.field(default=None, init=False)

    # -- lifecycle ------------------------------------------------------------

    def open(self) -> Deferred:
        self._database = self.database_factory()

        def create(cursor: Any) -> None:
            # Nodes starting together would race on CREATE ... IF NOT EXISTS
            # (PostgreSQL then fails one with a unique violation): one at a time.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in SCHEMA:
                cursor.execute(statement)
        self._tail = self._database.run(create)
        return _branch(self._tail)

    def close(self) -> Deferred:
        if self._database is None:
            return succeed(None)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush()
        database, self._database = self._database, None
        tail = self._tail if self._tail is not None else succeed(None)
        return tail.addBoth(lambda _: database.close())

    def _db(self) -> Database:
        if self._database is None:
            raise StoreNotOpen("the PostgreSQL message store is not open")
        return self._database

    def _owner(self, subscriber_id: SubscriberId) -> bytes:
        if subscriber_id.mountpoint in PRIVATE_MOUNTPOINTS:
            return self.node.encode("utf-8")
        return b""

    # -- batching -------------------------------------------------------------

    def _queue(self, kind: str, args: Tuple[Any, ...]) -> Deferred:
        self._db()
        self._ops.append((kind, args))
        d: Deferred = Deferred()
        self._waiting.append(d)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        """Commit this turn's writes and deletes as one transaction, after the last one."""
        self._flush_call = None
        ops, waiting = self._ops, self._waiting
        self._ops, self._waiting = [], []
        if not ops or self._database is None:
            return
        database = self._database

        def apply(cursor: Any) -> None:
            for kind, args in ops:
                if kind == "w":
                    owner, mountpoint, client_id, ref, body = args
                    cursor.execute(_INSERT_MESSAGE, (ref, body))
                    cursor.execute(_INSERT_ENTRY, (owner, mountpoint, client_id, ref))
                else:
                    owner, mountpoint, client_id, ref = args
                    cursor.execute(_DELETE_ENTRY, (owner, mountpoint, client_id, ref))
                    cursor.execute(_DELETE_UNREFERENCED, (ref, ref))

        def committed(result: Any) -> None:
            failed = _is_failure(result)
            if failed and not self.failing:
                self.failing = True
                self.log.error("message store: PostgreSQL does not take writes ({why}); "
                               "nothing is acknowledged until it does", why=result.getErrorMessage())
            elif not failed and self.failing:
                self.failing = False
                self.log.info("message store: PostgreSQL takes writes again")
            for d in waiting:
                if failed:
                    d.errback(Failure(StoreUnavailable(result.getErrorMessage())))
                else:
                    d.callback(None)

        previous = self._tail if self._tail is not None else succeed(None)
        self._tail = previous.addBoth(lambda _: database.run(apply))
        self._tail.addBoth(committed)   # fires the waiting writes; tail goes on with None

    # -- IMessageStore ----------------------------------------------------------

    def write(self, subscriber_id: SubscriberId, message: Message) -> Deferred:
        owner, mountpoint, client_id = _key(self._owner(subscriber_id), subscriber_id)
        return self._queue("w", (owner, mountpoint, client_id, message.ref,
                                 encode_message(message)))

    def delete(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        owner, mountpoint, client_id = _key(self._owner(subscriber_id), subscriber_id)
        return self._queue("d", (owner, mountpoint, client_id, ref))

    def _after_writes(self, work: Work) -> Deferred:
        """A read, run after every write queued before it (so it sees them)."""
        database = self._db()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self._flush()
        previous = self._tail if self._tail is not None else succeed(None)
        self._tail = previous.addBoth(lambda _: database.run(work))
        return _branch(self._tail)

    def read(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        key = _key(self._owner(subscriber_id), subscriber_id)

        def work(cursor: Any) -> Optional[Message]:
            cursor.execute(_READ, (*key, ref))
            row = cursor.fetchone()
            return decode_message(bytes(ref), bytes(row[0])) if row else None
        return self._after_writes(work)

    def find(self, subscriber_id: SubscriberId) -> Deferred:
        key = _key(self._owner(subscriber_id), subscriber_id)

        def work(cursor: Any) -> List[bytes]:
            cursor.execute(_FIND, key)
            return [bytes(row[0]) for row in cursor.fetchall()]
        return self._after_writes(work)

    def subscribers(self) -> Deferred:
        node = self.node.encode("utf-8")

        def work(cursor: Any) -> List[SubscriberId]:
            cursor.execute(_SUBSCRIBERS, (node,))
            return [SubscriberId(bytes(mp).decode("utf-8", "surrogatepass"),
                                 bytes(cid).decode("utf-8", "surrogatepass"))
                    for mp, cid in cursor.fetchall()]
        return self._after_writes(work)

    def stored_payloads(self) -> Deferred:
        """Payloads stored (testing hook of the conformance suite)."""
        def work(cursor: Any) -> int:
            cursor.execute(_PAYLOADS)
            return int(cursor.fetchone()[0])
        return self._after_writes(work)


def _is_failure(value: Any) -> bool:
    return isinstance(value, Failure)


def _branch(tail: Deferred) -> Deferred:
    """
    A Deferred with ``tail``'s result, for the caller; ``tail`` itself goes
    on (with None) so the next transaction can be chained after it whatever
    this one's outcome.
    """
    out: Deferred = Deferred()

    def pass_on(result: Any) -> None:
        if _is_failure(result):
            out.errback(result)
        else:
            out.callback(result)
    tail.addBoth(pass_on)
    return out
