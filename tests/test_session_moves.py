"""
A persistent session moving between nodes, in process and deterministic:
nothing its old node held or still receives is lost, and what the old node
hands over reaches the client before what reached the new node directly.
"""
from __future__ import annotations

from typing import Any, Dict, List

from vmqtw.broker.registry import HAND_OVER_WAIT
from vmqtw.cluster.dataplane import ACK, CHANNEL
from vmqtw.store.memory import MemoryMessageStore
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Cluster
from vmqtw.types import SUBSCRIBER_PREFIX, SubscriberId

SID = SubscriberId("", "mover")


def stores(*names: str) -> Dict[str, Any]:
    made = {}
    for name in names:
        made[name] = MemoryMessageStore()
    return made


def stored(store: MemoryMessageStore, sid: SubscriberId = SID) -> int:
    found: List[bytes] = []
    store.find(sid).addCallback(found.extend)
    return len(found)


def payloads(client: Any) -> List[bytes]:
    return [p.payload for p in client.publishes()]


def parked_on_a(cluster: Cluster, topic: str = "q/#") -> Any:
    """A persistent QoS 1 subscriber made on A, then disconnected."""
    subscriber = cluster["A"].subscriber(SID.client_id, (topic, 1), clean_session=False)
    subscriber.drop()
    cluster.settle()
    return subscriber


def publish(client: Any, payloads_: List[bytes], topic: str = "q/x", first_id: int = 1) -> None:
    for n, payload in enumerate(payloads_):
        client.send(B.publish(topic, payload, qos=1, packet_id=first_id + n))


def test_old_node_keeps_stored_copies_until_the_new_owner_acknowledged_them():
    """A crash of the old node between hand-over and acknowledgement must not lose them."""
    cluster = Cluster(stores=stores("A", "B", "C"))
    parked_on_a(cluster)
    publish(cluster["C"].connect("pub"), [b"%d" % n for n in range(5)])
    cluster.settle()
    store_a = cluster["A"].registry.store
    assert stored(store_a) == 5
    # B's acknowledgements of A's stream are lost for now.
    undo = cluster.network.drop(
        lambda src, dst, channel, m: channel == CHANNEL and src == "B" and m[0] == ACK)
    back = cluster["B"].connect(SID.client_id, clean_session=False)
    cluster.settle()
    assert payloads(back) == [b"%d" % n for n in range(5)]
    assert stored(store_a) == 5, "deleted before the new owner acknowledged"
    assert cluster["A"].registry.queues == {}
    undo()
    cluster.settle(11)   # a stalled stream is sent again within two resend checks
    assert stored(store_a) == 0
    assert payloads(back) == [], "B drops what it applied already"


def test_messages_still_sent_to_the_old_node_are_passed_on():
    """A node whose trie has not yet seen the move forwards to the old node."""
    cluster = Cluster()
    parked_on_a(cluster)
    # C does not hear of the move (its metadata is held back for a while).
    undo = cluster.network.drop(lambda src, dst, channel, m: dst == "C" and channel != CHANNEL)
    back = cluster["B"].connect(SID.client_id, clean_session=False)
    cluster.settle()
    publisher = cluster["C"].connect("pub")
    publish(publisher, [b"late-1", b"late-2"])
    cluster.settle(0.1)
    publish(cluster["B"].connect("direct"), [b"newer"])
    # A ends its hand-over once C confirmed the move too, or after the
    # confirmation's bounded wait: C might still send it messages, which
    # must not reach the client after newer ones.
    cluster.settle(HAND_OVER_WAIT)
    assert payloads(back) == [b"late-1", b"late-2", b"newer"]
    assert cluster["A"].registry.queues == {}
    undo()


def test_handed_over_messages_go_out_before_direct_ones():
    """Order per publisher across a move: the backlog on A before B's own."""
    cluster = Cluster()
    parked_on_a(cluster)
    publisher = cluster["B"].connect("pub")
    publish(publisher, [b"1", b"2", b"3"])
    cluster.settle()
    back = cluster["B"].connect(SID.client_id, clean_session=False)
    # Published on B right after the CONNACK: B routes them to its queue at once.
    publish(publisher, [b"4", b"5"], first_id=10)
    cluster.settle()
    assert payloads(back) == [b"1", b"2", b"3", b"4", b"5"]


def test_a_silent_old_node_holds_the_new_session_only_for_a_while():
    cluster = Cluster()
    parked_on_a(cluster)
    undo = cluster.network.drop(lambda src, dst, channel, m: src == "A" and dst == "B"
                                and channel == CHANNEL)
    back = cluster["B"].connect(SID.client_id, clean_session=False)
    publish(cluster["B"].connect("pub"), [b"direct"])
    cluster.settle(HAND_OVER_WAIT / 2)
    assert payloads(back) == []
    cluster.settle(HAND_OVER_WAIT)
    assert payloads(back) == [b"direct"]
    undo()


def test_in_flight_messages_are_resent_with_dup_by_the_new_owner():
    cluster = Cluster()
    subscriber = cluster["A"].subscriber(SID.client_id, ("q/#", 1), clean_session=False)
    publish(cluster["C"].connect("pub"), [b"unacked"])
    cluster.settle()
    [first] = subscriber.publishes()
    assert not first.dup
    subscriber.drop()
    cluster.settle()
    back = cluster["B"].connect(SID.client_id, clean_session=False)
    cluster.settle()
    [again] = back.publishes()
    assert (again.payload, again.dup) == (b"unacked", True)


def test_handed_over_messages_for_a_session_unknown_here_are_kept():
    """The new owner has no queue yet (its record is not here): keep, never drop."""
    cluster = Cluster(stores=stores("A", "B", "C"))
    registry = cluster["B"].registry
    sid = SubscriberId("", "stranger")
    from vmqtw.types import Message
    waiting = registry._handed_over(sid, Message(b"r" * 16, "q/x", b"kept", 1), 1)
    assert waiting is not None
    assert registry.queues[sid].size() == 1
    assert stored(registry.store, sid) == 1


class RecordingPlane:
    """The part of the data plane a restore uses: what it hands over."""

    def __init__(self) -> None:
        self.handed: List[Any] = []

    def hand_over(self, node: str, sid: SubscriberId, message: Any, qos: int,
                  release: bool = False) -> None:
        self.handed.append((node, sid, message.payload, qos, message.dup, release))


def test_a_restarted_old_node_hands_over_again_what_was_not_acknowledged():
    """
    The old node crashed after handing over and before the new owner's
    acknowledgement: its stored copies are not deleted as orphans at start
    but handed over again (as possible duplicates), released on the ack.
    """
    from twisted.internet.task import Clock

    from vmqtw.broker.registry import Registry
    from vmqtw.metadata.local import LocalMetadataStore
    from vmqtw.types import SUBSCRIBER_PREFIX, Message

    metadata = LocalMetadataStore()
    metadata.put(SUBSCRIBER_PREFIX, SID.as_key(), (("B", False, (("q/#", 1),)),))
    store = MemoryMessageStore()
    store.open()
    for n in range(3):
        store.write(SID, Message(b"ref-%013d" % n, "q/x", b"m%d" % n, 1))
    plane = RecordingPlane()
    registry = Registry("A", metadata, Clock(), store=store, dataplane=plane)  # type: ignore[arg-type]
    registry.start()
    registry.restore()
    assert plane.handed == [("B", SID, b"m%d" % n, 1, True, True) for n in range(3)]
    assert stored(store) == 3 and registry.queues == {}
    registry._hand_over_released(SID, b"ref-%013d" % 0)
    assert stored(store) == 2


def test_a_session_moving_on_before_its_hand_over_arrived_keeps_its_order():
    """A -> B -> C faster than A's hand-over reaches B: B hands on everything, oldest first."""
    cluster = Cluster()
    parked_on_a(cluster)
    publisher = cluster["C"].connect("pub")
    publish(publisher, [b"1", b"2", b"3"])
    cluster.settle()
    cluster.network.set_delay("A", "B", 1.0)
    on_b = cluster["B"].connect(SID.client_id, clean_session=False)
    cluster.settle(0.2)
    assert payloads(on_b) == []
    on_b.drop()
    on_c = cluster["C"].connect(SID.client_id, clean_session=False)
    publish(publisher, [b"4"], first_id=10)
    cluster.settle(0.3)
    assert payloads(on_c) == [], "C waits for B's hand-over"
    cluster.settle(HAND_OVER_WAIT)
    assert payloads(on_c) == [b"1", b"2", b"3", b"4"]
    cluster.network.set_delay("A", "B", 0)


def test_copies_for_the_old_nodes_other_subscribers_are_not_passed_on():
    """
    Once every member confirmed the move (and a short grace), what other
    nodes send the old node is for its other subscribers: the moved session
    must not get it twice.
    """
    from vmqtw.broker.registry import MOVED_GRACE

    cluster = Cluster()
    other = cluster["A"].subscriber("other", ("q/#", 1))
    parked_on_a(cluster)
    back = cluster["B"].connect(SID.client_id, clean_session=False)
    cluster.settle(1 + MOVED_GRACE)
    assert cluster["A"].registry.moved.match("q/x") == {}
    publish(cluster["C"].connect("pub"), [b"once"])
    cluster.settle()
    assert [(p.payload, p.dup) for p in back.publishes()] == [(b"once", False)]
    assert payloads(other) == [b"once"]


def test_a_late_marker_of_an_earlier_move_does_not_release_the_hold():
    cluster = Cluster()
    parked_on_a(cluster)
    undo = cluster.network.drop(lambda src, dst, channel, m: src == "A" and dst == "B"
                                and channel == CHANNEL)
    back = cluster["B"].connect(SID.client_id, clean_session=False)
    publish(cluster["B"].connect("pub"), [b"direct"])
    cluster.settle(0.2)
    cluster["B"].registry._hand_over_done(SID, "C")      # not the node B waits for
    cluster.settle(0.2)
    assert payloads(back) == []
    cluster.settle(HAND_OVER_WAIT)
    assert payloads(back) == [b"direct"]
    undo()


def test_a_hand_over_from_the_node_its_record_still_names_is_kept_and_held():
    """
    The old node's hand-over outran the record that moves the session here
    (the record may come through a third node): kept here, held for the old
    node's end marker -- never passed back to the node that sent it.
    """
    from twisted.internet.task import Clock

    from vmqtw.broker.registry import Registry
    from vmqtw.metadata.local import LocalMetadataStore
    from vmqtw.types import SUBSCRIBER_PREFIX, Message

    metadata = LocalMetadataStore()
    metadata.put(SUBSCRIBER_PREFIX, SID.as_key(), (("C", False, (("q/#", 1),)),))
    plane = RecordingPlane()
    registry = Registry("B", metadata, Clock(), dataplane=plane)  # type: ignore[arg-type]
    registry.start()
    message = Message(b"r" * 16, "q/x", b"early", 1, origin="C")
    registry._handed_over(SID, message, 1)
    assert plane.handed == [], "passed back to the node that handed it over"
    queue = registry.queues[SID]
    assert queue.held and queue.size() == 1
    registry._hand_over_done(SID, "C")
    assert not queue.held


def test_an_aborted_connect_elsewhere_still_moves_the_queue():
    """
    VerneMQ's aborted_queue_migration_test: messages wait on A; a CONNECT
    on B whose connection dies at once still takes the session (and the
    messages) to B, where the next connection finds all of them.
    """
    cluster = Cluster(stores=stores("A", "B", "C"))
    parked_on_a(cluster)
    publish(cluster["C"].connect("pub"), [b"%d" % n for n in range(10)])
    cluster.settle()
    aborted = cluster["B"].client()
    aborted.send(B.connect(SID.client_id, clean_session=False))
    aborted.drop()
    cluster.settle(HAND_OVER_WAIT)
    assert cluster["A"].registry.queues == {}
    assert stored(cluster["A"].registry.store) == 0
    back = cluster["C"].connect(SID.client_id, clean_session=False)
    assert back.connack.session_present
    cluster.settle(HAND_OVER_WAIT)
    assert payloads(back) == [b"%d" % n for n in range(10)]


def test_late_arrivals_at_a_node_left_long_ago_follow_the_chain_of_moves():
    """
    A -> B -> C while A's hand-over to B is slow: what A still receives for
    the session (from D, which has not seen any move) goes to B, behind
    A's hand-over, not straight to C -- C would deliver it before the older
    messages B still has to hand on.
    """
    cluster = Cluster(names=("A", "B", "C", "D"))
    parked_on_a(cluster)
    # D does not hear of the moves: it goes on sending the session's messages to A.
    undo = cluster.network.drop(lambda src, dst, channel, m: dst == "D" and channel != CHANNEL)
    publisher = cluster["D"].connect("pub")
    publish(publisher, [b"1", b"2", b"3"])
    cluster.settle(0.2)
    cluster.network.set_delay("A", "B", 0.5)

    def connect(node: str) -> Any:
        client = cluster[node].connect(SID.client_id, clean_session=False)
        # The new record reaches A at once, as a coordinated registration
        # pushes it (gossip alone takes a random path).
        cluster[node].registry.confirm(SUBSCRIBER_PREFIX, SID.as_key())
        cluster.settle(0.2)
        return client

    on_b = connect("B")
    assert cluster["A"].registry.queues == {}, "A handed over (B has not got it yet)"
    on_b.drop()
    on_c = connect("C")
    publish(publisher, [b"4"], first_id=10)
    cluster.settle(2 * HAND_OVER_WAIT)
    assert payloads(on_b) == []
    assert payloads(on_c) == [b"1", b"2", b"3", b"4"]
    cluster.network.set_delay("A", "B", 0)
    undo()


def test_a_copy_passed_on_for_the_old_nodes_other_subscriber_keeps_its_direct_place():
    """
    C saw the move and sends B its own copies; A passes on the one it got
    for a subscriber of its own (narrower filter) before its hand-over ends.
    That copy is newer than a message of the same publisher that only B got
    (A has no other subscriber for it): B delivers them in publish order.
    """
    cluster = Cluster()
    cluster["A"].subscriber("other", ("q/x", 1))
    parked_on_a(cluster)
    publisher = cluster["C"].connect("pub")
    cluster.network.set_delay("A", "B", 0.5)
    back = cluster["B"].connect(SID.client_id, clean_session=False)
    cluster.settle(0.1)
    publish(publisher, [b"y1"], topic="q/y")
    publish(publisher, [b"x2"], topic="q/x", first_id=10)
    cluster.settle(HAND_OVER_WAIT + 1)
    assert payloads(back) == [b"y1", b"x2"]
    cluster.network.set_delay("A", "B", 0)
