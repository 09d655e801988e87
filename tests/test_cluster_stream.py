"""
The numbered, acknowledged stream between two nodes (vmqtw.cluster.stream):
nothing the sender keeps is lost across cuts, reconnects and receiver
restarts, each entry is applied once unless it was flagged as a redelivery,
and first applications keep the sender's order.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, Dict, List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from vmqtw.cluster.stream import APPLY, DUPLICATE, GAP, Inbound, Outbound


def test_entries_are_numbered_and_released_by_a_cumulative_ack():
    out = Outbound(limit=1000)
    entries = [out.push("m%d" % i, 10) for i in range(5)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [e.seq for e in out.unsent()] == [1, 2, 3, 4, 5]
    assert out.unsent() == []
    released = out.acknowledge(out.epoch, 3)
    assert [e.body for e in released] == ["m0", "m1", "m2"]
    assert out.held_bytes == 20 and len(out) == 2


def test_an_ack_of_another_epoch_releases_nothing():
    out = Outbound(limit=1000)
    out.push("a", 1)
    out.unsent()
    assert out.acknowledge(b"\0" * 8, 1) == []
    assert len(out) == 1


def test_what_was_sent_on_a_lost_link_is_resent_as_a_redelivery():
    out = Outbound(limit=1000)
    for i in range(4):
        out.push(i, 1)
    out.unsent()
    out.acknowledge(out.epoch, 1)
    out.push(4, 1)          # queued while the link was still believed up
    out.link_lost()
    again = out.unsent()
    assert [(e.seq, e.redelivery) for e in again] == [
        (2, True), (3, True), (4, True), (5, False)]


def test_the_bound_refuses_but_an_empty_stream_takes_one_large_entry():
    out = Outbound(limit=10)
    assert out.push("big", 50) is not None
    assert out.push("x", 1) is None
    out.unsent()
    out.acknowledge(out.epoch, 1)
    assert out.push("a", 6) is not None
    assert out.push("b", 4) is not None
    assert out.push("c", 1) is None
    assert not out.has_room(1)


def test_receiver_drops_what_it_applied_and_acks_only_a_safe_prefix():
    inbound = Inbound()
    epoch = b"e" * 8
    assert [inbound.receive(epoch, s, 0) for s in (1, 2, 3)] == [APPLY] * 3
    inbound.safe(epoch, 1)
    inbound.safe(epoch, 3)          # out of order: 2 is still being stored
    assert inbound.ack_due() == (epoch, 1)
    assert inbound.ack_due() is None
    assert inbound.receive(epoch, 2, 0) == DUPLICATE   # a resend of an applied one
    inbound.safe(epoch, 2)
    assert inbound.ack_due() == (epoch, 3)


def test_a_straggler_of_an_old_connection_is_not_applied_before_its_predecessors():
    inbound = Inbound()
    epoch = b"e" * 8
    assert inbound.receive(epoch, 1, 0) == APPLY
    assert inbound.receive(epoch, 3, 0) == GAP      # 2 is being resent on the new link
    assert inbound.receive(epoch, 2, 0) == APPLY
    assert inbound.receive(epoch, 3, 0) == APPLY


def test_a_receiver_meeting_an_epoch_mid_stream_starts_at_the_senders_base():
    inbound = Inbound()
    assert inbound.receive(b"e" * 8, 7, 5) == GAP   # 6 was lost with the old link
    assert inbound.receive(b"e" * 8, 6, 5) == APPLY


def test_forced_entries_ignore_the_bound():
    out = Outbound(limit=10)
    out.push("a", 10)
    assert out.push("b", 5) is None
    assert out.push("b", 5, force=True) is not None
    assert out.held_bytes == 15


def test_acks_are_batched():
    inbound = Inbound()
    epoch = b"e" * 8
    for seq in range(1, 5):
        inbound.receive(epoch, seq, 0)
        inbound.safe(epoch, seq)
    assert inbound.ack_due(batch=10) is None
    assert inbound.ack_due(batch=4) == (epoch, 4)


def test_a_new_sender_epoch_or_a_fresh_receiver_starts_from_the_first_seen():
    inbound = Inbound()
    assert inbound.receive(b"a" * 8, 40, 39) == APPLY
    inbound.safe(b"a" * 8, 40)
    assert inbound.ack_due() == (b"a" * 8, 40)
    assert inbound.receive(b"b" * 8, 1, 0) == APPLY       # the sender restarted
    assert inbound.receive(b"b" * 8, 2, 0) == APPLY
    inbound.safe(b"a" * 8, 2)                # late safety of the old epoch: ignored
    assert inbound.ack_due() is None


def test_reack_repeats_the_acknowledgement_for_a_new_link():
    inbound = Inbound()
    assert inbound.reack() == (None, 0)
    inbound.receive(b"e" * 8, 1, 0)
    inbound.safe(b"e" * 8, 1)
    assert inbound.ack_due() == (b"e" * 8, 1)
    assert inbound.reack() == (b"e" * 8, 1)


# -- a model of two nodes, a link that can die, and a receiver that restarts --

STEPS = st.lists(st.sampled_from(
    ["push", "push", "push", "deliver", "deliver", "deliver", "ack", "safe",
     "cut", "restart_receiver", "lose_acks", "replace", "straggle", "silent_replace"]), max_size=120)


class Model:
    """Sender and receiver halves joined by in-flight queues that a cut empties."""

    def __init__(self) -> None:
        self.out = Outbound(limit=50)
        self.inbound = Inbound()
        self.to_receiver: Deque[Tuple[bytes, int, int, int, bool]] = deque()
        self.to_sender: Deque[Tuple[bytes, int]] = deque()
        #: Frames of a replaced connection that may still arrive, late.
        self.stragglers: Deque[Tuple[bytes, int, int, int, bool]] = deque()
        #: Applied entries whose store write has not completed: seq -> body.
        self.unsafe: Dict[int, int] = {}
        self.pushed: List[int] = []
        #: body -> redelivery flag of each application that became safe
        self.applied: Dict[int, List[bool]] = {}
        self.first_order: List[int] = []
        self.counter = 0
        self.receiver_restarts = 0

    def send_unsent(self) -> None:
        for entry in self.out.unsent():
            self.to_receiver.append((self.out.epoch, entry.seq, self.out.acked, entry.body,
                                     entry.redelivery))

    def make_safe(self, seq: int) -> None:
        body = self.unsafe.pop(seq)
        self.inbound.safe(self.out.epoch, seq)
        self.applied[body][-1][1] = True

    def step(self, action: str) -> None:
        if action == "push":
            if self.out.push(self.counter, 5) is not None:
                self.pushed.append(self.counter)
                self.counter += 1
            self.send_unsent()
        elif action in ("deliver", "straggle"):
            queue = self.to_receiver if action == "deliver" else self.stragglers
            if not queue:
                return
            epoch, seq, base, body, redelivery = queue.popleft()
            verdict = self.inbound.receive(epoch, seq, base)
            if verdict == GAP:
                self.to_sender.append(("hello", epoch, self.inbound.safe_upto))
            elif verdict == APPLY:
                applications = self.applied.setdefault(body, [])
                if not applications:
                    self.first_order.append(body)
                applications.append([redelivery, False])
                self.unsafe[seq] = body
        elif action == "safe" and self.unsafe:
            self.make_safe(min(self.unsafe))     # stores complete in order
        elif action == "ack":
            ack = self.inbound.ack_due()
            if ack is not None:
                self.to_sender.append(ack)
            while self.to_sender:
                item = self.to_sender.popleft()
                if item[0] == "hello":
                    # The receiver saw a new link the sender did not notice.
                    self.out.acknowledge(item[1], item[2])
                    self.out.link_lost()
                    self.send_unsent()
                else:
                    self.out.acknowledge(*item)
        elif action == "lose_acks":
            self.to_sender.clear()
        elif action == "cut":
            # The connection dies with whatever it carried; a new one comes
            # up, the receiver repeats its acknowledgement, the sender resends.
            self.to_receiver.clear()
            self.to_sender.clear()
            self.out.link_lost()
            epoch, upto = self.inbound.reack()
            if epoch is not None:
                self.out.acknowledge(epoch, upto)
            self.send_unsent()
        elif action == "replace":
            # A new connection replaces the old one, whose frames may still
            # arrive after the new one's.
            self.stragglers.extend(self.to_receiver)
            self.to_receiver.clear()
            self.out.link_lost()
            epoch, upto = self.inbound.reack()
            if epoch is not None:
                self.out.acknowledge(epoch, upto)
            self.send_unsent()
        elif action == "silent_replace":
            # The receiver noticed the old connection die and dialed again;
            # the sender's transport swapped links without telling it.  What
            # was in flight is lost, the sender keeps sending new entries,
            # and learns of the new link from the receiver's hello.
            self.to_receiver.clear()
            if self.inbound.epoch is not None:
                self.to_sender.append(("hello", self.inbound.epoch, self.inbound.safe_upto))
        elif action == "restart_receiver":
            self.stragglers.clear()
            # kill -9 of the receiver: applications not yet safe die with it
            # (never acknowledged, so the sender still holds them).
            self.receiver_restarts += 1
            for seq, body in self.unsafe.items():
                applications = self.applied[body]
                applications.pop()
                if not applications:
                    del self.applied[body]
                    self.first_order.remove(body)
            self.unsafe.clear()
            self.inbound = Inbound()
            self.to_receiver.clear()
            self.to_sender.clear()
            self.out.link_lost()
            self.send_unsent()

    def settle(self) -> None:
        """Heal for good and run until nothing moves."""
        self.step("cut")
        for _ in range(10000):
            if not (self.to_receiver or self.unsafe or self.to_sender or len(self.out)):
                break
            if self.stragglers:
                self.step("straggle")
            elif self.to_receiver:
                self.step("deliver")
            elif self.unsafe:
                self.make_safe(min(self.unsafe))
            else:
                self.step("ack")
                if len(self.out) and not self.to_receiver:
                    self.step("cut")


def check(model: Model) -> None:
    model.settle()
    assert len(model.out) == 0 and model.out.held_bytes == 0
    assert sorted(model.applied) == model.pushed, "every accepted entry applied"
    for body, applications in model.applied.items():
        assert all(safe for _flag, safe in applications)
        assert all(flag for flag, _safe in applications[1:]), (
            "entry %r applied again without the redelivery flag" % body)
    assert model.first_order == sorted(model.first_order), "sender order kept"


@settings(max_examples=300)
@given(STEPS)
def test_no_entry_is_lost_and_duplicates_are_flagged(steps):
    model = Model()
    for action in steps:
        model.step(action)
    check(model)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["push", "deliver", "deliver", "ack", "safe", "cut",
                                 "lose_acks", "replace", "straggle", "silent_replace"]),
                max_size=120))
def test_without_receiver_restarts_each_entry_is_applied_exactly_once(steps):
    model = Model()
    for action in steps:
        model.step(action)
    check(model)
    assert all(len(applications) == 1 for applications in model.applied.values())
