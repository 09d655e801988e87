"""
A standalone metadata replica: one :class:`MetadataNode` over a
:class:`TcpTransport` on the real reactor, driven through a line-delimited
JSON control port.

Why it exists: the deterministic simulations prove the algorithms on a fake
clock and an in-memory network; this process proves the same code over real
TCP between real processes -- partitions made with a firewall, ``kill -9``,
restarts on the same LevelDB -- and gives the TCP scale figures.  It is a
test and benchmark tool, not the broker (the broker wires the same parts).

    python -m vmqtw.testing.replica_process --name vmqtw@127.0.0.2 \\
        --listen 127.0.0.2:0 [--advertise 127.0.0.2:4000] --cookie C \\
        --data-dir DIR \\
        --control 127.0.0.1:0 --ready-file DIR/ready.json \\
        [--seed NAME@HOST:PORT] [--lazy-tick 0.1 --exchange-tick 0.5 \\
        --gossip 0.5]

Control protocol: one JSON object per line in, one per line out, in order.
A request is ``{"op": ..., "id": optional, ...}``; the answer is
``{"id": ..., "ok": true, "result": ...}`` or ``{"id": ..., "ok": false,
"error": "Type: text"}``.  JSON arrays become tuples on the way in (keys must
be hashable and the store's value space is tuples, see ``IMetadataStore``);
objects (dicts) are refused.  Operations:

``put`` / ``get`` / ``delete``  ``prefix`` ([p1, p2]), ``key``, ``value``
``bulk_put``  ``n`` subscription-shaped puts (``prefix`` defaults to the
              subscriber prefix, ``start``, ``tag`` vary keys and values)
``summary``   per prefix a digest of every visible key and value, key
              count; tombstone count; one digest over everything
``count``     visible-or-not stored key count (cheap, for polling)
``status``    members, cluster_status, ready, connected peers, transport
              counters, outstanding, anti-entropy and GC counters, RSS
``join``      ``seed``, ``address`` ([host, port]) -> members
``leave``     ``node``

When ``--ready-file`` is given the process writes ``{"control": port,
"cluster": port, "pid": pid}`` there (atomically) once both ports listen,
so callers can use port 0 and never race for a free port.  ``--advertise``
is the address the other replicas are told to dial (the broker's
``listener.vmq.clustering.advertise``): the partition tests' proxy back end
puts a proxy there in front of ``--listen``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from vmqtw.metadata.codec import encode
from vmqtw.types import SUBSCRIBER_PREFIX

__all__ = ["main", "parse_args", "from_json", "to_json", "digest_items",
           "subscription", "ControlServer", "ControlClient", "ControlError",
           "join_when_up", "ControlProtocol",
           "ReplicaProcess"]

log = Logger(namespace="vmqtw.testing.replica_process")

Address = Tuple[str, int]


# -- pure helpers -------------------------------------------------------------

def from_json(value: Any) -> Any:
    """
    JSON data to the store's value space: lists become tuples, recursively.
    Dicts are refused because msgpack dicts are not canonical, so two
    replicas could hash the same value differently.
    """
    if isinstance(value, list):
        return tuple(from_json(v) for v in value)
    if isinstance(value, dict):
        raise ValueError("dicts are not metadata values; use lists")
    return value


def to_json(value: Any) -> Any:
    """Store values to JSON data: tuples become lists (bytes are refused)."""
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        raise ValueError("bytes cannot cross the JSON control port")
    return value


def digest_items(items: Iterable[Tuple[Any, Any]]) -> str:
    """
    A hex digest of ``(key, value)`` pairs that does not depend on their
    order: the canonical msgpack of each pair, sorted, hashed.  Pure, so a
    test can compute the digest of the state it expects.
    """
    encoded = sorted(encode((k, v)) for k, v in items)
    h = hashlib.blake2b(digest_size=16)
    for e in encoded:
        h.update(len(e).to_bytes(4, "big"))
        h.update(e)
    return h.hexdigest()


def subscription(node: str, i: int, tag: str = "") -> Tuple[Any, Any]:
    """
    The ``i``-th subscription-shaped ``(key, value)``: subscriber id
    ``("", "client-<i>")`` -> ``[(node, clean_session, [(filter, qos)])]``,
    the shape the broker stores under the subscriber prefix.
    """
    return (("", "client-%07d" % (i,)),
            ((node, False, (("devices/%d/+/state%s" % (i, tag), 1),)),))


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return host, int(port)


def _seed(text: str) -> Tuple[str, Address]:
    """``NAME@HOST:PORT`` -> ``(NAME, (HOST, PORT))``; the name may hold
    an ``@`` itself (``vmqtw@127.0.0.2@127.0.0.2:4000``), the last one
    separates the address."""
    name, sep, addr = text.rpartition("@")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME@HOST:PORT")
    return name, _address(addr)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vmqtw.testing.replica_process",
        description="A metadata replica with a JSON control port.")
    p.add_argument("--name", required=True, help="node name")
    p.add_argument("--listen", required=True, type=_address,
                   help="clustering HOST:PORT (port 0: any)")
    p.add_argument("--advertise", type=_address, default=None,
                   help="HOST:PORT the other nodes dial (default: --listen)")
    p.add_argument("--cookie", required=True)
    p.add_argument("--data-dir", default=None,
                   help="LevelDB + membership state (default: memory)")
    p.add_argument("--control", required=True, type=_address,
                   help="control HOST:PORT (port 0: any)")
    p.add_argument("--ready-file", default=None)
    p.add_argument("--seed", type=_seed, default=None,
                   help="join NAME@HOST:PORT at start")
    p.add_argument("--lazy-tick", type=float, default=1.0)
    p.add_argument("--exchange-tick", type=float, default=10.0)
    p.add_argument("--gossip", type=float, default=15.0)
    p.add_argument("--gc-interval", type=float, default=10.0,
                   help="tombstone GC interval (0: off)")
    p.add_argument("--exchange-on-up", type=float, default=1.0,
                   help="max delay of the exchange after a peer comes up")
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--heartbeat-timeout", type=float, default=3.0)
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--backoff-max", type=float, default=10.0)
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warn", "error"))
    return p.parse_args(argv)


def rss_bytes(pid: str = "self") -> int:
    """Resident set size of a process, from ``/proc`` (Linux)."""
    with open("/proc/%s/statm" % (pid,)) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@defer.inlineCallbacks
def join_when_up(node: Any, clock: Any, seed: str, address: Address,
                 timeout: float = 10.0, interval: float = 0.05):
    """
    ``node.peers.join(seed, address)``, retried while the seed is
    unreachable, for at most ``timeout`` seconds; fires with the sorted
    members.

    Why: ``PeerService.join`` makes one call right after telling the
    transport the seed's address, and over TCP the link is not up yet
    (connect + handshake take a few milliseconds), so the first call
    always fails with ``PeerUnreachable``.
    """
    from twisted.internet.task import deferLater
    from vmqtw.errors import PeerUnreachable
    deadline = clock.seconds() + timeout
    while True:
        try:
            members = yield node.peers.join(seed, address)
        except PeerUnreachable:
            if clock.seconds() >= deadline:
                raise
            yield deferLater(clock, interval, lambda: None)
        else:
            return sorted(members)


# -- the replica --------------------------------------------------------------

class ReplicaProcess:
    """
    The operations of the control port over one :class:`MetadataNode` and
    its transport; separate from the line protocol so it reads as a plain
    API (and could be driven in-process).
    """

    def __init__(self, node: Any, transport: Any) -> None:
        self.node = node
        self.transport = transport
        self.store = node.store

    @staticmethod
    def _prefix(req: Dict[str, Any]) -> Tuple[str, str]:
        prefix = req.get("prefix", list(SUBSCRIBER_PREFIX))
        if (not isinstance(prefix, list) or len(prefix) != 2
                or not all(isinstance(p, str) for p in prefix)):
            raise ValueError("prefix must be [str, str]")
        return prefix[0], prefix[1]

    def op_put(self, req: Dict[str, Any]) -> None:
        self.store.put(self._prefix(req), from_json(req["key"]),
                       from_json(req["value"]))

    def op_get(self, req: Dict[str, Any]) -> Any:
        return to_json(self.store.get(self._prefix(req),
                                      from_json(req["key"])))

    def op_delete(self, req: Dict[str, Any]) -> None:
        self.store.delete(self._prefix(req), from_json(req["key"]))

    @defer.inlineCallbacks
    def op_bulk_put(self, req: Dict[str, Any]):
        """
        ``n`` subscription puts; with ``batch`` they go in chunks of that
        many, one reactor turn each, so the network drains meanwhile (as
        when subscriptions arrive from many clients) instead of queueing
        everything behind one long loop.
        """
        from twisted.internet.task import deferLater
        prefix = self._prefix(req)
        n, start = int(req["n"]), int(req.get("start", 0))
        batch = int(req.get("batch", 0)) or n
        tag = str(req.get("tag", ""))
        clock = self.node.clock
        t0 = clock.seconds()
        put, me = self.store.put, self.node.node
        for first in range(start, start + n, batch):
            if first != start:
                yield deferLater(clock, 0, lambda: None)
            for i in range(first, min(first + batch, start + n)):
                key, value = subscription(me, i, tag)
                put(prefix, key, value)
        return {"n": n, "seconds": clock.seconds() - t0}

    def op_summary(self, req: Dict[str, Any]) -> Dict[str, Any]:
        store = self.store
        prefixes: Dict[str, Any] = {}
        everything: List[Tuple[Any, Any]] = []
        for prefix in store.prefixes():
            items = list(store.items(prefix))
            if not items:
                continue
            prefixes["%s/%s" % prefix] = {"digest": digest_items(items),
                                          "keys": len(items)}
            everything.extend(((prefix, k), v) for k, v in items)
        return {"prefixes": prefixes, "keys": len(everything),
                "digest": digest_items(everything),
                "tombstones": store.tombstone_count()}

    def op_count(self, req: Dict[str, Any]) -> int:
        return self.store.key_count()

    def op_status(self, req: Dict[str, Any]) -> Dict[str, Any]:
        node, peers = self.node, self.node.peers
        return {
            "node": node.node,
            "actor": self.store.actor,
            "members": sorted(node.members()),
            "cluster_status": [[n, r] for n, r in peers.cluster_status()],
            "ready": peers.ready,
            "connected": self.transport.connected_peers(),
            "counters": self._counters(),
            "outstanding": node.broadcast.outstanding_count(),
            "shed": node.broadcast.shed,
            "aae_exchanges": node.aae.exchanges,
            "aae_repaired": node.aae.repaired,
            "gc_collected": node.gc.collected,
            "keys": self.store.key_count(),
            "tombstones": self.store.tombstone_count(),
            "rss": rss_bytes(),
        }

    def _counters(self) -> Dict[str, Any]:
        counters = getattr(self.transport, "counters", None)
        return attrs.asdict(counters) if counters is not None and attrs.has(type(counters)) else {}

    def op_join(self, req: Dict[str, Any]) -> defer.Deferred:
        host, port = req["address"]
        return join_when_up(self.node, self.node.clock, req["seed"],
                            (host, int(port)),
                            float(req.get("timeout", 10.0)))

    def op_leave(self, req: Dict[str, Any]) -> None:
        self.node.peers.leave(req["node"])

    def handle(self, req: Dict[str, Any]) -> defer.Deferred:
        """Run one request; a Deferred firing with its JSON answer."""
        op = req.get("op") if isinstance(req, dict) else None
        method = getattr(self, "op_%s" % (op,), None) \
            if isinstance(op, str) else None
        if method is None:
            return defer.succeed({"ok": False,
                                  "error": "UnknownOp: %r" % (op,)})
        d = defer.maybeDeferred(method, req)
        d.addCallbacks(lambda r: {"ok": True, "result": r},
                       lambda f: {"ok": False, "error": "%s: %s" % (
                           f.type.__name__, f.getErrorMessage())})
        return d


class ControlProtocol(LineOnlyReceiver):
    """One control connection: answers in request order."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, replica: ReplicaProcess) -> None:
        self.replica = replica
        self._tail: defer.Deferred = defer.succeed(None)

    def lineReceived(self, line: bytes) -> None:
        line = line.strip()
        if not line:
            return
        try:
            req = json.loads(line)
        except ValueError as e:
            req = None
            answer: Any = defer.succeed({"ok": False,
                                         "error": "BadJson: %s" % (e,)})
        else:
            answer = self.replica.handle(req)
        rid = req.get("id") if isinstance(req, dict) else None
        # Answers go out in order even when an operation (join) waits.
        self._tail.addCallback(lambda _: answer)
        self._tail.addCallback(self._send, rid)

    def _send(self, answer: Dict[str, Any], rid: Any) -> None:
        answer["id"] = rid
        try:
            data = json.dumps(answer)
        except (TypeError, ValueError) as e:
            data = json.dumps({"id": rid, "ok": False,
                               "error": "Unserialisable: %s" % (e,)})
        if self.transport is not None:
            self.transport.write(data.encode("utf-8") + b"\n")


class ControlServer(Factory):
    noisy = False

    def __init__(self, replica: ReplicaProcess) -> None:
        self.replica = replica

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self.replica)


# -- a blocking client (tests, benchmarks) ------------------------------------

class ControlClient:
    """
    A blocking client of the control port, for test and benchmark code
    that drives replicas from outside any reactor.  ``call(op, **fields)``
    returns the result or raises :class:`ControlError`.
    """

    def __init__(self, port: int, host: str = "127.0.0.1",
                 timeout: float = 30.0) -> None:
        import socket
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rwb")
        self._ids = 0

    def call(self, op: str, **fields: Any) -> Any:
        self._ids += 1
        fields.update(op=op, id=self._ids)
        self._file.write(json.dumps(fields).encode("utf-8") + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise ConnectionError("control connection closed")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise ControlError(answer.get("error"))
        return answer.get("result")

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ControlError(Exception):
    """The replica answered ``ok: false``; the message is its error."""


# -- wiring -------------------------------------------------------------------

def _write_ready(path: str, info: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def run(args: argparse.Namespace, reactor: Any) -> None:
    """Build and start everything on ``reactor``; stop on shutdown."""
    from vmqtw.cluster.link import TcpTransport
    from vmqtw.metadata.node import MetadataNode

    transport = TcpTransport(
        args.name, args.cookie.encode("utf-8"), args.listen, reactor,
        heartbeat_interval=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        connect_timeout=args.connect_timeout,
        backoff_min=min(0.5, args.backoff_max),
        backoff_max=args.backoff_max)
    # Listen first so that port 0 resolves before the node records its
    # own address; nothing can connect before this function returns, so
    # registering handlers afterwards loses nothing.
    d = transport.start()
    failures: List[Failure] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    address = transport.address
    advertised = args.advertise if args.advertise is not None else address
    node = MetadataNode(
        args.name, transport, reactor, data_dir=args.data_dir,
        address=advertised, lazy_tick=args.lazy_tick,
        exchange_tick=args.exchange_tick, gossip_interval=args.gossip,
        gc_interval=args.gc_interval or None,
        exchange_on_up_delay=args.exchange_on_up)
    node.start()
    replica = ReplicaProcess(node, transport)
    control = reactor.listenTCP(args.control[1], ControlServer(replica),
                                interface=args.control[0])
    log.info("{node} (actor {actor}) clustering on {addr}, control on "
             "{control}, {keys} keys", node=args.name,
             actor=node.store.actor, addr=address,
             control=control.getHost().port,
             keys=node.store.key_count())

    @defer.inlineCallbacks
    def shutdown():
        log.info("{node} stopping", node=args.name)
        yield defer.maybeDeferred(control.stopListening)
        yield transport.stop()
        node.stop()
        log.info("{node} stopped", node=args.name)
    reactor.addSystemEventTrigger("before", "shutdown", shutdown)

    if args.seed is not None:
        seed, seed_address = args.seed

        def joined(members: Any) -> None:
            log.info("joined {seed}: members {members}", seed=seed,
                     members=sorted(members))

        def failed(f: Failure) -> None:
            log.error("join of {seed} failed: {why}", seed=seed,
                      why=f.getErrorMessage())
        join_when_up(node, reactor, seed, seed_address, 30.0
                     ).addCallbacks(joined, failed)
    if args.ready_file:
        _write_ready(args.ready_file, {"control": control.getHost().port,
                                       "cluster": address[1],
                                       "pid": os.getpid()})


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # logs reach the file
    from twisted.internet import reactor
    from twisted.logger import (FilteringLogObserver, LogLevel,
                                LogLevelFilterPredicate, globalLogBeginner,
                                textFileLogObserver)
    predicate = LogLevelFilterPredicate(
        defaultLogLevel=LogLevel.levelWithName(args.log_level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stdout), [predicate])],
        redirectStandardIO=False)
    failed: List[bool] = []
    reactor.callWhenRunning(_start, args, reactor, failed)
    reactor.run()  # SIGTERM/SIGINT stop the reactor: shutdown() runs
    if failed:
        sys.exit(1)


def _start(args: argparse.Namespace, reactor: Any,
           failed: List[bool]) -> None:
    try:
        run(args, reactor)
    except Exception:
        log.failure("could not start {node}", node=args.name)
        failed.append(True)
        reactor.stop()


if __name__ == "__main__":
    main()
