"""
Scale check of the metadata replication: N keys put on one node of 3 over
the in-memory transport (serialising every message with msgpack, as the TCP
transport does).

Reports the wall time of the puts and until all three Merkle roots agree,
the messages (and bytes) sent per put, by type, and the resident memory per
key (all three replicas together, divided by N).

    .venv/bin/python benchmarks/metadata_scale.py [--keys 100000] [--leveldb]

Simulated time: puts arrive in bursts of ``--burst`` with every message
delivered before the next burst (zero latency), then the lazy tick runs.
This measures the CPU cost of the protocol, not network latency.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--leveldb", action="store_true",
                        help="persist every replica in LevelDB under /tmp")
    args = parser.parse_args()

    from vmqtw.testing.simulation import SimCluster
    from vmqtw.types import SUBSCRIBER_PREFIX as P

    root = tempfile.mkdtemp(prefix="md-scale-") if args.leveldb else None
    gc.collect()
    before = rss_bytes()
    names = ["vmqtw@127.0.0.%d" % i for i in (2, 3, 4)]
    c = SimCluster(names, data_root=root, exchange_tick=3600.0,
                   exchange_on_up_delay=None)
    try:
        a = c[names[0]].store
        c.advance(1.0)
        c.network.reset_counters()
        t0 = time.perf_counter()
        for i in range(args.keys):
            a.put(P, ("", "client-%07d" % i),
                  ((names[0], False, (("devices/%d/+/state" % i, 1),)),))
            if i % args.burst == args.burst - 1:
                c.settle()
        c.settle()
        t_put = time.perf_counter() - t0
        ticks = 0
        while not (c.agree() and all(
                n.broadcast.outstanding_count() == 0
                for n in c.nodes.values())):
            c.clock.advance(c.lazy_tick)
            ticks += 1
        t_agree = time.perf_counter() - t0
        gc.collect()
        after = rss_bytes()
        counts = dict(c.network.counters)
        total = sum(counts.values())
        print("keys                 %d (put on 1 node of 3)" % args.keys)
        print("storage              %s" % ("LevelDB" if root else "memory"))
        print("puts+delivery        %.2f s (%.0f puts/s)"
              % (t_put, args.keys / t_put))
        print("all agree after      %.2f s wall, %d lazy ticks" %
              (t_agree, ticks))
        print("messages per put     %.3f (%d total)" %
              (total / args.keys, total))
        for key, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            print("   %-28s %d" % ("%s/%s" % key, n))
        print("bytes per put        %.0f" % (c.network.bytes_sent / args.keys))
        print("memory per key       %.0f B (3 replicas + trees, RSS delta)"
              % ((after - before) / args.keys))
        print("outstanding shed     %d" %
              sum(n.broadcast.shed for n in c.nodes.values()))
    finally:
        c.close()
        if root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
