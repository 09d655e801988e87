"""
T15 of the metadata replication design: three real replica processes
(:mod:`vmqtw.testing.replica_process`) over real TCP, a real netsplit (on
the run's partition back end: nft rules, or a proxy in front of each
replica), a real ``kill -9``; every node must end with identical state, and
the state the last-writer-wins rules predict.

Loopback aliases: .32-.34 (partition test) and .35-.37 (crash test), which
no other test uses, because nft rules hit every socket of an address.
Every process is killed, and the nft table deleted or the proxies closed,
even on failure (``process_group`` and ``partitions`` fixtures).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Dict, List, Optional

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.clusterharness import (Partitions, ProcessGroup, Spawned,
                                  reserved_ports)
from tests.waiting import wait_until
from vmqtw.testing.memory_transport import InMemoryNetwork
from vmqtw.metadata.node import MetadataNode
from vmqtw.testing.replica_process import (ControlClient, ControlServer,
                                    ReplicaProcess, digest_items, from_json,
                                    parse_args, subscription, to_json)

COOKIE = "t15-cookie"
KV = ["t15", "kv"]
#: Test timers: fast ticks, a link declared dead after 1 s of silence and
#: redialled within about a second after the heal.
TIMERS = ["--lazy-tick", "0.1", "--exchange-tick", "0.5", "--gossip", "0.5",
          "--heartbeat", "0.2", "--heartbeat-timeout", "1.0",
          "--connect-timeout", "0.5", "--backoff-max", "0.5",
          "--exchange-on-up", "0.3", "--gc-interval", "1.0"]


class Replica:
    """
    One replica process: its name, address, data dir and control client.
    Its clustering port is chosen once (a restart reuses it) and fronted
    on the partition back end; the others are told ``advertised``.
    """

    def __init__(self, group: ProcessGroup, partitions: Partitions, ip: str,
                 root: Any) -> None:
        self.group = group
        self.ip = ip
        self.name = "vmqtw@%s" % (ip,)
        self.data_dir = str(root / ip / "data")
        self.ready_file = str(root / ip / "ready.json")
        os.makedirs(str(root / ip), exist_ok=True)
        with reserved_ports(ip, 1) as [port]:
            self.cluster_port = port
            self.advertised = partitions.front(ip, (ip, port))
        self.proc: Optional[Spawned] = None
        self.client: Optional[ControlClient] = None
        self.boots = 0

    def start(self, *extra: str) -> None:
        if os.path.exists(self.ready_file):
            os.remove(self.ready_file)
        self.boots += 1
        self.proc = self.group.spawn(
            [sys.executable, "-m", "vmqtw.testing.replica_process",
             "--name", self.name,
             "--listen", "%s:%d" % (self.ip, self.cluster_port),
             "--advertise", "%s:%d" % self.advertised,
             "--cookie", COOKIE, "--data-dir", self.data_dir,
             "--control", "127.0.0.1:0", "--ready-file", self.ready_file,
             *TIMERS, *extra], name="%s-%d" % (self.ip, self.boots))
        proc = self.proc

        def ready() -> bool:
            if not proc.alive():
                raise AssertionError("%s died at start:\n%s"
                                     % (self.name, proc.log_text()))
            return os.path.exists(self.ready_file)
        wait_until(ready, timeout=15, what="%s ready" % (self.name,))
        with open(self.ready_file) as f:
            info = json.load(f)
        assert info["cluster"] == self.cluster_port
        self.client = ControlClient(info["control"])

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        assert self.proc is not None
        self.client.close()
        self.client = None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.process.wait(timeout=10)

    def call(self, op: str, **fields: Any) -> Any:
        assert self.client is not None
        return self.client.call(op, **fields)

    def status(self) -> Dict[str, Any]:
        return self.call("status")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def start_cluster(group: ProcessGroup, partitions: Partitions, root: Any,
                  ips: List[str]) -> List[Replica]:
    """
    A, B, C; B joins A through the ``join`` control op, C with ``--seed``
    at start (both ways a replica joins).
    """
    replicas = [Replica(group, partitions, ip, root) for ip in ips]
    a, b, c = replicas
    a.start()
    b.start()
    assert len(b.call("join", seed=a.name, address=list(a.advertised))
               ) >= 2
    c.start("--seed", "%s@%s:%d" % (a.name, *a.advertised))
    names = sorted(r.name for r in replicas)
    wait_until(lambda: all(
        s["members"] == names and s["ready"] and len(s["connected"]) == 2
        for s in (r.status() for r in replicas)), timeout=15,
        what="3 members, all links up")
    return replicas


def converged(replicas: List[Replica]) -> Optional[Dict[str, Any]]:
    """The common summary when every replica's digest and count agree."""
    summaries = [r.call("summary") for r in replicas]
    first = summaries[0]
    if all(s["digest"] == first["digest"] and s["keys"] == first["keys"]
           for s in summaries[1:]):
        return first
    return None


def dump(replicas: List[Replica]) -> str:
    """Status and log tails, for assertion messages."""
    out = []
    for r in replicas:
        try:
            out.append(json.dumps(r.status()))
        except Exception as e:  # the process may be gone
            out.append("%s: %r" % (r.name, e))
        if r.proc is not None:
            out.append(r.proc.log_text()[-3000:])
    return "\n".join(out)


def kv_digest(expected: Dict[str, Any]) -> str:
    return digest_items((k, from_json(v)) for k, v in expected.items())


@pytest.fixture
def replicas_cleanup() -> Any:
    made: List[Replica] = []
    try:
        yield made
    finally:
        for r in made:
            r.close()


def test_partition_writes_both_sides_heal_converge(process_group: Any,
                                                   partitions: Partitions,
                                                   tmp_path: Any,
                                                   replicas_cleanup: Any
                                                   ) -> None:
    """
    T15: {A} | {B, C} cut at the firewall; both sides keep writing --
    disjoint keys, the same key on both sides, a delete against a
    concurrent update in both orders.  After the heal all three converge
    (bounded poll) to one state, and that state is the one LWW by
    timestamp predicts: the later write wins, whether it is a value or a
    delete.
    """
    replicas = start_cluster(process_group, partitions, tmp_path,
                             ["127.0.0.32", "127.0.0.33", "127.0.0.34"])
    replicas_cleanup.extend(replicas)
    a, b, c = replicas

    # before the split: subscriptions and keys every node holds
    a.call("bulk_put", n=50)
    for key in ("shared", "du", "ud"):
        a.call("put", prefix=KV, key=key, value=["v0", key])
    expected: Dict[str, Any] = {k: ["v0", k] for k in ("shared", "du", "ud")}
    base = wait_until(lambda: converged(replicas), timeout=10,
                      what="agreement before the split")
    assert base["prefixes"]["t15/kv"]["digest"] == kv_digest(expected)
    assert base["prefixes"]["vmq/subscriber"]["keys"] == 50

    with partitions.cut([[a.ip], [b.ip, c.ip]]):
        wait_until(lambda: not a.status()["ready"]
                   and not b.status()["ready"] and not c.status()["ready"],
                   timeout=10, what="both sides see the netsplit")
        assert b.status()["connected"] == [c.name]

        a.call("put", prefix=KV, key="only-a", value=["a", 1])
        b.call("put", prefix=KV, key="only-b", value=["b", 1])
        a.call("put", prefix=KV, key="shared", value="from-a")
        b.call("put", prefix=KV, key="shared", value="from-b")   # later
        a.call("delete", prefix=KV, key="du")
        b.call("put", prefix=KV, key="du", value="updated-b")    # later
        b.call("put", prefix=KV, key="ud", value="updated-b")
        a.call("delete", prefix=KV, key="ud")                    # later
        a.call("bulk_put", n=20, start=1000)

        # the split is real: C follows B but not A
        # (B's writes may reach C over the lazy path, one tick apart)
        wait_until(lambda: [c.call("get", prefix=KV, key=k) for k in
                            ("only-b", "shared", "du", "ud")]
                   == [["b", 1], "from-b", "updated-b", "updated-b"],
                   timeout=5, what="C sees B's writes")
        assert c.call("get", prefix=KV, key="only-a") is None
        assert a.call("get", prefix=KV, key="only-b") is None
        assert a.call("get", prefix=KV, key="shared") == "from-a"

    expected.update({"only-a": ["a", 1], "only-b": ["b", 1],
                     "shared": "from-b", "du": "updated-b"})
    del expected["ud"]
    try:
        final = wait_until(lambda: converged(replicas), timeout=20,
                           interval=0.2, what="agreement after the heal")
    except TimeoutError:
        raise AssertionError(dump(replicas))
    assert final["prefixes"]["t15/kv"]["digest"] == kv_digest(expected)
    subs = [subscription(a.name, i) for i in
            list(range(50)) + list(range(1000, 1020))]
    assert final["prefixes"]["vmq/subscriber"]["digest"] == \
        digest_items(subs)
    for r in replicas:
        assert r.call("get", prefix=KV, key="ud") is None
        assert r.call("get", prefix=KV, key="du") == "updated-b"
    wait_until(lambda: all(r.status()["ready"] for r in replicas),
               timeout=10, what="every node ready again")


def test_kill9_write_restart_on_data_dir_converges(process_group: Any,
                                                   partitions: Partitions,
                                                   tmp_path: Any,
                                                   replicas_cleanup: Any
                                                   ) -> None:
    """
    T15 crash variant (T12/T13 over TCP): C is killed with SIGKILL, A and
    B keep writing (new keys, an update, a delete), C restarts on its
    LevelDB with the same identity (DVV actor) and catches up until all
    three hold the same state.
    """
    replicas = start_cluster(process_group, partitions, tmp_path,
                             ["127.0.0.35", "127.0.0.36", "127.0.0.37"])
    replicas_cleanup.extend(replicas)
    a, b, c = replicas
    for i in range(10):
        a.call("put", prefix=KV, key="k%d" % i, value=["before", i])
    wait_until(lambda: converged(replicas), timeout=10,
               what="agreement before the crash")
    actor = c.status()["actor"]

    c.kill9()
    wait_until(lambda: not a.status()["ready"] and not b.status()["ready"],
               timeout=10, what="A and B see C down")
    a.call("bulk_put", n=300)
    b.call("put", prefix=KV, key="k1", value="after-b")
    a.call("delete", prefix=KV, key="k2")
    b.call("put", prefix=KV, key="new-b", value=["b"])
    wait_until(lambda: converged([a, b]), timeout=10,
               what="A and B agree while C is down")

    c.start()  # same data dir, same cluster port
    assert c.status()["actor"] == actor
    assert c.call("get", prefix=KV, key="k5") == ["before", 5]  # persisted
    try:
        final = wait_until(lambda: converged(replicas), timeout=20,
                           interval=0.2, what="agreement after restart")
    except TimeoutError:
        raise AssertionError(dump(replicas))
    expected = {"k%d" % i: ["before", i] for i in range(10)}
    expected.update({"k1": "after-b", "new-b": ["b"]})
    del expected["k2"]
    assert final["prefixes"]["t15/kv"]["digest"] == kv_digest(expected)
    assert final["prefixes"]["vmq/subscriber"]["keys"] == 300
    assert c.call("get", prefix=KV, key="k2") is None
    wait_until(lambda: all(r.status()["ready"] for r in replicas),
               timeout=10, what="every node ready again")


# -- the control protocol in-process (no sockets, fake clock) -----------------

def test_json_values_become_tuples_and_dicts_are_refused() -> None:
    """Keys must be hashable and values canonical: lists -> tuples."""
    assert from_json(["a", [1, ["b"]], None]) == ("a", (1, ("b",)), None)
    assert to_json(("a", (1, ("b",)))) == ["a", [1, ["b"]]]
    with pytest.raises(ValueError):
        from_json({"a": 1})
    with pytest.raises(ValueError):
        to_json((b"raw",))


def test_digest_ignores_order_but_not_content() -> None:
    items = [(("", "c1"), (1,)), ("k", "v"), ("k2", ("x", 2))]
    assert digest_items(items) == digest_items(list(reversed(items)))
    assert digest_items(items) != digest_items(items[:2] + [("k2", ("x", 3))])
    assert digest_items(items) != digest_items(items[:2])


def test_seed_argument_splits_at_the_last_at() -> None:
    args = parse_args(["--name", "n", "--listen", "127.0.0.2:0",
                       "--cookie", "c", "--control", "127.0.0.1:0",
                       "--seed", "vmqtw@127.0.0.3@127.0.0.3:4000"])
    assert args.seed == ("vmqtw@127.0.0.3", ("127.0.0.3", 4000))
    assert args.listen == ("127.0.0.2", 0)
    assert args.advertise is None
    assert parse_args(["--name", "n", "--listen", "127.0.0.2:0",
                       "--advertise", "127.0.0.2:4001", "--cookie", "c",
                       "--control", "127.0.0.1:0"]
                      ).advertise == ("127.0.0.2", 4001)


class _WaitingReplica(ReplicaProcess):
    """Adds ``wait``: an operation that finishes when the test says so."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.waiting: Optional[defer.Deferred] = None
        self.sent: Any = None

    def op_wait(self, req: Dict[str, Any]) -> defer.Deferred:
        self.waiting = defer.Deferred()
        return self.waiting


@pytest.fixture
def control() -> Any:
    clock = Clock()
    net = InMemoryNetwork(clock)
    transport = net.transport("n1")
    node = MetadataNode("n1", transport, clock, address=("mem", 1))
    replica = _WaitingReplica(node, transport)
    proto = ControlServer(replica).buildProtocol(None)
    sent = replica.sent = StringTransport()
    proto.makeConnection(sent)

    def ask(*requests: Any) -> List[Dict[str, Any]]:
        sent.clear()
        for r in requests:
            line = r if isinstance(r, bytes) else json.dumps(r).encode()
            proto.dataReceived(line + b"\n")
        return [json.loads(x) for x in sent.value().splitlines()]
    try:
        yield replica, ask
    finally:
        node.stop()


def test_control_put_get_delete_summary(control: Any) -> None:
    """The store round trip through the JSON protocol, ids echoed."""
    replica, ask = control
    answers = ask({"op": "put", "id": 1, "prefix": KV, "key": ["a", 1],
                   "value": ["x", [1, 2]]},
                  {"op": "get", "id": 2, "prefix": KV, "key": ["a", 1]},
                  {"op": "bulk_put", "id": 3, "n": 5},
                  {"op": "put", "id": 4, "prefix": KV, "key": "gone",
                   "value": 1},
                  {"op": "delete", "id": 5, "prefix": KV, "key": "gone"},
                  {"op": "get", "id": 6, "prefix": KV, "key": "gone"},
                  {"op": "summary", "id": 7},
                  {"op": "status", "id": 8})
    assert [a["id"] for a in answers] == list(range(1, 9))
    assert all(a["ok"] for a in answers), answers
    assert answers[1]["result"] == ["x", [1, 2]]
    assert replica.store.get(tuple(KV), ("a", 1)) == ("x", (1, 2))
    assert answers[5]["result"] is None
    summary = answers[6]["result"]
    assert summary["tombstones"] == 1 and summary["keys"] == 6
    assert summary["prefixes"]["t15/kv"] == {
        "keys": 1, "digest": digest_items([(("a", 1), ("x", (1, 2)))])}
    assert summary["prefixes"]["vmq/subscriber"]["digest"] == digest_items(
        [subscription("n1", i) for i in range(5)])
    status = answers[7]["result"]
    assert status["members"] == ["n1"] and status["keys"] == 7


def test_control_errors_are_answers_and_order_is_kept(control: Any) -> None:
    """Bad JSON, unknown ops and failing ops get an error answer; an
    operation that waits (join) holds back the answers after it."""
    replica, ask = control
    answers = ask(b"{not json", {"op": "nope", "id": 1},
                  {"op": "put", "id": 2, "prefix": KV, "key": "k",
                   "value": {"dict": 1}},
                  {"op": "get", "id": 3, "prefix": "bad", "key": "k"})
    assert [a["ok"] for a in answers] == [False] * 4
    assert answers[0]["error"].startswith("BadJson")
    assert answers[1]["error"].startswith("UnknownOp")
    assert answers[2]["error"].startswith("ValueError")
    assert answers[3]["error"].startswith("ValueError")
    assert ask({"op": "wait", "id": 4}, {"op": "count", "id": 5}) == []
    replica.waiting.callback("done")
    held = [json.loads(x) for x in replica.sent.value().splitlines()]
    assert [(a["id"], a["result"]) for a in held] == [(4, "done"), (5, 0)]
