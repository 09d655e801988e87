"""
What an operator sees of real ``twistd -n vmqtw`` nodes: the connect and
disconnect lines in the log, ``GET /metrics`` moving with paho traffic,
``GET /health`` 200 while the cluster is whole and 503 with the reason
during a netsplit (two nodes on their own loopback aliases, 127.0.0.44
and .45, cut with the run's partition back end).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, Tuple

from prometheus_client.parser import text_string_to_metric_families

from tests.clusterharness import free_port
from tests.nodeharness import Node
from tests.waiting import wait_until
from vmqtw.admin.cli import execute
from vmqtw.admin.commands import parse_args
from vmqtw.config import load_config

BIN = os.path.dirname(sys.executable)
SPLIT_HOSTS = ("127.0.0.44", "127.0.0.45")


def get(node: Node, path: str) -> Tuple[int, str]:
    """``(status, body)`` of ``GET path`` on the node's HTTP listener."""
    url = "http://%s/%s" % (node.settings["listener.http.default"], path)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def metrics(node: Node) -> Dict[str, float]:
    status, text = get(node, "metrics")
    assert status == 200, text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples}


def admin_command(node: Node, *argv: str) -> Any:
    """``vmqtw-admin`` against ``node``, as an operator runs it."""
    from tests.test_e2e_cluster import admin
    return admin(node, *argv)


def http_node(nodes: Any, label: str, host: str = "127.0.0.1", **settings: str) -> Node:
    return nodes.node(label, host=host, listener__http__default="%s:%d" % (host, free_port(host)),
                      log__console__level="info", **settings)


def test_connects_disconnects_and_metrics_of_a_real_node(nodes: Any) -> None:
    node = http_node(nodes, "n")
    assert get(node, "health") == (200, "OK\n")
    before = metrics(node)
    sub = nodes.client(node, "op-sub")
    assert sub.subscribe(("op/t", 1)) == [1]
    pub = nodes.client(node, "op-pub", clean_session=False)
    for n in range(3):
        pub.publish("op/t", b"m%d" % n, 1)
    sub.wait_for(3)
    pub.disconnect()
    wait_until(lambda: "client op-pub disconnected" in node.log(), 10,
               what="the disconnect line")
    log = node.log()
    assert "client op-pub connected from 127.0.0.1:" in log
    assert "(MQTT level 4, persistent session, session present: False)" in log
    assert "client op-sub connected from 127.0.0.1:" in log
    assert "(MQTT level 4, clean session, session present: False)" in log
    assert [line.split(": ", 1)[1] for line in log.splitlines()
            if "client op-pub disconnected from 127.0.0.1:" in line] == ["client DISCONNECT"]
    assert "op/t" not in log            # nothing per message

    # paho acknowledges on its own thread: wait for the subscriber's PUBACKs.
    wait_until(lambda: metrics(node)["mqtt_puback_received_total"]
               - before["mqtt_puback_received_total"] == 3, 10, what="3 PUBACKs received")
    after = metrics(node)
    moved = {name: after[name] - before.get(name, 0) for name in after}
    assert moved["mqtt_connect_received_total"] == 2
    assert moved["mqtt_connack_accepted_sent_total"] == 2
    assert moved["mqtt_publish_received_total"] == 3
    assert moved["mqtt_puback_sent_total"] == 3
    assert moved["mqtt_publish_sent_total"] == 3
    assert moved["mqtt_puback_received_total"] == 3
    assert moved["mqtt_subscribe_received_total"] == 1
    assert moved["mqtt_disconnect_received_total"] == 1
    assert moved["socket_open_total"] == 2 and moved["socket_close_total"] == 1
    assert after["router_subscriptions"] == 1
    assert moved["router_messages_routed_total"] == 3
    assert after["mqtt_sessions_online"] == 1
    assert all(value >= 0 for value in moved.values())

    # vmqtw-admin metrics show: the same registry, VerneMQ's "name = value".
    shown = admin_command(node, "metrics", "show")
    assert shown.returncode == 0, shown
    lines = dict(line.split(" = ") for line in shown.stdout.splitlines())
    assert lines["mqtt_publish_received_total"] == "%d" % after["mqtt_publish_received_total"]
    assert lines["router_subscriptions"] == "1"
    described = admin_command(node, "--format=json", "metrics", "show", "--with-descriptions")
    rows = {row["name"]: row for row in json.loads(described.stdout)["table"]}
    assert rows["router_subscriptions"]["description"]

    assert node.stop() in (0, -15)
    log = node.log()
    assert [line.split(": ", 1)[1] for line in log.splitlines()
            if "client op-sub disconnected from 127.0.0.1:" in line] == [
        "listener closed (server shutdown or leave)"]
    assert "Traceback" not in log


def name(node: Node) -> str:
    return node.settings["nodename"]


def show(node: Node) -> Any:
    out = execute(parse_args(["--format=json", "cluster", "show"]), load_config(node.config_path))
    return sorted((row["Node"], row["Running"]) for row in json.loads(out)["table"])


def test_health_is_503_with_the_reason_during_a_netsplit(nodes: Any, partitions: Any) -> None:
    fast = {"metadata__lazy_tick": "200ms", "metadata__exchange_tick": "500ms",
            "metadata__gossip_interval": "300ms", "distributed_cookie": "e2e-operator"}
    a, b = (http_node(nodes, label, host=host, nodename="vmqtw@" + host, **fast)
            for label, host in zip("AB", SPLIT_HOSTS))
    advertised = b.settings.get("listener.vmq.clustering.advertise",
                                b.settings["listener.vmq.clustering"])
    joined = subprocess.run([os.path.join(BIN, "vmqtw-admin"), "--config", a.config_path,
                             "cluster", "join",
                             "discovery-node=%s:%s" % (name(b), advertised.rsplit(":", 1)[1])],
                            cwd=a.directory, capture_output=True, text=True, timeout=60)
    assert joined.returncode == 0, joined.stderr
    whole = sorted([(name(a), True), (name(b), True)])
    wait_until(lambda: show(a) == whole and show(b) == whole, 15, what="a whole cluster")
    wait_until(lambda: get(a, "health") == (200, "OK\n"), 10, what="A healthy")
    detected = metrics(a)["netsplit_detected_total"]
    with partitions.cut([[a.host], [b.host]]):
        wait_until(lambda: get(a, "health")[0] == 503, 20, interval=0.2,
                   what="A's /health to say 503")
        assert get(a, "health") == (503, "netsplit: %s unreachable\n" % name(b))
        assert metrics(a)["netsplit_detected_total"] == detected + 1
    wait_until(lambda: get(a, "health") == (200, "OK\n"), 30, interval=0.2,
               what="A healthy again after the heal")
    assert metrics(a)["netsplit_resolved_total"] >= 1
