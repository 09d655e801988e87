"""
Micro-benchmark of the message stores, LevelDB and PostgreSQL (not a test).

What a broker asks of its store when clients are offline: the **enqueue**
rate (``write`` of 100-byte QoS 1 messages for ``--subscribers`` offline
subscribers, ``--per-turn`` messages per reactor turn, as if that many
PUBLISHes arrived in one ``dataReceived``; each store batches a turn into
one write batch or transaction), the **reopen** (the index scan of a
restart) and the **reconnect drain** (``find``, ``read`` and ``delete`` of
every queue, ``--per-turn`` messages at a time, as a queue delivers to a
reconnected client).  The real reactor runs, so the per-turn batching is
what gets measured.

    .venv/bin/python -m benchmarks.store_bench                     # both stores
    .venv/bin/python -m benchmarks.store_bench --store leveldb --sync
    .venv/bin/python -m benchmarks.store_bench --store postgresql --dsn 'host=db ...'

Without ``--dsn`` a throwaway PostgreSQL server is started from the
installed binaries (``vmqtw.testing.pgserver``) with
PostgreSQL's durable defaults (fsync, synchronous commit), and removed at
the end; ``--fast-pg`` turns those off as the tests do.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import react

from vmqtw.interfaces import IMessageStore
from vmqtw.types import Message, SubscriberId, new_message_ref


async def measure(store: IMessageStore, reopen: Callable[[], IMessageStore],
                  args: argparse.Namespace) -> Dict[str, float]:
    sids = [SubscriberId("", "sub-%d" % i) for i in range(args.subscribers)]
    msgs = [Message(ref=new_message_ref(), topic="bench/%d" % (i % 100),
                    payload=b"x" * 100, qos=1, timestamp=time.time())
            for i in range(args.messages)]
    await store.open()
    t0 = time.perf_counter()
    for i in range(0, len(msgs), args.per_turn):
        await gatherResults([store.write(sid, m)
                             for m in msgs[i:i + args.per_turn]
                             for sid in sids])
    write_s = time.perf_counter() - t0
    await store.close()

    t0 = time.perf_counter()
    store = reopen()
    await store.open()
    open_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    drained = 0
    for sid in sids:
        refs = await store.find(sid)
        for i in range(0, len(refs), args.per_turn):
            chunk = refs[i:i + args.per_turn]
            read = await gatherResults([store.read(sid, ref) for ref in chunk])
            drained += sum(1 for m in read if m is not None)
            await gatherResults([store.delete(sid, ref) for ref in chunk])
    drain_s = time.perf_counter() - t0
    await store.close()
    expected = args.messages * args.subscribers
    if drained != expected:
        raise SystemExit("store lost messages: drained %d of %d" % (drained, expected))
    return {"enqueue_msgs_per_s": args.messages / write_s,
            "enqueue_entries_per_s": expected / write_s,
            "reopen_s": open_s,
            "drain_entries_per_s": expected / drain_s}


def report(name: str, figures: Dict[str, float], args: argparse.Namespace) -> None:
    print("%s: %d messages x %d offline subscribers, %d messages per turn"
          % (name, args.messages, args.subscribers, args.per_turn))
    print("  enqueue: %8.0f messages/s  (%.0f queue entries/s)"
          % (figures["enqueue_msgs_per_s"], figures["enqueue_entries_per_s"]))
    print("  reopen:  %8.2f s" % (figures["reopen_s"],))
    print("  drain:   %8.0f entries/s (find + read + delete)" % (figures["drain_entries_per_s"],))


async def bench_leveldb(reactor: Any, args: argparse.Namespace) -> Dict[str, float]:
    from vmqtw.store.leveldb import LevelDBMessageStore
    path = tempfile.mkdtemp(prefix="vmqtw-store-bench-")
    try:
        def build() -> IMessageStore:
            return LevelDBMessageStore(path, reactor, sync=args.sync)
        return await measure(build(), build, args)
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def bench_postgresql(reactor: Any, args: argparse.Namespace) -> Dict[str, float]:
    from vmqtw.store.postgresql import PostgresMessageStore, ThreadedDatabase
    server = None
    dsn = args.dsn
    if dsn is None:
        from vmqtw.testing.pgserver import PostgresServer
        server = PostgresServer(durable=not args.fast_pg).start()
        dsn = server.dsn(schema=server.new_schema())
    try:
        def build() -> IMessageStore:
            return PostgresMessageStore(lambda: ThreadedDatabase(dsn, reactor), reactor, "bench")
        return await measure(build(), build, args)
    finally:
        if server is not None:
            server.stop()


async def bench(reactor: Any, args: argparse.Namespace) -> None:
    results: List[tuple] = []
    if args.store in ("leveldb", "both"):
        figures = await bench_leveldb(reactor, args)
        name = "leveldb (sync=%s)" % ("on" if args.sync else "off")
        report(name, figures, args)
        results.append((name, figures))
    if args.store in ("postgresql", "both"):
        figures = await bench_postgresql(reactor, args)
        name = "postgresql (%s)" % ("given dsn" if args.dsn else
                                    "fsync off" if args.fast_pg else "fsync on")
        report(name, figures, args)
        results.append((name, figures))
    if len(results) == 2:
        (_, a), (_, b) = results
        print("postgresql / leveldb: enqueue %.2fx, drain %.2fx"
              % (b["enqueue_msgs_per_s"] / a["enqueue_msgs_per_s"],
                 b["drain_entries_per_s"] / a["drain_entries_per_s"]))


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[1])
    parser.add_argument("--store", choices=("leveldb", "postgresql", "both"), default="both")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--subscribers", type=int, default=5)
    parser.add_argument("--per-turn", type=int, default=100)
    parser.add_argument("--sync", action="store_true", help="leveldb: fsync every batch")
    parser.add_argument("--dsn", default=None, help="postgresql: an existing database")
    parser.add_argument("--fast-pg", action="store_true",
                        help="throwaway postgresql without fsync (as the tests run it)")
    args = parser.parse_args(argv)
    react(lambda reactor: ensureDeferred(bench(reactor, args)))


if __name__ == "__main__":
    main()
