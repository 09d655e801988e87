"""Routing a published message: queues on this node, one copy per other
node, and messages from other nodes never forwarded again."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest
from twisted.internet.defer import Deferred

from vmqtw.cluster.dataplane import BacklogFull

from vmqtw.broker.retain import RetainStore
from vmqtw.broker.router import Router
from vmqtw.broker.subscriptions import Subscriptions
from vmqtw.metadata.local import LocalMetadataStore
from vmqtw.trie import SubscriptionTrie
from vmqtw.types import SUBSCRIBER_PREFIX, Message, SubscriberId

C1, C2 = SubscriberId("", "c1"), SubscriberId("", "c2")


class FakeQueue:
    def __init__(self, waiting: Optional[Deferred] = None) -> None:
        self.got: List[Tuple[Message, int]] = []
        self.waiting = waiting

    def enqueue(self, message: Message, qos: int) -> Optional[Deferred]:
        self.got.append((message, qos))
        return self.waiting


class FakeDataPlane:
    def __init__(self) -> None:
        self.forwards: List[Tuple[List[str], Message]] = []
        self.room = True
        self.stored: Optional[Deferred] = None
        self.refusals: List[Message] = []

    def admits(self, nodes: Any, message: Message) -> bool:
        return self.room

    def refused(self, message: Message) -> None:
        self.refusals.append(message)

    def forward(self, nodes: Any, message: Message) -> Optional[Deferred]:
        self.forwards.append((list(nodes), message))
        return self.stored


def message(topic: str = "t/1", qos: int = 2, retain: bool = False,
            origin: Optional[str] = None) -> Message:
    return Message(b"ref", topic, b"payload", qos, retain, False, 1.0, "", origin)


def _router(queues: Any):
    metadata = LocalMetadataStore()
    subscriptions = Subscriptions("A", metadata)
    subscriptions.start()
    retain = RetainStore(metadata)
    retain.start()
    plane = FakeDataPlane()
    router = Router(subscriptions, retain, queues.get, plane)  # type: ignore[arg-type]
    subscriptions.subscribe(C1, False, [("t/#", 1)])
    subscriptions.subscribe(C2, False, [("t/+", 2), ("t/1", 0)])
    for client, node in (("b1", "B"), ("b2", "B"), ("c1", "C")):
        metadata.put(SUBSCRIBER_PREFIX, ("", client + "-remote"), ((node, False, (("t/#", 0),)),))
    return router, retain, plane


def test_local_queues_get_min_qos_and_each_other_node_one_copy():
    queues = {C1: FakeQueue(), C2: FakeQueue()}
    router, _retain, plane = _router(queues)
    assert router.publish(message()) is None
    assert [q for _m, q in queues[C1].got] == [1]
    assert [q for _m, q in queues[C2].got] == [2], "one copy, the highest grant [MQTT-3.3.5-1]"
    [(nodes, _m)] = plane.forwards
    assert sorted(nodes) == ["B", "C"]
    assert router.published == 1


def test_messages_from_other_nodes_are_routed_locally_only():
    queues = {C1: FakeQueue()}
    router, _retain, plane = _router(queues)
    router.route_remote(message(origin="B"))
    router.publish(message(origin="B"))
    assert len(queues[C1].got) == 2 and plane.forwards == []
    assert router.published == 2


def test_retained_publish_is_kept_and_routed_with_retain_cleared():
    """
    [MQTT-3.3.1-9]: established subscriptions get RETAIN=0; the copy for
    other nodes keeps RETAIN for their "retain as published" subscribers
    (they clear it for the others, see the next test).
    """
    queues = {C1: FakeQueue()}
    router, retain, plane = _router(queues)
    router.publish(message(retain=True), author=("p", None))
    [(routed, _qos)] = queues[C1].got
    assert routed.retain is False and plane.forwards[0][1].retain is True
    [(kept, author)] = list(retain.matching("t/1"))
    assert kept.retain is True and author == ("p", None)


def test_waits_for_the_queues_that_store():
    stored = Deferred()
    queues = {C1: FakeQueue(stored), C2: FakeQueue()}
    router, _retain, _plane = _router(queues)
    done = router.publish(message())
    assert done is not None and not done.called
    stored.callback(None)
    assert done.called


def test_waits_for_the_outbox_of_other_nodes_too():
    queues = {C1: FakeQueue()}
    router, _retain, plane = _router(queues)
    plane.stored = Deferred()
    done = router.publish(message())
    assert done is not None and not done.called
    plane.stored.callback(None)
    assert done.called


def test_a_full_backlog_refuses_a_qos1_publish_whole():
    queues = {C1: FakeQueue()}
    router, _retain, plane = _router(queues)
    plane.room = False
    done = router.publish(message(qos=1))
    assert done is not None
    with pytest.raises(BacklogFull):
        done.result.raiseException()
    done.addErrback(lambda failure: None)
    assert queues[C1].got == [] and plane.forwards == [], "routed nowhere"
    assert len(plane.refusals) == 1


def test_a_full_backlog_drops_only_the_remote_copies_of_qos0():
    queues = {C1: FakeQueue()}
    router, _retain, plane = _router(queues)
    plane.room = False
    assert router.publish(message(qos=0)) is None
    assert len(queues[C1].got) == 1 and plane.forwards == []
    assert len(plane.refusals) == 1


def test_a_retained_publish_from_another_node_keeps_retain_only_as_published():
    """[MQTT-3.3.1-12/13] on the receiving node: RETAIN=1 for retain as published only."""
    queues = {C1: FakeQueue(), C2: FakeQueue()}
    router, retain, plane = _router(queues)
    router.subscriptions.subscribe(C2, False, [("t/+", 2 | 0x08)])   # retain as published
    router.route_remote(message(retain=True, origin="B"))
    [(plain, _q)] = queues[C1].got
    [(as_published, _q)] = queues[C2].got
    assert (plain.retain, as_published.retain) == (False, True)
    assert list(retain.matching("t/1")) == [], "retained by its own node, not here"
    assert plane.forwards == []


def test_a_frame_of_qos0_messages_from_another_node_matches_each_topic_once():
    """
    route_remote_batch delivers each message as route_remote would (local
    subscribers only, RETAIN kept for retain as published only), matching
    every topic in the trie once per frame, however often it repeats.
    """
    queues = {C1: FakeQueue(), C2: FakeQueue()}
    router, _retain, plane = _router(queues)
    router.subscriptions.subscribe(C2, False, [("t/+", 2 | 0x08)])   # retain as published
    looked_up: List[str] = []

    class CountingTrie(SubscriptionTrie):
        __slots__ = ()

        def match(self, topic: str) -> Any:
            looked_up.append(topic)
            return super().match(topic)
    router.subscriptions.trie.__class__ = CountingTrie
    batch = [message("t/%d" % (n % 2), qos=0, origin="B", retain=(n == 3)) for n in range(6)]
    router.route_remote_batch(batch)
    assert sorted(looked_up) == ["t/0", "t/1"]
    assert [m.topic for m, _q in queues[C1].got] == ["t/0", "t/1"] * 3
    assert [m.topic for m, _q in queues[C2].got] == ["t/0", "t/1"] * 3
    assert [m.retain for m, _q in queues[C1].got] == [False] * 6
    assert [m.retain for m, _q in queues[C2].got] == [False, False, False, True, False, False]
    assert plane.forwards == [] and router.published == 6


def test_a_frames_plain_qos0_messages_go_straight_to_the_queues_matched() -> None:
    """
    The short way of a frame's QoS 0 messages to subscribers without MQTT
    5.0 options ends where route_remote would: each queue once per
    message, at QoS 0 whatever it was granted, in order; a topic nobody
    here subscribes to is counted as unmatched; a session gone from this
    node (no queue) gets nothing.
    """
    queues = {C1: FakeQueue(), C2: FakeQueue()}
    router, _retain, plane = _router(queues)
    router.subscriptions.subscribe(C2, False, [("t/+", 1)])
    gone = SubscriberId("", "gone")
    router.subscriptions.subscribe(gone, False, [("t/#", 2)])
    batch = [message("t/%d" % (n % 2), qos=0, origin="B") for n in range(4)]
    batch.append(message("nobody/here", qos=0, origin="B"))
    router.route_remote_batch(batch)
    for queue in (queues[C1], queues[C2]):
        assert [(m.topic, q) for m, q in queue.got] == [("t/0", 0), ("t/1", 0)] * 2
    assert router.unmatched == 1 and router.published == 5 and plane.forwards == []
