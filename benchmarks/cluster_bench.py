"""
Cluster figures on real nodes over loopback: cross-node throughput, SUBACK
latency and how fast a silent peer is detected.

Each run starts its own ``twistd -n vmqtw`` nodes on 127.0.0.x aliases in a
temporary directory, joins them with ``vmqtw-admin`` and removes everything
when it ends.  ``--bin DIR`` takes ``twistd`` and ``vmqtw-admin`` from
another checkout's virtualenv, so that two commits can be compared on the
same machine (the "before and after" of a change)::

    python benchmarks/cluster_bench.py throughput --qos 1 --messages 20000
    python benchmarks/cluster_bench.py throughput --bin /tmp/old/.venv/bin
    python benchmarks/cluster_bench.py suback --subscribes 500
    python benchmarks/cluster_bench.py connect --set coordinate_registrations=off
    python benchmarks/cluster_bench.py detection --rounds 5 \
        --set cluster.heartbeat_interval=250ms --set cluster.heartbeat_timeout=1s

``throughput`` runs ``loadgen.py fanin`` with the publishers on node A and
the subscriber on node B, so every message crosses the cluster link;
``suback`` times SUBSCRIBE -> SUBACK on node A of three nodes (each SUBACK
waits until the other nodes route the filter); ``detection`` freezes node B
(SIGSTOP: its socket stays open and silent, as behind a firewall that drops
packets) and times how long node A takes to refuse a CONNECT; ``connect``
times CONNECT -> CONNACK on node A of three (registrations coordinated or
not).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
COOKIE = "cluster-bench-cookie"


def free_ports(host: str, count: int) -> List[int]:
    """``count`` distinct free ports, every probe held until all are chosen."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit("cluster_bench: %s not reached within %ss" % (what, timeout))
        time.sleep(0.05)


class Node:
    """One node process in ``root/<name>``."""

    def __init__(self, root: str, bindir: str, name: str, host: str,
                 extra: Dict[str, str]) -> None:
        self.bindir = bindir
        self.name = "bench%s@%s" % (name, host)
        self.host = host
        self.directory = os.path.join(root, name)
        os.makedirs(self.directory)
        self.port, self.cluster_port = free_ports(host, 2)
        settings = {
            "nodename": self.name,
            "listener.tcp.default": "%s:%d" % (host, self.port),
            "listener.vmq.clustering": "%s:%d" % (host, self.cluster_port),
            "platform_data_dir": "./data",
            "allow_anonymous": "on",
            "distributed_cookie": COOKIE,
            "max_online_messages": "-1",
            "max_offline_messages": "-1",
            "log.console.level": "warning",
        }
        settings.update(extra)
        self.config = os.path.join(self.directory, "vernemq.conf")
        with open(self.config, "w") as handle:
            for key, value in settings.items():
                handle.write("%s = %s\n" % (key, value))
        with open(os.path.join(self.directory, "node.log"), "ab") as log:
            self.process = subprocess.Popen(
                [os.path.join(bindir, "twistd"), "-n", "--pidfile=", "vmqtw",
                 "--config", self.config], cwd=self.directory, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        wait(self.accepting, 30, "%s accepting" % self.name)

    def accepting(self) -> bool:
        if self.process.poll() is not None:
            raise SystemExit("cluster_bench: %s exited; see %s" % (self.name, self.directory))
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def admin(self, *argv: str) -> str:
        out = subprocess.run([os.path.join(self.bindir, "vmqtw-admin"), "--config",
                              self.config, *argv], cwd=self.directory,
                             capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise SystemExit("cluster_bench: vmqtw-admin %s: %s" % (" ".join(argv),
                                                                 out.stderr.strip()))
        return out.stdout

    def running_members(self) -> int:
        try:
            table = json.loads(self.admin("--format=json", "cluster", "show"))["table"]
        except SystemExit:
            return 0
        return sum(1 for row in table if row["Running"])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Cluster:
    def __init__(self, bindir: str, count: int, extra: Dict[str, str]) -> None:
        self.root = tempfile.mkdtemp(prefix="vmqtw-cluster-bench-")
        self.nodes: List[Node] = []
        try:
            for i in range(count):
                self.nodes.append(Node(self.root, bindir, "ABCDEFG"[i], "127.0.0.%d" % (60 + i),
                                       extra))
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                node.admin("cluster", "join", "discovery-node=%s:%d" % (seed.name,
                                                                         seed.cluster_port))
            for node in self.nodes:
                wait(lambda node=node: node.running_members() == count, 60,
                     "%d members running on %s" % (count, node.name))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# -- a minimal MQTT 3.1.1 client for timing (no dependency beyond stdlib) ----

def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str) -> bytes:
    body = _string("MQTT") + bytes([4, 2]) + struct.pack("!H", 60) + _string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, flt: str) -> bytes:
    body = struct.pack("!H", packet_id) + _string(flt) + b"\x01"
    return b"\x82" + _remaining_length(len(body)) + body


def read_packet(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data
    header = exactly(1)
    length, shift = 0, 0
    while True:
        byte = exactly(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header + exactly(length)


def mqtt_connect(host: str, port: int, client_id: str) -> Optional[socket.socket]:
    """A connected socket after CONNACK 0, or None when refused."""
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(connect_packet(client_id))
    try:
        connack = read_packet(sock)
    except (ConnectionError, socket.timeout):
        sock.close()
        return None
    if connack[0] != 0x20 or connack[2] != 0:   # header, flags, return code
        sock.close()
        return None
    return sock


# -- scenarios ---------------------------------------------------------------------

def throughput(args: argparse.Namespace) -> Dict[str, Any]:
    cluster = Cluster(args.bin, 2, args.settings)
    try:
        a, b = cluster.nodes
        command = [sys.executable, os.path.join(HERE, "loadgen.py"), "fanin",
                   "--host", a.host, "--port", str(a.port),
                   "--sub-host", b.host, "--sub-port", str(b.port),
                   "--publishers", str(args.publishers), "--messages", str(args.messages),
                   "--qos", str(args.qos), "--json"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if not out.stdout.strip():
            raise SystemExit("cluster_bench: loadgen failed: %s" % out.stderr)
        report = json.loads(out.stdout)
        report["loadgen_exit"] = out.returncode
        return report
    finally:
        cluster.close()


def suback(args: argparse.Namespace) -> Dict[str, Any]:
    cluster = Cluster(args.bin, 3, args.settings)
    try:
        a = cluster.nodes[0]
        sock = mqtt_connect(a.host, a.port, "suback-timer")
        assert sock is not None
        times = []
        for i in range(1, args.subscribes + 1):
            started = time.perf_counter()
            sock.sendall(subscribe_packet(i % 65535 + 1, "suback/%d/#" % i))
            packet = read_packet(sock)
            times.append((time.perf_counter() - started) * 1000)
            assert packet[0] == 0x90, packet
        sock.close()
        times.sort()
        return {"scenario": "suback", "nodes": 3, "subscribes": len(times),
                "p50_ms": round(statistics.median(times), 3),
                "p99_ms": round(times[int(len(times) * 0.99) - 1], 3),
                "max_ms": round(times[-1], 3)}
    finally:
        cluster.close()


def connect_latency(args: argparse.Namespace) -> Dict[str, Any]:
    """
    CONNECT -> CONNACK on node A of three, one fresh client id each time:
    with ``coordinate_registrations`` (the default) two thirds of them ask
    another node for their turn; compare with ``--set
    coordinate_registrations=off``.
    """
    cluster = Cluster(args.bin, 3, args.settings)
    try:
        a = cluster.nodes[0]
        times = []
        for i in range(args.connects):
            started = time.perf_counter()
            sock = mqtt_connect(a.host, a.port, "connect-timer-%d" % i)
            times.append((time.perf_counter() - started) * 1000)
            assert sock is not None
            sock.close()
        times.sort()
        return {"scenario": "connect", "nodes": 3, "connects": len(times),
                "settings": args.settings,
                "p50_ms": round(statistics.median(times), 3),
                "p99_ms": round(times[int(len(times) * 0.99) - 1], 3),
                "max_ms": round(times[-1], 3)}
    finally:
        cluster.close()


def detection(args: argparse.Namespace) -> Dict[str, Any]:
    results = []
    for round_ in range(args.rounds):
        cluster = Cluster(args.bin, 2, args.settings)
        try:
            a, b = cluster.nodes
            os.killpg(b.process.pid, signal.SIGSTOP)
            frozen = time.monotonic()

            def refused() -> bool:
                sock = mqtt_connect(a.host, a.port, "detector-%d" % round_)
                if sock is None:
                    return True
                sock.close()
                return False

            wait(refused, 60, "node A refusing CONNECT")
            results.append(time.monotonic() - frozen)
        finally:
            cluster.close()
    return {"scenario": "detection", "rounds": len(results),
            "min_s": round(min(results), 2), "median_s": round(statistics.median(results), 2),
            "max_s": round(max(results), 2)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="cluster_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=("throughput", "suback", "detection", "connect"))
    ap.add_argument("--bin", default=os.path.dirname(sys.executable),
                    help="directory holding twistd and vmqtw-admin (default: this Python's)")
    ap.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--messages", type=int, default=20000, help="per publisher")
    ap.add_argument("--subscribes", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connects", type=int, default=500)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a configuration line for every node (repeatable), e.g. "
                    "cluster.heartbeat_timeout=1s")
    args = ap.parse_args(argv)
    args.settings = dict(item.split("=", 1) for item in args.set)
    report = {"throughput": throughput, "suback": suback, "detection": detection,
              "connect": connect_latency}[
        args.scenario](args)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
