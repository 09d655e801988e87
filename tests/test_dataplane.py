"""
The cross-node data plane (vmqtw.cluster.dataplane) between two nodes on the
in-memory transport and a Clock: frames lost before a cut is detected,
silently replaced links, restarts of either side, a full backlog and stores
that fail -- nothing accepted is lost, and what is applied twice is flagged.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

import attrs
import msgpack

from vmqtw.cluster.dataplane import (ACK, CHANNEL, UNNUMBERED, UNNUMBERED_BATCH, BacklogFull,
                                     DataPlane, decode_message, encode_message, outbox_id)
from vmqtw.testing.memory_transport import InMemoryNetwork
from vmqtw.store.leveldb import LevelDBMessageStore
from vmqtw.types import Message, SubscriberId

A, B = "a@127.0.0.1", "b@127.0.0.1"


def msg(n: int, qos: int = 1, size: int = 10) -> Message:
    return Message(b"ref-%08d" % n, "t/%d" % n, b"x" * size, qos, timestamp=float(n))


class Side:
    """One node: its transport, data plane and what it routed."""

    def __init__(self, net: InMemoryNetwork, clock: Clock, name: str,
                 store: Any = None, limit: int = 1 << 20,
                 route_result: Any = None, one_read: Any = None) -> None:
        self.name = name
        self.routed: List[Message] = []
        self.handed: List[Tuple[SubscriberId, Message, int]] = []
        self.route_result = route_result
        self.transport = net.transport(name)
        self.plane = DataPlane(name, self.transport, clock, store, limit, resend_interval=5.0)
        self.started = self.plane.start(self.route, self.hand_over_sink, one_read=one_read)
        self.transport.start()

    def route(self, message: Message) -> Optional[defer.Deferred]:
        self.routed.append(message)
        return self.route_result() if callable(self.route_result) else None

    def hand_over_sink(self, sid: SubscriberId, message: Message, qos: int) -> None:
        self.handed.append((sid, message, qos))

    def topics(self) -> List[str]:
        return [m.topic for m in self.routed]

    def crash(self) -> None:
        self.plane.stop()
        self.transport.stop()


@pytest.fixture
def world():
    clock = Clock()
    net = InMemoryNetwork(clock)
    return clock, net


class CountingStore(LevelDBMessageStore):
    """A LevelDB store that remembers the queues written to (what the
    outbox tests must see untouched), and can fail its writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written: List[SubscriberId] = []
        self.fail_writes = False

    def write(self, subscriber_id: SubscriberId, message: Message) -> defer.Deferred:
        self.written.append(subscriber_id)
        if self.fail_writes:
            return defer.fail(IOError("disk full"))
        return super().write(subscriber_id, message)


@pytest.fixture
def stores(tmp_path):
    """Open LevelDB stores on a path; every one is closed after the test."""
    opened: List[CountingStore] = []

    def open_store(clock: Clock, name: str = "a") -> CountingStore:
        store = CountingStore(str(tmp_path / name), clock)
        store.open()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def connect(a: Side, b: Side) -> None:
    a.transport.set_peer_address(b.name, ("127.0.0.1", 1))


def linked(clock: Clock, net: InMemoryNetwork, store: Any = None) -> Tuple[Side, Side]:
    """A (keeping its outbox in ``store``) and B, with a link between them."""
    a, b = Side(net, clock, A, store=store), Side(net, clock, B)
    connect(a, b)
    return a, b


def settle(clock: Clock, seconds: float = 1.0) -> None:
    for _ in range(int(seconds / 0.01)):
        clock.advance(0.01)


def test_the_wire_form_marks_the_origin_keeps_retain_and_drops_dup():
    message = Message(b"ref-1", "a/b", b"\x00payload", 2, False, True, 1234.5, "mp", None)
    wire = msgpack.unpackb(msgpack.packb(encode_message(message)), use_list=False)
    assert len(wire) == 6, "3.1.1 traffic framed as before"
    assert decode_message(wire, "B") == Message(b"ref-1", "a/b", b"\x00payload", 2, False,
                                                False, 1234.5, "mp", "B")
    retained = attrs.evolve(message, retain=True)
    wire = msgpack.unpackb(msgpack.packb(encode_message(retained)), use_list=False)
    assert decode_message(wire, "B") == Message(b"ref-1", "a/b", b"\x00payload", 2, True,
                                                False, 1234.5, "mp", "B")


def test_one_copy_per_node_encoded_once_for_qos0(world):
    clock, net = world
    a, b, c = Side(net, clock, A), Side(net, clock, B), Side(net, clock, "c@127.0.0.1")
    connect(a, b)
    connect(a, c)
    a.plane.forward([B, c.name], msg(0, qos=0))
    a.plane.forward([B, c.name], msg(1, qos=1))
    settle(clock)
    assert b.topics() == c.topics() == ["t/0", "t/1"]
    assert a.plane.forwarded == 4 and b.plane.received_remote == 2


def forward_one_turn_of_qos0(a: Side, b: Side, clock: Clock, count: int) -> None:
    """``count`` QoS 0 messages forwarded from ``a`` to ``b`` in one turn,
    then the network settled: ``b`` routed them all, in order."""
    for n in range(count):
        a.plane.forward([b.name], msg(n, qos=0))
    settle(clock)
    assert b.topics() == ["t/%d" % n for n in range(count)]


def test_the_qos0_messages_of_a_turn_travel_in_one_frame(world):
    """One frame for a turn's QoS 0 copies to a peer, not one per message."""
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    settle(clock)
    net.reset_counters()
    forward_one_turn_of_qos0(a, b, clock, 50)
    assert net.count(CHANNEL, UNNUMBERED_BATCH) == 1
    assert net.count(CHANNEL, UNNUMBERED) == 0
    assert b.plane.received_remote == 50


def test_each_received_frame_is_handled_as_one_read(world):
    """``one_read`` wraps the handling of each frame from a peer, whatever
    it holds: its deliveries to clients leave together when it returns."""
    clock, net = world
    frames: List[int] = []

    def one_read(handle: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            before = len(b.routed)
            result = handle(*args)
            frames.append(len(b.routed) - before)
            return result
        return wrapped

    a, b = Side(net, clock, A), Side(net, clock, B, one_read=one_read)
    connect(a, b)
    settle(clock)
    frames.clear()
    forward_one_turn_of_qos0(a, b, clock, 30)
    assert frames == [30]


def test_qos0_and_numbered_copies_of_one_turn_keep_their_order(world):
    """A publisher's messages keep their order across QoS levels, within a turn."""
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    settle(clock)
    qos = [0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 2, 0]
    for n, level in enumerate(qos):
        a.plane.forward([B], msg(n, qos=level))
    settle(clock)
    assert b.topics() == ["t/%d" % n for n in range(len(qos))]


def test_qos0_copies_for_a_peer_without_a_link_are_dropped_and_counted(world):
    clock, net = world
    a = Side(net, clock, A)
    b = Side(net, clock, B)
    connect(a, b)
    settle(clock)
    for n in range(3):
        a.plane.forward([B], msg(n, qos=0))
    b.crash()                       # before the turn's frame is written
    settle(clock)
    assert a.plane.counters.dropped_qos0 == 3


def test_a_bad_frame_is_logged_not_raised(world):
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    a.transport.cast(B, CHANNEL, ("m", b"e" * 8, 1))
    a.transport.cast(B, CHANNEL, ("what", 1))
    a.plane.forward([B], msg(0))
    settle(clock)
    assert b.topics() == ["t/0"]


def test_a_forwarded_message_is_routed_once_and_released_after_the_ack(world):
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    for n in range(5):
        a.plane.forward([B], msg(n))
    settle(clock)
    assert b.topics() == ["t/%d" % n for n in range(5)]
    assert [m.dup for m in b.routed] == [False] * 5
    assert a.plane.backlog() == {}
    assert b.routed[0].origin == A


def test_frames_lost_before_the_cut_is_detected_are_resent_after_the_heal(world):
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    a.plane.forward([B], msg(0))
    settle(clock)
    # The window of uncertainty: the link still looks up, frames vanish.
    undo = net.drop(lambda src, dst, channel, m: channel == CHANNEL and src == A)
    for n in range(1, 4):
        a.plane.forward([B], msg(n))
    settle(clock)
    assert b.topics() == ["t/0"]
    net.partition([[A], [B]])       # detected
    a.plane.forward([B], msg(4))      # accepted during the split
    undo()
    net.heal()
    settle(clock)
    assert b.topics() == ["t/%d" % n for n in range(5)]
    assert [m.dup for m in b.routed] == [False, True, True, True, False]
    assert a.plane.backlog() == {}


def test_a_link_replaced_without_notice_is_noticed_by_the_retransmission_check(world):
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    undo = net.drop(lambda src, dst, channel, m: channel == CHANNEL and src == A)
    a.plane.forward([B], msg(0))
    settle(clock)
    undo()
    assert b.routed == []
    settle(clock, 11)              # two checks: the first sees no progress
    assert b.topics() == ["t/0"]
    assert b.routed[0].dup
    assert a.plane.counters.resent == 1


def test_a_gap_makes_the_receiver_ask_for_the_rest(world):
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    dropped = []

    def drop_first(src, dst, channel, m):
        if channel == CHANNEL and m[0] == "m" and not dropped:
            dropped.append(m)
            return True
        return False

    undo = net.drop(drop_first)
    a.plane.forward([B], msg(0))      # lost on the wire
    clock.advance(0)
    a.plane.forward([B], msg(1))      # arrives, in the next frame: a gap
    settle(clock)
    undo()
    settle(clock)
    assert b.topics() == ["t/0", "t/1"]
    assert clock.seconds() < 5      # not the retransmission check


def test_the_receiver_acknowledges_only_once_the_copy_is_safe(world):
    clock, net = world
    pending: List[defer.Deferred] = []

    def slow_store() -> defer.Deferred:
        d = defer.Deferred()
        pending.append(d)
        return d

    a = Side(net, clock, A)
    b = Side(net, clock, B, route_result=slow_store)
    connect(a, b)
    a.plane.forward([B], msg(0))
    a.plane.forward([B], msg(1))
    settle(clock)
    assert a.plane.backlog() == {B: (2, a.plane.backlog()[B][1])}
    pending[1].callback(None)
    settle(clock)
    assert a.plane.backlog()[B][0] == 2     # 0 is not safe yet: no ack past it
    pending[0].callback(None)
    settle(clock)
    assert a.plane.backlog() == {}


def test_a_copy_that_could_not_be_stored_is_applied_again_from_the_resend(world):
    clock, net = world
    results = [lambda: defer.fail(IOError("disk full")), lambda: None]

    a = Side(net, clock, A)
    b = Side(net, clock, B, route_result=lambda: results.pop(0)())
    connect(a, b)
    a.plane.forward([B], msg(0))
    settle(clock)
    assert len(b.routed) == 1 and a.plane.backlog()
    settle(clock, 11)
    assert len(b.routed) == 2 and b.routed[1].dup
    assert a.plane.backlog() == {}


def test_a_restarted_receiver_gets_what_it_had_not_acknowledged_flagged(world):
    clock, net = world
    pending: List[defer.Deferred] = []
    a = Side(net, clock, A)
    b = Side(net, clock, B, route_result=lambda: pending.append(defer.Deferred()) or pending[-1])
    connect(a, b)
    a.plane.forward([B], msg(0))
    settle(clock)
    b.crash()                        # applied, never safe, never acknowledged
    settle(clock)
    b2 = Side(net, clock, B)
    connect(a, b2)
    settle(clock)
    assert b2.topics() == ["t/0"] and b2.routed[0].dup
    assert a.plane.backlog() == {}


def test_the_outbox_survives_a_crash_of_the_sender(world, stores):
    clock, net = world
    store = stores(clock)
    a = Side(net, clock, A, store=store)
    b = Side(net, clock, B)
    connect(a, b)
    undo = net.drop(lambda src, dst, channel, m: channel == CHANNEL and src == A)
    written = [a.plane.forward([B], msg(n)) for n in range(3)]
    settle(clock)
    assert all(d.called for d in written)      # the PUBACK could go out
    a.crash()                                  # kill -9: only the store remains
    store.close()
    undo()
    store2 = stores(clock)
    a2 = Side(net, clock, A, store=store2)
    connect(a2, b)
    settle(clock)
    assert b.topics() == ["t/0", "t/1", "t/2"]
    assert all(m.dup for m in b.routed)
    assert a2.plane.counters.restored == 3
    settle(clock)
    assert store2.find(outbox_id(B)).result == []


def test_acknowledged_entries_leave_the_outbox(world, stores):
    clock, net = world
    store = stores(clock)
    a, b = Side(net, clock, A, store=store), Side(net, clock, B)
    connect(a, b)
    a.plane.forward([B], msg(0))
    a.plane.forward([B], msg(1, qos=0))          # QoS 0 is never kept
    settle(clock)
    assert store.find(outbox_id(B)).result == []
    assert b.topics() == ["t/0", "t/1"]


def turns(clock: Clock, count: int = 5) -> None:
    """Let ``count`` reactor turns pass without time passing."""
    for _ in range(count):
        clock.advance(0)


def test_the_publisher_waits_for_the_peers_ack_and_the_outbox_is_never_written(
        world, stores):
    clock, net = world
    store = stores(clock)
    a, b = linked(clock, net, store)
    net.set_delay(B, A, a.plane.outbox_delay / 2)   # the acknowledgement's way back
    safe = a.plane.forward([B], msg(0))
    turns(clock)
    assert b.topics() == ["t/0"]
    assert not safe.called, "acknowledged before the peer had it or the outbox held it"
    clock.advance(a.plane.outbox_delay / 2)
    assert safe.called and a.plane.backlog() == {}
    settle(clock)
    assert store.written == [] and a.plane.counters.outboxed == 0


def test_the_receiver_acknowledges_in_the_turn_the_copy_became_safe(world):
    clock, net = world
    a, b = linked(clock, net)
    a.plane.forward([B], msg(0))
    turns(clock)    # no time passes: no delay before the acknowledgement
    assert a.plane.backlog() == {}


def test_a_copy_the_peer_has_not_acknowledged_in_time_goes_to_the_outbox(world, stores):
    clock, net = world
    store = stores(clock)
    a, b = linked(clock, net, store)
    net.set_delay(B, A, 1.0)          # a slow peer: its acknowledgement takes a second
    safe = a.plane.forward([B], msg(0))
    clock.advance(a.plane.outbox_delay * 0.9)
    assert not safe.called and store.written == []
    clock.advance(a.plane.outbox_delay)   # the first tick only ages it
    clock.advance(a.plane.outbox_delay)
    turns(clock)
    assert store.written == [outbox_id(B)] and a.plane.counters.outboxed == 1
    assert safe.called, "the outbox holds it: the publisher may be acknowledged"
    [ref] = store.find(outbox_id(B)).result
    assert store.read(outbox_id(B), ref).result.topic == "t/0"
    settle(clock, 2)                  # the acknowledgement arrives and deletes it
    assert a.plane.backlog() == {} and store.find(outbox_id(B)).result == []


def test_without_a_link_the_copy_goes_to_the_outbox_at_once(world, stores):
    clock, net = world
    store = stores(clock)
    a, b = linked(clock, net, store)
    net.partition([[A], [B]])
    safe = a.plane.forward([B], msg(0))
    assert store.written == [outbox_id(B)]
    turns(clock)     # the store's commit, no tick
    assert safe.called


def test_a_lost_link_sends_what_waits_to_the_outbox_at_once(world, stores):
    clock, net = world
    store = stores(clock)
    a, b = linked(clock, net, store)
    undo = net.drop(lambda src, dst, channel, m: channel == CHANNEL and src == A)
    waiting = [a.plane.forward([B], msg(n)) for n in range(3)]
    turns(clock)
    assert store.written == []
    net.partition([[A], [B]])
    assert store.written == [outbox_id(B)] * 3
    turns(clock)
    assert all(d.called for d in waiting)
    undo()
    net.heal()
    settle(clock)
    assert b.topics() == ["t/0", "t/1", "t/2"] and store.find(outbox_id(B)).result == []


def test_a_failed_outbox_write_leaves_the_publisher_unacknowledged(world, stores):
    clock, net = world
    store = stores(clock)
    store.fail_writes = True
    a, b = Side(net, clock, A, store=store), Side(net, clock, B)
    connect(a, b)
    net.partition([[A], [B]])
    failures: List[Any] = []
    a.plane.forward([B], msg(0)).addErrback(failures.append)
    turns(clock)
    assert len(failures) == 1 and failures[0].check(IOError)
    net.heal()
    settle(clock)
    assert b.topics() == ["t/0"]    # still delivered; the client's resend may come too


def test_the_outbox_timer_runs_only_while_copies_wait(world, stores):
    clock, net = world
    store = stores(clock)
    a, b = linked(clock, net, store)
    settle(clock)
    idle = len(clock.getDelayedCalls())
    a.plane.forward([B], msg(0))
    assert len(clock.getDelayedCalls()) > idle
    settle(clock)
    assert len(clock.getDelayedCalls()) == idle


def test_publishers_waiting_on_a_node_that_left_wait_for_where_the_orphans_go(world, stores):
    clock, net = world
    store = stores(clock)
    a, b = linked(clock, net, store)
    a.plane.keep_peers([A, B])
    undo = net.drop(lambda src, dst, channel, m: channel == CHANNEL and src == A)
    safe = a.plane.forward([B], msg(0))
    turns(clock)
    placed = defer.Deferred()
    a.plane.on_orphaned = lambda node, items: placed
    a.plane.keep_peers([A])       # B left before acknowledging it
    turns(clock)
    assert not safe.called, "acknowledged before the orphan was stored anywhere"
    placed.callback(None)
    assert safe.called
    undo()


def test_a_full_backlog_refuses_qos1_and_drops_qos0_and_counts_both(world):
    clock, net = world
    a = Side(net, clock, A, limit=400)     # two entries of ~170 bytes
    b = Side(net, clock, B)
    connect(a, b)
    net.partition([[A], [B]])
    a.plane.forward([B], msg(0, size=100))
    a.plane.forward([B], msg(1, size=100))
    assert not a.plane.admits([B], msg(2, size=100))
    with pytest.raises(BacklogFull):
        a.plane.forward([B], msg(2, size=100))
    a.plane.forward([B], msg(3, qos=0))           # no link: dropped
    assert a.plane.counters.refused_backlog_full == 1
    assert a.plane.counters.dropped_qos0 == 1
    net.heal()
    settle(clock)
    assert b.topics() == ["t/0", "t/1"]
    assert a.plane.admits([B], msg(2, size=100))


def test_a_moved_sessions_messages_reach_its_new_queue(world):
    clock, net = world
    a, b = Side(net, clock, A, limit=10), Side(net, clock, B)
    connect(a, b)
    sid = SubscriberId("", "c1")
    for n in range(3):                          # never refused, even past the bound
        a.plane.hand_over(B, sid, msg(n, size=50), 1)
    settle(clock)
    assert [(s, m.topic, q) for s, m, q in b.handed] == [(sid, "t/%d" % n, 1) for n in range(3)]
    assert a.plane.backlog() == {}


def test_a_hand_over_is_released_on_the_ack_and_ends_with_a_marker(world):
    """
    The old node deletes its stored copy only when the new owner
    acknowledged the entry (``on_released``), and the new owner learns,
    in stream order, that the hand-over is complete (``on_done``); what was
    in flight at the old node arrives flagged as a redelivery (DUP).
    """
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    released, done = [], []
    a.plane.on_released = lambda sid, ref: released.append(ref)
    b.plane.on_hand_over_done = lambda sid, old: done.append((sid, old, len(b.handed)))
    connect(a, b)
    sid = SubscriberId("", "c1")
    inflight = msg(0)
    inflight.dup = True
    a.plane.hand_over(B, sid, inflight, 1, release=True)
    a.plane.hand_over(B, sid, msg(1), 1, release=True)
    a.plane.hand_over(B, sid, msg(2, qos=0), 0)
    a.plane.hand_over_done(B, sid)
    undo = net.drop(lambda src, dst, channel, m: src == B and m[0] == ACK)
    settle(clock)
    assert [(m.topic, m.dup) for _s, m, _q in b.handed] == [("t/0", True), ("t/1", False),
                                                            ("t/2", False)]
    assert done == [(sid, A, 3)]
    assert released == []
    undo()
    settle(clock, 11)      # the stalled stream is sent again and acknowledged again
    assert released == [msg(0).ref, msg(1).ref]
    assert len(b.handed) == 3 and a.plane.backlog() == {}


def test_repeated_cuts_lose_nothing(world):
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    sent = 0
    for round_ in range(5):
        undo = net.drop(lambda src, dst, channel, m: channel == CHANNEL)
        for _ in range(10):
            a.plane.forward([B], msg(sent))
            b.plane.forward([A], msg(1000 + sent))
            sent += 1
            clock.advance(0.01)
        net.partition([[A], [B]])
        undo()
        clock.advance(1)
        net.heal()
        for _ in range(10):
            a.plane.forward([B], msg(sent))
            b.plane.forward([A], msg(1000 + sent))
            sent += 1
            clock.advance(0.01)
    settle(clock)
    assert b.topics() == ["t/%d" % n for n in range(sent)]
    assert a.topics() == ["t/%d" % (1000 + n) for n in range(sent)]
    assert a.plane.backlog() == {} and b.plane.backlog() == {}


def test_what_waits_for_a_node_that_left_goes_to_the_registry_and_is_counted(world, stores):
    clock, net = world
    store = stores(clock)
    a, b = Side(net, clock, A, store=store), Side(net, clock, B)
    connect(a, b)
    a.plane.keep_peers([A, B])
    net.partition([[A], [B]])
    a.plane.forward([B], msg(0))
    settle(clock)
    assert a.plane.backlog()
    orphaned = []
    a.plane.on_orphaned = lambda node, items: orphaned.append((node, items))
    a.plane.keep_peers([A, B, "c@127.0.0.1"])   # a newcomer is not a removal
    assert orphaned == []
    a.plane.keep_peers([A])                     # B was removed
    settle(clock)
    assert a.plane.backlog() == {} and a.plane.counters.orphaned_node_left == 1
    assert store.find(outbox_id(B)).result == []
    [(node, [(sid, message, qos)])] = orphaned
    assert (node, sid, message.ref, qos) == (B, None, msg(0).ref, msg(0).qos)


def test_a_node_heard_from_before_it_is_a_member_is_not_dropped(world):
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    net.partition([[A], [B]])
    a.plane.forward([B], msg(0))
    a.plane.keep_peers([A])                     # B was never seen as a member
    net.heal()
    settle(clock)
    assert b.topics() == ["t/0"]


def test_what_this_turn_holds_for_a_peer_goes_before_a_confirmation_to_it(world):
    """A node that confirms it routes a moved session elsewhere must not let
    the confirmation overtake the messages it still sends to the old owner."""
    from vmqtw.metadata.confirm import Confirmer
    from vmqtw.metadata.store import ReplicatedMetadataStore
    from vmqtw.types import SUBSCRIBER_PREFIX

    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    connect(a, b)
    settle(clock)
    order: List[str] = []
    a.transport.register_cast_handler("probe", lambda peer, m: order.append("confirmation"))
    a.route_result = lambda: order.append("message")
    origin = ReplicatedMetadataStore(A, clock)
    origin.put(SUBSCRIBER_PREFIX, ("", "c"), "moved")
    confirmer = Confirmer(B, ReplicatedMetadataStore(B, clock), b.transport, lambda: [A, B])
    confirmer.before_reply = b.plane.flush_to
    b.plane.forward([A], msg(0))                 # held for the end of this turn
    confirmer._merge(A, "vmq", "subscriber", ("", "c"), origin.raw(SUBSCRIBER_PREFIX, ("", "c")))
    b.transport.cast(A, "probe", ("reply",))     # the call's reply, written right after
    settle(clock)
    assert order == ["message", "confirmation"]


def test_the_wire_form_carries_v5_properties_and_stays_short_without():
    """
    A message with MQTT 5.0 properties crosses with them (in order); one
    without is the same six fields as before, so mixed-version nodes agree.
    """
    from vmqtw.mqtt.packets import Properties
    props = Properties(content_type="c", user_properties=(("k", "1"), ("k", "0")),
                       message_expiry_interval=9)
    message = Message(b"ref-1", "a/b", b"x", 1, False, False, 10.0, "", None, props)
    wire = msgpack.unpackb(msgpack.packb(encode_message(message)), use_list=False)
    assert decode_message(wire, "B").properties == props
    plain = Message(b"ref-2", "a/b", b"x", 1, False, False, 10.0, "")
    assert len(encode_message(plain)) == 6
    assert decode_message(encode_message(plain), "B").properties is None


# -- shared subscriptions: the copy names its member -------------------------------

MEMBER = SubscriberId("mp", "member-1")
GROUP = "$share/g/t/+"


def shared_sink(side: Side) -> List[Tuple[str, SubscriberId, str, bool]]:
    got: List[Tuple[str, SubscriberId, str, bool]] = []

    def route_shared(message: Message, subscriber_id: SubscriberId, group: str) -> None:
        got.append((message.topic, subscriber_id, group, message.dup))
    side.plane.route_shared = route_shared
    return got


def test_a_shared_copy_reaches_its_named_member_not_the_plain_route(world):
    """QoS 0 and 1 copies for a shared subscription member carry the target;
    plain copies keep their three-field item."""
    clock, net = world
    a, b = Side(net, clock, A), Side(net, clock, B)
    got = shared_sink(b)
    connect(a, b)
    a.plane.forward_shared(B, msg(0, qos=0), MEMBER, GROUP)
    a.plane.forward_shared(B, msg(1), MEMBER, GROUP)
    a.plane.forward([B], msg(2))
    settle(clock)
    assert got == [("t/0", MEMBER, GROUP, False), ("t/1", MEMBER, GROUP, False)]
    assert b.topics() == ["t/2"]
    assert a.plane.backlog() == {}


def test_a_shared_copy_survives_a_crash_of_the_sender_with_its_target(world, stores):
    clock, net = world
    store = stores(clock)
    a = Side(net, clock, A, store=store)
    b = Side(net, clock, B)
    got = shared_sink(b)
    connect(a, b)
    undo = net.drop(lambda src, dst, channel, m: channel == CHANNEL and src == A)
    written = [a.plane.forward_shared(B, msg(n), MEMBER, GROUP) for n in range(2)]
    settle(clock)
    assert all(d.called for d in written)      # the PUBACK could go out
    a.crash()
    store.close()
    undo()
    store2 = stores(clock)
    a2 = Side(net, clock, A, store=store2)
    connect(a2, b)
    settle(clock)
    assert got == [("t/0", MEMBER, GROUP, True), ("t/1", MEMBER, GROUP, True)]
    assert b.topics() == []
    assert a2.plane.counters.restored == 2
    settle(clock)
    assert store2.subscribers().result == []   # released once acknowledged


def test_shared_copies_for_a_node_that_left_go_back_to_the_group(world, stores):
    """Not to the member's new home as a plain orphan: another member of the
    group gets them (the router chooses, without the node that left)."""
    clock, net = world
    store = stores(clock)
    a, b = Side(net, clock, A, store=store), Side(net, clock, B)
    connect(a, b)
    a.plane.keep_peers([A, B])
    net.partition([[A], [B]])
    a.plane.forward_shared(B, msg(0), MEMBER, GROUP)
    settle(clock)
    orphaned: List[Any] = []
    a.plane.on_orphaned = lambda node, items: orphaned.append(("plain", node, items))
    a.plane.on_shared_orphaned = lambda node, items: orphaned.append(("shared", node, items))
    a.plane.keep_peers([A])
    assert a.plane.backlog() == {} and store.subscribers().result == []
    [(kind, node, [(sid, message, group)])] = orphaned
    assert (kind, node, sid, message.ref, group) == ("shared", B, MEMBER, msg(0).ref, GROUP)
    # Chosen for B after it left (a record not yet re-homed): the same way.
    a.plane.forward_shared(B, msg(1), MEMBER, GROUP)
    assert [kind for kind, _n, _i in orphaned] == ["shared", "shared"]
