"""
The admin command line against one real ``twistd vmqtw`` node:
``twistd vmqtw-admin`` in the node's directory, next to its
``twistd.pid`` (twistd's pidfile check must not stop it, and both entry
points answer alike), and ``cluster leave`` of a node holding offline
messages.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.nodeharness import Node
from tests.waiting import wait_until

BIN = os.path.dirname(sys.executable)


def _admin(node: Node, twistd: bool, *argv: str) -> subprocess.CompletedProcess:
    command = [os.path.join(BIN, "twistd"), "vmqtw-admin"] if twistd \
        else [os.path.join(BIN, "vmqtw-admin")]
    return subprocess.run(command + list(argv), cwd=node.directory, capture_output=True,
                          text=True, timeout=60)


def test_twistd_admin_works_next_to_a_running_nodes_pidfile(nodes: Any) -> None:
    node = nodes.node("pid", start=False, nodename="vmqtw@127.0.0.1",
                      distributed_cookie="admin-twistd-cookie")
    node.start(pidfile=True)
    assert os.path.exists(os.path.join(node.directory, "twistd.pid"))
    for argv, code in ((("--config", "vernemq.conf", "cluster", "show"), 0),
                       (("--config", "vernemq.conf", "cluster", "leave", "node=ghost@h"), 1),
                       (("cluster", "frob"), 2)):
        plain = _admin(node, False, *argv)
        twistd = _admin(node, True, *argv)
        assert "Another twistd server" not in twistd.stderr
        assert (twistd.returncode, plain.returncode) == (code, code), (plain, twistd)
        assert twistd.stdout == plain.stdout
        assert twistd.stderr == plain.stderr.replace("vmqtw-admin:", "twistd vmqtw-admin:", 1)
    assert "| vmqtw@127.0.0.1 | true    |" in plain_show(node)
    assert node.process is not None and node.process.poll() is None  # the node is untouched


def plain_show(node: Node) -> str:
    return _admin(node, True, "--config", "vernemq.conf", "cluster", "show").stdout


def test_leave_refuses_to_lose_offline_messages_then_the_node_stops_serving(nodes: Any) -> None:
    node = nodes.node("leave", nodename="vmqtw@127.0.0.1", distributed_cookie="admin-leave")
    sub = nodes.client(node, "offline-sub", clean_session=False)
    assert sub.subscribe(("leave/t", 1)) == [1]
    sub.disconnect()
    pub = nodes.client(node, "pub")
    for n in range(3):
        pub.publish("leave/t", b"m%d" % n, 1)
    conf = ("--config", "vernemq.conf")
    refused = _admin(node, False, *conf, "cluster", "leave", "node=vmqtw@127.0.0.1")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        "vmqtw-admin: vmqtw@127.0.0.1 holds 3 offline messages for 1 session, which would be "
        "lost: run cluster leave again with -k to move them to the other nodes first, or with "
        "--yes to accept their loss.\n")
    assert node.accepting()
    done = _admin(node, False, *conf, "cluster", "leave", "node=vmqtw@127.0.0.1", "--yes")
    assert done.returncode == 0, done
    assert done.stdout.startswith("Done: 3 offline messages on 1 session of vmqtw@127.0.0.1 are "
                                  "lost, as --yes accepted.")
    wait_until(lambda: not node.accepting(), 10, what="the node that left to stop serving MQTT")
    assert "this node left the cluster: its MQTT listeners are stopped" in node.log()
    assert node.process is not None and node.process.poll() is None  # it runs, without MQTT
