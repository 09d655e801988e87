"""
``cluster leave -k`` on three real nodes (VerneMQ's ``cluster_leave_test``,
made stricter): node C holds offline persistent sessions with messages and
one connected client; ``vmqtw-admin cluster leave node=C -k`` run on node A
prints its progress, moves every session and message to A and B, removes
C, and C stops serving MQTT.  Every session comes back on a survivor with
all its messages, in order.
"""
from __future__ import annotations

from typing import Any, List

from tests.nodeharness import Node
from tests.test_e2e_cluster import FAST_METADATA, admin, cluster_address, name, show
from tests.waiting import wait_until

HOSTS = ("127.0.0.60", "127.0.0.61", "127.0.0.62")
SESSIONS = 12
MESSAGES = 5


def three_nodes(nodes: Any) -> List[Node]:
    made = [nodes.node(label, start=False, host=host, nodename="vmqtw@" + host, **FAST_METADATA)
            for label, host in zip("ABC", HOSTS)]
    for node in made:
        node.start(wait=False)
    for node in made:
        wait_until(node.accepting, 20, what="node %s to accept" % (name(node),))
    a = made[0]
    for node in made[1:]:
        done = admin(node, "cluster", "join", "discovery-node=" + cluster_address(a))
        assert done.returncode == 0, done
    everyone = sorted((name(n), True) for n in made)
    for node in made:
        wait_until(lambda node=node: sorted(show(node)) == everyone, 20, what="cluster formed")
    return made


def test_leave_k_moves_every_session_and_message_then_the_node_leaves(nodes: Any) -> None:
    a, b, c = three_nodes(nodes)
    ids = ["parked-%d" % n for n in range(SESSIONS)]
    for client_id in ids:
        parked = nodes.client(c, client_id, clean_session=False)
        assert parked.subscribe(("leave/#", 1)) == [1]
        parked.disconnect()
    online = nodes.client(c, "online", clean_session=False)
    assert online.subscribe(("leave/#", 1)) == [1]
    publisher = nodes.client(a, "pub")
    sent = [b"m%d" % n for n in range(MESSAGES)]
    for payload in sent:
        publisher.publish("leave/t", payload, 1)
    online.wait_for(MESSAGES)

    done = admin(a, "cluster", "leave", "node=" + name(c), "-k", "-i", "0.5", "-t", "30")
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert len(lines) >= 2, done.stdout
    assert lines[0].startswith("%s, 0.0 s: waiting for its clients to reconnect to other nodes"
                               % (name(c),)), lines[0]
    assert "%d offline sessions holding %d messages" % (SESSIONS, SESSIONS * MESSAGES) \
        in done.stdout
    assert lines[-1] == (
        "Done: %s left the cluster and serves no MQTT until it joins one again. 0 sessions "
        "reconnected to other nodes; %d offline sessions moved to the other nodes with %d "
        "messages; no message lost." % (name(c), SESSIONS + 1, SESSIONS * MESSAGES)), lines[-1]
    assert done.stderr == ""

    survivors = sorted((name(n), True) for n in (a, b))
    wait_until(lambda: sorted(show(a)) == survivors, 20, what="C gone from A's view")
    assert not c.accepting()
    assert "this node is leaving the cluster: its MQTT listeners are stopped" in c.log()
    for client_id in ids:
        back = nodes.client(b, client_id, clean_session=False)
        assert back.session_present, client_id
        got = back.wait_for(MESSAGES)
        assert [payload for _topic, payload, _qos, _retain in got] == sent, client_id
        back.disconnect()
    # The connected client, disconnected by the drain, finds its session too:
    # everything was delivered to it already (and acknowledged by paho).
    back = nodes.client(a, "online", clean_session=False)
    assert back.session_present


def test_leave_k_of_a_node_that_is_down_says_what_to_do(nodes: Any) -> None:
    a, b, c = three_nodes(nodes)
    c.kill9()
    wait_until(lambda: (name(c), False) in show(a), 20, what="A to see C down")
    refused = admin(a, "cluster", "leave", "node=" + name(c), "-k")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        "vmqtw-admin: %s is not running, so -k cannot move what it holds: start it and run "
        "cluster leave -k again, or leave it without -k (its stored messages are lost).\n"
        % (name(c),))
