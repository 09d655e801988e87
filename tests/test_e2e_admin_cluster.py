"""
Every ``vmqtw-admin`` command of the operator's toolkit (issue 11) against
ONE real three-node cluster shared by this module's tests (``twistd -n
vmqtw`` on 127.0.0.80, .81 and .82 (.83-.85 on a second xdist worker), joined with ``cluster join``): the
console script as an operator runs it (and ``twistd vmqtw-admin`` once),
its human table and its ``--format=json``, and its errors, each one
sentence on stderr and a non-zero exit.

``cluster show``/``status``, ``session show`` (filters, chosen columns,
sessions on all three nodes), ``session disconnect``, ``retain show``,
``metrics show``, ``listener show/stop/start``, ``plugin show``, and
``set``/``show`` cluster-wide and ``--local`` with their effect on the
running nodes: a queue bound, the console log level, and the netsplit
gate (``set allow_publish_during_netsplit=on``, then a partition of C from
A and B lets a QoS 1 publish on C through; ``--local off`` stops it again).

The cluster is started once (three nodes take seconds); each test uses
its own client ids and topics and puts back any setting it changed, so
they do not depend on their order.  The addresses are this module's own:
the partition's nft rules hit every socket on them.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.clusterharness import Partitions
from tests.nodeharness import Node, Nodes
from tests.test_e2e_cluster import admin, name, raw, show, until_pingresp
from tests.test_e2e_leave_join import three_nodes
from tests.waiting import wait_until
from vmqtw.mqtt import packets as P
from vmqtw.testing import mqttbytes as B

def _hosts() -> Tuple[str, str, str]:
    """
    Loopback IPs of this pytest worker's cluster: the netsplit test cuts
    links by IP, so a cluster of the module on another worker (xdist may
    split the module) must not share them.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    base = 80 + 3 * (int(worker[2:]) if worker[2:].isdigit() else 0)
    return ("127.0.0.%d" % base, "127.0.0.%d" % (base + 1), "127.0.0.%d" % (base + 2))


HOSTS = _hosts()


class Cluster:
    """The module's nodes A, B, C, their fixture object and partitions."""

    def __init__(self, nodes: Nodes, made: List[Node], partitions: Partitions) -> None:
        self.nodes = nodes
        self.a, self.b, self.c = made
        self.all = made
        self.partitions = partitions


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Iterator[Cluster]:
    partitions = Partitions()
    group = Nodes(tmp_path_factory.mktemp("admin-cluster"), partitions)
    try:
        made = three_nodes(group, HOSTS, distributed_cookie="e2e-admin-cluster",
                           cluster__heartbeat_timeout="1s",
                           cluster__heartbeat_interval="200ms")
        yield Cluster(group, made, partitions)
    finally:
        try:
            group.close()
        finally:
            partitions.close()


def ok(node: Node, *argv: str) -> str:
    """stdout of a command that must succeed."""
    done = admin(node, *argv)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def table(node: Node, *argv: str) -> List[Dict[str, Any]]:
    """The rows of a command's ``--format=json`` table."""
    shape = json.loads(ok(node, "--format=json", *argv))
    assert shape["type"] == "table", shape
    rows: List[Dict[str, Any]] = shape["table"]
    return rows


def refused(node: Node, argv: List[str], sentence: str, code: int = 1) -> None:
    """The command fails with exactly ``sentence`` on stderr, nothing on stdout."""
    done = admin(node, *argv)
    assert (done.returncode, done.stdout, done.stderr) == (
        code, "", "vmqtw-admin: %s\n" % (sentence,)), done


def header(text: str) -> List[str]:
    """The column names of a boxed table's header line."""
    return [cell.strip() for cell in text.splitlines()[1].strip("|").split("|")]


def body(text: str) -> List[List[str]]:
    """The cells of a boxed table's rows (up to its closing rule)."""
    rows: List[List[str]] = []
    for line in text.splitlines()[3:]:
        if line.startswith("+"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# -- cluster show / status ------------------------------------------------------------

def test_cluster_show_and_status(cluster: Cluster) -> None:
    everyone = [[name(n), "true"] for n in cluster.all]
    for command in ("show", "status"):
        text = ok(cluster.b, "cluster", command)
        assert header(text) == ["Node", "Running"]
        assert body(text) == everyone
    assert table(cluster.c, "cluster", "show") == [
        {"Node": name(n), "Running": True} for n in cluster.all]
    twistd = admin(cluster.a, "cluster", "status", twistd=True)
    assert (twistd.returncode, body(twistd.stdout)) == (0, everyone), twistd
    refused(cluster.a, ["cluster", "leave", "node=ghost@127.0.0.80"],
            "ghost@127.0.0.80 is not a member of the cluster; the members are %s." % (
                ", ".join(name(n) for n in cluster.all)))
    unknown = admin(cluster.a, "cluster", "shw")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr.startswith("vmqtw-admin: Unknown command 'cluster shw'; the commands "
                                     "are: cluster show, cluster status, ")
    assert "plugin show, set, show" in unknown.stderr and unknown.stderr.count("\n") == 1


# -- session show / disconnect, retain show -----------------------------------------------

def test_session_show_disconnect_and_retain_show_across_the_cluster(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    nodes = cluster.nodes
    online = nodes.client(a, "ss-online-a", clean_session=False)
    assert online.subscribe(("ss/#", 1), ("ss-t/x", 0)) == [1, 0]
    parked = nodes.client(b, "ss-parked-b", clean_session=False)
    assert parked.subscribe(("ss/#", 1)) == [1]
    parked.disconnect()
    nodes.client(c, "ss-clean-c")
    publisher = nodes.client(c, "ss-pub")
    publisher.publish("ss/1", b"for both", 1)
    publisher.publish("ss/retained", b"kept", 1, retain=True)
    online.wait_for(2)

    # Every node's sessions, from any node; VerneMQ's default columns.
    text = ok(b, "session", "show", "--limit=50")
    assert header(text) == ["client_id", "is_online", "mountpoint", "peer_host", "peer_port",
                            "user"]
    listed = [row[0] for row in body(text) if row[0].startswith("ss-")]
    assert listed == ["ss-clean-c", "ss-online-a", "ss-parked-b", "ss-pub"]
    # Chosen columns and filters, as JSON: sessions on all three nodes.
    where = {row["client_id"]: row["node"] for row in table(
        a, "session", "show", "--client_id", "--node") if row["client_id"].startswith("ss-")}
    assert where == {"ss-online-a": name(a), "ss-parked-b": name(b),
                     "ss-clean-c": name(c), "ss-pub": name(c)}
    assert table(c, "session", "show", "--client_id", "--node", "--offline_messages",
                 "--is_online=false", "--client_id=ss-parked-b") == [
        {"client_id": "ss-parked-b", "node": name(b), "offline_messages": 2}]
    assert table(a, "session", "show", "--client_id", "--topic", "--qos",
                 "--client_id=ss-online-a") == [
        {"client_id": "ss-online-a", "topic": "ss-t/x", "qos": 0},
        {"client_id": "ss-online-a", "topic": "ss/#", "qos": 1}]
    assert len(table(a, "session", "show", "--client_id", "--limit=1")) == 1
    refused(a, ["session", "show", "--limit=none"],
            "The option --limit takes a whole number of rows, not 'none'.", code=2)

    # Disconnect from another node than the session's: it stays (persistent).
    done = ok(c, "session", "disconnect", "client-id=ss-online-a")
    assert done == ("Done: the connection of ss-online-a on %s is closed (a persistent "
                    "session stays).\n" % (name(a),))
    wait_until(lambda: not online.client.is_connected(), 10, what="ss-online-a disconnected")
    online.client.loop_stop()
    ended = json.loads(ok(a, "--format=json", "session", "disconnect",
                          "client-id=ss-parked-b", "--cleanup"))
    assert ended == {"type": "text", "text": "Done: ss-parked-b was not connected; its "
                                             "session on %s ended." % (name(b),)}
    after = table(a, "session", "show", "--client_id", "--is_online")
    assert {"client_id": "ss-parked-b", "is_online": False} not in after
    assert {"client_id": "ss-online-a", "is_online": False} in after
    refused(a, ["session", "disconnect", "client-id=ss-nobody"],
            "There is no session of client id 'ss-nobody'.")
    refused(a, ["session", "disconnect"], "session disconnect needs client-id=ID.", code=2)

    # Retained messages: replicated, so any node lists them.
    text = ok(b, "retain", "show", "--topic=ss/#")
    assert header(text) == ["topic", "payload"] and body(text) == [["ss/retained", "kept"]]
    assert table(c, "retain", "show", "--topic=ss/#", "--topic", "--qos") == [
        {"topic": "ss/retained", "qos": 1}]
    assert table(a, "retain", "show", "--topic=none/#") == []
    refused(a, ["retain", "show", "--topic=a/#/b"], "'a/#/b' is not a valid topic filter.")
    publisher.publish("ss/retained", b"", 1, retain=True)   # leave none behind


# -- metrics show ------------------------------------------------------------------------

def test_metrics_show_with_and_without_descriptions(cluster: Cluster) -> None:
    b = cluster.b
    sub = cluster.nodes.client(b, "mt-sub")
    assert sub.subscribe(("mt/t", 0)) == [0]
    text = ok(b, "metrics", "show")
    values = dict(line.split(" = ") for line in text.splitlines())
    assert int(values["mqtt_subscribe_received_total"]) >= 1
    assert int(values["router_subscriptions"]) >= 1
    assert "netsplit_detected_total" in values and "cluster_bytes_sent_total" in values
    described = ok(b, "metrics", "show", "--with-descriptions").splitlines()
    at = described.index("router_subscriptions = %s" % values["router_subscriptions"])
    assert described[at - 1] == "# subscriptions routed on this node"
    rows = {row["name"]: row for row in table(b, "metrics", "show", "--with-descriptions")}
    assert rows["router_subscriptions"]["description"] == "subscriptions routed on this node"
    assert set(table(b, "metrics", "show")[0]) == {"name", "value"}
    refused(b, ["metrics", "show", "--describe"],
            "metrics show does not take --describe; it takes --with-descriptions.", code=2)
    sub.disconnect()


# -- listener show / stop / start ----------------------------------------------------------

def test_listener_show_stop_and_start(cluster: Cluster) -> None:
    c = cluster.c
    client = cluster.nodes.client(c, "ls-stays")
    text = ok(c, "listener", "show")
    assert header(text) == ["type", "status", "ip", "port", "mountpoint", "max_conns",
                            "active_conns", "name"]
    assert [row[:4] + row[7:] for row in body(text)] == [
        ["mqtt", "running", c.host, str(c.port), "listener.tcp.default"]]
    shown = table(c, "listener", "show")
    assert [(row["type"], row["status"], row["ip"], row["port"]) for row in shown] == [
        ("mqtt", "running", c.host, c.port)]
    assert shown[0]["active_conns"] >= 1
    where = ("address=" + c.host, "port=%d" % c.port)
    try:
        assert ok(c, "listener", "stop", *where) == (
            "Done: listener.tcp.default on %s:%d is stopped.\n" % (c.host, c.port))
        assert not c.accepting()
        assert client.client.is_connected(), "without -k the connections stay"
        assert table(c, "listener", "show")[0]["status"] == "stopped"
        # Someone takes the port meanwhile: the node says so and runs on.
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((c.host, c.port))
        squatter.listen(1)
        try:
            taken = admin(c, "listener", "start", *where)
            assert (taken.returncode, taken.stdout) == (1, "")
            assert taken.stderr.startswith(
                "vmqtw-admin: listener.tcp.default cannot listen on %s:%d again: " % (
                    c.host, c.port)) and taken.stderr.count("\n") == 1, taken.stderr
        finally:
            squatter.close()
        started = json.loads(ok(c, "--format=json", "listener", "start", *where))
        assert started == {"type": "text", "text": "Done: listener.tcp.default on %s:%d is "
                                                   "running." % (c.host, c.port)}
        assert c.accepting()
        ok(c, "listener", "stop", *where, "-k")
        wait_until(lambda: not client.client.is_connected(), 10,
                   what="-k to close the connection")
        refused(c, ["listener", "stop", "address=10.9.9.9", "port=1"],
                "No listener on 10.9.9.9:1; the listeners are %s:%d." % (c.host, c.port))
        refused(c, ["listener", "stop", "address=" + c.host, "port=x"],
                "The argument port= takes a port number, not 'x'.", code=2)
    finally:
        admin(c, "listener", "start", *where)
        client.client.loop_stop()
    wait_until(c.accepting, 10, what="C to accept again")


# -- plugin show --------------------------------------------------------------------------

def test_plugin_show(cluster: Cluster) -> None:
    a = cluster.a
    text = ok(a, "plugin", "show")
    assert header(text) == ["plugin", "type", "hooks", "module", "settings"]
    assert [row[:2] for row in body(text)] == [
        ["leveldb", "message_store"], ["plumtree", "metadata_store"],
        ["allow_anonymous", "auth"]]
    rows = table(a, "plugin", "show")
    assert rows[0] == {
        "plugin": "leveldb", "type": "message_store",
        "hooks": ["msg_store_write", "msg_store_read", "msg_store_delete", "msg_store_find"],
        "module": "vmqtw.store.leveldb:LevelDBMessageStore",
        "settings": "path=%s/data/msgstore, leveldb.sync=off" % (a.directory,)}
    assert rows[1]["module"] == "vmqtw.metadata.store:ReplicatedMetadataStore"
    assert rows[2] == {"plugin": "allow_anonymous", "type": "auth",
                       "hooks": ["auth_on_register"],
                       "module": "vmqtw.broker.auth:BrokerAuthenticator",
                       "settings": "allow_anonymous=on"}
    refused(a, ["plugin", "show", "name=x"],
            "plugin show does not take 'name'; it takes no arguments.", code=2)


# -- set / show ---------------------------------------------------------------------------

def values(node: Node, *argv: str) -> Dict[str, str]:
    """``show KEY`` as JSON: ``{node: value}`` of its one key."""
    return {row["node"]: row["value"] for row in table(node, "show", *argv)}


def dropped_offline(node: Node) -> int:
    """The node's count of messages dropped for a full offline queue (``node status``)."""
    status = {row["Key"]: row["Value"] for row in table(node, "node", "status")}
    return int(status["dropped_offline"])


def test_show_and_set_cluster_wide_and_local_with_a_queue_bound(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    text = ok(a, "show", "max_offline_messages")
    assert header(text) == ["node", "key", "value"]
    assert body(text) == [[name(n), "max_offline_messages", "1000"] for n in cluster.all]
    every = table(c, "show", "--local")
    assert [(row["node"], row["key"]) for row in every] == [
        (name(c), key) for key in ("allow_register_during_netsplit",
                                   "allow_publish_during_netsplit",
                                   "allow_subscribe_during_netsplit",
                                   "allow_unsubscribe_during_netsplit", "trade_consistency",
                                   "max_inflight_messages", "max_online_messages",
                                   "max_offline_messages", "log.console.level",
                                   "shared_subscription_policy")]

    # --local: B only, and at once for a session parked on B before the change.
    parked = cluster.nodes.client(b, "qb-parked", clean_session=False)
    assert parked.subscribe(("qb/t", 1)) == [1]
    parked.disconnect()
    try:
        assert ok(b, "set", "max_offline_messages=2", "--local") == (
            "Done: max_offline_messages=2 on %s (until it restarts).\n" % (name(b),))
        assert values(a, "max_offline_messages") == {
            name(a): "1000", name(b): "2", name(c): "1000"}
        dropped = dropped_offline(b)
        publisher = cluster.nodes.client(a, "qb-pub")
        for n in range(5):
            publisher.publish("qb/t", b"m%d" % n, 1)
        wait_until(lambda: dropped_offline(b) - dropped == 3, 10,
                   what="B to drop 3 of the 5 messages for qb-parked")
        assert table(a, "session", "show", "--client_id=qb-parked", "--offline_messages") == [
            {"offline_messages": 2}]
        # Cluster-wide (the default): every node, the same sentence as the file's errors.
        done = json.loads(ok(c, "--format=json", "set", "max_offline_messages=1000"))
        assert done == {"type": "text", "text": "Done: max_offline_messages=1000 on %s "
                        "(until they restart)." % (", ".join(name(n) for n in cluster.all),)}
        assert set(values(b, "max_offline_messages").values()) == {"1000"}
    finally:
        admin(a, "set", "max_offline_messages=1000")
        admin(a, "session", "disconnect", "client-id=qb-parked", "--cleanup")
    refused(a, ["set", "max_offline_messages=lots"],
            "max_offline_messages: 'lots' is not an integer; allowed: an integer >= -1", code=2)
    refused(a, ["set", "nodename=vmqtw@127.0.0.9"],
            "nodename cannot be changed on a running node: set it in the configuration file "
            "and restart the node (set can change allow_register_during_netsplit, "
            "allow_publish_during_netsplit, allow_subscribe_during_netsplit, "
            "allow_unsubscribe_during_netsplit, trade_consistency, max_inflight_messages, "
            "max_online_messages, max_offline_messages, log.console.level, "
            "shared_subscription_policy)", code=2)
    refused(a, ["show", "listener.tcp.default"],
            "listener.tcp.default is not a run-time setting; show knows "
            "allow_register_during_netsplit, allow_publish_during_netsplit, "
            "allow_subscribe_during_netsplit, allow_unsubscribe_during_netsplit, "
            "trade_consistency, max_inflight_messages, max_online_messages, "
            "max_offline_messages, log.console.level, shared_subscription_policy.", code=2)


def test_set_the_console_log_level_on_every_node(cluster: Cluster) -> None:
    b = cluster.b
    try:
        ok(cluster.a, "set", "log.console.level=warning")
        assert set(values(b, "log.console.level").values()) == {"warning"}
        quiet = cluster.nodes.client(b, "lg-quiet")
        quiet.disconnect()
        ok(cluster.c, "set", "log.console.level=info")
        loud = cluster.nodes.client(b, "lg-loud")
        loud.disconnect()
        wait_until(lambda: "client lg-loud connected" in b.log(), 10, what="lg-loud's line")
        assert "client lg-quiet connected" not in b.log()
        assert "log.console.level set to warning (until the node restarts)" not in b.log()
        assert "log.console.level set to info (until the node restarts)" in b.log()
    finally:
        admin(cluster.a, "set", "log.console.level=info")
    refused(b, ["set", "log.console.level=loud"],
            "log.console.level: 'loud' is not a valid choice; allowed: one of debug, info, "
            "warning, error", code=2)


def publish_acked(client: Any, packet_id: int) -> bool:
    """A QoS 1 PUBLISH on ``client``: whether its PUBACK comes before a PINGRESP."""
    client.send(B.publish("ns/t", b"x", qos=1, packet_id=packet_id))
    answered = until_pingresp(client)
    assert answered in ([], [P.PubAck(packet_id)]), answered
    return answered == [P.PubAck(packet_id)]


def test_set_allow_publish_during_netsplit_lets_a_publish_through_a_split(
        cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    publisher = raw(c, "ns-pub")   # connected before the split
    assert publisher.connack.return_code == 0
    try:
        ok(a, "set", "allow_publish_during_netsplit=on")
        assert set(values(c, "allow_publish_during_netsplit").values()) == {"on"}
        with cluster.partitions.cut([[a.host, b.host], [c.host]]):
            split = [(name(a), False), (name(b), False), (name(c), True)]
            wait_until(lambda: show(c) == split, 20, interval=0.2,
                       what="C to see A and B not running")
            assert publish_acked(publisher, 1), "on: C acknowledges during the split"
            # Cluster-wide from C: in force on C, and A and B are named.
            partial = admin(c, "set", "allow_publish_during_netsplit=off")
            assert (partial.returncode, partial.stdout, partial.stderr) == (
                1, "", "vmqtw-admin: allow_publish_during_netsplit=off is in force on %s, but "
                "%s, %s did not answer and keep the old value.\n" % (name(c), name(a),
                                                                      name(b))), partial
            assert not publish_acked(publisher, 2), "off: no PUBACK during the split"
            ok(c, "set", "allow_publish_during_netsplit=on", "--local")
            assert publish_acked(publisher, 3)
            text = ok(c, "show", "allow_publish_during_netsplit")
            assert body(text) == [[name(c), "allow_publish_during_netsplit", "on"]]
            assert text.splitlines()[-1] == "Not listed: %s, %s did not answer." % (
                name(a), name(b))
            shown = json.loads(ok(c, "--format=json", "show", "allow_publish_during_netsplit"))
            assert shown["unreachable"] == [name(a), name(b)]
        everyone = [(name(n), True) for n in cluster.all]
        wait_until(lambda: all(show(n) == everyone for n in cluster.all), 30, interval=0.2,
                   what="the cluster whole again")
    finally:
        publisher.close()
        wait_until(lambda: admin(a, "set", "allow_publish_during_netsplit=off").returncode == 0,
                   30, interval=0.5, what="the flag off everywhere again")
    assert set(values(b, "allow_publish_during_netsplit").values()) == {"off"}


def test_help_of_the_new_commands(cluster: Cluster) -> None:
    helped = subprocess.run(list(admin_argv()) + ["set", "--help"], capture_output=True,
                            text=True, timeout=30)
    assert helped.returncode == 0
    assert "not kept across a restart" in " ".join(helped.stdout.split())
    for command in (["show"], ["plugin", "show"]):
        assert admin(cluster.a, *command, "--help").stdout.startswith("Usage: vmqtw-admin ")


def admin_argv() -> List[str]:
    import os
    import sys
    return [os.path.join(os.path.dirname(sys.executable), "vmqtw-admin")]
