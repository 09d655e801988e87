"""
Restoring persistent sessions after a restart, in process: the same
metadata and message store handed to a fresh registry, as a restarted node
finds them on disk.  Deterministic (Clock, memory store).
"""
from __future__ import annotations

from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker
from vmqtw.broker.queue import LOAD_BATCH
from vmqtw.mqtt import packets as P
from vmqtw.store.memory import MemoryMessageStore
from vmqtw.types import SubscriberId


def _restarted(broker: Broker, **kwargs) -> Broker:
    """A new broker process on the old one's metadata and store."""
    broker.registry.stop()
    # Starting restores (the "registry" step); Broker checks it finished.
    return Broker(store=broker.registry.store, metadata=broker.metadata, **kwargs)


def _offline_subscriber(broker, client_id="s", flt=("t/#", 1)):
    subscriber = broker.subscriber(client_id, flt, clean_session=False)
    subscriber.drop()


def test_offline_messages_restored_and_read_lazily():
    store = MemoryMessageStore()
    store.open()
    broker = Broker(store=store)
    _offline_subscriber(broker)
    publisher = broker.connect("p")
    count = LOAD_BATCH + 20
    for i in range(1, count + 1):
        publisher.send(B.publish("t/x", b"%d" % i, qos=1, packet_id=i % 65535 or 1))
    assert len(publisher.received()) == count  # every PUBACK
    after = _restarted(broker)
    queue = after.registry.queues[SubscriberId("", "s")]
    assert all(entry[0].__class__ is bytes for entry in queue.pending)
    back = after.connect("s", clean_session=False)
    assert back.connack.session_present
    received = []
    while True:
        publishes = back.publishes()
        if not publishes:
            break
        for publish in publishes:
            received.append(publish.payload)
            back.send(B.puback(publish.packet_id))
    assert received == [b"%d" % i for i in range(1, count + 1)]
    assert store.stored_payloads() == 0


def test_restored_message_downgraded_to_granted_qos_leaves_store():
    store = MemoryMessageStore()
    store.open()
    broker = Broker(store=store)
    _offline_subscriber(broker, flt=("t/#", 1))
    publisher = broker.connect("p")
    publisher.send(B.publish("t/x", b"two", qos=2, packet_id=1))
    after = _restarted(broker)
    # The subscription was changed to QoS 0 meanwhile (e.g. from another node).
    after.registry.subscribe(SubscriberId("", "s"), False, [("t/#", 0)])
    back = after.connect("s", clean_session=False)
    [publish] = back.publishes()
    assert (publish.payload, publish.qos) == (b"two", 0)
    assert store.stored_payloads() == 0


def test_clean_sessions_of_the_old_process_are_removed():
    broker = Broker()
    broker.subscriber("clean", ("t", 0))  # still connected when the node "dies"
    after = _restarted(broker)
    assert after.registry.subscriptions(SubscriberId("", "clean")) == {}
    assert len(after.registry.trie) == 0


def test_orphaned_stored_messages_are_deleted():
    store = MemoryMessageStore()
    store.open()
    broker = Broker(store=store)
    _offline_subscriber(broker)
    broker.connect("p").send(B.publish("t/x", b"orphan", qos=1, packet_id=1))
    # The session's record is gone (e.g. it expired on another node).
    broker.metadata.delete(("vmq", "subscriber"), ("", "s"))
    _restarted(broker)
    assert store.stored_payloads() == 0


def test_expiry_timer_restarts_for_restored_sessions():
    store = MemoryMessageStore()
    store.open()
    broker = Broker(store=store)
    _offline_subscriber(broker)
    after = _restarted(broker, session_expiration=60.0)
    after.clock.advance(59)
    assert SubscriberId("", "s") in after.registry.queues
    after.clock.advance(2)
    assert SubscriberId("", "s") not in after.registry.queues
    back = after.connect("s", clean_session=False)
    assert back.connack == P.ConnAck(0, False)
    assert after.registry.counters.expired_sessions == 1
