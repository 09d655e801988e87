"""
The Jepsen-style checker: pure, no I/O, no clock.

It judges a *history* -- what the publishers sent and had acknowledged,
what each subscriber received and when its subscriptions existed --
against the one promise of QoS 1 in a cluster: an acknowledged message
reaches every subscriber whose subscription existed when it was
published, once (a second copy only with the DUP flag), and one
publisher's messages arrive in the order they were sent.

Every payload is tagged ``b"<publisher>:<seq>:"`` + padding (see
:func:`tag` / :func:`parse_tag`), so a receipt names the message it is a
copy of, whatever topic it came on.  Times are whatever one monotonic clock
the workload used; the checker only compares them.
"""
from __future__ import annotations

from typing import (Dict, FrozenSet, Iterable, List, Mapping, Optional,
                    Sequence, Set, Tuple)

import attrs

from vmqtw.topic import matches

__all__ = ["tag", "parse_tag", "Sent", "Receipt", "Subscription",
           "PublisherHistory", "SubscriberHistory", "Report", "check",
           "MessageId"]

#: ``(publisher, seq)``: the identity of one published message.
MessageId = Tuple[str, int]


def tag(publisher: str, seq: int, size: int = 0) -> bytes:
    """
    The payload of message ``seq`` of ``publisher``, padded to ``size`` bytes.

    The tag comes first and ends with ``:`` so padding never changes it.
    """
    head = b"%s:%d:" % (publisher.encode("utf-8"), seq)
    return head + b"." * max(0, size - len(head))


def parse_tag(payload: bytes) -> Optional[MessageId]:
    """``(publisher, seq)`` of a tagged payload, or None if it is not one."""
    parts = payload.split(b":", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0].decode("utf-8"), int(parts[1])
    except (UnicodeDecodeError, ValueError):
        return None


@attrs.frozen(slots=True)
class Sent:
    """One message handed to a publisher's client: its topic and when."""

    topic: str
    at: float


@attrs.frozen(slots=True)
class Receipt:
    """
    One PUBLISH a subscriber received, in arrival order.

    ``publisher``/``seq`` come from the payload tag; an untagged payload is
    recorded with ``publisher=""``, ``seq=-1`` (and is unexpected).
    """

    publisher: str
    seq: int
    dup: bool
    qos: int
    #: The connection it came on (``host:local port``; "" when unknown):
    #: which of a session's successive connections, for the examples.
    connection: str = ""


@attrs.frozen(slots=True)
class Subscription:
    """
    A filter and the time window it existed in: from its SUBACK (``start``)
    to its UNSUBACK/end of session (``end``, None: until the end of the run).
    """

    filter: str
    start: float
    end: Optional[float] = None

    def covers(self, sent: Sent) -> bool:
        """Must a message sent as ``sent`` (and acknowledged) reach it?"""
        if not matches(self.filter, sent.topic):
            return False
        # Sent after the SUBACK, before the subscription went away.
        return sent.at >= self.start and (self.end is None or sent.at <= self.end)


@attrs.frozen(slots=True)
class PublisherHistory:
    """
    What one publisher did: ``sent`` maps every sequence number handed to the
    client to its topic and time; ``acked`` are those whose PUBACK arrived;
    ``resent`` those the client sent again (DUP) after reconnecting, which
    may legitimately be routed twice by the broker.
    """

    name: str
    sent: Mapping[int, Sent]
    acked: FrozenSet[int]
    resent: FrozenSet[int] = frozenset()


@attrs.frozen(slots=True)
class SubscriberHistory:
    """What one subscriber client received, and which filters it held when."""

    name: str
    subscriptions: Tuple[Subscription, ...]
    receipts: Tuple[Receipt, ...]


@attrs.frozen(slots=True)
class Report:
    """
    The verdict on one history.

    ``lost``/``delivered`` count (subscriber, message) pairs over the
    *expected* pairs (acknowledged messages times subscribers that must get
    them); ``lost_messages`` counts acknowledged messages missing at one
    subscriber or more.  ``dup_without_dup`` counts second (third, ...)
    receipts with the DUP flag clear; ``dup_after_resend`` is the part of
    those whose publisher resent the message (so the broker saw it twice).
    ``out_of_order`` counts first receipts of a publisher's message with a
    lower sequence number than one received before from that publisher at
    that subscriber; ``out_of_order_after_resend`` the part of those whose
    message the publisher resent.

    A resend excuses both: the broker sees a resent QoS 1 message as a new
    PUBLISH and may route it again with DUP clear ([MQTT-3.3.1-3]: DUP is
    not propagated), and paho sends new messages on the fresh connection
    while it resends, so the broker receives them in that order
    ([MQTT-4.6.0-6] orders per publisher by arrival at the server).  ``unexpected`` counts receipts of messages never sent
    (or untagged).  ``examples`` holds a few offending items per kind for
    the report, never for the verdict.
    """

    acknowledged: int
    sent: int
    expected: int
    delivered: int
    lost: int
    lost_messages: int
    dup_without_dup: int
    dup_after_resend: int
    out_of_order: int
    out_of_order_after_resend: int
    unexpected: int
    examples: Mapping[str, Tuple[str, ...]] = attrs.field(factory=dict)

    @property
    def dup_unexplained(self) -> int:
        """Duplicates without DUP of messages the publisher never resent."""
        return self.dup_without_dup - self.dup_after_resend

    @property
    def out_of_order_unexplained(self) -> int:
        """Reorderings of messages the publisher never resent."""
        return self.out_of_order - self.out_of_order_after_resend

    @property
    def ok(self) -> bool:
        """The promise held: nothing lost, invented, or (unless resent) duplicated or reordered."""
        return not (self.lost or self.dup_unexplained or self.out_of_order_unexplained
                    or self.unexpected)


_EXAMPLES = 5


def _example(examples: Dict[str, List[str]], kind: str, text: str) -> None:
    bucket = examples.setdefault(kind, [])
    if len(bucket) < _EXAMPLES:
        bucket.append(text)


def _where(connection: str, before: str) -> str:
    """
    `` (on X; that on Y)``: the connection a reordered message came on and
    the one its higher predecessor came on (``the same`` when one connection
    got both: the broker reordered, not a takeover), if known.
    """
    if not connection and not before:
        return ""
    return " (on %s; %s)" % (connection or "?", "the same" if before == connection
                             else "that on " + (before or "?"))


def check(publishers: Sequence[PublisherHistory],
          subscribers: Iterable[SubscriberHistory]) -> Report:
    """Judge one history; see :class:`Report` for what each count means."""
    by_name = {p.name: p for p in publishers}
    examples: Dict[str, List[str]] = {}
    acknowledged = sum(len(p.acked) for p in publishers)
    sent = sum(len(p.sent) for p in publishers)
    expected = delivered = lost = 0
    lost_messages: Set[MessageId] = set()
    dup_without = dup_resend = out_of_order = order_resend = unexpected = 0
    for sub in subscribers:
        seen: Set[MessageId] = set()
        highest: Dict[str, int] = {}
        #: Where the highest one came: ``publisher -> connection``.
        highest_on: Dict[str, str] = {}
        for receipt in sub.receipts:
            mid = (receipt.publisher, receipt.seq)
            pub = by_name.get(receipt.publisher)
            if pub is None or receipt.seq not in pub.sent:
                unexpected += 1
                _example(examples, "unexpected", "%s got %s:%d" % (sub.name, *mid))
                continue
            if mid in seen:
                if not receipt.dup:
                    dup_without += 1
                    if receipt.seq in pub.resent:
                        dup_resend += 1
                    _example(examples, "dup_without_dup", "%s got %s:%d again" % (sub.name, *mid))
                continue
            seen.add(mid)
            top = highest.get(receipt.publisher)
            if top is not None and receipt.seq < top:
                out_of_order += 1
                if receipt.seq in pub.resent:
                    order_resend += 1
                _example(examples, "out_of_order",
                         "%s got %s:%d after %d%s" % (
                             sub.name, receipt.publisher, receipt.seq, top,
                             _where(receipt.connection, highest_on[receipt.publisher])))
            else:
                highest[receipt.publisher] = receipt.seq
                highest_on[receipt.publisher] = receipt.connection
        for pub in publishers:
            for seq in pub.acked:
                message = pub.sent.get(seq)
                if message is None or not any(s.covers(message) for s in sub.subscriptions):
                    continue
                expected += 1
                if (pub.name, seq) in seen:
                    delivered += 1
                else:
                    lost += 1
                    lost_messages.add((pub.name, seq))
                    _example(examples, "lost", "%s never got %s:%d" % (sub.name, pub.name, seq))
    return Report(acknowledged=acknowledged, sent=sent, expected=expected,
                  delivered=delivered, lost=lost, lost_messages=len(lost_messages),
                  dup_without_dup=dup_without, dup_after_resend=dup_resend,
                  out_of_order=out_of_order, out_of_order_after_resend=order_resend,
                  unexpected=unexpected,
                  examples={k: tuple(v) for k, v in examples.items()})
