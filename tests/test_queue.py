"""
SubscriberQueue on its own: a fake outlet, a Clock and the memory store.
"""
from __future__ import annotations

import attrs
from twisted.internet.task import Clock

from vmqtw.broker.queue import AWAIT_ACK, AWAIT_COMP, InFlight, QueueLimits, SubscriberQueue
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


def test_hand_over_reads_stored_payloads_and_keeps_the_stored_copies():
    """
    A restored queue handed to another node sends every message, in order,
    payloads read, then says it is done; the stored copies stay until the
    new owner has them (the caller deletes them then), so a crash of this
    node in between loses nothing.
    """
    queue, _, store = persistent_queue()
    for n in range(3):
        store.write(SID, message(n))
    queue.restore([message(n).ref for n in range(3)], lambda m: m.qos)
    queue.enqueue(message(3), 1)
    handed, done = [], []
    queue.hand_over(lambda m, qos, stored: handed.append((m.payload, qos, stored, m.dup)),
                    lambda: done.append(True))
    # Read back from the store: maybe delivered before a restart, so DUP.
    assert handed == [(b"m0", 1, True, True), (b"m1", 1, True, True), (b"m2", 1, True, True),
                      (b"m3", 1, True, False)]
    assert done == [True]
    assert queue.size() == 0 and store.stored_payloads() == 4


def test_hand_over_sends_what_was_in_flight_with_dup():
    """[MQTT-4.4.0-1] carried across nodes: unacknowledged means resent with DUP."""
    queue, _, store = persistent_queue()
    outlet = Outlet()
    queue.attach(outlet)
    queue.enqueue(message(0), 1)
    queue.enqueue(message(1), 1)
    queue.puback(1)
    handed = []
    queue.hand_over(lambda m, qos, stored: handed.append((m.payload, m.dup)))
    assert handed == [(b"m1", True)]
    assert outlet.sent[-1][0] == b"m1"


def test_a_held_queue_delivers_handed_over_messages_before_direct_ones():
    """A session that moved here: what its old node hands over goes first."""
    queue, _, store = persistent_queue()
    outlet = Outlet()
    queue.hold()
    queue.attach(outlet)
    queue.enqueue(message(5), 1)                 # reached this node directly
    assert outlet.sent == []
    queue.enqueue_handed_over(message(1), 1)
    queue.enqueue_handed_over(message(2), 1)
    assert outlet.sent == [] and queue.size() == 3
    queue.release_hold()
    assert [s[0] for s in outlet.sent] == [b"m1", b"m2", b"m5"]
    assert store.stored_payloads() == 3


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


def test_qos2_after_pubrec_a_reconnect_resends_only_the_pubrel():
    """
    [MQTT-4.3.3-1], [MQTT-4.4.0-1]: once PUBREC arrived the message is the
    subscriber's; a new connection gets PUBREL again, never the PUBLISH, and
    the stored copy went at PUBREC.
    """
    queue, clock, store = persistent_queue()
    first = Outlet()
    queue.attach(first)
    queue.enqueue(message(0, qos=2), 2)
    queue.enqueue(message(1, qos=2), 2)
    sent = queue.inflight[1]
    assert (sent.message.payload, sent.qos, sent.state, sent.sent_at) == (b"m0", 2, AWAIT_ACK, 0.0)
    clock.advance(1)
    queue.pubrec(1)
    entry = queue.inflight[1]
    assert isinstance(entry, InFlight)
    assert (entry.qos, entry.state, entry.sent_at) == (2, AWAIT_COMP, 1.0)
    assert store.stored_payloads() == 1  # only message 1 is still the broker's
    queue.detach()
    second = Outlet()
    queue.attach(second)
    assert second.sent == [("PUBREL", 1), (b"m1", 2, 2, True)]
    queue.pubcomp(1)
    queue.pubrec(2)
    queue.pubcomp(2)
    assert queue.inflight == {} and store.stored_payloads() == 0


def test_retry_resends_only_what_waited_the_full_interval():
    """Each entry keeps its own send time: a younger one is not resent with an older one."""
    queue, clock, _ = persistent_queue(QueueLimits(retry_interval=10))
    outlet = Outlet()
    queue.attach(outlet)
    queue.enqueue(message(0), 1)
    clock.advance(6)
    queue.enqueue(message(1), 1)
    clock.advance(4)
    assert outlet.sent[2:] == [(b"m0", 1, 1, True)]
    clock.advance(6)
    assert outlet.sent[3:] == [(b"m1", 1, 2, True)]
    assert [e.sent_at for e in queue.inflight.values()] == [10.0, 16.0]


def test_restored_message_downgraded_to_qos0_is_sent_once_and_leaves_the_store():
    """A stored message whose subscription is now QoS 0 is delivered at QoS 0 and not kept."""
    queue, _, store = persistent_queue()
    store.write(SID, message(0))
    store.write(SID, message(1))
    queue.restore([message(0).ref, message(1).ref], lambda m: 0 if m.payload == b"m0" else 1)
    outlet = Outlet()
    queue.attach(outlet)
    # QoS 0 never carries DUP [MQTT-3.3.1-2]; a restored QoS 1 message may have
    # been in flight when the node died, so it goes out as a possible re-delivery.
    assert outlet.sent == [(b"m0", 0, None, False), (b"m1", 1, 1, True)]
    assert list(queue.inflight) == [1] and store.stored_payloads() == 1
    queue.puback(1)
    assert store.stored_payloads() == 0


def test_a_held_queue_handed_on_keeps_the_handed_over_messages_first():
    """A session moving on before its previous hand-over completed."""
    queue, _, _store = persistent_queue()
    queue.hold()
    queue.enqueue(message(5), 1)
    queue.enqueue_handed_over(message(1), 1)
    handed = []
    queue.hand_over(lambda m, qos, stored: handed.append(m.payload))
    assert handed == [b"m1", b"m5"]
    assert not queue.held and queue.size() == 0


def test_a_direct_copy_of_a_handed_over_message_is_delivered_once():
    """
    The same publish reached the old node for this session and this node
    for another subscriber: one copy, in its place among the direct ones.
    """
    queue, _, store = persistent_queue()
    outlet = Outlet()
    queue.hold()
    queue.attach(outlet)
    queue.enqueue(message(2), 1)              # direct, before its hand-over copy
    queue.enqueue(message(3), 1)
    queue.enqueue_handed_over(message(1), 1)
    queue.enqueue_handed_over(message(2), 1)
    queue.release_hold()
    assert queue.enqueue(message(1), 1) is None   # direct, after the hand-over
    queue.enqueue(message(4), 1)
    assert [s[0] for s in outlet.sent] == [b"m1", b"m2", b"m3", b"m4"]


def test_a_direct_copy_after_a_passed_on_one_is_dropped():
    """A node the session left passed a copy on (with DUP) before the direct one came."""
    queue, _, _store = persistent_queue()
    outlet = Outlet()
    queue.attach(outlet)
    passed_on = message(1)
    passed_on.dup = True
    queue.enqueue_handed_over(passed_on, 1)
    assert queue.enqueue(message(1), 1) is None
    assert [(s[0], s[3]) for s in outlet.sent] == [(b"m1", True)]


def test_a_copy_that_came_both_ways_keeps_its_direct_place():
    """
    Its publisher's node saw the move and sent it here; the old node passed
    on the copy it got too.  The handed-over stream would put it before an
    older message of that publisher that only came directly.
    """
    queue, _, _store = persistent_queue()
    outlet = Outlet()
    queue.hold()
    queue.attach(outlet)
    queue.enqueue(message(1), 1)                 # direct only
    queue.enqueue_handed_over(message(2), 1)     # passed on by the old node ...
    queue.enqueue(message(2), 1)                 # ... and direct
    queue.release_hold()
    assert [(s[0], s[3]) for s in outlet.sent] == [(b"m1", True), (b"m2", True)]


def published(origin: bytes, n: int) -> Message:
    """Message ``n`` of one node's publishes (refs of one origin sort in publish order)."""
    return Message(origin + n.to_bytes(8, "big"), "t", b"%d" % n, 1)


def test_what_the_old_node_passed_on_waits_for_older_direct_messages_of_its_origin():
    """
    Seen in the nemesis session-moves run: the old node passed on messages
    that reached it after the move (715-718), while this node's own stream
    from their publisher's node was still bringing older ones (713-716).
    Each handed-over message goes after the direct ones of its origin that
    are older; the old node's own backlog (another origin) still goes first.
    """
    queue, _, _store = persistent_queue()
    outlet = Outlet()
    queue.hold()
    queue.attach(outlet)
    a = b"origin-A"
    queue.enqueue_handed_over(published(b"origin-B", 9), 1)   # the old node's backlog
    for n in (713, 714, 715, 716):
        queue.enqueue(published(a, n), 1)                       # direct
    for n in (715, 716, 717, 718):
        queue.enqueue_handed_over(attrs.evolve(published(a, n), dup=True), 1)
    queue.release_hold()
    assert queue.enqueue(published(a, 717), 1) is None          # direct, late: had it
    assert [s[0] for s in outlet.sent] == [b"9", b"713", b"714", b"715", b"716", b"717",
                                           b"718"]


def test_a_held_queue_handed_on_keeps_the_order_it_would_have_delivered():
    queue, _, _store = persistent_queue()
    queue.hold()
    a = b"origin-A"
    queue.enqueue_handed_over(published(a, 3), 1)     # passed on, late
    queue.enqueue(published(a, 1), 1)                 # direct, older
    queue.enqueue(published(a, 2), 1)
    handed = []
    queue.hand_over(lambda m, qos, stored: handed.append(m.payload))
    assert handed == [b"1", b"2", b"3"]


def test_a_held_queue_handed_on_gives_what_came_both_ways_its_direct_place():
    queue, _, _store = persistent_queue()
    queue.hold()
    queue.enqueue(message(1), 1)
    queue.enqueue_handed_over(message(2), 1)
    queue.enqueue(message(2), 1)
    handed = []
    queue.hand_over(lambda m, qos, stored: handed.append(m.payload))
    assert handed == [b"m1", b"m2"]


def test_a_held_queue_handed_on_sends_what_came_directly_as_possible_redeliveries():
    """
    What reached a held queue directly may have reached the old node's
    connection too (sent there by a node that had not seen the move yet):
    handed on, it goes with DUP, as it would have been delivered here.
    """
    queue, _, _store = persistent_queue()
    queue.hold()
    queue.enqueue(message(5), 1)
    queue.enqueue_handed_over(message(1), 1)
    handed = []
    queue.hand_over(lambda m, qos, stored: handed.append((m.payload, m.dup)))
    assert handed == [(b"m1", False), (b"m5", True)]


def test_paused_sending_keeps_messages_queued_within_the_limit():
    """While the connection cannot take more, QoS 0 and QoS 1 messages wait
    (the newest dropped and counted past max_online_messages); resumed,
    they go out in order; a new connection starts unpaused."""
    clock = Clock()
    queue = SubscriberQueue(SubscriberId("", "s"), True,
                            QueueLimits(max_online_messages=3), clock)
    outlet = Outlet()
    queue.attach(outlet)
    queue.pause_sending()
    for n in range(5):
        queue.enqueue(message(n, qos=n % 2), n % 2)
    assert outlet.sent == [] and len(queue.pending) == 3
    assert queue.counters.dropped_online == 2
    queue.resume_sending()
    assert [payload for payload, *_ in outlet.sent] == [b"m0", b"m1", b"m2"]
    queue.pause_sending()
    queue.detach()
    queue.attach(outlet)
    queue.enqueue(message(9, qos=0), 0)
    assert outlet.sent[-1][0] == b"m9"
