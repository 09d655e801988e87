"""
``cluster leave -k`` and joining with data, on real nodes (VerneMQ's ``cluster_leave_test``,
made stricter): node C holds offline persistent sessions with messages and
one connected client; ``vmqtw-admin cluster leave node=C -k`` run on node A
prints its progress, moves every session and message to A and B, removes
C, and C stops serving MQTT.  Every session comes back on a survivor with
all its messages, in order.
"""
from __future__ import annotations

from typing import Any, List, Sequence

from tests.nodeharness import Node
from tests.test_e2e_cluster import admin, cluster_address, name, show, start_cluster
from tests.waiting import wait_until

HOSTS = ("127.0.0.60", "127.0.0.61", "127.0.0.62")
SESSIONS = 12
MESSAGES = 5


def three_nodes(nodes: Any, hosts: Sequence[str] = HOSTS, **settings: str) -> List[Node]:
    """Three nodes on ``hosts``, joined to the first."""
    return join_to_first(start_cluster(nodes, hosts, **settings))


def join_to_first(made: List[Node]) -> List[Node]:
    """``made`` (running) joined to its first node with ``cluster join``; every node sees all."""
    for node in made[1:]:
        done = admin(node, "cluster", "join", "discovery-node=" + cluster_address(made[0]))
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


def test_a_node_holding_sessions_joins_and_each_client_id_keeps_one_queue(nodes: Any) -> None:
    """
    Two one-node clusters both hold a persistent session ``both`` with
    queued messages (and one session each of their own); when one joins
    the other, the two sessions of ``both`` become one, holding every
    message of both queues, and the others stay reachable from any node.
    """
    a, b = start_cluster(nodes, HOSTS[:2])
    for node, own in ((a, "only-a"), (b, "only-b")):
        for client_id in ("both", own):
            parked = nodes.client(node, client_id, clean_session=False)
            assert parked.subscribe(("join/#", 1)) == [1]
            parked.disconnect()
        publisher = nodes.client(node, "pub")
        for n in range(3):
            publisher.publish("join/t", b"%s-%d" % (name(node).encode(), n), 1)
        publisher.disconnect()
    done = admin(b, "cluster", "join", "discovery-node=" + cluster_address(a))
    assert done.returncode == 0, done
    both = sorted((name(n), True) for n in (a, b))
    for node in (a, b):
        wait_until(lambda node=node: sorted(show(node)) == both, 20, what="cluster formed")
    expected = {b"%s-%d" % (name(node).encode(), n) for node in (a, b) for n in range(3)}
    # One queue for "both", wherever it connects: every message of both.
    back = nodes.client(b, "both", clean_session=False)
    assert back.session_present
    got = back.wait_for(6)
    assert {payload for _t, payload, _q, _r in got} == expected
    back.disconnect()
    for client_id, node in (("only-a", b), ("only-b", a)):
        back = nodes.client(node, client_id, clean_session=False)
        assert back.session_present, client_id
        got = back.wait_for(3)
        owner = a if client_id == "only-a" else b
        assert [p for _t, p, _q, _r in got] == [b"%s-%d" % (name(owner).encode(), n)
                                                for n in range(3)], client_id
        back.disconnect()
    # Messages published now reach "both" once.
    nodes.client(a, "later").publish("join/t", b"after", 1)
    again = nodes.client(a, "both", clean_session=False)
    assert [p for _t, p, _q, _r in again.wait_for(1)] == [b"after"]
