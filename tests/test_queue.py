"""
SubscriberQueue on its own: a fake outlet, a Clock and the memory store.
"""
from __future__ import annotations

from twisted.internet.task import Clock

from vmqtw.broker.queue import QueueLimits, SubscriberQueue
from vmqtw.store.memory import MemoryMessageStore
from vmqtw.types import Message, SubscriberId

SID = SubscriberId("", "s")


class Outlet:
    def __init__(self):
        self.sent = []

    def send_publish(self, message, qos, packet_id, dup):
        self.sent.append((message.payload, qos, packet_id, dup))

    def send_pubrel(self, packet_id):
        self.sent.append(("PUBREL", packet_id))


def message(n, topic="t", qos=1):
    return Message(b"ref%05d" % n + b"\x00" * 8, topic, b"m%d" % n, qos)


def persistent_queue(limits=QueueLimits()):
    clock = Clock()
    store = MemoryMessageStore()
    store.open()
    return SubscriberQueue(SID, False, limits, clock, store=store), clock, store


def test_hand_over_reads_stored_payloads_and_empties_the_store():
    """A restored queue handed to another node sends every message, in order, payloads read."""
    queue, _, store = persistent_queue()
    for n in range(3):
        store.write(SID, message(n))
    queue.restore([message(n).ref for n in range(3)], lambda m: m.qos)
    queue.enqueue(message(3), 1)
    handed = []
    queue.hand_over(lambda m, qos: handed.append((m.payload, qos)))
    assert handed == [(b"m0", 1), (b"m1", 1), (b"m2", 1), (b"m3", 1)]
    assert queue.size() == 0 and store.stored_payloads() == 0


def test_unreadable_messages_are_dropped_at_send_time_and_the_window_moves_on():
    """An ACL narrowed while messages waited: they are not sent, counted, and removed from the store."""
    queue, _, store = persistent_queue(QueueLimits(max_inflight_messages=1))
    for n in range(4):
        queue.enqueue(message(n, topic="secret" if n in (1, 2) else "ok"), 1)
    outlet = Outlet()
    queue.attach(outlet, lambda m: m.topic == "ok")
    assert outlet.sent == [(b"m0", 1, 1, False)]
    queue.puback(1)
    assert outlet.sent[-1] == (b"m3", 1, 2, False)
    assert queue.counters.dropped_unauthorized == 2
    queue.puback(2)
    assert store.stored_payloads() == 0


def test_retry_resends_with_dup_and_keeps_the_packet_id():
    queue, clock, _ = persistent_queue(QueueLimits(retry_interval=5))
    outlet = Outlet()
    queue.attach(outlet)
    queue.enqueue(message(0, qos=2), 2)
    clock.advance(5)
    assert outlet.sent == [(b"m0", 2, 1, False), (b"m0", 2, 1, True)]
    queue.pubrec(1)
    clock.advance(5)
    assert outlet.sent[-2:] == [("PUBREL", 1), ("PUBREL", 1)]
    queue.pubcomp(1)
    clock.advance(50)
    assert len(outlet.sent) == 4 and queue.inflight == {}
    assert clock.getDelayedCalls() == []
