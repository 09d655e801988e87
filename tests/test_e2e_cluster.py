"""
A real three-node cluster: ``twistd -n vmqtw`` processes on loopback aliases
127.0.0.5 (A), .6 (B) and .7 (C), joined and steered with the admin command
line run as a subprocess (``vmqtw-admin`` and ``twistd vmqtw-admin``), paho
and raw-socket MQTT clients, and a partition for the netsplit on the run's
back end (nft rules, or the proxy each node advertises as its clustering
address, ``listener.vmq.clustering.advertise``).

It is ONE test on purpose: the nft rules hit every socket of those
addresses, so a second cluster on them in a parallel test worker would be
partitioned too.  Each step is a helper named after what it checks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, List, Sequence

from vmqtw.testing import mqttbytes as B
from tests.clusterharness import Partitions
from tests.nodeharness import Node
from tests.waiting import wait_until
from vmqtw.admin.cli import execute
from vmqtw.admin.client import AdminError
from vmqtw.admin.commands import parse_args
from vmqtw.config import load_config
from vmqtw.mqtt import packets as P
from vmqtw.testing.rawclient import RawClient

BIN = os.path.dirname(sys.executable)
HOSTS = ("127.0.0.5", "127.0.0.6", "127.0.0.7")
FAST_METADATA = {"metadata__lazy_tick": "200ms", "metadata__exchange_tick": "500ms",
                 "metadata__gossip_interval": "300ms", "log__console__level": "info",
                 "distributed_cookie": "e2e-cluster-cookie"}


def admin(node: Node, *argv: str, twistd: bool = False) -> subprocess.CompletedProcess:
    """The admin command line as a subprocess, in the node's directory."""
    if twistd:
        command = [os.path.join(BIN, "twistd"), "vmqtw-admin"]
    else:
        command = [os.path.join(BIN, "vmqtw-admin")]
    return subprocess.run(command + ["--config", node.config_path, *argv], cwd=node.directory,
                          capture_output=True, text=True, timeout=60)


def show(node: Node) -> List[tuple]:
    """``cluster show`` in-process (cheap to poll): ``[(node, running)]``."""
    out = execute(parse_args(["--format=json", "cluster", "show"]), load_config(node.config_path))
    return [(row["Node"], row["Running"]) for row in json.loads(out)["table"]]


def show_or_none(node: Node) -> Any:
    try:
        return show(node)
    except AdminError:
        return None


def name(node: Node) -> str:
    return node.settings["nodename"]


def cluster_address(node: Node) -> str:
    """``NAME@HOST:PORT`` where the other nodes dial ``node``: its advertised address."""
    address = node.settings.get("listener.vmq.clustering.advertise",
                                node.settings["listener.vmq.clustering"])
    host, port = address.rsplit(":", 1)
    assert host == node.host  # the host part of the name is where it is dialed
    return "%s:%s" % (name(node), port)


def raw(node: Node, client_id: str) -> RawClient:
    """A raw MQTT connection, for what paho hides (CONNACK codes, missing acks)."""
    return RawClient.connect(node.host, node.port, client_id, expect=None)


def until_pingresp(client: RawClient) -> List[Any]:
    """Everything the broker sent before answering a PINGREQ sent now."""
    client.send(B.pingreq())
    return client.read_until(P.PingResp)[:-1]


def connack_code(node: Node, client_id: str) -> int:
    client = raw(node, client_id)
    try:
        return client.connack.return_code
    finally:
        client.close()


def start_cluster(nodes: Any, hosts: Sequence[str] = HOSTS, **settings: str) -> List[Node]:
    """Nodes A, B, C... on ``hosts``, started (not joined)."""
    made = [nodes.node(label, start=False, host=host, nodename="vmqtw@" + host,
                       **{**FAST_METADATA, **settings})
            for label, host in zip("ABCDEFG", hosts)]
    for node in made:
        node.start(wait=False)
    for node in made:
        wait_until(node.accepting, 20, what="node %s to accept" % (name(node),))
    return made


def join_with_both_command_forms(a: Node, b: Node, c: Node) -> None:
    done = admin(b, "cluster", "join", "discovery-node=" + cluster_address(a))
    assert (done.returncode, done.stdout, done.stderr) == (0, "Done\n", "")
    done = admin(c, "cluster", "join", "discovery-node=" + cluster_address(a), twistd=True)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "Done", "")
    everyone = sorted((name(n), True) for n in (a, b, c))
    for node in (a, b, c):
        wait_until(lambda: show_or_none(node) == everyone, 15,
                   what="%s to show 3 running" % (name(node),))
    table = admin(a, "cluster", "show")
    assert table.returncode == 0
    for n in (a, b, c):
        assert "| %s | true    |" % (name(n),) in table.stdout.splitlines()
    status = admin(c, "cluster", "status", twistd=True)
    assert status.returncode == 0 and status.stdout == table.stdout


def admin_errors_are_one_sentence(a: Node) -> None:
    cases = [
        (("cluster", "join", "discovery-node=" + cluster_address(a)),
         "A node cannot join itself"),
        (("cluster", "join", "discovery-node=ghost@127.0.0.5:1"),
         "The discovery node ghost@127.0.0.5 cannot be reached at 127.0.0.5:1"),
        (("cluster", "leave", "node=vmqtw@127.0.0.99"),
         "vmqtw@127.0.0.99 is not a member of the cluster"),
        (("cluster", "explode"), "Unknown command 'cluster explode'; the commands are:"),
    ]
    for argv, sentence in cases:
        result = admin(a, *argv)
        assert result.returncode != 0 and result.stdout == ""
        assert result.stderr.startswith("vmqtw-admin: " + sentence), result.stderr
        assert result.stderr.count("\n") == 1


def routes_qos0_and_qos1_from_c_to_a(nodes: Any, a: Node, c: Node) -> None:
    """[MQTT-3.3.5-1]: the subscriber on A gets what is published on C."""
    sub = nodes.client(a, "sub-a")
    assert sub.subscribe(("e2e/route/#", 1)) == [1]
    pub = nodes.client(c, "pub-c")
    # The subscription reaches C by replication: probe until it has.
    wait_until(lambda: pub.publish("e2e/route/probe", b"p", 0) or sub.messages, 10,
               interval=0.1, what="subscription replicated to C")
    pub.publish("e2e/route/q0", b"zero", 0)
    pub.publish("e2e/route/q1", b"one", 1)

    def routed() -> list:
        # Probes still in flight may arrive in between: leave them out.
        return [m for m in sub.received() if m[0] != "e2e/route/probe"]

    wait_until(lambda: len(routed()) >= 2, 10, what="q0 and q1 on A")
    assert sorted(routed()) == [("e2e/route/q0", b"zero", 0, False),
                                ("e2e/route/q1", b"one", 1, False)]


def retained_on_b_reaches_new_subscriber_on_c(nodes: Any, b: Node, c: Node) -> None:
    """[MQTT-3.3.1-6]: a new subscription gets the retained message, set on another node."""
    nodes.client(b, "pub-b").publish("e2e/retained", b"kept", 1, retain=True)
    attempt = [0]

    def fresh_subscriber_gets_it() -> Any:
        attempt[0] += 1
        sub = nodes.client(c, "sub-c-%d" % attempt[0])
        sub.subscribe(("e2e/retained", 1))
        try:
            return sub.wait_for(1, timeout=1.0)
        except AssertionError:
            return None
        finally:
            sub.disconnect()

    assert wait_until(fresh_subscriber_gets_it, 10, interval=0.05,
                      what="retained message on C") == [("e2e/retained", b"kept", 1, True)]


def takeover_across_nodes(nodes: Any, a: Node, b: Node) -> None:
    """[MQTT-3.1.4-2]: the same client id on B closes its connection on A."""
    old = raw(a, "same-id")
    assert old.connack.return_code == 0
    try:
        new = nodes.client(b, "same-id")
        assert new.connacks[-1][1] == 0
        assert old.closed_by_peer(10)
    finally:
        old.close()


def offline_messages_follow_the_session(nodes: Any, a: Node, b: Node) -> None:
    """[MQTT-3.1.2-4], [MQTT-3.1.2-5]: QoS 1 messages queued on A while offline arrive on B."""
    pers = nodes.client(a, "pers", clean_session=False)
    assert pers.subscribe(("e2e/pers", 1), ("e2e/pers-probe", 0)) == [1, 0]
    # B knows the session once it routes to it: replication is eventual,
    # and a reconnect on B before that would find no session to resume.
    probe = nodes.client(b, "probe-b")

    def routed_from_b() -> bool:
        probe.publish("e2e/pers-probe", b"probe", 0)
        return bool(pers.received())

    wait_until(routed_from_b, 10, interval=0.1, what="B to route to the session on A")
    pers.disconnect()
    pub = nodes.client(a, "pub-a")
    pub.publish("e2e/pers", b"m1", 1)
    pub.publish("e2e/pers", b"m2", 1)
    back = nodes.client(b, "pers", clean_session=False)
    assert back.session_present
    wait_until(lambda: len([m for m in back.received() if m[0] == "e2e/pers"]) >= 2, 10,
               what="the two queued messages on B")
    assert [m for m in back.received() if m[0] == "e2e/pers"] == [
        ("e2e/pers", b"m1", 1, False), ("e2e/pers", b"m2", 1, False)]


def netsplit_then_heal(partitions: Partitions, a: Node, b: Node, c: Node) -> None:
    """
    Partition {A} | {B, C}: once A notices, CONNECT gets CONNACK 3 (server
    unavailable), a QoS 1 PUBLISH no PUBACK and SUBSCRIBE 0x80 (VerneMQ's
    defaults, allow_*_during_netsplit off); healed, CONNECT works again.
    """
    inside = raw(a, "during-split")  # connected before the split
    assert inside.connack.return_code == 0
    try:
        with partitions.cut([[a.host], [b.host, c.host]]):
            split = [(name(a), True), (name(b), False), (name(c), False)]
            wait_until(lambda: show(a) == split, 15, interval=0.2,
                       what="A to show B and C not running")
            assert connack_code(a, "probe-split") == 3
            inside.send(B.publish("e2e/split", b"x", qos=1, packet_id=7))
            assert until_pingresp(inside) == []   # no PUBACK before the PINGRESP
            inside.send(B.subscribe(8, [("e2e/split", 1)]))
            assert inside.next() == P.SubAck(8, [0x80])
        wait_until(lambda: connack_code(a, "probe-healed") == 0, 30, interval=0.2,
                   what="CONNACK 0 on A after healing")
        everyone = sorted((name(n), True) for n in (a, b, c))
        wait_until(lambda: show(a) == everyone, 15, what="all running after healing")
    finally:
        inside.close()


def leave_c(a: Node, b: Node, c: Node) -> None:
    done = admin(a, "cluster", "leave", "node=" + name(c))
    assert (done.returncode, done.stdout, done.stderr) == (0, "Done\n", "")
    rest = [(name(a), True), (name(b), True)]
    wait_until(lambda: show(a) == rest, 10, what="A to show 2 members")
    table = admin(a, "cluster", "show").stdout
    assert name(c) not in table and table.count("| true ") == 2
    wait_until(lambda: show_or_none(c) == [(name(c), True)], 10,
               what="C to learn it left")


def test_three_node_cluster_admin_routing_netsplit_leave(nodes, partitions):
    a, b, c = start_cluster(nodes)
    join_with_both_command_forms(a, b, c)
    admin_errors_are_one_sentence(a)
    routes_qos0_and_qos1_from_c_to_a(nodes, a, c)
    retained_on_b_reaches_new_subscriber_on_c(nodes, b, c)
    takeover_across_nodes(nodes, a, b)
    offline_messages_follow_the_session(nodes, a, b)
    netsplit_then_heal(partitions, a, b, c)
    leave_c(a, b, c)
