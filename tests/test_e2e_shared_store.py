"""
``message_store = postgresql`` on three real nodes sharing one real
PostgreSQL database: offline messages survive a node that never comes
back.  A persistent session's node is killed; its client reconnects on
another node while it is down, or after it was removed with ``cluster
leave``, and gets every message acknowledged before -- once.
"""
from __future__ import annotations

import json
from typing import Any, List

from tests.nodeharness import Node
from tests.test_e2e_operator import get, http_node
from tests.test_e2e_cluster import admin, name, show, show_or_none
from tests.test_e2e_leave_join import three_nodes
from tests.waiting import wait_until

HOSTS = ("127.0.0.63", "127.0.0.64", "127.0.0.65")


def shared_nodes(nodes: Any, dsn: str, **settings: str) -> List[Node]:
    return three_nodes(nodes, HOSTS, message_store="postgresql", postgresql__dsn=dsn,
                       **settings)


def park_with_messages(nodes: Any, on: Node, via: Node, client_id: str, count: int) -> List[bytes]:
    parked = nodes.client(on, client_id, clean_session=False)
    assert parked.subscribe(("shared/#", 1)) == [1]
    parked.disconnect()
    publisher = nodes.client(via, "pub-" + client_id)
    sent = [b"%s-%d" % (client_id.encode(), n) for n in range(count)]
    for payload in sent:
        publisher.publish("shared/t", payload, 1)   # waits for the PUBACK
    publisher.disconnect()
    # Forwarded to the session's node and stored there (in the shared
    # database): nothing waits for it on the publisher's node any more.
    wait_until(lambda: not status(via)["cluster_backlog"], 10,
               what="the forwarded messages acknowledged by %s" % (name(on),))
    return sent


def status(node: Node) -> Any:
    done = admin(node, "--format=json", "node", "status")
    return {row["Key"]: row["Value"] for row in json.loads(done.stdout)["table"]}


def test_a_dead_nodes_offline_messages_reach_its_clients_after_the_leave(
        nodes: Any, pg_dsn: str) -> None:
    a, b, c = shared_nodes(nodes, pg_dsn)
    sent = park_with_messages(nodes, c, a, "s", 5)
    c.kill9()
    wait_until(lambda: (name(c), False) in show(a), 20, what="A to see C down")
    done = admin(a, "cluster", "leave", "node=" + name(c))
    assert done.returncode == 0, done
    assert "are in the shared message store: their clients get them." in done.stdout
    back = nodes.client(b, "s", clean_session=False)
    assert back.session_present
    got = back.wait_for(len(sent))
    assert [payload for _t, payload, _q, _r in got] == sent
    # C comes back (removed: it serves no MQTT) and delivers nothing twice.
    c.start(wait=False)
    wait_until(lambda: show_or_none(c) == [(name(c), True)], 20, what="C to know it was removed")
    nodes.client(a, "later").publish("shared/t", b"after", 1)
    assert [p for _t, p, _q, _r in back.wait_for(len(sent) + 1)][len(sent):] == [b"after"]
    back.disconnect()
    again = nodes.client(a, "s", clean_session=False)
    nodes.client(a, "mark").publish("shared/t", b"mark", 1)
    assert [p for _t, p, _q, _r in again.wait_for(1)] == [b"mark"]


def test_a_client_reconnecting_while_its_node_is_down_gets_its_messages(
        nodes: Any, pg_dsn: str) -> None:
    a, b, c = shared_nodes(nodes, pg_dsn, allow_register_during_netsplit="on")
    sent = park_with_messages(nodes, c, a, "s", 5)
    c.kill9()
    wait_until(lambda: (name(c), False) in show(a), 20, what="A to see C down")
    back = nodes.client(b, "s", clean_session=False)
    assert back.session_present
    got = back.wait_for(len(sent))
    assert [payload for _t, payload, _q, _r in got] == sent
    # C comes back: the session is B's now, and nothing is delivered twice.
    c.start()
    everyone = sorted((name(n), True) for n in (a, b, c))
    wait_until(lambda: sorted(show(a)) == everyone, 20, what="C back in the cluster")
    nodes.client(a, "later").publish("shared/t", b"after", 1)
    got = back.wait_for(len(sent) + 1)
    assert [p for _t, p, _q, _r in got][len(sent):] == [b"after"], got


def test_while_the_database_is_away_nothing_is_acknowledged_and_nothing_lost(
        nodes: Any) -> None:
    from tests.pgserver import PostgresServer

    server = PostgresServer().start()
    try:
        node = http_node(nodes, "alone", message_store="postgresql",
                         postgresql__dsn=server.dsn(), distributed_cookie="pg-away")
        parked = nodes.client(node, "s", clean_session=False)
        assert parked.subscribe(("away/#", 1)) == [1]
        parked.disconnect()
        publisher = nodes.client(node, "pub", clean_session=False)
        publisher.publish("away/t", b"before", 1)
        server.pause()
        info = publisher.client.publish("away/t", b"during", 1)
        info.wait_for_publish(3)
        assert not info.is_published(), "acknowledged while the database was away"
        assert get(node, "health") == (
            503, "the message store takes no writes (its database is away)\n")
        server.resume()
        # The client resends what was not acknowledged when it reconnects.
        publisher.client.reconnect()
        info.wait_for_publish(15)
        assert info.is_published()
        back = nodes.client(node, "s", clean_session=False)
        got = back.wait_for(2)
        assert [p for _t, p, _q, _r in got] == [b"before", b"during"]
        log = node.log()
        assert log.count("PostgreSQL does not take writes") == 1, log
        assert "PostgreSQL takes writes again" in log
        assert "Traceback" not in log
        assert get(node, "health") == (200, "OK\n")
        # SIGTERM ends it by itself (the database worker never holds it up).
        assert node.stop() in (0, -15)
    finally:
        server.stop()
