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

Like the LevelDB store, what is asked of it in one reactor turn -- writes,
deletes and the reads between them, in order -- runs as one transaction;
a ``write`` fires once PostgreSQL committed it (the publisher is
acknowledged only then).  Transactions run one after another, in order, on
one connection in a worker thread (:class:`ThreadedDatabase`): a delete can
never overtake the write it undoes, and the reactor never waits for the
database.  When the database is unreachable, writes fail (the broker does
not acknowledge them; clients resend) and the next transaction reconnects.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple

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
    # ref first: reads and deletes name their entries by ref, and the
    # planner, before the table is analyzed, would otherwise walk a whole
    # queue per statement (the queue's prefix looks selective).
    " PRIMARY KEY (ref, owner, mountpoint, client_id))",
    "CREATE INDEX IF NOT EXISTS vmqtw_entries_order"
    " ON vmqtw_entries (owner, mountpoint, client_id, seq)",
)

_INSERT_MESSAGES = ("INSERT INTO vmqtw_messages (ref, body)"
                    " SELECT * FROM unnest(%s::bytea[], %s::bytea[]) ON CONFLICT DO NOTHING")
_INSERT_ENTRIES = ("INSERT INTO vmqtw_entries (owner, mountpoint, client_id, ref)"
                   " SELECT o, m, c, r FROM unnest(%s::bytea[], %s::bytea[], %s::bytea[],"
                   " %s::bytea[]) WITH ORDINALITY AS t (o, m, c, r, n)"
                   " ORDER BY n ON CONFLICT DO NOTHING")
_DELETE_ENTRIES = ("DELETE FROM vmqtw_entries"
                   " WHERE ref = ANY(%s) AND owner = %s AND mountpoint = %s AND client_id = %s")
_DELETE_UNREFERENCED = ("DELETE FROM vmqtw_messages m WHERE m.ref = ANY(%s)"
                        " AND NOT EXISTS (SELECT 1 FROM vmqtw_entries e WHERE e.ref = m.ref)")
_READ_MANY = ("SELECT e.ref, m.body FROM vmqtw_entries e JOIN vmqtw_messages m ON m.ref = e.ref"
              " WHERE e.ref = ANY(%s) AND e.owner = %s AND e.mountpoint = %s"
              " AND e.client_id = %s")
_FIND = ("SELECT ref FROM vmqtw_entries"
         " WHERE owner = %s AND mountpoint = %s AND client_id = %s ORDER BY seq")
_SUBSCRIBERS = ("SELECT DISTINCT mountpoint, client_id FROM vmqtw_entries"
                " WHERE owner = '' OR owner = %s")
_PAYLOADS = "SELECT count(*) FROM vmqtw_messages"
_ANALYZE = "ANALYZE vmqtw_entries"

#: See :meth:`PostgresMessageStore._analyze_due`.
ANALYZE_AFTER = 10_000
ANALYZE_INTERVAL = 30.0

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

    def __init__(self, dsn: str, reactor: Any, connect_timeout: int = 5,
                 query_timeout: float = 10.0) -> None:
        from twisted.python.threadpool import ThreadPool
        self.dsn = dsn
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.query_timeout = query_timeout
        self.pool = ThreadPool(1, 1, "vmqtw-postgresql")
        # A daemon thread: whatever is left of it never keeps the process
        # from exiting (twistd's shutdown, a node stopped mid-transaction).
        self.pool.threadFactory = _DaemonThread
        self.pool.start()
        self.connection: Any = None

    def _in_thread(self, work: Work) -> Any:
        import psycopg
        if self.connection is None or self.connection.closed:
            self.connection = self._connect()
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

    def _connect(self) -> Any:
        """
        A connection whose transactions cannot hang the store: the server
        cancels a statement after ``query_timeout``, and the kernel gives up
        on a connection whose packets go unacknowledged as long (a database
        behind a cut network answers nothing at all, not even an error).
        """
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
        timeout_ms = int(self.query_timeout * 1000)
        given = conninfo_to_dict(self.dsn)
        extra: Dict[str, Any] = {"connect_timeout": self.connect_timeout}
        if "tcp_user_timeout" not in given:   # the operator's own value wins
            extra["tcp_user_timeout"] = timeout_ms
        connection = psycopg.connect(self.dsn, **extra)
        try:
            connection.execute("SELECT set_config('statement_timeout', %s, false)",
                               (str(timeout_ms),))
            connection.commit()
        except Exception:
            connection.close()
            raise
        return connection

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
    _ops: List["_Op"] = attrs.field(factory=list, init=False)
    _flush_call: Any = attrs.field(default=None, init=False)
    #: The transaction in flight: the next batch is committed after it.
    _tail: Optional[Deferred] = attrs.field(default=None, init=False)
    #: Queue entries written since the planner's statistics were last
    #: refreshed, and when that was (see :meth:`_analyze_due`).
    _written_since_analyze: int = attrs.field(default=0, init=False)
    _last_analyze: Optional[float] = attrs.field(default=None, init=False)

    # -- lifecycle ------------------------------------------------------------

    def open(self) -> Deferred:
        self._database = self.database_factory()

        def create(cursor: Any) -> None:
            # Nodes starting together would race on CREATE ... IF NOT EXISTS
            # (PostgreSQL then fails one with a unique violation): one at a time.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in SCHEMA:
                cursor.execute(statement)
            cursor.execute(_ANALYZE)   # a restart drains what is there: plan for it
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
        """
        Queue one operation for this turn's transaction; the Deferred fires
        with its result once that transaction committed.
        """
        self._db()
        d: Deferred = Deferred()
        self._ops.append((kind, args, d))
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        """
        Run this turn's operations as one transaction, after the last one.

        They run in the order they were asked for (a read sees every write
        asked before it), with runs of the same kind sent together -- one
        ``unnest`` insert per table for writes, one ``ref = ANY(...)``
        statement for the reads or the deletes of one queue -- because the
        round trips, not the rows, are what a turn's transaction costs.
        """
        self._flush_call = None
        ops = self._ops
        self._ops = []
        if not ops or self._database is None:
            return
        database = self._database
        writes = sum(1 for kind, _, _ in ops if kind == "w")
        analyze = self._analyze_due(writes)

        def apply(cursor: Any) -> List[Any]:
            results: List[Any] = []
            for kind, run in _runs(ops):
                results.extend(_APPLY[kind](cursor, run))
            if analyze:
                cursor.execute(_ANALYZE)
            return results

        def committed(result: Any) -> None:
            failed = _is_failure(result)
            if failed and not self.failing:
                self.failing = True
                self.log.error("message store: PostgreSQL does not take writes ({why}); "
                               "nothing is acknowledged until it does", why=result.getErrorMessage())
            elif not failed and self.failing:
                self.failing = False
                self.log.info("message store: PostgreSQL takes writes again")
            if failed:
                unavailable = Failure(StoreUnavailable(result.getErrorMessage()))
                for _, _, d in ops:
                    d.errback(unavailable)
            else:
                for (_, _, d), value in zip(ops, result):
                    d.callback(value)

        previous = self._tail if self._tail is not None else succeed(None)
        self._tail = previous.addBoth(lambda _: database.run(apply))
        self._tail.addBoth(committed)   # fires the waiting operations; tail goes on with None

    def _analyze_due(self, written: int) -> bool:
        """
        Whether this turn's transaction also refreshes the planner's
        statistics of the queue table.  Without them (a table that grew
        fast since the last ``ANALYZE``, before autovacuum came by) the
        planner takes a queue's entries for a handful and reads or deletes
        by walking the whole queue: a drain of 100,000 entries ran 7 times
        slower.  So: after the first ``ANALYZE_AFTER`` entries this node
        wrote, then after each further ``ANALYZE_AFTER`` at most once per
        ``ANALYZE_INTERVAL`` seconds (it samples, it does not scan).
        """
        self._written_since_analyze += written
        if self._written_since_analyze < ANALYZE_AFTER:
            return False
        now = self.reactor.seconds()
        if self._last_analyze is not None and now - self._last_analyze < ANALYZE_INTERVAL:
            return False
        self._written_since_analyze = 0
        self._last_analyze = now
        return True

    # -- IMessageStore ----------------------------------------------------------

    def write(self, subscriber_id: SubscriberId, message: Message) -> Deferred:
        owner, mountpoint, client_id = _key(self._owner(subscriber_id), subscriber_id)
        return self._queue("w", (owner, mountpoint, client_id, message.ref,
                                 encode_message(message)))

    def delete(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        owner, mountpoint, client_id = _key(self._owner(subscriber_id), subscriber_id)
        return self._queue("d", (owner, mountpoint, client_id, ref))

    def read(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        return self._queue("r", (*_key(self._owner(subscriber_id), subscriber_id), ref))

    def find(self, subscriber_id: SubscriberId) -> Deferred:
        return self._queue("f", _key(self._owner(subscriber_id), subscriber_id))

    def subscribers(self) -> Deferred:
        return self._queue("s", (self.node.encode("utf-8"),))

    def stored_payloads(self) -> Deferred:
        """Payloads stored (testing hook of the conformance suite)."""
        return self._queue("p", ())


_Op = Tuple[str, Tuple[Any, ...], Deferred]

#: Kinds of operation that run one statement per queue.
_PER_QUEUE = frozenset("rd")


def _runs(ops: List[_Op]) -> Iterator[Tuple[str, List[Tuple[Any, ...]]]]:
    """
    ``ops`` as runs of one kind, in order; reads and deletes are split
    further by queue (one statement reads or deletes in one queue).
    """
    kind = ""
    run: List[Tuple[Any, ...]] = []
    for op_kind, args, _ in ops:
        if op_kind != kind or (kind in _PER_QUEUE and args[:3] != run[0][:3]):
            if run:
                yield kind, run
            kind, run = op_kind, []
        run.append(args)
    if run:
        yield kind, run


def _apply_writes(cursor: Any, run: List[Tuple[Any, ...]]) -> List[Any]:
    # One statement per table for the run (arrays unnested by the server):
    # a round trip per row is what a transaction of many writes costs.
    # Entries in the order written: their ``seq`` is the queue's order.
    owners, mountpoints, client_ids, refs, bodies = (list(column) for column in zip(*run))
    payloads = dict(zip(refs, bodies))   # a message written for several queues: once
    cursor.execute(_INSERT_MESSAGES, (list(payloads), list(payloads.values())))
    cursor.execute(_INSERT_ENTRIES, (owners, mountpoints, client_ids, refs))
    return [None] * len(run)


def _apply_deletes(cursor: Any, run: List[Tuple[Any, ...]]) -> List[Any]:
    # One statement for the run, not one per entry: besides the round
    # trips, a prepared per-entry DELETE on a table not yet analyzed was
    # planned as a sequential scan (40 times slower).
    refs = [args[3] for args in run]
    cursor.execute(_DELETE_ENTRIES, (refs, *run[0][:3]))
    cursor.execute(_DELETE_UNREFERENCED, (refs,))
    return [None] * len(run)


def _apply_reads(cursor: Any, run: List[Tuple[Any, ...]]) -> List[Any]:
    owner, mountpoint, client_id = run[0][:3]
    cursor.execute(_READ_MANY, ([args[3] for args in run], owner, mountpoint, client_id))
    bodies = {bytes(ref): bytes(body) for ref, body in cursor.fetchall()}
    found: List[Any] = []
    for args in run:
        ref = bytes(args[3])
        body = bodies.get(ref)
        found.append(None if body is None else decode_message(ref, body))
    return found


def _apply_finds(cursor: Any, run: List[Tuple[Any, ...]]) -> List[Any]:
    found: List[Any] = []
    for key in run:
        cursor.execute(_FIND, key)
        found.append([bytes(row[0]) for row in cursor.fetchall()])
    return found


def _apply_subscribers(cursor: Any, run: List[Tuple[Any, ...]]) -> List[Any]:
    found: List[Any] = []
    for (node,) in run:
        cursor.execute(_SUBSCRIBERS, (node,))
        found.append([SubscriberId(bytes(mp).decode("utf-8", "surrogatepass"),
                                   bytes(cid).decode("utf-8", "surrogatepass"))
                      for mp, cid in cursor.fetchall()])
    return found


def _apply_payload_counts(cursor: Any, run: List[Tuple[Any, ...]]) -> List[Any]:
    counts: List[Any] = []
    for _ in run:
        cursor.execute(_PAYLOADS)
        counts.append(int(cursor.fetchone()[0]))
    return counts


#: How each kind of queued operation runs (see :meth:`PostgresMessageStore._flush`).
_APPLY: Dict[str, Callable[[Any, List[Tuple[Any, ...]]], List[Any]]] = {
    "w": _apply_writes, "d": _apply_deletes, "r": _apply_reads, "f": _apply_finds,
    "s": _apply_subscribers, "p": _apply_payload_counts,
}


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
