"""
Micro-benchmark of the leveldb message store (not a test).

Writes ``--messages`` 100-byte QoS 1 messages, each for ``--subscribers``
offline subscribers, ``--per-turn`` messages per reactor turn (as if that
many PUBLISHes arrived in one ``dataReceived``), with the real reactor so
that the per-turn ``WriteBatch`` is what gets measured.  Then times the
recovery scan of a reopen and a drain (find, read, delete) of every queue.

    .venv/bin/python benchmarks/store_bench.py [--sync] [--messages 50000]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import react

from vmqtw.store.leveldb import LevelDBMessageStore
from vmqtw.types import Message, SubscriberId, new_message_ref


async def bench(reactor, args: argparse.Namespace) -> None:
    path = tempfile.mkdtemp(prefix="vmqtw-store-bench-")
    try:
        sids = [SubscriberId("", "sub-%d" % i) for i in range(args.subscribers)]
        msgs = [Message(ref=new_message_ref(), topic="bench/%d" % (i % 100),
                        payload=b"x" * 100, qos=1, timestamp=time.time())
                for i in range(args.messages)]
        store = LevelDBMessageStore(path, reactor, sync=args.sync)
        await store.open()
        t0 = time.perf_counter()
        for i in range(0, len(msgs), args.per_turn):
            await gatherResults([store.write(sid, m)
                                 for m in msgs[i:i + args.per_turn]
                                 for sid in sids])
        write_s = time.perf_counter() - t0
        await store.close()

        t0 = time.perf_counter()
        store = LevelDBMessageStore(path, reactor, sync=args.sync)
        await store.open()
        open_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        for sid in sids:
            refs = await store.find(sid)
            for i in range(0, len(refs), args.per_turn):
                chunk = refs[i:i + args.per_turn]
                for ref in chunk:
                    await store.read(sid, ref)
                await gatherResults([store.delete(sid, ref) for ref in chunk])
        drain_s = time.perf_counter() - t0
        await store.close()

        n, s = args.messages, args.subscribers
        print("leveldb store, sync=%s, %d messages x %d subscribers, %d "
              "messages per turn" % (args.sync, n, s, args.per_turn))
        print("  write: %.2fs  %.0f messages/s  %.0f store.write calls/s"
              % (write_s, n / write_s, n * s / write_s))
        print("  reopen (index scan): %.2fs" % (open_s,))
        print("  drain (find+read+delete): %.2fs  %.0f entries/s"
              % (drain_s, n * s / drain_s))
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--subscribers", type=int, default=5)
    parser.add_argument("--per-turn", type=int, default=100)
    parser.add_argument("--sync", action="store_true")
    args = parser.parse_args(argv)
    react(lambda reactor: ensureDeferred(bench(reactor, args)))


if __name__ == "__main__":
    main(sys.argv[1:])
