"""
The standard benchmark set in one command, vmqtw side by side with
mosquitto (and amqtt) in the same run::

    python -m benchmarks.suite                 # every scenario, once
    python -m benchmarks.suite --runs 3        # medians of 3 back-to-back runs
    python -m benchmarks.suite --only fanin1 --only latency --scale 0.2 --json

It starts everything it measures and stops it again (also on Ctrl-C or a
failure): a vmqtw node (``twistd -n vmqtw`` from this Python's directory,
free ports, a temporary data directory, ``max_online_messages = -1``,
anonymous on 127.0.0.1), mosquitto when it is installed (a generated config:
``max_queued_messages 0``, i.e. unlimited, like vmqtw's), amqtt when its
``amqtt`` command is found (``--amqtt PATH`` or ``VMQTW_BENCH_AMQTT``, the
command or the bin directory of the virtualenv it lives in, which is never
the project's), and for the cluster rows two vmqtw nodes joined on
127.0.0.60/61.

Every figure comes from ``benchmarks/loadgen.py`` (its integrity checks
account for every message; a run that failed them is marked in the table and
listed below it, never hidden), except idle-connection memory, measured here:
N connections CONNECT and stay idle, and the broker's RSS growth (from
``/proc``) is divided by N.

Each run gets a fresh broker (started before, stopped after), so that no
run inherits another's sessions, stored messages or freed memory.  With
``--runs N`` each scenario runs N times, brokers alternating run by run so
that they share the machine's moods, and the table shows medians.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from benchmarks import mqttwire
from benchmarks.cluster_bench import Cluster, Node, free_ports

HERE = os.path.dirname(os.path.abspath(__file__))
LOADGEN = os.path.join(HERE, "loadgen.py")


# ------------------------------------------------------------------ brokers


class Broker:
    """A broker process on 127.0.0.1:``port`` that the suite owns."""

    name = "broker"

    def __init__(self, process: "subprocess.Popen[bytes]", port: int, root: str) -> None:
        self.process = process
        self.port = port
        self.root = root
        self.host = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("%s exited (%s); see %s" % (self.name, self.process.returncode,
                                                             self.root))
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("%s did not listen on %d" % (self.name, self.port))
                time.sleep(0.05)

    def stop(self) -> None:
        _stop_group(self.process, signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


class VmqtwBroker(Broker):
    """One vmqtw node, built by :class:`benchmarks.cluster_bench.Node`."""

    name = "vmqtw"

    def __init__(self, bindir: str, bounded: bool = False) -> None:
        root = tempfile.mkdtemp(prefix="vmqtw-suite-")
        try:
            self.node = Node(root, bindir, "S", "127.0.0.1",
                             {"max_online_messages": "1000"} if bounded else {})
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        super().__init__(self.node.process, self.node.port, root)

    def stop(self) -> None:
        self.node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _spawn(argv: List[str], root: str) -> "subprocess.Popen[bytes]":
    with open(os.path.join(root, "broker.log"), "ab") as log:
        return subprocess.Popen(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def start_mosquitto(binary: str, bounded: bool = False) -> Broker:
    root = tempfile.mkdtemp(prefix="vmqtw-suite-mosquitto-")
    port = free_ports("127.0.0.1", 1)[0]
    conf = os.path.join(root, "mosquitto.conf")
    with open(conf, "w") as handle:
        handle.write("listener %d 127.0.0.1\nallow_anonymous true\n"
                     "max_queued_messages %d\npersistence false\n" % (port, 1000 if bounded else 0))
    broker = Broker(_spawn([binary, "-c", conf], root), port, root)
    broker.name = "mosquitto"
    return broker


def start_amqtt(command: str, bounded: bool = False) -> Broker:
    root = tempfile.mkdtemp(prefix="vmqtw-suite-amqtt-")
    port = free_ports("127.0.0.1", 1)[0]
    conf = os.path.join(root, "amqtt.yaml")
    with open(conf, "w") as handle:
        handle.write("listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:%d\n"
                     "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                     "    allow_anonymous: true\n" % port)
    broker = Broker(_spawn([command, "-c", conf], root), port, root)
    broker.name = "amqtt"
    return broker


def find_amqtt(given: Optional[str]) -> Optional[str]:
    """The ``amqtt`` command from ``given`` (a command or a bin directory)."""
    candidate = given or os.environ.get("VMQTW_BENCH_AMQTT") or shutil.which("amqtt")
    if not candidate:
        return None
    if os.path.isdir(candidate):
        for sub in ("amqtt", os.path.join("bin", "amqtt")):
            if os.access(os.path.join(candidate, sub), os.X_OK):
                return os.path.join(candidate, sub)
        return None
    return candidate if os.access(candidate, os.X_OK) else None


def rss_bytes(pid: int) -> int:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for %d" % pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ scenarios


class Scenario:
    """One row of the table."""

    def __init__(self, key: str, label: str, unit: str, higher_is_better: bool,
                 run: Callable[[Any, "Options"], Dict[str, Any]],
                 cluster: bool = False, bounded: bool = False) -> None:
        self.key = key
        self.label = label
        self.unit = unit
        self.higher_is_better = higher_is_better
        self.run = run
        #: vmqtw only, on nodes the run starts itself.
        self.cluster = cluster
        #: The brokers keep their default queue limits (1000 messages).
        self.bounded = bounded


class Options:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.scale: float = ns.scale
        self.duration: float = ns.duration
        self.idle: int = ns.idle
        self.bindir: str = ns.bin

    def count(self, base: int) -> int:
        return max(1, int(base * self.scale))


def loadgen(host: str, port: int, args: Sequence[str], opts: Options,
            extra: Sequence[str] = ()) -> Dict[str, Any]:
    """One ``loadgen.py --json`` run; its report, with the exit status."""
    argv = [sys.executable, LOADGEN, *args, "--host", host, "--port", str(port),
            "--duration", str(opts.duration), "--json", *extra]
    # Its own session, so that on Ctrl-C (or a timeout) the whole group --
    # loadgen and its worker processes -- is interrupted and reaped here.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=opts.duration * 3 + 120)
    except BaseException:
        _stop_group(proc, signal.SIGINT)
        raise
    if not stdout.strip():
        return {"ok": False, "errors": ["loadgen printed nothing: " + stderr.strip()[-500:]]}
    report = json.loads(stdout)
    report["exit"] = proc.returncode
    return report


def _stop_group(proc: "subprocess.Popen[Any]", first: int) -> None:
    """Signal ``proc``'s process group, then kill what is left of it."""
    for sig, grace in ((first, 10.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
            if sig != signal.SIGKILL:
                os.killpg(proc.pid, signal.SIGKILL)   # workers it left, if any
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            pass
        return


def _integrity_note(report: Dict[str, Any]) -> Optional[str]:
    """What went wrong in a loadgen run, or None."""
    problems = list(report.get("errors", []))
    ig = report.get("integrity")
    if ig:
        for key in ("lost", "lost_acked", "illegal_duplicates", "phantom"):
            if ig.get(key) and (key != "lost" or report.get("qos")):
                problems.append("%s %d" % (key, ig[key]))
        if not report.get("qos") and ig.get("lost"):
            problems.append("QoS 0 lost %d (allowed)" % ig["lost"])
    if report.get("timed_out"):
        problems.append("stopped by the --duration cap")
    if not report.get("ok", False) and not problems:
        problems.append("loadgen exit %s" % report.get("exit"))
    return "; ".join(problems) or None


def _rate(report: Dict[str, Any], key: str) -> Optional[float]:
    return (report.get("rates") or {}).get(key)


def flow(scenario: str, qos: int, base: int, figure: str,
         extra: Sequence[str] = ()) -> Callable[[Broker, Options], Dict[str, Any]]:
    def run(broker: Broker, opts: Options) -> Dict[str, Any]:
        report = loadgen(broker.host, broker.port,
                         [scenario, "--qos", str(qos), "--messages", str(opts.count(base)),
                          *extra], opts)
        return {"value": _rate(report, figure), "note": _integrity_note(report),
                "failed": not report.get("ok", False), "report": report}
    return run


def latency(broker: Broker, opts: Options) -> Dict[str, Any]:
    report = loadgen(broker.host, broker.port,
                     ["latency", "--qos", "1", "--rate", "1000",
                      "--messages", str(opts.count(5000))], opts)
    lat = report.get("latency_ms") or {}
    return {"value": lat.get("p99"), "note": _integrity_note(report),
            "failed": not report.get("ok", False), "report": report}


def idle_memory(broker: Broker, opts: Options) -> Dict[str, Any]:
    """RSS growth per idle connection (CONNECT, CONNACK, then silence)."""
    n = opts.idle
    warm = _connect_many(broker, 20, "warm")   # first-use allocations out of the figure
    for sock in warm:
        sock.close()
    time.sleep(0.5)
    before = rss_bytes(broker.pid)
    socks = _connect_many(broker, n, "idle")
    try:
        time.sleep(1.0)   # let the broker settle (logging, lazy work)
        after = rss_bytes(broker.pid)
    finally:
        for sock in socks:
            sock.close()
    return {"value": (after - before) / n / 1024.0, "note": None, "failed": False,
            "report": {"connections": n, "rss_before": before, "rss_after": after}}


def _connect_many(broker: Broker, n: int, tag: str) -> List[socket.socket]:
    socks: List[socket.socket] = []
    stamp = os.urandom(3).hex()
    try:
        for i in range(n):
            sock = socket.create_connection((broker.host, broker.port), timeout=10)
            socks.append(sock)
            sock.sendall(mqttwire.connect("suite-%s-%s-%d" % (tag, stamp, i), keepalive=600))
        for sock in socks:   # every CONNACK, after all CONNECTs went out
            head = b""
            while len(head) < 4:
                chunk = sock.recv(4 - len(head))
                if not chunk:
                    raise RuntimeError("%s closed an idle connection" % broker.name)
                head += chunk
            if head[0] >> 4 != mqttwire.CONNACK or head[3] != 0:
                raise RuntimeError("%s refused an idle connection: %r" % (broker.name, head))
        return socks
    except BaseException:
        for sock in socks:
            sock.close()
        raise


def stalled_memory(broker: Broker, opts: Options) -> Dict[str, Any]:
    """
    Broker RSS growth while one subscriber reads nothing (its socket's
    buffers full) and another takes a QoS 0 fan-out of 512-byte messages at
    full speed; both brokers keep their default queue limit (1000).
    """
    sock = socket.create_connection((broker.host, broker.port), timeout=10)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(mqttwire.connect("suite-stalled-%s" % os.urandom(3).hex(), keepalive=600))
        sock.sendall(mqttwire.subscribe(1, [("bench/fanout/x", 0)]))
        got = b""
        while len(got) < 9:   # CONNACK (4) + SUBACK (5), then never read again
            chunk = sock.recv(9 - len(got))
            if not chunk:
                raise RuntimeError("%s closed the stalled subscriber" % broker.name)
            got += chunk
        before = rss_bytes(broker.pid)
        report = loadgen(broker.host, broker.port,
                         ["fanout", "--subscribers", "1", "--payload", "512",
                          "--messages", str(opts.count(100000))], opts)
        after = rss_bytes(broker.pid)
    finally:
        sock.close()
    return {"value": (after - before) / 1048576.0, "note": _integrity_note(report),
            "failed": not report.get("ok", False),
            "report": dict(report, rss_before=before, rss_after=after)}


def cluster_flow(qos: int, base: int) -> Callable[[Broker, Options], Dict[str, Any]]:
    """Publishers on node A, the subscriber on node B of a fresh 2-node cluster."""
    def run(bindir: str, opts: Options) -> Dict[str, Any]:
        cluster = Cluster(bindir, 2, {})
        try:
            a, b = cluster.nodes
            report = loadgen(a.host, a.port, ["fanin", "--qos", str(qos),
                                              "--messages", str(opts.count(base))], opts,
                             ["--sub-host", b.host, "--sub-port", str(b.port)])
            report["sender"] = _sender_counters(a)
        finally:
            cluster.close()
        return {"value": _rate(report, "received_per_s"), "note": _integrity_note(report),
                "failed": not report.get("ok", False), "report": report}
    return run


def _sender_counters(node: Any) -> Dict[str, Any]:
    """Node A's data-plane counters after a cluster run: how many copies
    went to its outbox (the peer had not acknowledged them in time)."""
    table = json.loads(node.admin("--format=json", "node", "status"))["table"]
    return {row["Key"]: row["Value"] for row in table
            if row["Key"].startswith("cluster_messages_")}


SCENARIOS = [
    Scenario("idle", "idle connection memory", "KB each", False, idle_memory),
    Scenario("latency", "latency p99, QoS 1 at 1,000 msg/s", "ms", False, latency),
    Scenario("fanin0", "fan-in QoS 0, 4 -> 1", "msg/s", True,
             flow("fanin", 0, 50000, "received_per_s")),
    Scenario("fanin1", "fan-in QoS 1, 4 -> 1", "msg/s", True,
             flow("fanin", 1, 25000, "received_per_s")),
    Scenario("fanout0", "fan-out QoS 0, 1 -> 10", "deliveries/s", True,
             flow("fanout", 0, 20000, "deliveries_per_s")),
    Scenario("fanout1", "fan-out QoS 1, 1 -> 10", "deliveries/s", True,
             flow("fanout", 1, 10000, "deliveries_per_s")),
    Scenario("stalled", "RSS growth, 1 stalled + 1 QoS 0 subscriber", "MB", False,
             stalled_memory, bounded=True),
    Scenario("offline", "offline QoS 1 enqueue, 4 -> 1 (acked)", "msg/s", True,
             flow("offline", 1, 10000, "acked_per_s")),
    Scenario("cluster0", "2 nodes, QoS 0 fan-in A -> B", "msg/s", True,
             cluster_flow(0, 50000), cluster=True),
    Scenario("cluster1", "2 nodes, QoS 1 fan-in A -> B", "msg/s", True,
             cluster_flow(1, 25000), cluster=True),
]
#: Cluster rows compare with the single-node row of the same QoS.
CLUSTER_BASE = {"cluster0": "fanin0", "cluster1": "fanin1"}


# ------------------------------------------------------------------ table


def median(values: List[Optional[float]]) -> Optional[float]:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def summarize(results: Dict[str, Dict[str, List[Dict[str, Any]]]],
              brokers: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per scenario: medians per broker and the ratio to mosquitto
    (to the single-node row for cluster rows)."""
    rows = []
    for sc in SCENARIOS:
        if sc.key not in results:
            continue
        per = results[sc.key]
        row: Dict[str, Any] = {"key": sc.key, "scenario": sc.label, "unit": sc.unit,
                               "higher_is_better": sc.higher_is_better, "brokers": {}}
        for name in brokers:
            runs = per.get(name)
            if not runs:
                continue
            row["brokers"][name] = {
                "median": median([r["value"] for r in runs]),
                "runs": [r["value"] for r in runs],
                "failed": sum(1 for r in runs if r["failed"]),
                "notes": [r["note"] for r in runs if r["note"]]}
        mine = row["brokers"].get("vmqtw", {}).get("median")
        if sc.key in CLUSTER_BASE:
            base = results.get(CLUSTER_BASE[sc.key], {}).get("vmqtw")
            other = median([r["value"] for r in base]) if base else None
            row["ratio_to"] = "vmqtw single node"
        else:
            other = row["brokers"].get("mosquitto", {}).get("median")
            row["ratio_to"] = "mosquitto"
        row["ratio"] = mine / other if mine is not None and other else None
        base = row["brokers"].get("base", {}).get("median")
        row["ratio_base"] = mine / base if mine is not None and base else None
        rows.append(row)
    return rows


def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "KB each", "MB"):
        return "%.2f %s" % (value, unit.split()[0])
    return "{:,.0f}".format(value)


def format_table(rows: List[Dict[str, Any]], brokers: Sequence[str], runs: int) -> str:
    with_base = "base" in brokers
    head = ["scenario"] + list(brokers) + ["ratio"] + (["vmqtw / base"] if with_base else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: List[str] = []
    for row in rows:
        cells = [row["scenario"] + ("" if row["unit"] in ("ms", "KB each", "MB")
                                    else " (%s)" % row["unit"])]
        for name in brokers:
            got = row["brokers"].get(name)
            if got is None:
                cells.append("")
                continue
            cell = _fmt(got["median"], row["unit"])
            if got["failed"]:
                cell += " (FAILED %d/%d)" % (got["failed"], len(got["runs"]))
            cells.append(cell)
            for note in got["notes"]:
                notes.append("%s, %s: %s" % (row["scenario"], name, note))
        ratio = row["ratio"]
        if ratio is None:
            cells.append("")
        else:
            better = "higher" if row["higher_is_better"] else "lower"
            cells.append("%.2fx (%s is better%s)" % (
                ratio, better, "" if row["ratio_to"] == "mosquitto"
                else "; vs " + row["ratio_to"]))
        if with_base:
            cells.append("" if row["ratio_base"] is None else "%.2fx" % row["ratio_base"])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("%s; ratio = vmqtw / mosquitto unless noted." % (
        "median of %d runs" % runs if runs > 1 else "one run"))
    for note in notes:
        lines.append("  ! " + note)
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def _one_run(sc: Scenario, start: Callable[[bool], Broker], opts: Options,
             pids: List[int], verbose: bool, bindir: Optional[str] = None) -> Dict[str, Any]:
    """One run of ``sc`` on a broker started for it, stopped whatever happens."""
    broker: Optional[Broker] = None
    try:
        if sc.cluster:
            return sc.run(bindir, opts)
        broker = start(sc.bounded)
        pids.append(broker.pid)
        broker.wait_listening()
        if verbose:
            sys.stderr.write("%s on %s (pid %d) ...\n" % (sc.key, broker.name, broker.pid))
        cpu = cpu_seconds(broker.pid)
        outcome = sc.run(broker, opts)
        # CPU the broker spent on the run: steadier than rates on a busy
        # machine, where every process waits for a core now and then.
        outcome["broker_cpu_s"] = cpu_seconds(broker.pid) - cpu
        return outcome
    except (RuntimeError, OSError, subprocess.TimeoutExpired, SystemExit) as e:
        return {"value": None, "note": "error: %s" % e, "failed": True}
    finally:
        if broker is not None:
            broker.stop()


def _raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1, help="runs per scenario and broker (median)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    ap.add_argument("--idle", type=int, default=2000, help="idle connections to open")
    ap.add_argument("--duration", type=float, default=30.0, help="cap on each run's publishing")
    ap.add_argument("--only", action="append", choices=[s.key for s in SCENARIOS],
                    help="run only this scenario (repeatable)")
    ap.add_argument("--brokers", default="vmqtw,mosquitto,amqtt",
                    help="comma-separated; the ones not installed are left out")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--amqtt", help="amqtt command or its virtualenv (or $VMQTW_BENCH_AMQTT)")
    ap.add_argument("--bin", default=os.path.dirname(sys.executable),
                    help="directory holding twistd and vmqtw-admin (default: this Python's)")
    ap.add_argument("--base-bin", metavar="DIR",
                    help="also run vmqtw from another checkout's virtualenv (its bin directory), "
                    "as the column 'base': the before of a before/after in one run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = parse_args(argv)
    opts = Options(ns)
    _raise_fd_limit(opts.idle + 1024)
    wanted = [b.strip() for b in ns.brokers.split(",") if b.strip()]
    starters: Dict[str, Callable[[bool], Broker]] = {
        "vmqtw": lambda bounded: VmqtwBroker(opts.bindir, bounded)}
    if "mosquitto" in wanted and os.access(ns.mosquitto, os.X_OK):
        starters["mosquitto"] = lambda bounded: start_mosquitto(ns.mosquitto, bounded)
    amqtt = find_amqtt(ns.amqtt) if "amqtt" in wanted else None
    if amqtt:
        starters["amqtt"] = lambda bounded: start_amqtt(amqtt, bounded)
    if ns.base_bin:
        wanted.append("base")
        starters["base"] = lambda bounded: VmqtwBroker(ns.base_bin, bounded)
    names = [n for n in ("vmqtw", "base", "mosquitto", "amqtt") if n in wanted and n in starters]
    scenarios = [s for s in SCENARIOS if not ns.only or s.key in ns.only]
    # Ctrl-C interrupts even when started with SIGINT ignored (as under some
    # test runners); SIGTERM ends the run too.  Either way each run's
    # broker is stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    pids: List[int] = []
    try:
        for sc in scenarios:
            per: Dict[str, List[Dict[str, Any]]] = results.setdefault(sc.key, {})
            for _ in range(ns.runs):
                for name in ([n for n in names if n in ("vmqtw", "base")] if sc.cluster
                             else names):
                    bindir = ns.base_bin if name == "base" else opts.bindir
                    per.setdefault(name, []).append(
                        _one_run(sc, starters[name], opts, pids, not ns.json, bindir))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; the brokers are stopped\n")
        return 130
    rows = summarize(results, names)
    if ns.json:
        print(json.dumps({"brokers": names, "runs": ns.runs, "scale": ns.scale, "rows": rows,
                          "details": results, "pids": pids},
                         sort_keys=True, default=str))
    else:
        print(format_table(rows, names, ns.runs))
    return 1 if any(b["failed"] for row in rows for b in row["brokers"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
