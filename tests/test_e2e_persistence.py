"""
Persistent sessions against real processes: real LevelDB under the node's
``platform_data_dir``, ``kill -9`` of the broker, a restart on the same
directory, and paho-mqtt clients.
"""
from __future__ import annotations

import os
import threading

from tests.waiting import wait_until


def _persistent_subscriber(nodes, node, client_id, flt, qos):
    subscriber = nodes.client(node, client_id, clean_session=False)
    assert subscriber.subscribe((flt, qos)) == [qos]
    subscriber.disconnect()


def test_acknowledged_qos1_messages_survive_kill_9(nodes):
    """
    No message whose PUBACK reached the publisher is lost when the broker is
    killed with SIGKILL in the middle of a stream and restarted: 200 QoS 1
    messages for an offline persistent subscriber.
    """
    node = nodes.node()
    _persistent_subscriber(nodes, node, "offline-sub", "stream/#", 1)

    acked = set()
    lock = threading.Lock()
    publisher = nodes.client(node, "publisher")

    def on_publish(client, userdata, mid, reason_code=None, properties=None):
        with lock:
            acked.add(mid)

    publisher.client.on_publish = on_publish
    payload_of = {}
    for i in range(200):
        info = publisher.client.publish("stream/%d" % i, b"m%03d" % i, qos=1)
        payload_of[info.mid] = b"m%03d" % i
        if i == 120:
            # Kill the broker while publishes are still in flight.
            wait_until(lambda: len(acked) >= 60, 10, what="60 PUBACKs")
            node.kill9()
            break
    with lock:
        acknowledged = {payload_of[mid] for mid in acked}
    assert len(acknowledged) >= 60
    publisher.client.loop_stop()

    node.start()
    back = nodes.client(node, "offline-sub", clean_session=False)
    assert back.session_present
    wait_until(lambda: acknowledged <= {m[1] for m in back.received()}, 15,
               what="every acknowledged message after the restart")
    # And the same node keeps working: a full batch after the restart.
    again = nodes.client(node, "publisher-2")
    for i in range(200):
        again.publish("stream/after", b"a%03d" % i, 1)
    wait_until(lambda: sum(1 for m in back.received() if m[0] == "stream/after") == 200, 15,
               what="200 messages after the restart")


def test_qos2_exactly_once_across_restart(nodes):
    """[MQTT-4.3.3]: QoS 2 messages queued offline arrive exactly once after a restart."""
    node = nodes.node()
    _persistent_subscriber(nodes, node, "q2-sub", "exact/#", 2)
    publisher = nodes.client(node, "q2-pub")
    for i in range(20):
        publisher.publish("exact/%d" % i, b"e%02d" % i, 2)
    publisher.disconnect()
    node.kill9()
    node.start()
    back = nodes.client(node, "q2-sub", clean_session=False)
    received = back.wait_for(20)
    assert sorted(m[1] for m in received) == [b"e%02d" % i for i in range(20)]
    assert all(m[2] == 2 for m in received)
    back.disconnect()
    # Everything was completed: nothing comes back on the next reconnect.
    node.stop()
    node.start()
    again = nodes.client(node, "q2-sub", clean_session=False)
    probe = nodes.client(node, "probe")
    probe.publish("exact/probe", b"probe", 2)
    assert [m[1] for m in again.wait_for(1)] == [b"probe"]


def test_subscriptions_and_retained_survive_restart(nodes):
    node = nodes.node()
    _persistent_subscriber(nodes, node, "keeper", "keep/#", 1)
    publisher = nodes.client(node, "pub")
    publisher.publish("keep/retained", b"kept", 1, retain=True)
    publisher.disconnect()
    assert node.stop() in (0, -15)
    node.start()
    publisher = nodes.client(node, "pub")
    publisher.publish("keep/after-restart", b"new", 1)
    back = nodes.client(node, "keeper", clean_session=False)
    assert back.session_present
    messages = back.wait_for(2)
    assert ("keep/after-restart", b"new", 1, False) in messages
    late = nodes.client(node, "late")
    late.subscribe(("keep/retained", 1))
    assert late.wait_for(1) == [("keep/retained", b"kept", 1, True)]


def test_offline_queue_limit_enforced(nodes):
    """max_offline_messages with queue_type fifo: the newest messages are dropped."""
    node = nodes.node(max_offline_messages="5")
    _persistent_subscriber(nodes, node, "limited", "lim/#", 1)
    publisher = nodes.client(node, "pub")
    for i in range(10):
        publisher.publish("lim/x", b"%d" % i, 1)
    back = nodes.client(node, "limited", clean_session=False)
    back.wait_for(5)
    probe = nodes.client(node, "probe")
    probe.publish("lim/probe", b"probe", 1)
    messages = back.wait_for(6)
    assert [m[1] for m in messages] == [b"0", b"1", b"2", b"3", b"4", b"probe"]


def test_persistent_session_expires(nodes):
    """persistent_client_expiration removes an offline session and what it holds."""
    node = nodes.node(persistent_client_expiration="1s")
    _persistent_subscriber(nodes, node, "expiring", "exp/#", 1)
    publisher = nodes.client(node, "pub")
    publisher.publish("exp/x", b"lost", 1)
    wait_until(lambda: "session expiring expired" in node.log(), 10,
               what="the session to expire")
    back = nodes.client(node, "expiring", clean_session=False)
    assert not back.session_present
    publisher.publish("exp/y", b"not subscribed any more", 1)
    probe_sub = nodes.client(node, "probe-sub")
    probe_sub.subscribe(("exp/#", 1))
    publisher.publish("exp/z", b"probe", 1)
    probe_sub.wait_for(1)
    assert back.received() == []


def test_memory_store_selected_by_config(nodes):
    """message_store = memory: the node serves persistent sessions without LevelDB files."""
    node = nodes.node(message_store="memory")
    _persistent_subscriber(nodes, node, "mem", "mem/#", 1)
    nodes.client(node, "pub").publish("mem/x", b"in memory", 1)
    back = nodes.client(node, "mem", clean_session=False)
    assert back.wait_for(1) == [("mem/x", b"in memory", 1, False)]
    assert not os.path.exists(os.path.join(node.directory, "data", "msgstore"))

