"""
An MQTT 5.0 session's own expiry interval survives a restart of its node
and travels with the session to another node (``cluster leave -k``), in
process: the same metadata and message store handed to a fresh registry,
and an in-memory cluster on one Clock.
"""
from __future__ import annotations

from vmqtw.broker.drain import DONE
from vmqtw.broker.subscriptions import home_node
from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing.inprocess_broker import Broker, Cluster
from vmqtw.types import SubscriberId

from tests.test_drain import Leaving, run_until, stores
from tests.test_registry_restore import _restarted
from tests.test_session_v5 import connect5, expiry, subscribe5

NEVER = 0xFFFFFFFF


def parked(broker: Broker, client_id: str, seconds: int) -> None:
    """A v5 session with expiry ``seconds``, subscribed, then offline."""
    client, _ = connect5(broker, client_id, clean_start=False, properties=expiry(seconds))
    subscribe5(broker, client, ("t", 1))
    client.drop()


def present(broker: Broker, client_id: str) -> bool:
    return SubscriberId("", client_id) in broker.registry.queues


def test_expiry_5s_and_never_survive_a_restart():
    """5 s ends 5 s after the restart; never outlives persistent_client_expiration."""
    broker = Broker(session_expiration=60.0)
    parked(broker, "five", 5)
    parked(broker, "never", NEVER)
    after = _restarted(broker, session_expiration=60.0)
    after.clock.advance(4.9)
    assert present(after, "five") and present(after, "never")
    after.clock.advance(0.2)
    assert not present(after, "five")
    after.clock.advance(1000)
    assert present(after, "never")
    back, connack = connect5(after, "never", clean_start=False, properties=expiry(NEVER))
    assert connack.session_present


def test_expiry_of_a_session_connected_when_the_node_died():
    """Kept from its CONNECT: a node dying with the client connected knows it at restart."""
    broker = Broker()
    client, _ = connect5(broker, "live", clean_start=False, properties=expiry(5))
    subscribe5(broker, client, ("t", 1))
    after = _restarted(broker)
    after.clock.advance(5.1)
    assert not present(after, "live")
    assert after.registry.counters.expired_sessions == 1


def test_expiry_changed_at_disconnect_survives_a_restart():
    """[MQTT-3.14.2-2]: DISCONNECT gave 300 instead of 5; the restart keeps 300."""
    broker = Broker()
    client, _ = connect5(broker, "changed", clean_start=False, properties=expiry(5))
    subscribe5(broker, client, ("t", 1))
    client.send(B5.disconnect(0, expiry(300)))
    client.finish_close()
    after = _restarted(broker)
    after.clock.advance(299)
    assert present(after, "changed")
    after.clock.advance(2)
    assert not present(after, "changed")


def test_a_3_1_1_client_taking_the_session_drops_its_v5_expiry():
    """Resumed at 3.1.1 (no expiry interval): persistent_client_expiration applies again."""
    broker = Broker()
    parked(broker, "both", 5)
    broker.connect("both", clean_session=False).drop()
    after = _restarted(broker)
    after.clock.advance(100)
    assert present(after, "both")


def test_expiry_travels_with_a_drained_session():
    """cluster leave -k: the session's new node expires it after its own 30 s, not never."""
    cluster = Cluster(stores=stores())
    leaving = Leaving(cluster)
    parked(cluster["C"], "v5", 30)
    parked(cluster["C"], "forever", NEVER)
    cluster.settle()
    leaving.drain.start(interval=0.5, wait_limit=5.0)
    run_until(cluster, leaving.drain, DONE)
    homes = {cid: cluster[home_node(cid, ["A", "B"])] for cid in ("v5", "forever")}
    assert present(homes["v5"], "v5") and present(homes["forever"], "forever")
    cluster.settle(31)
    assert not present(homes["v5"], "v5")
    assert present(homes["forever"], "forever")


def test_message_expiry_counts_the_time_before_and_after_a_restart():
    """[MQTT-3.3.2-6]: stored timestamp + interval; what ran out meanwhile is dropped."""
    from vmqtw.store.memory import MemoryMessageStore

    store = MemoryMessageStore()
    store.open()
    broker = Broker(store=store)
    parked(broker, "s", NEVER)
    pub, _ = connect5(broker, "p")
    for packet_id, seconds in ((1, 6), (2, 20)):
        pub.send(B5.publish("t", b"%d" % seconds, qos=1, packet_id=packet_id,
                            properties=B5.props(B5.p_u32(0x02, seconds))))
    broker.clock.advance(4)
    after = _restarted(broker, clock=broker.clock)
    after.clock.advance(3)
    back, _ = connect5(after, "s", clean_start=False, properties=expiry(NEVER))
    [got] = back.publishes()
    assert got.payload == b"20"
    assert got.properties is not None and got.properties.message_expiry_interval == 13
    assert after.registry.counters.expired_messages == 1
