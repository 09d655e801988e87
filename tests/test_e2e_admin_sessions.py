"""
``vmqtw-admin session show``, ``session disconnect`` and ``retain show``
on three real nodes, as an operator types them (human tables and JSON).
"""
from __future__ import annotations

import json
from typing import Any

from tests.test_e2e_cluster import admin, name
from tests.test_e2e_leave_join import three_nodes
from tests.waiting import wait_until


def test_session_show_disconnect_and_retain_show_across_the_cluster(nodes: Any) -> None:
    a, b, c = three_nodes(nodes)
    online = nodes.client(a, "online-a", clean_session=False)
    assert online.subscribe(("s/#", 1), ("t/x", 0)) == [1, 0]
    parked = nodes.client(b, "parked-b", clean_session=False)
    assert parked.subscribe(("s/#", 1)) == [1]
    parked.disconnect()
    nodes.client(c, "clean-c")
    publisher = nodes.client(c, "pub")
    publisher.publish("s/1", b"for both", 1)
    publisher.publish("s/retained", b"kept", 1, retain=True)
    online.wait_for(2)

    # Every node's sessions, from any node; VerneMQ's default columns.
    shown = admin(b, "session", "show")
    assert shown.returncode == 0, shown
    lines = shown.stdout.splitlines()
    assert lines[1].split() == ["|", "client_id", "|", "is_online", "|", "mountpoint", "|",
                                "peer_host", "|", "peer_port", "|", "user", "|"]
    listed = [line.split("|")[1].strip() for line in lines[3:-1]]
    assert listed == ["clean-c", "online-a", "parked-b", "pub"]

    wanted = admin(c, "--format=json", "session", "show", "--client_id", "--node",
                   "--offline_messages", "--is_online=false")
    rows = json.loads(wanted.stdout)["table"]
    assert rows == [{"client_id": "parked-b", "node": name(b), "offline_messages": 2}]

    subscriptions = json.loads(admin(a, "--format=json", "session", "show", "--client_id",
                                     "--topic", "--qos", "--client_id=online-a").stdout)
    assert subscriptions["table"] == [{"client_id": "online-a", "topic": "s/#", "qos": 1},
                                      {"client_id": "online-a", "topic": "t/x", "qos": 0}]

    # Disconnect from another node than the session's: it stays (persistent).
    done = admin(c, "session", "disconnect", "client-id=online-a")
    assert done.returncode == 0, done
    assert done.stdout.strip() == ("Done: the connection of online-a on %s is closed (a "
                                   "persistent session stays)." % (name(a),))
    wait_until(lambda: not online.client.is_connected(), 10, what="online-a disconnected")
    online.client.loop_stop()
    ended = admin(a, "session", "disconnect", "client-id=parked-b", "--cleanup")
    assert ended.stdout.strip() == ("Done: parked-b was not connected; its session on %s "
                                    "ended." % (name(b),))
    after = json.loads(admin(a, "--format=json", "session", "show", "--client_id",
                             "--is_online").stdout)["table"]
    assert {"client_id": "parked-b", "is_online": False} not in after
    assert {"client_id": "online-a", "is_online": False} in after
    missing = admin(a, "session", "disconnect", "client-id=nobody")
    assert (missing.returncode, missing.stderr) == (
        1, "vmqtw-admin: There is no session of client id 'nobody'.\n")

    retained = admin(b, "retain", "show")
    assert retained.returncode == 0, retained
    assert "| s/retained | kept    |" in retained.stdout
    picked = json.loads(admin(a, "--format=json", "retain", "show", "--topic=t/#",
                              "--topic").stdout)
    assert picked == {"type": "table", "table": []}
    refused = admin(a, "retain", "show", "--topic=a/#/b")
    assert (refused.returncode, refused.stderr) == (
        1, "vmqtw-admin: 'a/#/b' is not a valid topic filter.\n")


def test_listener_show_stop_and_start_on_a_real_node(nodes: Any) -> None:
    import socket

    node = nodes.node("lst", distributed_cookie="listeners")
    client = nodes.client(node, "stays")
    shown = json.loads(admin(node, "--format=json", "listener", "show").stdout)["table"]
    assert [{k: v for k, v in row.items() if k != "max_conns"} for row in shown] == [
        {"type": "mqtt", "status": "running", "ip": node.host, "port": node.port,
         "mountpoint": "", "active_conns": 1, "name": "listener.tcp.default"}], shown
    where = ("address=" + node.host, "port=%d" % node.port)
    stopped = admin(node, "listener", "stop", *where)
    assert stopped.stdout.strip() == "Done: listener.tcp.default on %s:%d is stopped." % (
        node.host, node.port)
    assert not node.accepting()
    assert client.client.is_connected(), "without -k the connections stay"
    started = admin(node, "listener", "start", *where)
    assert started.returncode == 0, started
    assert node.accepting()
    admin(node, "listener", "stop", *where, "-k")
    wait_until(lambda: not client.client.is_connected(), 10, what="-k to close the connection")
    # Someone takes the port meanwhile: the node says so and runs on.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((node.host, node.port))
    squatter.listen(1)
    try:
        refused = admin(node, "listener", "start", *where)
        assert refused.returncode == 1
        assert refused.stderr.startswith(
            "vmqtw-admin: listener.tcp.default cannot listen on %s:%d again: " % (
                node.host, node.port)), refused.stderr
    finally:
        squatter.close()
    assert admin(node, "listener", "start", *where).returncode == 0
    missing = admin(node, "listener", "stop", "address=10.9.9.9", "port=1")
    assert missing.stderr == ("vmqtw-admin: No listener on 10.9.9.9:1; the listeners are "
                              "%s:%d.\n" % (node.host, node.port))
