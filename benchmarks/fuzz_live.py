"""
Long fuzzing run: mutated MQTT packet streams, in process and against a live node.

Usage (from the repository root)::

    python benchmarks/fuzz_live.py --inputs 1000000 --mode both --seed 1
    python benchmarks/fuzz_live.py --inputs 200000 --mode live --port 1883   # a running node
    python benchmarks/fuzz_live.py --inputs 20000 --mode inprocess --json

``tests/test_fuzz_session.py`` runs the same invariants with hypothesis (a few
hundred shrinkable examples per test run); this script is the long run.  Each
input is one connection: a packet stream built with ``vmqtw/testing/mqttbytes.py``
(independent of the codec), usually starting with a CONNECT, then mutated --
bits flipped, truncated, packets reordered, illegal packets or junk spliced in.

* ``inprocess``: the real registry, sessions and protocols of
  ``vmqtw/testing/inprocess_broker.py`` over ``StringTransport`` and a ``Clock``; one broker
  for the whole run and a bystander subscribed to ``#``.  Checked for every
  input: no exception escapes ``dataReceived``, nothing is logged as a
  failure, a stream the reference decoder calls malformed ends closed, nothing
  is written after the close; every ``--check-every`` inputs the bystander
  must receive a probe and the registry must be consistent.
* ``live``: a real ``twistd -n vmqtw`` (started in a temporary directory unless
  ``--port`` names a running one) and ``--parallel`` non-blocking sockets.
  Checked: every malformed stream is closed by the node within ``--timeout``,
  a bystander keeps receiving probes, the node stays up, its RSS is reported
  and (for a node we started) its log holds no traceback.

Bounded and local: only loopback addresses are accepted, the run stops after
``--inputs`` inputs, client sockets close with RST (no TIME_WAIT pile-up), and a
node we started is killed at the end whatever happens.  Exit status 0 when no
invariant was broken, 1 otherwise, 2 for a refused target.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from vmqtw.testing import mqttbytes as B  # noqa: E402
from vmqtw.mqtt import packets as P  # noqa: E402
from vmqtw.mqtt.codec import Decoder, ProtocolError  # noqa: E402
from vmqtw.testing.rawclient import ConnectRefused, PeerClosed, RawClient, ReadTimeout  # noqa: E402

BYSTANDER = "fuzz-bystander"

GOOD_TOPICS = ["a", "a/b", "a/b/c", "fz/x", "$SYS/x", "$foo", "a//b", "/", "t\u00e9"]
BAD_TOPICS = ["a/+", "#", "", "+", "a/" * 12 + "z", "a/#", "+/+", "a\x00b"]
CLIENT_IDS = ["fz-%d" % i for i in range(8)] + ["", "x" * 101, "fz/+"]


# --------------------------------------------------------------------------
# the generator (pure; ``random.Random`` so a seed reproduces a run)


class Generator:
    """Builds one mutated stream per call; ``stats`` counts the mutations."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.stats: Dict[str, int] = {}

    def topic(self) -> Any:
        r = self.rnd
        roll = r.random()
        if roll < 0.75:
            return r.choice(GOOD_TOPICS)
        if roll < 0.9:
            return r.choice(BAD_TOPICS)
        return bytes(r.getrandbits(8) for _ in range(r.randint(0, 6)))

    def packet_id(self) -> int:
        return self.rnd.randint(1, 8) if self.rnd.random() < 0.7 else self.rnd.randint(0, 65535)

    def qos(self) -> int:
        return self.rnd.choice((0, 0, 1, 1, 2, 2, 3))

    def payload(self) -> bytes:
        return bytes(self.rnd.getrandbits(8) for _ in range(self.rnd.randint(0, 16)))

    def connect(self) -> bytes:
        r = self.rnd
        will = r.random() < 0.3
        return B.connect(
            r.choice(CLIENT_IDS),
            level=r.choice((4, 4, 4, 3, 5)),
            protocol_name=r.choice(("MQTT", "MQTT", "MQTT", "MQIsdp", "MQTX")),
            clean_session=r.random() < 0.8, keepalive=r.choice((0, 5, 60, 65535)),
            will_topic=self.topic() if will else None,
            will_message=self.payload() if will else b"",
            will_qos=self.qos() if will else 0, will_retain=will and r.random() < 0.3,
            username=r.choice((None, "u", "")), password=r.choice((None, b"p")))

    def packet(self) -> bytes:
        r = self.rnd
        kind = r.random()
        if kind < 0.4:
            q = self.qos()
            return B.publish(self.topic(), self.payload(), qos=q, retain=r.random() < 0.2,
                             dup=r.random() < 0.1, packet_id=self.packet_id() if q else None)
        if kind < 0.5:
            filters = [(self.topic(), r.choice((0, 1, 2, 2, 3, 0x80)))
                       for _ in range(r.randint(0, 3))]
            return B.subscribe(self.packet_id(), filters,
                               flags=0b0010 if r.random() < 0.9 else r.randint(0, 15))
        if kind < 0.56:
            return B.unsubscribe(self.packet_id(), [self.topic() for _ in range(r.randint(0, 3))],
                                 flags=0b0010 if r.random() < 0.9 else 0)
        if kind < 0.75:
            builder = r.choice((B.puback, B.pubrec, B.pubrel, B.pubcomp))
            return builder(self.packet_id())
        if kind < 0.82:
            return B.pingreq()
        if kind < 0.84:
            return B.disconnect()
        if kind < 0.87:
            return self.connect()
        if kind < 0.93:
            return r.choice((B.connack(0), B.suback(1, [0]), B.unsuback(1), B.pingresp(),
                             B.packet(0, 0), B.packet(15, 0)))
        return bytes(r.getrandbits(8) for _ in range(r.randint(1, 8)))

    def stream(self) -> bytes:
        r = self.rnd
        parts = [self.connect()] if r.random() < 0.9 else []
        parts += [self.packet() for _ in range(r.randint(0, 10))]
        mutation = r.choice(("none", "none", "none", "flip", "truncate", "reorder", "splice"))
        self.stats[mutation] = self.stats.get(mutation, 0) + 1
        if mutation == "reorder":
            r.shuffle(parts)
        elif mutation == "splice":
            parts.insert(r.randint(0, len(parts)), self.packet())
        data = bytearray(b"".join(parts))
        if mutation == "flip" and data:
            for _ in range(r.randint(1, 4)):
                data[r.randrange(len(data))] ^= 1 << r.randrange(8)
        elif mutation == "truncate" and data:
            del data[r.randrange(len(data)):]
        return bytes(data)

    def chunks(self, data: bytes) -> List[bytes]:
        cuts = sorted(set(self.rnd.randint(1, max(1, len(data)))
                          for _ in range(self.rnd.randint(0, 4))))
        out, start = [], 0
        for cut in cuts + [len(data)]:
            if cut > start:
                out.append(data[start:cut])
                start = cut
        return out


def reference(data: bytes) -> Tuple[List[Any], bool]:
    """(packets before any error, malformed?) from a fresh reference decoder."""
    decoder = Decoder(connect_first=True)
    try:
        return decoder.feed(data), False
    except ProtocolError as error:
        return error.packets, True


# --------------------------------------------------------------------------
# in process


def run_inprocess(inputs: int, seed: int, check_every: int) -> Dict[str, Any]:
    from twisted.logger import globalLogPublisher

    from vmqtw.testing.inprocess_broker import Broker
    from vmqtw.mqtt.session import SessionSettings
    from vmqtw.types import SubscriberId

    failures: List[str] = []
    logged: List[Any] = []

    def observer(event: dict) -> None:
        if event.get("log_failure") is not None:
            logged.append(event["log_failure"])

    # The broker logs one line per close; keep only failures.
    saved = list(getattr(globalLogPublisher, "_observers", ()))
    for obs in saved:
        globalLogPublisher.removeObserver(obs)
    globalLogPublisher.addObserver(observer)
    gen = Generator(seed)
    broker = Broker(settings=SessionSettings(max_subscriptions_per_client=20),
                    connect_timeout=5.0)
    bystander = broker.subscriber(BYSTANDER, ("#", 0), keepalive=0)
    counts = {"malformed": 0, "closed": 0, "open": 0, "probes": 0}
    started = time.monotonic()
    try:
        for i in range(inputs):
            data = gen.stream()
            client = broker.client()
            try:
                for chunk in gen.chunks(data):
                    client.send(chunk)
                    broker.clock.advance(0.01)
            except Exception as error:  # an exception escaped dataReceived: a bug
                failures.append("input %d %r raised %r" % (i, data, error))
            _, malformed = reference(data)
            counts["malformed"] += malformed
            if malformed and not client.closed:
                failures.append("input %d %r: malformed but left open" % (i, data))
            if client.closed:
                counts["closed"] += 1
                written = len(client.transport.value())
                client.send(B.pingreq())
                if len(client.transport.value()) != written:
                    failures.append("input %d %r: answered after closing" % (i, data))
                client.finish_close()
            else:
                counts["open"] += 1
                client.drop()
            client.transport.clear()
            if logged:
                failures.append("input %d %r logged %s" % (i, data, logged[0].getTraceback()))
                logged.clear()
            if (i + 1) % check_every == 0 or i + 1 == inputs:
                bystander.received()  # forget what the stream published
                prober = broker.connect("fz-prober", keepalive=0)
                prober.send(B.publish("probe/%d" % i, b"probe"))
                got = [p for p in bystander.publishes() if p.topic == "probe/%d" % i]
                if len(got) != 1 or bystander.closed:
                    failures.append("after input %d the bystander missed the probe" % i)
                prober.send(B.disconnect())
                prober.finish_close()
                counts["probes"] += 1
                registry = broker.registry
                live = {c for c in broker.factory.connections if not c.closing}
                for sid, session in registry.sessions.items():
                    if session.io not in live:
                        failures.append("after input %d: %s registered, connection gone" % (
                            i, sid))
                if registry.subscriptions(SubscriberId("", BYSTANDER)) != {"#": 0}:
                    failures.append("after input %d: bystander subscription changed" % i)
            if len(failures) > 20:
                break
    finally:
        globalLogPublisher.removeObserver(observer)
        for obs in saved:
            globalLogPublisher.addObserver(obs)
    elapsed = time.monotonic() - started
    return {"mode": "inprocess", "inputs": i + 1, "seconds": round(elapsed, 1),
            "inputs_per_s": round((i + 1) / elapsed), **counts,
            "mutations": gen.stats, "failures": failures[:20], "ok": not failures}


# --------------------------------------------------------------------------
# live node


def loopback_only(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("refusing non-loopback target %s: fuzzing somebody's broker is an attack"
                         % host)


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def raw_client(host: str, port: int, client_id: str) -> RawClient:
    """A blocking raw client (bystander, prober) that got CONNACK 0."""
    try:
        return RawClient.connect(host, port, client_id, keepalive=0)
    except ConnectRefused as refused:
        raise RuntimeError(str(refused)) from None


def read_packets(client: RawClient, count: int, timeout: float = 10.0) -> List[Any]:
    """Up to ``count`` packets: fewer if the node closes or ``timeout`` passes first."""
    try:
        return client.read(count, timeout)
    except (ReadTimeout, PeerClosed) as short:
        return short.packets


class LiveNode:
    """
    One ``twistd -n vmqtw`` on ``host`` in ``directory``, for a live run
    that was given no port (benchmarks do not import the tests' harness).
    """

    def __init__(self, directory: str, host: str) -> None:
        self.directory = directory
        self.host = host
        probes = [socket.socket() for _ in range(2)]
        try:  # both ports chosen while both probes are bound: distinct
            for probe in probes:
                probe.bind((host, 0))
            self.port, cluster_port = (p.getsockname()[1] for p in probes)
        finally:
            for probe in probes:
                probe.close()
        self.config_path = os.path.join(directory, "vernemq.conf")
        self.log_path = os.path.join(directory, "node.log")
        with open(self.config_path, "w") as f:
            f.write("listener.tcp.default = %s:%d\n" % (host, self.port))
            f.write("listener.vmq.clustering = %s:%d\n" % (host, cluster_port))
            f.write("allow_anonymous = on\nplatform_data_dir = ./data\n"
                    "log.console.level = error\n")
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 20.0) -> "LiveNode":
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [twistd, "-n", "--pidfile=", "vmqtw", "--config", self.config_path],
                cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("node exited with %s:\n%s"
                                   % (self.process.returncode, self.log()))
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill9()
                    raise RuntimeError("node did not accept within %ss" % (timeout,))
                time.sleep(0.05)  # bounded poll for another process

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_live(inputs: int, seed: int, host: str, port: Optional[int], parallel: int,
             timeout: float, check_every: int) -> Dict[str, Any]:
    loopback_only(host)
    node = None
    workdir = None
    if port is None:
        workdir = tempfile.TemporaryDirectory(prefix="vmqtw-fuzz-")
        node = LiveNode(workdir.name, host).start()
        port = node.port
    failures: List[str] = []
    counts = {"malformed": 0, "closed_by_node": 0, "closed_by_us": 0, "probes": 0}
    gen = Generator(seed)
    pid = node.process.pid if node is not None and node.process is not None else None
    rss_start = rss_kib(pid) if pid else None
    started = time.monotonic()
    done = 0
    try:
        bystander = raw_client(host, port, BYSTANDER)
        bystander.send(B.subscribe(1, [("probe/#", 0)]))
        if read_packets(bystander, 1) != [P.SubAck(1, [0])]:
            raise RuntimeError("bystander SUBSCRIBE refused")
        selector = selectors.DefaultSelector()
        active: Dict[socket.socket, Tuple[float, bool, bytes]] = {}
        linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT per input
        issued = 0
        next_check = check_every
        while done < inputs and len(failures) <= 20:
            while issued < inputs and len(active) < parallel:
                data = gen.stream()
                _, malformed = reference(data)
                counts["malformed"] += malformed
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.settimeout(5)
                try:
                    sock.connect((host, port))
                    sock.sendall(data)
                except OSError as error:
                    if not malformed:
                        failures.append("input %d: %r while sending %r" % (issued, error, data))
                    sock.close()
                    issued += 1
                    done += 1
                    counts["closed_by_node"] += 1
                    continue
                sock.setblocking(False)
                # Well-formed streams are given a short look, malformed ones the full timeout.
                wait = timeout if malformed else min(timeout, 0.05)
                active[sock] = (time.monotonic() + wait, malformed, data)
                selector.register(sock, selectors.EVENT_READ)
                issued += 1
            for key, _ in selector.select(0.01):
                sock = key.fileobj
                try:
                    while sock.recv(65536):
                        pass
                    closed = True
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    selector.unregister(sock)
                    active.pop(sock)
                    sock.close()
                    counts["closed_by_node"] += 1
                    done += 1
            now = time.monotonic()
            for sock, (deadline, malformed, data) in list(active.items()):
                if now >= deadline:
                    if malformed:
                        failures.append("malformed stream not closed within %.1fs: %r"
                                        % (timeout, data))
                    selector.unregister(sock)
                    active.pop(sock)
                    sock.close()
                    counts["closed_by_us"] += 1
                    done += 1
            if done >= next_check or done >= inputs:
                next_check += check_every
                prober = raw_client(host, port, "fz-prober")
                token = b"%d" % done
                prober.send(B.publish("probe/x", token) + B.disconnect())
                got = read_packets(bystander, 1)
                if got != [P.Publish("probe/x", token)]:
                    failures.append("after %d inputs the bystander got %r" % (done, got))
                prober.close()
                counts["probes"] += 1
                if node is not None and node.process is not None and \
                        node.process.poll() is not None:
                    failures.append("node exited with %s" % node.process.returncode)
                    break
        for sock in list(active):
            sock.close()
        selector.close()
        bystander.close()
    finally:
        elapsed = time.monotonic() - started
        rss_end = rss_kib(pid) if pid and node.process.poll() is None else None
        log = node.log() if node is not None else ""
        if node is not None:
            node.kill9()
        if workdir is not None:
            workdir.cleanup()
    if "Traceback" in log:
        failures.append("node log holds a traceback:\n" + log[log.index("Traceback"):][:2000])
    return {"mode": "live", "inputs": done, "seconds": round(elapsed, 1),
            "inputs_per_s": round(done / max(elapsed, 1e-9)), **counts,
            "rss_kib_start": rss_start, "rss_kib_end": rss_end,
            "mutations": gen.stats, "failures": failures[:20], "ok": not failures}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--mode", choices=("inprocess", "live", "both"), default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="fuzz a running node instead of starting one")
    parser.add_argument("--parallel", type=int, default=32,
                        help="live sockets at once; keep it below the listen backlog (50), "
                             "or dropped SYNs cost 1 s each and the rate falls ~8x")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds a malformed stream may stay open")
    parser.add_argument("--check-every", type=int, default=10_000,
                        help="inputs between bystander probes / registry checks")
    parser.add_argument("--json", action="store_true", help="print JSON summaries")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit("stopped by signal %d" % signum)

    # Also when started in the background (where SIGINT is ignored): the
    # node we started is killed by the ``finally`` of run_live.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.inputs < 1 or args.parallel < 1:
        parser.error("--inputs and --parallel must be positive")
    try:
        loopback_only(args.host)
    except SystemExit as refusal:
        print(refusal, file=sys.stderr)
        return 2
    results = []
    if args.mode in ("inprocess", "both"):
        results.append(run_inprocess(args.inputs, args.seed, args.check_every))
    if args.mode in ("live", "both"):
        results.append(run_live(args.inputs, args.seed, args.host, args.port, args.parallel,
                                args.timeout, args.check_every))
    for result in results:
        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            print("%(mode)s: %(inputs)d inputs in %(seconds)ss (%(inputs_per_s)d/s), ok=%(ok)s"
                  % result)
            for key in sorted(result):
                if key not in ("mode", "inputs", "seconds", "inputs_per_s", "ok", "failures"):
                    print("  %s: %s" % (key, result[key]))
            for failure in result["failures"]:
                print("  FAILURE: %s" % failure)
    return 0 if all(result["ok"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
