"""
Metadata replication over real TCP between three replica processes
(:mod:`vmqtw.testing.replica_process`) on loopback.

For each size N: a fresh 3-node cluster (joined, links up, trees warmed),
then N subscription-shaped puts on one node; reported are

* the time from the first put until all three nodes hold every key (polled
  every few ms), and until their digests of every visible key and value
  are identical;
* frames and bytes written per put, summed over the three transports from
  the first put until the lazy-tick announcements drained (heartbeats of
  that interval included);
* resident memory per key: the RSS growth of the three processes (from
  ``/proc``) divided by N -- three replicas, their LevelDB caches and
  Merkle trees together.

    .venv/bin/python benchmarks/metadata_tcp.py [--sizes 2000,100000]

Target (issue 4): 2,000 subscriptions agreed by 3 nodes in <= 2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

from vmqtw.testing.replica_process import ControlClient, rss_bytes

COOKIE = "bench-cookie"


def wait(predicate: Callable[[], Any], timeout: float, what: str,
         interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


class Node:
    def __init__(self, ip: str, root: str, timers: List[str]) -> None:
        self.ip = ip
        self.name = "vmqtw@%s" % (ip,)
        d = os.path.join(root, ip)
        os.makedirs(d)
        self.ready = os.path.join(d, "ready.json")
        self.log = open(os.path.join(d, "log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmqtw.testing.replica_process",
             "--name", self.name, "--listen", "%s:0" % (ip,),
             "--cookie", COOKIE, "--data-dir", os.path.join(d, "data"),
             "--control", "127.0.0.1:0", "--ready-file", self.ready,
             "--log-level", "warn", *timers],
            stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.client: Any = None
        self.port = 0

    def connect(self) -> None:
        wait(lambda: self.proc.poll() is None and os.path.exists(self.ready)
             or self.proc.poll() is not None, 15, "start")
        if self.proc.poll() is not None:
            raise RuntimeError("%s died at start" % (self.name,))
        with open(self.ready) as f:
            info = json.load(f)
        self.port = info["cluster"]
        self.client = ControlClient(info["control"], timeout=600)

    def call(self, op: str, **kw: Any) -> Any:
        return self.client.call(op, **kw)

    def rss(self) -> int:
        return rss_bytes(str(self.proc.pid))

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def totals(nodes: List[Node]) -> Dict[str, int]:
    out = {"frames": 0, "bytes": 0}
    for n in nodes:
        c = n.call("status")["counters"]
        out["frames"] += c["frames_out"]
        out["bytes"] += c["bytes_out"]
    return out


def run_size(n_keys: int, ips: List[str], timers: List[str],
             batch: int) -> Dict[str, Any]:
    root = tempfile.mkdtemp(prefix="md-tcp-")
    nodes: List[Node] = []
    try:
        for ip in ips:
            nodes.append(Node(ip, root, timers))
        for node in nodes:
            node.connect()
        a = nodes[0]
        for node in nodes[1:]:
            node.call("join", seed=a.name, address=[a.ip, a.port])
        names = sorted(n.name for n in nodes)
        wait(lambda: all(s["members"] == names and len(s["connected"]) == 2
                         for s in (n.call("status") for n in nodes)),
             15, "cluster up", 0.05)
        # warm-up: the first broadcasts prune the trees to N-1 per put
        a.call("bulk_put", n=20, start=10_000_000, tag="warm")
        wait(lambda: all(n.call("count") == 20 for n in nodes) and all(
            n.call("status")["outstanding"] == 0 for n in nodes),
            30, "warm-up", 0.05)
        rss0 = [n.rss() for n in nodes]
        c0 = totals(nodes)
        expected = 20 + n_keys
        t0 = time.perf_counter()
        put = a.call("bulk_put", n=n_keys, batch=batch)
        t_put = time.perf_counter() - t0
        wait(lambda: all(n.call("count") == expected for n in nodes[1:]),
             600, "all keys everywhere")
        t_keys = time.perf_counter() - t0
        digests = [n.call("summary")["digest"] for n in nodes]
        t_digest = time.perf_counter() - t0
        wait(lambda: all(n.call("status")["outstanding"] == 0
                         for n in nodes), 120, "outstanding drained", 0.05)
        t_drain = time.perf_counter() - t0
        c1 = totals(nodes)
        rss1 = [n.rss() for n in nodes]
        status = [n.call("status") for n in nodes]
        return {
            "keys": n_keys, "put_seconds": put["seconds"],
            "put_wall": t_put, "all_keys": t_keys,
            "digests_equal": len(set(digests)) == 1,
            "digests_checked": t_digest, "drained": t_drain,
            "frames_per_put": (c1["frames"] - c0["frames"]) / n_keys,
            "bytes_per_put": (c1["bytes"] - c0["bytes"]) / n_keys,
            "rss_per_key": (sum(rss1) - sum(rss0)) / n_keys,
            "rss_mb": [r / 2 ** 20 for r in rss1],
            "dropped": sum(s["counters"]["dropped_frames"] for s in status),
            "shed": sum(s["shed"] for s in status),
            "aae_repaired": sum(s["aae_repaired"] for s in status),
        }
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(r: Dict[str, Any]) -> None:
    print("keys                    %d (put on 1 node of 3, LevelDB)"
          % r["keys"])
    print("puts on A               %.2f s in the process (%.0f puts/s), "
          "%.2f s wall" % (r["put_seconds"], r["keys"] / r["put_seconds"],
                           r["put_wall"]))
    print("all keys on all 3       %.2f s after the first put"
          % r["all_keys"])
    print("digests identical       %s (checked at %.2f s)"
          % (r["digests_equal"], r["digests_checked"]))
    print("lazy announcements done %.2f s" % r["drained"])
    print("frames per put          %.3f (all 3 nodes, heartbeats incl.)"
          % r["frames_per_put"])
    print("bytes per put           %.0f" % r["bytes_per_put"])
    print("memory per key          %.0f B (RSS growth of 3 replicas)"
          % r["rss_per_key"])
    print("RSS after               %s MiB" % ", ".join(
        "%.0f" % m for m in r["rss_mb"]))
    print("dropped/shed/repaired   %d / %d / %d"
          % (r["dropped"], r["shed"], r["aae_repaired"]))
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--sizes", default="2000,100000")
    p.add_argument("--first-ip", type=int, default=52,
                   help="nodes on 127.0.0.<first-ip> and the next two")
    p.add_argument("--batch", type=int, default=1000,
                   help="puts per reactor turn on the writing node")
    p.add_argument("--lazy-tick", default="1.0")
    p.add_argument("--exchange-tick", default="10.0")
    args = p.parse_args()
    ips = ["127.0.0.%d" % (args.first_ip + i) for i in range(3)]
    timers = ["--lazy-tick", args.lazy_tick, "--exchange-tick",
              args.exchange_tick, "--gossip", "1.0", "--gc-interval", "0"]
    for size in (int(s) for s in args.sizes.split(",")):
        report(run_size(size, ips, timers, args.batch))


if __name__ == "__main__":
    main()
